"""Regularizers (tf.contrib.layers' l1/l2, tf.no_regularizer) and the
REGULARIZATION_LOSSES they feed.

A regularizer is a function of a variable's value (a numpy array) to a loss
(a number) or None. In TensorFlow, get_variable(regularizer=f) added the
tensor f(v) to the graph's REGULARIZATION_LOSSES; psd has no graph, so a
session records the pair (variable, f) instead, for each variable its own
get_variable calls named a regularizer for (the first such call wins, as
TensorFlow added the loss once, at creation), and evaluates f on the
variable's current value when asked: get_regularization_losses() gives the
entries, get_regularization_loss() their sum now. Like TensorFlow's graph
collections, these are the client's, not the cluster's: another trainer's
session records its own.
"""

import numbers

import numpy as np

from .session import _session_of


class RegularizationLoss:
    """One entry of REGULARIZATION_LOSSES: `regularizer` applied to
    `variable`. value() evaluates it on the variable's current value."""

    def __init__(self, variable, regularizer):
        self.variable = variable
        self.regularizer = regularizer

    @property
    def name(self):
        return self.variable.full_name + "/Regularizer"

    def value(self):
        """The loss now (None when the regularizer gives none)."""
        return self.regularizer(self.variable.read_value())

    eval = value

    def __float__(self):
        loss = self.value()
        return 0.0 if loss is None else float(np.asarray(loss))

    def __repr__(self):
        return "<psclient.RegularizationLoss %s>" % self.name


def _record(session, variable, regularizer):
    """get_variable's side: the first regularizer named for a variable in
    this session is its entry."""
    if not callable(regularizer):
        raise TypeError("regularizer must be a callable (value -> loss or None), got %r"
                        % (regularizer,))
    if getattr(regularizer, "_gives_no_loss", False):
        return  # TensorFlow added nothing for a regularizer returning None
    session._regularization.setdefault(variable.full_name,
                                       RegularizationLoss(variable, regularizer))


def get_regularization_losses(scope=None, session=None):
    """The session's REGULARIZATION_LOSSES entries, in the order their
    variables were first named, those under `scope` (a name prefix) only
    when given."""
    sess = _session_of(session)
    entries = list(sess._regularization.values())
    if scope:
        prefix = scope.rstrip("/")
        entries = [e for e in entries
                   if e.variable.full_name == prefix
                   or e.variable.full_name.startswith(prefix + "/")]
    return entries


def get_regularization_loss(scope=None, name="total_regularization_loss", session=None):
    """The sum of the entries' losses on the variables' current values (0.0
    without any): what TensorFlow's tf.losses.get_regularization_loss
    computes, read from the shards now."""
    total = 0.0
    for entry in get_regularization_losses(scope, session):
        loss = entry.value()
        if loss is not None:
            total += float(np.asarray(loss))
    return total


def _check_scale(scale):
    if isinstance(scale, numbers.Integral):
        raise ValueError("scale cannot be an integer: %s" % (scale,))
    if not isinstance(scale, numbers.Real):
        raise TypeError("scale must be a real number, got %r" % (scale,))
    if scale < 0.0:
        raise ValueError("Setting a scale less than 0 on a regularizer: %g" % scale)
    return float(scale)


def l1_regularizer(scale, scope=None):
    """scale * sum(|w|); a scale of 0 gives no loss (None), as in TensorFlow."""
    scale = _check_scale(scale)
    if scale == 0.0:
        return no_regularizer

    def l1(weights):
        return scale * float(np.sum(np.abs(np.asarray(weights, dtype=np.float64))))

    return l1


def l2_regularizer(scale, scope=None):
    """scale * sum(w ** 2) / 2 (tf.nn.l2_loss); a scale of 0 gives no loss."""
    scale = _check_scale(scale)
    if scale == 0.0:
        return no_regularizer

    def l2(weights):
        w = np.asarray(weights, dtype=np.float64)
        return scale * float(np.sum(w * w)) / 2.0

    return l2


def sum_regularizer(regularizer_list, scope=None):
    """The sum of several regularizers' losses (None when all give none)."""
    regularizers = list(regularizer_list)

    def summed(weights):
        losses = [r(weights) for r in regularizers]
        losses = [float(np.asarray(l)) for l in losses if l is not None]
        return sum(losses) if losses else None

    return summed


def no_regularizer(_):
    """tf.no_regularizer: use it to prevent regularization of a variable (a
    scope's default regularizer then does not apply)."""
    return None


no_regularizer._gives_no_loss = True

"""psclient.train: TensorFlow's tf.compat.v1.train optimizers, applied on the
shards (the C++ client's Optimizer: slots created on first use, one batched
message per shard per step). There is no autodiff: pass gradients computed
in numpy to apply_gradients, dense arrays or IndexedSlices.

    opt = psclient.train.AdamOptimizer(0.01)
    opt.apply_gradients([(grad_w, w), (psclient.IndexedSlices(rows, ids), emb)],
                        global_step=step)
"""

import numpy as np

from . import _psclient
from .session import _session_of
from .variables import IndexedSlices, Variable, _indices_array


class Optimizer:
    """Base class; subclasses name the kind and its hyper-parameters."""

    _kind = None

    def __init__(self, use_locking=False, name=None, session=None, **params):
        self._name = name or self._kind
        self._session = _session_of(session)
        self._params = params
        self._opt = _psclient.Optimizer(self._session._s,
                                        _psclient.optimizer_config(self._kind, params))

    def get_name(self):
        return self._name

    def apply_gradients(self, grads_and_vars, global_step=None, name=None):
        """One step: grads_and_vars is a list of (gradient, Variable), gradient
        a numpy array (dense) or IndexedSlices (sparse). Pairs whose gradient
        is None are skipped, as in TensorFlow. Advances global_step by one
        when given. Returns None (psd runs the step at once)."""
        items = []
        for grad, var in grads_and_vars:
            if grad is None:
                continue
            if not isinstance(var, Variable):
                raise TypeError("apply_gradients: %r is not a psclient.Variable" % (var,))
            if isinstance(grad, IndexedSlices):
                idx, idt = _indices_array(grad.indices)
                items.append((var._v, idx, idt, var._value(grad.values)))
            else:
                items.append((var._v, var._value(grad)))
        if not items:
            raise ValueError("No gradients provided for any variable")
        self._opt.apply_gradients(items)
        if global_step is not None:
            global_step.assign_add(np.ones((), dtype=global_step.dtype.np))

    def compute_gradients(self, *args, **kwargs):
        raise NotImplementedError("psclient has no autodiff: compute gradients yourself and "
                                  "pass them to apply_gradients")

    minimize = compute_gradients

    def create_slots(self, var_list):
        self._opt.create_slots([v._v for v in var_list])

    def get_slot(self, var, name):
        """The slot variable `name` of `var` (None before the slot exists, as TF)."""
        from . import errors
        try:
            return Variable._wrap(self._session, self._opt.get_slot(var._v, name))
        except errors.NotFoundError:
            return None

    def get_slot_names(self):
        return list(self._opt.get_slot_names())

    def variables(self):
        return [Variable._wrap(self._session, v) for v in self._opt.non_slot_variables()]


class GradientDescentOptimizer(Optimizer):
    _kind = "GradientDescent"

    def __init__(self, learning_rate, use_locking=False, name="GradientDescent", session=None):
        super().__init__(use_locking, name, session, learning_rate=learning_rate)


class MomentumOptimizer(Optimizer):
    _kind = "Momentum"

    def __init__(self, learning_rate, momentum, use_locking=False, name="Momentum",
                 use_nesterov=False, session=None):
        super().__init__(use_locking, name, session, learning_rate=learning_rate,
                         momentum=momentum, use_nesterov=use_nesterov)


class AdagradOptimizer(Optimizer):
    _kind = "Adagrad"

    def __init__(self, learning_rate, initial_accumulator_value=0.1, use_locking=False,
                 name="Adagrad", session=None):
        super().__init__(use_locking, name, session, learning_rate=learning_rate,
                         initial_accumulator_value=initial_accumulator_value)


class AdamOptimizer(Optimizer):
    _kind = "Adam"

    def __init__(self, learning_rate=0.001, beta1=0.9, beta2=0.999, epsilon=1e-08,
                 use_locking=False, name="Adam", session=None):
        super().__init__(use_locking, name, session, learning_rate=learning_rate, beta1=beta1,
                         beta2=beta2, epsilon=epsilon)


class RMSPropOptimizer(Optimizer):
    _kind = "RMSProp"

    def __init__(self, learning_rate, decay=0.9, momentum=0.0, epsilon=1e-10, use_locking=False,
                 centered=False, name="RMSProp", session=None):
        super().__init__(use_locking, name, session, learning_rate=learning_rate, decay=decay,
                         momentum=momentum, epsilon=epsilon, centered=centered)


class FtrlOptimizer(Optimizer):
    _kind = "Ftrl"

    def __init__(self, learning_rate, learning_rate_power=-0.5, initial_accumulator_value=0.1,
                 l1_regularization_strength=0.0, l2_regularization_strength=0.0,
                 use_locking=False, name="Ftrl", accum_name=None, linear_name=None,
                 l2_shrinkage_regularization_strength=0.0, session=None):
        super().__init__(use_locking, name, session, learning_rate=learning_rate,
                         learning_rate_power=learning_rate_power,
                         initial_accumulator_value=initial_accumulator_value,
                         l1_regularization_strength=l1_regularization_strength,
                         l2_regularization_strength=l2_regularization_strength,
                         l2_shrinkage_regularization_strength=l2_shrinkage_regularization_strength)

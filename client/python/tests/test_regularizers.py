"""Regularizers as tf.get_variable and tf.variable_scope document them
(variables-api.txt: "the result of applying it on a newly created variable
will be added to the collection GraphKeys.REGULARIZATION_LOSSES"), with
TensorFlow's l1/l2 definitions."""

import numpy as np
import pytest

import psclient


def test_regularization_loss_is_numpys_on_current_values(session, prefix):
    with psclient.variable_scope(prefix):
        w = psclient.get_variable("w", shape=[3, 2], regularizer=psclient.l2_regularizer(0.1),
                                  initializer=psclient.zeros_initializer(), initialize=True)
        b = psclient.get_variable("b", shape=[2], regularizer=psclient.l1_regularizer(0.5),
                                  initializer=psclient.zeros_initializer(), initialize=True)
    value = np.arange(6, dtype=np.float32).reshape(3, 2) - 2.5
    w.assign(value)
    b.assign(np.array([-1.5, 2.0], np.float32))
    expected = 0.1 * np.sum(value.astype(np.float64) ** 2) / 2 + 0.5 * 3.5
    assert psclient.get_regularization_loss(scope=prefix) == pytest.approx(expected)
    losses = psclient.get_collection(psclient.GraphKeys.REGULARIZATION_LOSSES)
    mine = [l for l in losses if l.variable.full_name.startswith(prefix + "/")]
    assert [l.variable.full_name for l in mine] == [prefix + "/w", prefix + "/b"]
    assert float(mine[1]) == pytest.approx(1.75)
    # The loss follows training: it is evaluated on the value now.
    w.assign(np.zeros([3, 2], np.float32))
    assert psclient.get_regularization_loss(scope=prefix) == pytest.approx(1.75)


def test_scope_default_applies_and_no_regularizer_opts_out(session, prefix):
    with psclient.variable_scope(prefix, regularizer=psclient.l1_regularizer(1.0)) as scope:
        assert scope.regularizer is not None
        a = psclient.get_variable("a", shape=[2], initializer=psclient.ones_initializer(),
                                  initialize=True)
        psclient.get_variable("skip", shape=[2], regularizer=psclient.no_regularizer,
                              initializer=psclient.ones_initializer(), initialize=True)
        with psclient.variable_scope("inner"):
            psclient.get_variable("c", shape=[2], initializer=psclient.ones_initializer(),
                                  initialize=True)
        # Reusing a variable does not add its loss again.
        scope.reuse_variables()
        psclient.get_variable("a", shape=[2])
    names = [l.variable.full_name for l in psclient.get_regularization_losses(scope=prefix)]
    assert names == [prefix + "/a", prefix + "/inner/c"]
    assert psclient.get_regularization_loss(scope=prefix) == pytest.approx(4.0)
    assert a.read().tolist() == [1.0, 1.0]


def test_regularizer_arguments_are_checked_as_tensorflow_does(session):
    with pytest.raises(ValueError):
        psclient.l2_regularizer(-0.1)
    with pytest.raises(ValueError):
        psclient.l1_regularizer(1)  # an integer scale
    assert psclient.l2_regularizer(0.0) is psclient.no_regularizer
    total = psclient.sum_regularizer([psclient.l1_regularizer(1.0), psclient.l2_regularizer(2.0)])
    assert total(np.array([3.0, -1.0])) == pytest.approx(4.0 + 10.0)


def test_losses_belong_to_the_session_that_named_them(cluster, prefix):
    s1 = psclient.Session(cluster.address)
    s2 = psclient.Session(cluster.address)
    try:
        psclient.get_variable(prefix, shape=[2], regularizer=psclient.l1_regularizer(1.0),
                              initializer=psclient.ones_initializer(), initialize=True,
                              session=s1)
        psclient.get_variable(prefix, shape=[2], session=s2)  # attaches, no regularizer
        assert psclient.get_regularization_loss(scope=prefix, session=s1) == pytest.approx(2.0)
        assert psclient.get_regularization_losses(scope=prefix, session=s2) == []
    finally:
        s1.close()
        s2.close()

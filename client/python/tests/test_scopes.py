"""variable_scope and get_variable arguments as the TensorFlow documentation
(variables-api.txt) defines them: every argument honoured or refused."""

import numpy as np
import pytest

import psclient
from psclient import errors


def test_a_numpy_value_as_a_scopes_initializer_is_a_constant(session, prefix):
    with psclient.variable_scope(prefix, initializer=np.array([1.0, 2.0], np.float32)):
        v = psclient.get_variable("v", initialize=True)
    assert v.shape == (2,)
    np.testing.assert_array_equal(v.read(), [1.0, 2.0])


def test_initializer_value_and_explicit_dtype_must_match(session, prefix):
    with psclient.variable_scope(prefix):
        with pytest.raises(ValueError, match="don't match"):
            psclient.get_variable("v", initializer=np.zeros([2], np.float64),
                                  dtype=psclient.float32)
        v = psclient.get_variable("ok", initializer=np.zeros([2], np.float64),
                                  dtype=psclient.float64)
    assert v.dtype == psclient.float64


def test_scope_properties_and_setters(session, prefix):
    partitioner = psclient.fixed_size_partitioner(2)
    init = psclient.ones_initializer()
    with psclient.variable_scope(prefix, partitioner=partitioner, initializer=init) as scope:
        assert scope.partitioner == partitioner
        assert scope.initializer is init
        scope.set_initializer(psclient.constant_initializer(3.0))
        scope.set_partitioner(psclient.fixed_size_partitioner(4))
        with pytest.raises(errors.UnimplementedError, match="set_partitioner"):
            scope.set_partitioner(None)
        reg = psclient.l2_regularizer(1.0)
        scope.set_regularizer(reg)
        assert scope.regularizer is reg
        v = psclient.get_variable("v", shape=[4], initialize=True)
        with psclient.variable_scope("inner") as inner:
            assert inner.regularizer is reg  # inherited
            w = psclient.get_variable("w", shape=[2], initialize=True)
    assert v.partitions == [4]
    np.testing.assert_array_equal(v.read(), [3.0] * 4)
    np.testing.assert_array_equal(w.read(), [3.0] * 2)


def test_custom_getters_see_full_names_and_nest(session, prefix):
    calls = []

    def outer(getter, name, *args, **kwargs):
        calls.append(("outer", name))
        return getter(name, *args, **kwargs)

    def inner(getter, name, *args, **kwargs):
        calls.append(("inner", name))
        kwargs["trainable"] = False
        return getter(name + "_renamed", *args, **kwargs)

    with psclient.variable_scope(prefix, custom_getter=outer):
        with psclient.variable_scope("in", custom_getter=inner):
            v = psclient.get_variable("v", shape=[1])
    assert calls == [("inner", prefix + "/in/v"), ("outer", prefix + "/in/v_renamed")]
    assert v.full_name == prefix + "/in/v_renamed"
    assert not v.trainable
    with pytest.raises(ValueError, match="custom_getter must be a callable"):
        psclient.variable_scope(prefix, custom_getter="not callable")


def test_get_local_variable(session, prefix):
    with psclient.variable_scope(prefix):
        v = psclient.get_local_variable("loc", shape=[2])
    assert not v.trainable
    mine = lambda vs: [x.full_name for x in vs if x.full_name.startswith(prefix + "/")]
    assert mine(psclient.local_variables()) == [prefix + "/loc"]
    assert mine(psclient.global_variables()) == []


def test_variable_validate_shape_false_lets_assign_change_the_shape(session, prefix):
    v = psclient.Variable(np.zeros([2], np.float32), name=prefix, validate_shape=False)
    v.initialize()
    v.assign(np.ones([3], np.float32))
    np.testing.assert_array_equal(v.read(), [1.0, 1.0, 1.0])
    w = psclient.Variable(np.zeros([2], np.float32), name=prefix + "_fixed")
    w.initialize()
    with pytest.raises(errors.InvalidArgumentError):
        w.assign(np.ones([3], np.float32))


def test_eval_proto_round_trip_and_refused_arguments(cluster, session, prefix):
    v = psclient.Variable(np.arange(3, dtype=np.float32), name=prefix)
    v.initialize()
    other = psclient.Session(cluster.address)
    try:
        np.testing.assert_array_equal(v.eval(other), [0.0, 1.0, 2.0])
        proto = v.to_proto()
        again = psclient.Variable.from_proto(proto, session=other)
        assert again.full_name == v.full_name
        assert psclient.Variable(variable_def=proto).full_name == v.full_name
    finally:
        other.close()
    with pytest.raises(errors.UnimplementedError, match="caching_device"):
        psclient.Variable(np.zeros(2, np.float32), caching_device="/cpu:0")


def test_variable_scope_constructor_takes_tensorflows_arguments(session, prefix):
    init = psclient.constant_initializer(3.0)
    reg = psclient.l2_regularizer(0.5)
    part = psclient.fixed_size_partitioner(2)
    made = psclient.VariableScope(False, name=prefix + "/made", initializer=init,
                                  regularizer=reg, caching_device="/cpu:0", partitioner=part,
                                  name_scope=prefix + "/made/", dtype=psclient.float64)
    assert made.name == prefix + "/made"
    assert made.reuse is False
    assert made.initializer is init
    assert made.regularizer is reg
    assert made.caching_device == "/cpu:0"
    assert made.partitioner == part
    assert made.original_name_scope == prefix + "/made/"
    assert made.dtype == psclient.float64
    # Entered from anywhere, it names under its own full name, with its
    # defaults (initializer, dtype, partitioner, regularizer).
    with psclient.variable_scope(prefix + "_elsewhere"):
        with psclient.variable_scope(made) as entered:
            assert entered.name == prefix + "/made"
            v = psclient.get_variable("v", shape=[4], initialize=True)
    assert v.name == prefix + "/made/v:0"
    assert v.dtype == psclient.float64
    assert v.partitions == [2]
    np.testing.assert_array_equal(v.read(), [3.0] * 4)
    assert psclient.get_regularization_loss() == pytest.approx(0.5 * 0.5 * 4 * 9.0)

    # reuse=True (the first positional argument) reuses, and refuses a new name.
    reusing = psclient.VariableScope(True, prefix + "/made", dtype=psclient.float64)
    assert reusing.reuse is True
    with psclient.variable_scope(reusing):
        assert psclient.get_variable("v", shape=[4]).name == v.name
        with pytest.raises(ValueError):
            psclient.get_variable("missing", shape=[1])
    later = psclient.VariableScope(False, prefix + "/made")
    later.reuse_variables()
    assert later.reuse is True
    with pytest.raises(errors.UnimplementedError, match="constraint"):
        psclient.VariableScope(False, constraint=lambda x: x)

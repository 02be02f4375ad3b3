"""Variable.initialized_value(): variables initialized from another's value,
computed on the shards (TensorFlow's ``tf.Variable(v.initialized_value() * 2.0)``)."""

import numpy as np
import pytest

import psclient
from psclient import errors

V = np.arange(1, 7, dtype=np.float32).reshape(2, 3)


def test_get_variable_from_initialized_value(session, prefix):
    with psclient.variable_scope(prefix):
        v = psclient.get_variable("v", initializer=psclient.constant_initializer(V), shape=[2, 3])
        w = psclient.get_variable("w", initializer=v.initialized_value() * 2.0 + 1.0)
    # Shape and dtype come from the source, as from a tensor initial value.
    assert w.shape == (2, 3) and w.dtype == psclient.float32
    assert not v.is_initialized()
    psclient.variables_initializer([w])  # initializes v first
    assert v.is_initialized()
    np.testing.assert_array_equal(w.read_value(), V * 2 + 1)
    np.testing.assert_array_equal(v.read_value(), V)


def test_tf_variable_from_initialized_value(session, prefix):
    with psclient.variable_scope(prefix):
        v = psclient.get_variable("v", initializer=V)
    w = psclient.Variable(v.initialized_value() * 2.0)
    assert w.op_name.startswith("Variable")
    assert w.shape == v.shape and w.dtype == v.dtype
    psclient.variables_initializer([w])
    np.testing.assert_array_equal(w.read_value(), V * 2)


def test_partitioned_and_chained(session, prefix):
    with psclient.variable_scope(prefix):
        u = psclient.get_variable("u", initializer=psclient.constant_initializer(np.arange(10)),
                                  shape=[5, 2], partitioner=psclient.fixed_size_partitioner(2))
        v = psclient.get_variable("v", initializer=1 - u.initialized_value(),
                                  partitioner=psclient.fixed_size_partitioner(2))
        w = psclient.get_variable("w", initializer=-v.initialized_value() / 4,
                                  partitioner=psclient.fixed_size_partitioner(2))
    assert w.partitioned and len(w.parts) == 2
    w.initialize()
    expected_v = 1 - np.arange(10, dtype=np.float32).reshape(5, 2)
    np.testing.assert_array_equal(v.read_value(), expected_v)
    np.testing.assert_array_equal(w.read_value(), -expected_v / 4)
    assert psclient.report_uninitialized_variables([u, v, w]) == []


def test_only_affine_forms_with_real_scalars(session, prefix):
    with psclient.variable_scope(prefix):
        v = psclient.get_variable("v", shape=[3], initializer=psclient.zeros_initializer())
    x = v.initialized_value()
    y = (3 * x - 1) / 2
    assert (y.scale, y.offset) == (1.5, -0.5)
    z = 2 - np.float32(4) * x
    assert (z.scale, z.offset) == (-4.0, 2.0)
    assert ((-x).scale, (+x).scale) == (-1.0, 1.0)
    for bad in (lambda: x * np.ones(3), lambda: x * x, lambda: x ** 2, lambda: "a" + x,
                lambda: x * True, lambda: x + 1j, lambda: x @ x):
        with pytest.raises(TypeError):
            bad()
    with pytest.raises(ZeroDivisionError):
        x / 0
    with pytest.raises(TypeError):
        psclient.Variable(x, dtype=psclient.int32)


def test_declaration_errors_name_both_variables(session, prefix):
    with psclient.variable_scope(prefix):
        v = psclient.get_variable("v", shape=[2, 3], initializer=psclient.zeros_initializer())
        with pytest.raises(errors.InvalidArgumentError, match="shapes differ") as e:
            psclient.get_variable("w", shape=[3, 2], initializer=v.initialized_value())
        assert prefix + "/w" in str(e.value) and prefix + "/v" in str(e.value)
        with pytest.raises(errors.InvalidArgumentError, match="dtypes differ"):
            psclient.get_variable("d", dtype=psclient.float64, initializer=v.initialized_value())
        n = psclient.get_variable("n", shape=[2], dtype=psclient.int32,
                                  initializer=psclient.zeros_initializer())
        with pytest.raises(errors.InvalidArgumentError, match="whole scale and offset"):
            psclient.get_variable("m", initializer=n.initialized_value() * 0.5)
        # A whole scale is fine for integers, computed exactly.
        m = psclient.get_variable("m", initializer=n.initialized_value() * 3 + 2)
    m.initialize()
    np.testing.assert_array_equal(m.read_value(), np.array([2, 2], np.int32))

"""Items of TensorFlow's Variables API (variables-api.txt) that are small
enough to check one by one: each does what the documentation says."""

import numpy as np
import pytest

import psclient
from psclient import errors


def test_zeros_and_ones_initializer_take_tensorflow_0x_shape_form(session, prefix):
    # tf.zeros_initializer(shape, dtype=tf.float32): the value.
    np.testing.assert_array_equal(psclient.zeros_initializer([2, 3]), np.zeros([2, 3]))
    ones = psclient.ones_initializer([2], dtype=psclient.int32)
    assert ones.dtype == np.int32 and ones.tolist() == [1, 1]
    # The initializer forms still work.
    v = psclient.get_variable(prefix, shape=[2], initializer=psclient.ones_initializer(),
                              initialize=True)
    w = psclient.get_variable(prefix + "_z", shape=[2], initializer=psclient.zeros_initializer,
                              initialize=True)
    assert v.read().tolist() == [1, 1] and w.read().tolist() == [0, 0]


def test_module_scatter_ops_and_sparse_delta(session, prefix):
    v = psclient.Variable(np.zeros([4], np.float32), name=prefix)
    v.initialize()
    assert psclient.scatter_update(v, [1, 3], np.array([5, 7], np.float32)) is v
    psclient.scatter_add(v, [1, 1], np.array([1, 1], np.float32))
    psclient.scatter_sub(v, [3], np.array([2], np.float32))
    v.scatter_sub(psclient.IndexedSlices(np.array([1], np.float32), [0]))
    np.testing.assert_array_equal(v.read(), [-1, 7, 0, 5])


def test_initialization_helpers(session, prefix):
    with psclient.variable_scope(prefix):
        g = psclient.get_variable("g", shape=[1], initializer=psclient.ones_initializer())
        loc = psclient.get_local_variable("l", shape=[1], initializer=psclient.ones_initializer())
    with pytest.raises(errors.FailedPreconditionError, match=prefix + "/g"):
        psclient.assert_variables_initialized([g, loc])
    psclient.initialize_local_variables()
    assert psclient.report_uninitialized_variables([g, loc], name="report") == [prefix + "/g"]
    g.initializer.run()
    psclient.assert_variables_initialized([g, loc])
    psclient.initialize_variables([g], name="init")
    assert g.read().tolist() == [1.0]


def test_device_names_the_shards_and_indexed_slices_dtype(session, prefix):
    v = psclient.get_variable(prefix, shape=[4, 2],
                              partitioner=psclient.fixed_size_partitioner(2))
    parts = v.parts
    assert v.device == ", ".join("shard %s at %s" % (p["shard_id"], p["shard_address"])
                                 for p in parts)
    assert psclient.IndexedSlices(np.zeros([1, 2], np.float64), [0]).dtype == psclient.float64


def test_uniform_unit_scaling_full_shape_sets_the_input_size(session, prefix):
    # limit = factor * sqrt(3 / input size): input size 3 from the variable's
    # shape [3, 4], 300 from full_shape [300, 4].
    own = psclient.get_variable(prefix + "_own", shape=[3, 4], initialize=True,
                                initializer=psclient.uniform_unit_scaling_initializer(seed=7))
    full = psclient.get_variable(
        prefix + "_full", shape=[3, 4], initialize=True,
        initializer=psclient.uniform_unit_scaling_initializer(seed=7, full_shape=[300, 4]))
    assert np.abs(own.read()).max() <= 1.0 and np.abs(own.read()).max() > 0.1
    assert np.abs(full.read()).max() <= 0.1
    np.testing.assert_allclose(full.read(), own.read() * 0.1, rtol=1e-5)

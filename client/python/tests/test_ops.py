"""Every Variable op with its TensorFlow return convention (None, or the
value after the op with read_value=True; count_up_to the old value), on
plain and partitioned variables and on the non-float dtypes (float16, bool,
string); and the error classes that need a cluster of their own:
ResourceExhaustedError past a shard's memory limit and UnavailableError
once a shard is gone."""

import numpy as np
import pytest

import psclient
from psclient import errors
from psclient.local_cluster import LocalCluster


@pytest.mark.parametrize("partitioned", [False, True], ids=["plain", "partitioned"])
def test_every_op_and_its_return_value(session, prefix, partitioned):
    kwargs = {"partitioner": psclient.fixed_size_partitioner(2)} if partitioned else {}
    v = psclient.get_variable(prefix, initializer=np.arange(8, dtype=np.float32).reshape(4, 2),
                              initialize=True, **kwargs)
    assert v.partitioned == partitioned
    want = np.arange(8, dtype=np.float32).reshape(4, 2)
    np.testing.assert_array_equal(v.read(), want)
    np.testing.assert_array_equal(v.gather([3, 0, 3]), want[[3, 0, 3]])
    np.testing.assert_array_equal(v.gather(np.array([[1], [2]], np.int32)), want[[[1], [2]]])

    assert v.assign(want + 1) is None
    want = want + 1
    np.testing.assert_array_equal(v.assign(want * 2, read_value=True), want * 2)
    want = want * 2
    assert v.assign_add(np.ones([4, 2], np.float32)) is None
    want += 1
    np.testing.assert_array_equal(v.assign_sub(np.full([4, 2], 3.0), read_value=True), want - 3)
    want -= 3

    assert v.scatter_update([2], np.array([[7, 7]], np.float32)) is None
    want[2] = 7
    got = v.scatter_add([0, 0, 3], np.ones([3, 2], np.float32), read_value=True)
    want[0] += 2
    want[3] += 1
    np.testing.assert_array_equal(got, want)
    got = v.scatter_sub(psclient.IndexedSlices(np.full([1, 2], 0.5, np.float32), [1]),
                        read_value=True)
    want[1] -= 0.5
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(v.read(), want)


@pytest.mark.parametrize("dtype", [psclient.int32, psclient.int64])
def test_count_up_to_returns_old_value(session, prefix, dtype):
    step = psclient.get_variable(prefix, shape=[], dtype=dtype,
                                 initializer=psclient.zeros_initializer(), initialize=True)
    assert [int(step.count_up_to(3)) for _ in range(3)] == [0, 1, 2]
    for _ in range(2):
        with pytest.raises(errors.OutOfRangeError, match="Reached limit of 3"):
            step.count_up_to(3)
    assert step.read() == 3 and step.read().dtype == dtype.np


def test_float16_arithmetic_and_scatter(session, prefix):
    v = psclient.get_variable(prefix, initializer=np.array([1.5, -2.0, 0.25], np.float16),
                              initialize=True)
    assert v.dtype == psclient.float16 and v.dtype == np.float16
    v.assign_add(np.array([0.5, 0.5, 0.5], np.float16))
    v.scatter_sub([2], np.array([0.125], np.float16))
    got = v.read()
    assert got.dtype == np.float16
    np.testing.assert_array_equal(got, np.array([2.0, -1.5, 0.625], np.float16))
    np.testing.assert_array_equal(v.gather([1]), np.array([-1.5], np.float16))


def test_bool_scatter_update(session, prefix):
    # variables_test.py: scatter_update on a bool variable with int32 and
    # int64 indices.
    v = psclient.Variable([True, False], name=prefix)
    v.initialize()
    assert v.dtype == psclient.bool
    v.scatter_update(np.int32(1), np.array(True))
    v.scatter_update(np.int64(0), np.array(False))
    got = v.read()
    assert got.dtype == np.bool_
    np.testing.assert_array_equal(got, [False, True])
    with pytest.raises(errors.InvalidArgumentError):
        v.assign_add([True, True])  # no arithmetic on bool, nothing changed
    np.testing.assert_array_equal(v.read(), [False, True])


def test_string_assign_gather_scatter(session, prefix):
    v = psclient.get_variable(prefix, shape=[3], dtype=psclient.string, initialize=True)
    np.testing.assert_array_equal(v.read(), np.array([b"", b"", b""], dtype=object))
    v.assign(np.array(["a", b"bc", "d\u00e9"], dtype=object))
    v.scatter_update([0, 2], np.array([b"\x00\x01", b"long" * 1000], dtype=object))
    got = v.read()
    assert got.dtype == object
    assert list(got) == [b"\x00\x01", b"bc", b"long" * 1000]
    assert list(v.gather([1, 1])) == [b"bc", b"bc"]
    with pytest.raises(errors.InvalidArgumentError):
        v.scatter_add([0], np.array([b"x"], dtype=object))


def test_resource_exhausted_then_unavailable(psd_binary, prefix):
    with LocalCluster(psd_binary, num_shards=1, shard_args=["--memory-limit", "1MiB"]) as c:
        with psclient.connect(c.address, retry_budget=0):
            small = psclient.get_variable(prefix + "_small", shape=[1024],
                                          initializer=psclient.ones_initializer(),
                                          initialize=True)
            big = psclient.get_variable(prefix + "_big", shape=[1 << 20],
                                        initializer=psclient.zeros_initializer())
            with pytest.raises(errors.ResourceExhaustedError) as e:
                big.initialize()
            assert e.value.code == errors.RESOURCE_EXHAUSTED
            assert small.read().sum() == 1024
            c.kill_shard(0)
            with pytest.raises((errors.UnavailableError, errors.DeadlineExceededError)):
                small.read()

import threading
import time

import numpy as np
import pytest

import psclient
from psclient import _psclient

DTYPE_VALUES = [
    (psclient.float32, np.array([[1.5, -2.25], [3e38, -0.0]], np.float32)),
    (psclient.float64, np.array([1e300, -1e-300, np.pi])),
    (psclient.float16, np.array([0.5, -65504, 1e-4], np.float16)),
    (psclient.int8, np.array([-128, 127, 0], np.int8)),
    (psclient.int16, np.array([-32768, 32767], np.int16)),
    (psclient.int32, np.array([[-2**31, 2**31 - 1]], np.int32)),
    (psclient.int64, np.array([-2**63, 2**63 - 1, 5], np.int64)),
    (psclient.uint8, np.array([0, 255, 7], np.uint8)),
    (psclient.bool_, np.array([True, False, True])),
    (psclient.string, np.array([b"", b"abc", b"\x00\xff", "h\u00e9".encode()], dtype=object)),
]


@pytest.mark.parametrize("dtype,value", DTYPE_VALUES, ids=[d.name for d, _ in DTYPE_VALUES])
def test_dtype_round_trip(session, prefix, dtype, value):
    v = psclient.get_variable(prefix, initializer=value, dtype=dtype, initialize=True)
    assert v.dtype == dtype and v.shape == value.shape
    got = v.read()
    assert got.dtype == dtype.np and got.shape == value.shape
    np.testing.assert_array_equal(got, value)
    v.assign(value[::-1].copy() if value.ndim == 1 else value)
    np.testing.assert_array_equal(v.read(), value[::-1] if value.ndim == 1 else value)


def test_scalar_and_python_values(session, prefix):
    v = psclient.Variable(3.5, name=prefix)  # python float -> float32
    v.initialize()
    assert v.dtype == psclient.float32 and v.shape == ()
    assert v.read() == np.float32(3.5)
    s = psclient.Variable(["a", "bc"], name=prefix + "_s", dtype=psclient.string)
    s.initialize()
    assert list(s.read()) == [b"a", b"bc"]


def test_bfloat16_as_uint16_bits(session, prefix):
    bits = psclient.float32_to_bfloat16(np.array([1.0, -2.5, 0.375], np.float32))
    v = psclient.get_variable(prefix, initializer=bits, dtype=psclient.bfloat16, initialize=True)
    got = v.read()
    assert got.dtype == np.uint16
    np.testing.assert_array_equal(psclient.bfloat16_to_float32(got), [1.0, -2.5, 0.375])
    v.assign_add(np.array([1.0, 1.0, 1.0], np.float32))  # floats are rounded to bfloat16
    np.testing.assert_array_equal(psclient.bfloat16_to_float32(v.read()), [2.0, -1.5, 1.375])


def test_results_own_their_buffer_without_copy():
    a = np.arange(1 << 20, dtype=np.float32)
    b = _psclient._round_trip(a, psclient.float32.as_datatype_enum)
    assert not np.shares_memory(a, b)
    assert not b.flags.owndata and type(b.base).__name__ == "PyCapsule"
    assert b.flags.writeable and b.flags.c_contiguous
    np.testing.assert_array_equal(a, b)


def test_a_view_of_an_argument_is_copied_when_kept():
    a = np.arange(1 << 16, dtype=np.float32)
    b = _psclient._view_round_trip(a, psclient.float32.as_datatype_enum)
    assert not np.shares_memory(a, b)
    a[0] = -1.0
    assert b[0] == 0.0


def test_ops_read_the_callers_arrays_in_place_and_never_change_them(session, prefix):
    """Data ops send numpy arguments from the arrays' own memory: the
    arrays are unchanged by the ops, and changing them after an op returns
    changes nothing on the shards."""
    rows, dim = 4096, 64
    v = psclient.get_variable(prefix, shape=[rows, dim], initializer=psclient.zeros_initializer(),
                              initialize=True)
    indices = np.arange(0, rows, 2, dtype=np.int64)
    updates = np.random.default_rng(1).random((indices.size, dim), dtype=np.float32)
    kept_indices, kept_updates = indices.copy(), updates.copy()
    v.scatter_add(indices, updates)
    v.scatter_sub(indices, updates)
    v.scatter_add(indices, updates)
    np.testing.assert_array_equal(indices, kept_indices)
    np.testing.assert_array_equal(updates, kept_updates)
    want = np.zeros((rows, dim), np.float32)
    want[indices] = updates
    updates[:] = 7.0  # after the op: not seen by the shard
    indices[:] = 1
    np.testing.assert_array_equal(v.read(), want)
    np.testing.assert_array_equal(v.gather(kept_indices), kept_updates)

    value = np.full((rows, dim), 2.0, np.float32)
    after = v.assign_add(value, read_value=True)
    assert not np.shares_memory(after, value)
    np.testing.assert_array_equal(value, np.full((rows, dim), 2.0, np.float32))
    np.testing.assert_array_equal(after, want + 2.0)
    value[:] = 0.0
    np.testing.assert_array_equal(v.read(), want + 2.0)


def test_values_convert_as_tensorflow_converts_them_or_change_nothing(session, prefix):
    """A careless value never becomes a silent NaN, truncation or wrap: None,
    strings and floats where ints are wanted are TypeErrors, Python ints out
    of an integer dtype's range ValueErrors, and the variable keeps its value.
    What numpy converts safely (Python ints and lists, other byte orders,
    read-only or strided arrays) is taken."""
    f = psclient.get_variable(prefix + "_f", initializer=np.array([1.0, 2.0], np.float32),
                              initialize=True)
    i = psclient.get_variable(prefix + "_i", initializer=np.array([1, 2], np.int8),
                              initialize=True)
    for bad in (None, [1.0, None], "3.5", ["a", "b"], b"ab", 1 + 2j):
        with pytest.raises(TypeError):
            f.assign(bad)
        with pytest.raises(TypeError):
            f.assign_add(bad)
    for bad in (2.5, [1, 2.5], None):
        with pytest.raises(TypeError):
            i.assign(bad)
    for bad in (300, [1, -129], 2**70):
        with pytest.raises((ValueError, TypeError)):
            i.assign(bad)
    np.testing.assert_array_equal(f.read(), [1.0, 2.0])
    np.testing.assert_array_equal(i.read(), [1, 2])
    f.assign([3, 4])  # Python ints into floats
    np.testing.assert_array_equal(f.read(), [3.0, 4.0])
    f.assign(np.array([5, 6], ">f8"))  # big-endian float64
    np.testing.assert_array_equal(f.read(), [5.0, 6.0])
    f.assign_add(np.arange(4, dtype=np.float32)[::2])  # strided
    np.testing.assert_array_equal(f.read(), [5.0, 8.0])
    i.assign([-128, 127])
    np.testing.assert_array_equal(i.read(), [-128, 127])
    u = psclient.get_variable(prefix + "_u", initializer=np.array([1, 2], np.uint8),
                              initialize=True)
    u.assign([255, 0])  # Python ints into an unsigned dtype, in range
    np.testing.assert_array_equal(u.read(), [255, 0])
    with pytest.raises(ValueError):
        u.assign([-1, 0])
    np.testing.assert_array_equal(u.read(), [255, 0])


def test_non_contiguous_input(session, prefix):
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    v = psclient.get_variable(prefix, initializer=base[:, ::2], initialize=True)
    np.testing.assert_array_equal(v.read(), base[:, ::2])


def test_big_round_trip_256mib(session, prefix):
    n = (256 << 20) // 4
    value = np.random.default_rng(0).random(n, dtype=np.float32)
    v = psclient.get_variable(prefix, shape=[n], initializer=psclient.zeros_initializer(),
                              initialize=True)
    t0 = time.perf_counter()
    v.assign(value)
    t1 = time.perf_counter()
    got = v.read()
    t2 = time.perf_counter()
    assert not np.shares_memory(value, got)
    assert type(got.base).__name__ == "PyCapsule"  # the fetched Tensor's bytes, not a copy
    assert np.array_equal(value, got)
    print("256 MiB assign %.2fs (%.0f MiB/s), read %.2fs (%.0f MiB/s)"
          % (t1 - t0, 256 / (t1 - t0), t2 - t1, 256 / (t2 - t1)))
    del got
    session.delete_variable(v.full_name)


def test_variable_from_a_1gib_array(session, prefix):
    """tf.Variable(np_array) of 1 GiB: the value goes from this client
    straight to the shards (streamed), never through the coordinator, so no
    gRPC message limit applies and the handle stays small."""
    n = (1 << 30) // 4
    value = np.arange(n, dtype=np.float32)
    v = psclient.Variable(value, name=prefix)
    psclient.variables_initializer([v])
    got = v.read()
    assert got.shape == (n,)
    assert np.array_equal(got, value)
    del got
    session.delete_variable(v.full_name)


def test_gil_released_during_rpc(session, prefix):
    n = (256 << 20) // 4
    v = psclient.get_variable(prefix, shape=[n], initializer=psclient.ones_initializer(),
                              initialize=True)
    ticks = [0]
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            ticks[0] += 1

    t = threading.Thread(target=spin)
    t.start()
    try:
        time.sleep(0.05)
        # The counter only advances while this thread is inside C++ if the
        # GIL is released there.
        before = ticks[0]
        t0 = time.perf_counter()
        got = v.read()
        during = ticks[0] - before
        elapsed = time.perf_counter() - t0
    finally:
        stop.set()
        t.join()
    assert got.shape == (n,) and got[0] == 1 and got[-1] == 1
    assert elapsed > 0.05, "read too fast to judge (%.3fs)" % elapsed
    assert during > 10000, "other thread made %d steps in %.2fs" % (during, elapsed)
    session.delete_variable(v.full_name)


def test_concurrent_ops_from_threads(session, prefix):
    v = psclient.get_variable(prefix, shape=[], dtype=psclient.int64,
                              initializer=psclient.zeros_initializer(), initialize=True)

    def work():
        for _ in range(50):
            v.assign_add(np.int64(1))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert v.read() == 200


def test_threads_wait_in_the_cpp_client_together_on_one_data_stream(cluster, prefix):
    """Eight Python threads' assign_adds are all waiting inside the C++
    client at once (the GIL is released while an op waits for the shard) and
    share the client's data stream; the sum is exact."""
    address = "127.0.0.1:%d" % cluster.shard_ports[0]
    shard = _psclient.ShardClient.connect(address)
    name = prefix + "/sum"
    int64 = psclient.int64.as_datatype_enum
    shard.create(name, int64, [], _psclient.init_zeros())
    one = np.array(1, np.int64)
    before = shard.data_stream_stats()
    num_threads = 8
    started, returned, errors = [], [], []
    lifted = threading.Event()

    def add():
        started.append(True)
        try:
            shard.assign_add(name, one, int64)
        except Exception as e:  # reported below, in the main thread
            errors.append(e)
        # Whether the shard's writes were released when this add returned.
        returned.append(lifted.is_set())

    fence_id = 4242
    # Writes wait in the shard until the unfence below, or until the lease
    # runs out: the thread that holds the GIL while it waits (the fault this
    # test catches) keeps this thread from lifting the fence in time.
    _psclient._fence_shard(address, fence_id, 30000)
    threads = [threading.Thread(target=add) for _ in range(num_threads)]
    try:
        for t in threads:
            t.start()
        # No add can return before the unfence: the first message is held by
        # the shard, the others wait in the client for it. Every thread's op
        # sent or waiting at once: all eight threads are inside the C++
        # client together.
        for _ in range(12000):
            stats = shard.data_stream_stats()
            inside = stats["ops_sent"] - before["ops_sent"] + stats["ops_waiting"]
            if inside == num_threads and len(started) == num_threads:
                break
            time.sleep(0.005)
        returned_while_held = len(returned)
    finally:
        lifted.set()
        _psclient._unfence_shard(address, fence_id)
        for t in threads:
            t.join(120)
    assert not errors, errors
    assert returned_while_held == 0 and inside == num_threads
    assert returned == [True] * num_threads, "an add returned while the shard held writes"
    # Every add went on the client's data stream.
    after = shard.data_stream_stats()
    assert after["ops_sent"] - before["ops_sent"] == num_threads
    assert shard.read(name) == num_threads
    shard.delete(name)


def test_a_get_variable_waiting_behind_another_does_not_stop_python(cluster, prefix):
    """Two threads declare variables in one session while the shards hold
    writes: the first waits on a shard holding the session's scope lock, the
    second waits for that lock. Both wait without the GIL, so this thread
    still runs and releases the shards."""
    s = psclient.connect(cluster.address)
    observer = psclient.connect(cluster.address)
    addresses = ["127.0.0.1:%d" % p for p in cluster.shard_ports]
    first, second = prefix + "_first", prefix + "_second"
    finished, errors, unfence_errors = [], [], []
    lifted = threading.Event()
    second_started = threading.Event()

    def declare(name, initialize):
        if name == second:
            second_started.set()
        try:
            psclient.get_variable(name, initializer=np.ones(4, np.float32), initialize=initialize,
                                  session=s)
        except Exception as e:  # reported below, in the main thread
            errors.append(e)
        finished.append((name, lifted.is_set()))

    fence_id = 4243
    for a in addresses:
        _psclient._fence_shard(a, fence_id, 30000)
    threads = [threading.Thread(target=declare, args=(first, True)),
               threading.Thread(target=declare, args=(second, False))]
    try:
        threads[0].start()
        # Declared on the coordinator: the first get_variable is past its
        # coordinator call, writing the value to a held shard, scope lock held.
        for _ in range(12000):
            try:
                observer.lookup_variable(first)
                break
            except psclient.errors.NotFoundError:
                time.sleep(0.005)
        threads[1].start()
        second_started.wait(60)
        time.sleep(0.05)  # lets it reach the scope lock (the test is certain either way)
        finished_while_held = list(finished)
    finally:
        lifted.set()
        for a in addresses:
            try:
                _psclient._unfence_shard(a, fence_id)
            except Exception as e:  # a lease that ran out: asserted below
                unfence_errors.append(e)
        for t in threads:
            t.join(120)
        observer.close()
        s.close()
    assert not errors, errors
    assert finished_while_held == []
    assert sorted(finished) == [(first, True), (second, True)], finished
    assert not unfence_errors, unfence_errors

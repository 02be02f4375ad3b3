import numpy as np
import pytest

import psclient
from psclient import errors


def test_get_variable_names_shape_dtype(session, prefix):
    with psclient.variable_scope(prefix):
        with psclient.variable_scope("foo") as scope:
            v = psclient.get_variable("v", shape=[2, 3], dtype=np.float64)
    assert scope.name == prefix + "/foo"
    assert v.name == prefix + "/foo/v:0"
    assert v.shape == (2, 3) and v.dtype == psclient.float64 and v.dtype == np.float64
    assert v.trainable and not v.partitioned


def test_reuse_errors_are_value_errors(session, prefix):
    with psclient.variable_scope(prefix):
        psclient.get_variable("v", shape=[2])
        with pytest.raises(ValueError, match="already exists") as e:
            psclient.get_variable("v", shape=[2])
        assert isinstance(e.value, errors.AlreadyExistsError)
    with psclient.variable_scope(prefix, reuse=True):
        with pytest.raises(ValueError) as e:
            psclient.get_variable("missing", shape=[2])
        assert isinstance(e.value, errors.NotFoundError)
        with pytest.raises(ValueError) as e:
            psclient.get_variable("v", shape=[3])
        assert isinstance(e.value, errors.InvalidArgumentError)
        assert psclient.get_variable("v", shape=[2]) == psclient.get_variable("v")


def test_invalid_scope_name_is_value_error(session):
    with pytest.raises(ValueError):
        with psclient.variable_scope("bad name!"):
            pass
    # The failed entry left the stack alone.
    assert psclient.get_variable_scope().name == ""


def test_auto_reuse_and_reuse_variables(session, prefix):
    with psclient.variable_scope(prefix, reuse=psclient.AUTO_REUSE) as scope:
        a = psclient.get_variable("a", shape=[1])
        assert psclient.get_variable("a", shape=[1]) == a
        assert scope.reuse is psclient.AUTO_REUSE
    with psclient.variable_scope(prefix + "_2") as scope:
        b = psclient.get_variable("b", shape=[1])
        scope.reuse_variables()
        assert scope.reuse is True
        assert psclient.get_variable("b") == b


def test_scopes_exit_on_exceptions(session, prefix):
    with pytest.raises(RuntimeError):
        with psclient.variable_scope(prefix):
            raise RuntimeError("boom")
    assert psclient.get_variable_scope().name == ""
    with psclient.variable_scope(prefix, reuse=psclient.AUTO_REUSE):
        assert psclient.get_variable_scope().name == prefix


def test_default_names_per_session(cluster, prefix):
    names = []
    for _ in range(2):
        with psclient.connect(cluster.address):
            with psclient.variable_scope(prefix):
                for _ in range(2):
                    with psclient.variable_scope(None, default_name="layer") as s:
                        names.append(s.name)
                v = psclient.Variable(np.zeros(2, np.float32))
                w = psclient.Variable(np.zeros(2, np.float32))
                names += [v.name, w.name]
    p = prefix + "/"
    assert names[:4] == [p + "layer", p + "layer_1", p + "Variable:0", p + "Variable_1:0"]


def test_captured_scope_reentered_elsewhere(session, prefix):
    with psclient.variable_scope(prefix + "_a") as captured:
        pass
    with psclient.variable_scope(prefix + "_b"):
        with psclient.variable_scope(captured):
            v = psclient.get_variable("v", shape=[1])
    assert v.name == prefix + "_a/v:0"


def test_scope_initializer_partitioner_dtype_defaults(session, prefix):
    with psclient.variable_scope(prefix, initializer=psclient.constant_initializer(7),
                                 dtype=psclient.int32,
                                 partitioner=psclient.fixed_size_partitioner(2)):
        v = psclient.get_variable("v", shape=[4, 2])
        with psclient.variable_scope("inner"):
            w = psclient.get_variable("w", shape=[2])
    psclient.variables_initializer([v, w])
    assert v.dtype == psclient.int32 and v.partitioned and v.partitions == [2, 1]
    np.testing.assert_array_equal(v.read(), np.full([4, 2], 7, np.int32))
    np.testing.assert_array_equal(w.read(), [7, 7])


def test_make_template_shares_variables(session, prefix):
    def dense(x):
        w = psclient.get_variable("w", shape=[3, 2], initializer=psclient.ones_initializer())
        w.initialize()
        return x @ w.read()

    with psclient.variable_scope(prefix):
        t = psclient.make_template("dense", dense)
        y1 = t(np.ones([1, 3], np.float32))
        y2 = t(np.ones([1, 3], np.float32))
        t2 = psclient.make_template("dense", dense)
        t2(np.ones([1, 3], np.float32))
    np.testing.assert_array_equal(y1, y2)
    assert t.variable_scope_name == prefix + "/dense"
    assert t2.variable_scope_name == prefix + "/dense_1"


def test_attach_across_sessions_shares_values(cluster, prefix):
    s1 = psclient.Session(cluster.address)
    s2 = psclient.Session(cluster.address)
    try:
        a = psclient.get_variable(prefix, shape=[3], initializer=psclient.zeros_initializer(),
                                  initialize=True, session=s1)
        b = psclient.get_variable(prefix, shape=[3], session=s2)  # attaches
        b.assign_add(np.ones(3, np.float32))
        np.testing.assert_array_equal(a.read(), [1, 1, 1])
        with pytest.raises(errors.InvalidArgumentError):
            psclient.get_variable(prefix, shape=[4], session=psclient.Session(cluster.address))
    finally:
        s1.close()
        s2.close()


def test_collections_and_initialization(session, prefix):
    with psclient.variable_scope(prefix):
        t = psclient.get_variable("t", shape=[2])
        n = psclient.get_variable("n", shape=[2], trainable=False)
        loc = psclient.get_variable("loc", shape=[2], trainable=False,
                                    collections=[psclient.GraphKeys.LOCAL_VARIABLES])
    mine = lambda vs: [v.name for v in vs if v.name.startswith(prefix + "/")]
    assert mine(psclient.global_variables()) == [t.name, n.name]
    assert mine(psclient.all_variables()) == [t.name, n.name]
    assert mine(psclient.trainable_variables()) == [t.name]
    assert mine(psclient.local_variables()) == [loc.name]
    assert psclient.report_uninitialized_variables([t, n, loc]) == [
        prefix + "/t", prefix + "/n", prefix + "/loc"]
    psclient.initialize_variables([t])
    assert psclient.report_uninitialized_variables([t, n]) == [prefix + "/n"]
    assert t.is_initialized() and not psclient.is_variable_initialized(n)
    with pytest.raises(errors.DeadlineExceededError):
        psclient.wait_for_initialized([n], timeout=0.3)
    psclient.initialize_all_variables()
    psclient.wait_for_initialized([t, n, loc], timeout=5)
    assert psclient.report_uninitialized_variables([t, n, loc]) == []


def test_variable_ops(session, prefix):
    v = psclient.Variable(np.arange(6, dtype=np.float32).reshape(3, 2), name=prefix)
    v.initialize()
    assert v.assign(np.ones([3, 2])) is None
    after = v.assign_add(np.ones([3, 2], np.float32), read_value=True)
    np.testing.assert_array_equal(after, np.full([3, 2], 2))
    v.assign_sub(np.full([3, 2], 0.5))  # float64 -> float32 (same_kind)
    np.testing.assert_array_equal(np.asarray(v), np.full([3, 2], 1.5))


def test_partitioned_gather_scatter(session, prefix):
    v = psclient.get_variable(prefix, shape=[10, 3], dtype=psclient.float32,
                              initializer=psclient.zeros_initializer(),
                              partitioner=psclient.fixed_size_partitioner(3), initialize=True)
    assert v.partitioned and len(v.parts) == 3
    assert {p["shard_id"] for p in v.parts} <= {0, 1}
    idx = np.array([9, 0, 4, 4], np.int64)
    v.scatter_add(idx, np.ones([4, 3], np.float32))
    v.scatter_update(np.array([1], np.int32), np.full([1, 3], 5, np.float32))
    v.scatter_sub(psclient.IndexedSlices(np.ones([1, 3], np.float32), np.array([9])))
    got = v.gather(np.array([[4, 9], [1, 0]]))
    assert got.shape == (2, 2, 3)
    np.testing.assert_array_equal(got[0, 0], [2, 2, 2])
    np.testing.assert_array_equal(got[0, 1], [0, 0, 0])
    np.testing.assert_array_equal(got[1, 0], [5, 5, 5])
    np.testing.assert_array_equal(got[1, 1], [1, 1, 1])
    full = v.read()
    assert full.shape == (10, 3)
    expected = np.zeros([10, 3], np.float32)
    expected[[0]] = 1
    expected[4] = 2
    expected[1] = 5
    np.testing.assert_array_equal(full, expected)
    # Partitioned values are the unpartitioned ones (initializers by element index).
    init = psclient.random_uniform_initializer(-1, 1, seed=3)
    a = psclient.get_variable(prefix + "_a", shape=[8, 2], initializer=init, initialize=True)
    b = psclient.get_variable(prefix + "_b", shape=[8, 2], initializer=init, initialize=True,
                              partitioner=psclient.fixed_size_partitioner(2))
    np.testing.assert_array_equal(a.read(), b.read())


def test_sparse_mask():
    s = psclient.IndexedSlices(np.arange(6).reshape(3, 2), np.array([4, 7, 9]), [10, 2])
    m = psclient.sparse_mask(s, [7])
    np.testing.assert_array_equal(m.indices, [4, 9])
    np.testing.assert_array_equal(m.values, [[0, 1], [4, 5]])


def test_variable_op_scope_names(session, prefix):
    with psclient.variable_scope(prefix):
        with psclient.variable_op_scope([1, 2], None, default_name="MyOp") as op:
            c = psclient.get_variable("c", shape=[1])
        with psclient.variable_op_scope([], None, default_name="MyOp") as op2:
            pass
        with psclient.variable_op_scope([], "given", default_name="MyOp") as op3:
            pass
    assert op.name == prefix + "/MyOp"
    assert c.name == prefix + "/MyOp/c:0"
    assert op2.name == prefix + "/MyOp_1"
    assert op3.name == prefix + "/given"


def test_caching_device_reads_a_copy_until_refreshed(cluster, prefix):
    mine = psclient.connect(cluster.address)
    theirs = psclient.connect(cluster.address)
    with psclient.variable_scope(prefix, caching_device="/job:worker/cpu:0", session=mine):
        v = psclient.get_variable("v", shape=[3, 2], initializer=psclient.ones_initializer(),
                                  initialize=True, session=mine)
    assert v.cached
    np.testing.assert_array_equal(v.read(), np.ones((3, 2), np.float32))
    w = psclient.get_variable(prefix + "/v", shape=[3, 2], session=theirs)
    assert not w.cached
    new = np.arange(6, dtype=np.float32).reshape(3, 2)
    w.assign(new)
    np.testing.assert_array_equal(v.read(), np.ones((3, 2), np.float32))  # the cached copy
    np.testing.assert_array_equal(v.gather([2]), np.ones((1, 2), np.float32))
    v.refresh_cache()
    np.testing.assert_array_equal(v.read(), new)
    np.testing.assert_array_equal(v.gather([2, 0]), new[[2, 0]])
    with pytest.raises(errors.InvalidArgumentError):
        v.gather([3])
    mine.close()
    theirs.close()


def test_assign_without_shape_validation_replaces_the_shape(session, prefix):
    v = psclient.get_variable(prefix + "/reshaped", shape=[2], initializer=psclient.zeros_initializer(),
                              initialize=True)
    with pytest.raises(errors.InvalidArgumentError):
        v.assign(np.ones((3, 2), np.float32))
    after = v.assign(np.ones((3, 2), np.float32), validate_shape=False, read_value=True)
    assert after.shape == (3, 2)
    np.testing.assert_array_equal(v.read(), np.ones((3, 2), np.float32))
    p = psclient.get_variable(prefix + "/parted", shape=[4, 2], partitioner=psclient.fixed_size_partitioner(2),
                              initializer=psclient.zeros_initializer(), initialize=True)
    with pytest.raises(errors.InvalidArgumentError, match="partitioned"):
        p.assign(np.ones((2, 2), np.float32), validate_shape=False)

"""Random seeds as tf.set_random_seed documents them: a graph-level seed and
an op-level seed combine deterministically; with neither, every variable
draws fresh values."""

import numpy as np

import psclient
from psclient.local_cluster import LocalCluster


def _model(session, prefix):
    """Two default-initialized variables, one seeded op, in a fixed order."""
    with psclient.variable_scope(prefix, session=session):
        a = psclient.get_variable("a", shape=[16, 16], initialize=True, session=session)
        b = psclient.get_variable("b", shape=[16, 16], initialize=True, session=session)
        c = psclient.get_variable("c", shape=[16], initialize=True, session=session,
                                  initializer=psclient.random_normal_initializer(seed=3))
    return a.read(), b.read(), c.read()


def test_unseeded_variables_of_one_shape_differ(session, prefix):
    a, b, _ = _model(session, prefix)
    assert not np.array_equal(a, b)


def test_graph_seed_reproduces_values_on_another_cluster(psd_binary, cluster, prefix):
    first = psclient.Session(cluster.address)
    try:
        psclient.set_random_seed(1234, session=first)
        assert first._s.random_seed == 1234
        a1, b1, c1 = _model(first, prefix)
    finally:
        first.close()
    with LocalCluster(psd_binary, num_shards=1) as other:
        second = psclient.Session(other.address)
        try:
            psclient.set_random_seed(1234, session=second)
            a2, b2, c2 = _model(second, prefix)
            # Another graph seed gives other values.
            psclient.set_random_seed(99, session=second)
            a3, _, c3 = _model(second, prefix + "_other")
        finally:
            second.close()
    np.testing.assert_array_equal(a1, a2)
    np.testing.assert_array_equal(b1, b2)
    np.testing.assert_array_equal(c1, c2)
    assert not np.array_equal(a1, b1)  # the declaration order makes op seeds differ
    assert not np.array_equal(a1, a3) and not np.array_equal(c1, c3)


def test_op_seed_alone_is_used_as_given(session, prefix):
    init = psclient.random_uniform_initializer(-1.0, 1.0, seed=7)
    with psclient.variable_scope(prefix):
        x = psclient.get_variable("x", shape=[8], initializer=init, initialize=True)
        y = psclient.get_variable("y", shape=[8], initializer=init, initialize=True)
    np.testing.assert_array_equal(x.read(), y.read())

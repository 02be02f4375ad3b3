"""Embedding tables through psclient (DeepRec's get_embedding_variable):
rows made per key, ops by key, admission, optimizers with slot tables,
eviction, export/import and checkpoints, against a real cluster."""

import numpy as np
import pytest

import psclient


def test_rows_are_made_per_key_and_scatters_apply_by_key(session, prefix):
    with psclient.variable_scope(prefix):
        t = psclient.get_embedding_variable(
            "emb", embedding_dim=4, initializer=psclient.random_normal_initializer(seed=3),
            partitioner=psclient.fixed_size_partitioner(2))
    assert t.full_name == prefix + "/emb"
    assert t.shape == (None, 4)
    assert t.num_parts == 2
    ids = np.array([10, -7, 10, 2 ** 40], np.int64)
    rows = t.gather(ids)
    assert rows.shape == (4, 4) and rows.dtype == np.float32
    np.testing.assert_array_equal(rows[0], rows[2])
    assert t.size() == 3
    np.testing.assert_array_equal(psclient.embedding_lookup(t, ids), rows)
    t.scatter_add([10, 10], np.ones([2, 4], np.float32))
    np.testing.assert_allclose(t.gather([10])[0], rows[0] + 2, rtol=1e-6)
    t.scatter_update([-7], np.zeros([1, 4], np.float32))
    np.testing.assert_array_equal(t.gather([-7])[0], np.zeros(4, np.float32))
    # python ints of another width are converted to the key dtype
    assert t.gather(np.array([10], np.int32)).shape == (1, 4)


def test_a_counter_filter_admits_keys_at_their_nth_use(session, prefix):
    with psclient.variable_scope(prefix):
        t = psclient.get_embedding_variable(
            "emb", embedding_dim=2, initializer=psclient.ones_initializer(),
            ev_option=psclient.EmbeddingVariableOption(
                filter_option=psclient.CounterFilter(filter_freq=2),
                init_option=psclient.InitializerOption(default_value_no_permission=-1.0)))
    np.testing.assert_array_equal(t.gather([5])[0], [-1, -1])
    assert t.size() == 0
    np.testing.assert_array_equal(t.gather([5])[0], [1, 1])
    assert t.size() == 1
    assert t.ev_option["counter_filter_freq"] == 2


def test_adagrad_trains_a_table_with_slot_tables(session, prefix):
    with psclient.variable_scope(prefix):
        t = psclient.get_embedding_variable(
            "emb", embedding_dim=2, initializer=psclient.constant_initializer(1.0),
            partitioner=psclient.fixed_size_partitioner(2))
        step = psclient.get_variable("step", shape=[], dtype=psclient.int64,
                                     initializer=psclient.zeros_initializer(), initialize=True)
    opt = psclient.train.AdagradOptimizer(0.5, initial_accumulator_value=0.1)
    keys = np.array([3, 4, 3], np.int64)
    grads = np.array([[1, 1], [1, 2], [1, 1]], np.float32)
    opt.apply_gradients([(psclient.IndexedSlices(grads, keys), t)], global_step=step)
    acc = np.float32(0.1) + np.float32([[4, 4], [1, 4]])
    g = np.float32([[2, 2], [1, 2]])
    expect = np.float32(1) - np.float32(0.5) * g / np.sqrt(acc)
    np.testing.assert_allclose(t.gather([3, 4]), expect, rtol=1e-6)
    slot = opt.get_slot(t, "accumulator")
    assert isinstance(slot, psclient.EmbeddingVariable)
    assert slot.full_name == prefix + "/emb/Adagrad"
    np.testing.assert_allclose(slot.gather([3, 4, 9]),
                               np.concatenate([acc, [[0.1, 0.1]]]).astype(np.float32), rtol=1e-6)
    keys_out, values, freqs, versions = t.export()
    assert sorted(keys_out.tolist()) == [3, 4]
    assert set(versions.tolist()) == {0}  # the step before it advanced
    assert int(step.read()) == 1


def test_eviction_delete_and_export_import(session, prefix):
    with psclient.variable_scope(prefix):
        t = psclient.get_embedding_variable(
            "emb", embedding_dim=3, initializer=psclient.zeros_initializer(),
            ev_option=psclient.EmbeddingVariableOption(
                evict_option=psclient.GlobalStepEvict(steps_to_live=5)))
        u = psclient.get_embedding_variable("copy", embedding_dim=3,
                                            partitioner=psclient.fixed_size_partitioner(3))
    t.scatter_add([1, 2], np.ones([2, 3], np.float32), global_step=1)
    t.scatter_add([3], np.ones([1, 3], np.float32), global_step=9)
    assert t.evict(global_step=10) == 2
    assert t.size() == 1
    t.scatter_add([4, 5], np.full([2, 3], 2, np.float32), global_step=9)
    assert t.delete_keys([5, 77]) == 1
    keys, values, freqs, versions = t.export()
    order = np.argsort(keys)
    assert keys[order].tolist() == [3, 4]
    u.import_(keys, values, freqs, versions)
    np.testing.assert_array_equal(u.gather([3, 4]), t.gather([3, 4]))


def test_bad_input_is_refused_by_name(session, prefix):
    with psclient.variable_scope(prefix):
        t = psclient.get_embedding_variable("emb", embedding_dim=2)
        with pytest.raises(psclient.errors.InvalidArgumentError, match="emb"):
            t.scatter_add([1, 2], np.ones([3, 2], np.float32))
        with pytest.raises(psclient.errors.InvalidArgumentError, match="emb"):
            psclient.get_embedding_variable("emb", embedding_dim=3, reuse=True)
        with pytest.raises(ValueError, match="embedding_dim"):
            psclient.get_embedding_variable("bad", embedding_dim=0)
        with pytest.raises(TypeError, match="key_dtype"):
            psclient.get_embedding_variable("bad", embedding_dim=2, key_dtype=psclient.float32)
    assert t.size() == 0


def test_a_saver_saves_and_restores_a_table(session, prefix, tmp_path):
    with psclient.variable_scope(prefix):
        t = psclient.get_embedding_variable(
            "emb", embedding_dim=2, initializer=psclient.zeros_initializer(),
            partitioner=psclient.fixed_size_partitioner(2))
    t.scatter_add([1, 2, 3], np.ones([3, 2], np.float32))
    saver = psclient.train.Saver(var_list=[t])
    path = saver.save(None, str(tmp_path / "model"))
    t.scatter_add([1], np.ones([1, 2], np.float32))
    t.gather([99])
    assert t.size() == 4
    saver.restore(None, path)
    assert t.size() == 3
    np.testing.assert_array_equal(t.gather([1, 2, 3]), np.ones([3, 2], np.float32))


def test_collections_list_tables_as_embedding_variables(session, prefix):
    with psclient.variable_scope(prefix):
        t = psclient.get_embedding_variable("emb", embedding_dim=2)
        w = psclient.get_variable("w", shape=[2])
    mine = [v for v in psclient.global_variables() if v.full_name.startswith(prefix + "/")]
    assert {type(v).__name__ for v in mine} == {"EmbeddingVariable", "Variable"}
    tables = psclient.get_collection(psclient.GraphKeys.EMBEDDING_VARIABLES)
    assert [v.full_name for v in tables if v.full_name.startswith(prefix + "/")] == [t.full_name]
    assert t.full_name in [v.full_name for v in psclient.trainable_variables()]
    assert w.full_name in [v.full_name for v in psclient.trainable_variables()]


def test_a_meta_graph_carries_tables_and_their_slots(session, prefix, tmp_path, cluster):
    with psclient.variable_scope(prefix):
        t = psclient.get_embedding_variable(
            "emb", embedding_dim=2, initializer=psclient.ones_initializer(),
            partitioner=psclient.fixed_size_partitioner(2),
            ev_option=psclient.EmbeddingVariableOption(
                filter_option=psclient.CounterFilter(filter_freq=4)))
    opt = psclient.train.AdagradOptimizer(0.1)
    opt.apply_gradients([(psclient.IndexedSlices(np.ones([1, 2], np.float32), [1]), t)])
    path = str(tmp_path / "model.meta")
    psclient.train.export_meta_graph(path, export_scope=prefix)
    with psclient.connect(cluster.address) as other:
        psclient.train.import_meta_graph(path, import_scope=prefix + "_copy", session=other)
        tables = [v for v in psclient.global_variables(session=other)
                  if v.full_name.startswith(prefix + "_copy/")]
        assert [(v.full_name, type(v).__name__) for v in tables] == [
            (prefix + "_copy/emb", "EmbeddingVariable"),
            (prefix + "_copy/emb/Adagrad", "EmbeddingVariable")]
        assert tables[1].ev_option["slot_of"] == prefix + "_copy/emb"
        copy = tables[0]
        assert copy.num_parts == 2 and copy.embedding_dim == 2
        assert copy.ev_option["counter_filter_freq"] == 4


def test_ctr_example_learns_the_generating_model(cluster):
    """The click-through example: ids Zipf-distributed over a space of 10^9,
    labels from a known logistic model; the table-trained model's held-out
    log-loss comes within 5% of the generating model's."""
    import os
    import subprocess
    import sys
    examples = os.environ.get("PSCLIENT_EXAMPLES") or os.path.join(
        os.path.dirname(__file__), "..", "examples")
    out = subprocess.run([sys.executable, os.path.join(examples, "train_ctr.py"),
                          "--coordinator", cluster.address],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    line = [l for l in out.stdout.splitlines() if "held-out log-loss" in l][0]
    words = line.replace(",", "").split()
    model, truth = float(words[3]), float(words[6])
    assert model <= 1.05 * truth, out.stdout

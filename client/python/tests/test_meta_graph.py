"""tf.train.export_meta_graph / import_meta_graph, as the documentation's
example uses them: a meta graph exported in one process is imported in a
fresh one, and its Saver restores the values."""

import base64
import json
import os

import numpy as np
import pytest

import psclient
from psclient import _psclient, errors
from psclient.local_cluster import LocalCluster


def test_exported_in_one_cluster_imported_and_restored_in_a_fresh_one(
        psd_binary, session, prefix, tmp_path):
    with psclient.variable_scope(prefix):
        w = psclient.get_variable("w", shape=[6, 2], initialize=True,
                                  partitioner=psclient.fixed_size_partitioner(2))
        b = psclient.get_variable("b", shape=[2], initializer=psclient.zeros_initializer(),
                                  initialize=True)
        psclient.get_local_variable("steps", shape=[], dtype=psclient.int64,
                                    initializer=psclient.zeros_initializer())
    w.assign(np.arange(12, dtype=np.float32).reshape(6, 2))
    b.assign(np.array([1.5, -2.0], np.float32))
    saver = psclient.train.Saver({"weights": w, "bias": b}, max_to_keep=3)
    path = saver.save(str(tmp_path / "model.ckpt"), global_step=100)
    meta_path = path + ".meta"  # save(write_meta_graph=True), TensorFlow's default
    assert os.path.isfile(meta_path)
    exported = json.load(open(meta_path))
    names = [v["name"] for v in exported["variables"]]
    assert {prefix + "/w", prefix + "/b", prefix + "/steps"} <= set(names)

    # A fresh cluster (a new process would do the same): nothing declared.
    roots = str(tmp_path)
    with LocalCluster(psd_binary, num_shards=1,
                      coordinator_args=["--checkpoint-roots", roots]) as fresh:
        s = psclient.Session(fresh.address)
        try:
            with s.as_default():
                restorer = psclient.train.import_meta_graph(meta_path)
                assert restorer.max_to_keep == 3
                restorer.restore(path)
                w2 = s.lookup_variable(prefix + "/w")
                b2 = s.lookup_variable(prefix + "/b")
                steps2 = s.lookup_variable(prefix + "/steps")
                assert w2.partitions == [2, 1] and w2.trainable
                assert not steps2.trainable
                assert steps2.collections == [psclient.GraphKeys.LOCAL_VARIABLES]
                np.testing.assert_array_equal(w2.read(), np.arange(12).reshape(6, 2))
                np.testing.assert_array_equal(b2.read(), [1.5, -2.0])
        finally:
            s.close()


def test_retention_deletes_the_meta_graphs_of_deleted_checkpoints(session, prefix, tmp_path):
    v = psclient.get_variable(prefix, shape=[1], initialize=True,
                              initializer=psclient.zeros_initializer())
    saver = psclient.train.Saver([v], max_to_keep=1)
    first = saver.save(str(tmp_path / "m"), global_step=1)
    second = saver.save(str(tmp_path / "m"), global_step=2)
    assert not os.path.exists(first + ".meta")
    assert os.path.isfile(second + ".meta")
    third = saver.save(str(tmp_path / "m"), global_step=3, write_meta_graph=False)
    assert not os.path.exists(third + ".meta")


def test_meta_graph_errors(session, prefix, tmp_path):
    bad = tmp_path / "bad.meta"
    bad.write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match="not a psd meta graph"):
        psclient.train.import_meta_graph(str(bad))
    with pytest.raises(IOError):
        psclient.train.import_meta_graph(str(tmp_path / "missing.meta"))
    with pytest.raises(errors.UnimplementedError, match="graph_def"):
        psclient.train.export_meta_graph(graph_def=object())
    # A malformed entry names itself and declares nothing, not even the
    # well-formed entry before it.
    good = {"name": prefix + "_good", "dtype": "float32", "shape": [1], "trainable": True,
            "collections": ["variables"], "partitions": None, "partition_axis": None,
            "initializer": base64.b64encode(_psclient.init_zeros().serialize()).decode()}
    for bad_entry in ({"name": prefix + "_bad"}, {**good, "name": prefix + "_b", "shape": "x"},
                      {**good, "name": prefix + "_c", "initializer": "not base64!"}, 7):
        meta = {"format": "psd.MetaGraph", "version": 1, "variables": [good, bad_entry]}
        with pytest.raises(ValueError, match="entry 1"):
            psclient.train.import_meta_graph(meta)
    with pytest.raises(errors.NotFoundError):
        session.lookup_variable(prefix + "_good")
    with psclient.variable_scope(prefix):
        with pytest.raises(ValueError, match="outside any variable_scope"):
            psclient.train.import_meta_graph({"format": "psd.MetaGraph", "version": 1})


# Files written by each client, read by the other (psd/meta_graph.h is the
# C++ side): python_v1.meta is what psclient writes for the declarations
# below (checked here), cpp_v1.meta what the C++ client writes for the same
# declarations (checked by psd_saver_options_test, which also imports
# python_v1.meta). PSD_REGENERATE_FIXTURES=1 rewrites python_v1.meta.
FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "tests",
                        "data", "meta_graph")


def _declare_fixture_model():
    """model/w (partitioned, seeded normal), model/b, model/steps (local,
    int64) and a Saver of w and b under checkpoint names, max_to_keep 3."""
    with psclient.variable_scope("model"):
        w = psclient.get_variable("w", shape=[6, 2],
                                  initializer=psclient.random_normal_initializer(seed=7),
                                  partitioner=psclient.fixed_size_partitioner(2))
        b = psclient.get_variable("b", shape=[2], initializer=psclient.zeros_initializer())
        psclient.get_local_variable("steps", shape=[], dtype=psclient.int64,
                                    initializer=psclient.zeros_initializer())
    return psclient.train.Saver({"weights": w, "bias": b}, max_to_keep=3)


def test_python_meta_graph_fixture_is_what_psclient_writes(psd_binary, tmp_path):
    with LocalCluster(psd_binary, num_shards=2) as fresh:
        s = psclient.Session(fresh.address)
        try:
            with s.as_default():
                saver = _declare_fixture_model()
                written = tmp_path / "python_v1.meta"
                saver.export_meta_graph(str(written))
        finally:
            s.close()
    fixture = os.path.join(FIXTURES, "python_v1.meta")
    if os.environ.get("PSD_REGENERATE_FIXTURES"):
        with open(fixture, "w") as f:
            f.write(written.read_text())
    assert json.loads(written.read_text()) == json.load(open(fixture))


def test_a_meta_graph_the_cpp_client_wrote_imports_and_restores(psd_binary, tmp_path):
    cpp = os.path.join(FIXTURES, "cpp_v1.meta")
    with LocalCluster(psd_binary, num_shards=2,
                      coordinator_args=["--checkpoint-roots", str(tmp_path)]) as fresh:
        s = psclient.Session(fresh.address)
        try:
            with s.as_default():
                saver = psclient.train.import_meta_graph(cpp)
                assert saver.max_to_keep == 3
                assert saver.as_saver_def().name_map == {"weights": "model/w", "bias": "model/b"}
                w = s.lookup_variable("model/w")
                steps = s.lookup_variable("model/steps")
                assert w.shape == (6, 2) and w.partitions == [2, 1] and w.trainable
                assert s.lookup_variable("model/b").dtype == psclient.float32
                assert steps.dtype == psclient.int64 and not steps.trainable
                assert steps.collections == [psclient.GraphKeys.LOCAL_VARIABLES]
                # The seeded initializer came through: the values are those
                # of random_normal(seed=7) declared here.
                psclient.initialize_all_variables()
                with psclient.variable_scope("again"):
                    same = psclient.get_variable(
                        "w", shape=[6, 2], initializer=psclient.random_normal_initializer(seed=7),
                        partitioner=psclient.fixed_size_partitioner(2), initialize=True)
                np.testing.assert_array_equal(w.read(), same.read())
                # And the Saver it describes saves and restores under the
                # checkpoint names.
                w.assign(np.arange(12, dtype=np.float32).reshape(6, 2))
                path = saver.save(str(tmp_path / "m"), global_step=1, write_meta_graph=False)
                w.assign(np.zeros([6, 2], np.float32))
                saver.restore(path)
                np.testing.assert_array_equal(w.read(), np.arange(12).reshape(6, 2))
        finally:
            s.close()
    # The same declarations made with psclient give the same file.
    assert json.load(open(cpp)) == json.load(open(os.path.join(FIXTURES, "python_v1.meta")))

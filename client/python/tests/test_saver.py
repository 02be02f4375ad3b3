"""psclient.train.Saver, latest_checkpoint and get_checkpoint_state against a
real cluster (paths are the coordinator's: here the same machine), and
IndexedSlices / sparse_mask."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

import psclient
from psclient.local_cluster import LocalCluster


@pytest.fixture(scope="module")
def ckpt_cluster(psd_binary, tmp_path_factory):
    """A cluster of its own: a save writes every variable of the cluster and
    fails on uninitialized ones, which other modules leave on purpose. The
    tests save under their tmp_path: pytest's base temp directory is a
    checkpoint root."""
    roots = str(tmp_path_factory.getbasetemp())
    with LocalCluster(psd_binary, num_shards=2,
                      coordinator_args=["--checkpoint-roots", roots]) as c:
        yield c


@pytest.fixture
def session(ckpt_cluster):
    s = psclient.connect(ckpt_cluster.address)
    try:
        yield s
    finally:
        s.close()


def test_save_fails_on_uninitialized_variable(session, prefix, tmp_path):
    v = psclient.get_variable(prefix, shape=[2], initializer=psclient.zeros_initializer())
    with pytest.raises(psclient.errors.FailedPreconditionError, match="uninitialized"):
        psclient.train.Saver().save(str(tmp_path / "m"))
    psclient.variables_initializer([v])  # leave the cluster saveable for the next tests


def _vars(prefix):
    with psclient.variable_scope(prefix):
        w = psclient.get_variable("w", shape=[6, 3], initializer=psclient.ones_initializer(),
                                  partitioner=psclient.fixed_size_partitioner(2), initialize=True)
        b = psclient.get_variable("b", shape=[3], initializer=psclient.zeros_initializer(),
                                  initialize=True)
    return w, b


def test_save_with_global_step_returns_prefix_and_is_latest(session, prefix, tmp_path):
    w, b = _vars(prefix)
    step = psclient.Variable(np.int64(7), name=prefix + "_step", trainable=False)
    psclient.variables_initializer([step])
    saver = psclient.train.Saver([w, b])
    path = saver.save(str(tmp_path / "model.ckpt"), global_step=step)
    assert path == str(tmp_path / "model.ckpt-7")
    assert os.path.exists(path + ".index")
    assert psclient.train.latest_checkpoint(str(tmp_path)) == path
    # TensorFlow's save(sess, save_path, global_step) spelling works too.
    assert saver.save(None, str(tmp_path / "model.ckpt"), global_step=9) == \
        str(tmp_path / "model.ckpt-9")
    state = psclient.train.get_checkpoint_state(str(tmp_path))
    assert state.model_checkpoint_path == str(tmp_path / "model.ckpt-9")
    assert state.all_model_checkpoint_paths == [path, str(tmp_path / "model.ckpt-9")]
    assert saver.last_checkpoints == [path, str(tmp_path / "model.ckpt-9")]
    assert psclient.train.checkpoint_exists(path)


def test_no_checkpoint_is_none(session, tmp_path):
    assert psclient.train.latest_checkpoint(str(tmp_path)) is None
    assert psclient.train.get_checkpoint_state(str(tmp_path)) is None


def test_restore_brings_values_back(session, prefix, tmp_path):
    w, b = _vars(prefix)
    saver = psclient.train.Saver([w, b])
    w.assign(np.arange(18, dtype=np.float32).reshape(6, 3))
    b.assign([1.0, 2.0, 3.0])
    path = saver.save(str(tmp_path / "m"))
    assert path == str(tmp_path / "m")
    w.assign(np.zeros([6, 3], np.float32))
    b.assign_add([10.0, 10.0, 10.0])
    saver.restore(path)
    np.testing.assert_array_equal(w.read(), np.arange(18, dtype=np.float32).reshape(6, 3))
    np.testing.assert_array_equal(b.read(), [1.0, 2.0, 3.0])


def test_restore_var_list_only_and_dict_form(session, prefix, tmp_path):
    w, b = _vars(prefix)
    b.assign([5.0, 5.0, 5.0])
    path = psclient.train.Saver([w, b]).save(str(tmp_path / "m"), global_step=1)
    w.assign(np.full([6, 3], 2.0, np.float32))
    b.assign([0.0, 0.0, 0.0])
    psclient.train.Saver([b]).restore(path)  # w is left alone
    np.testing.assert_array_equal(w.read(), np.full([6, 3], 2.0))
    np.testing.assert_array_equal(b.read(), [5.0, 5.0, 5.0])
    # Dict form: checkpoint name -> variable; b's saved value into c.
    c = psclient.get_variable(prefix + "/c", shape=[3], initializer=psclient.zeros_initializer(),
                              initialize=True)
    psclient.train.Saver({b.op_name: c}).restore(path)
    np.testing.assert_array_equal(c.read(), [5.0, 5.0, 5.0])


def test_restore_missing_checkpoint_key_is_not_found(session, prefix, tmp_path):
    w, b = _vars(prefix)
    path = psclient.train.Saver([w, b]).save(str(tmp_path / "m"))
    late = psclient.get_variable(prefix + "/late", shape=[2], initialize=True,
                                 initializer=psclient.zeros_initializer())
    with pytest.raises(psclient.errors.NotFoundError, match="not found in checkpoint"):
        psclient.train.Saver([late]).restore(path)


def test_corrupt_checkpoint_is_data_loss_and_restores_nothing(session, prefix, tmp_path):
    w, b = _vars(prefix)
    w.assign(np.full([6, 3], 3.0, np.float32))
    b.assign([1.0, 2.0, 3.0])
    path = psclient.train.Saver([w, b]).save(str(tmp_path / "m"))
    data = [f for f in os.listdir(tmp_path) if f.startswith("m.data-")]
    assert data
    for name in data:  # flip every byte: every tensor fails its checksum
        with open(tmp_path / name, "r+b") as f:
            content = f.read()
            f.seek(0)
            f.write(bytes(x ^ 0xFF for x in content))
    w.assign(np.zeros([6, 3], np.float32))
    b.assign(np.zeros([3], np.float32))
    with pytest.raises(psclient.errors.DataLossError) as e:
        psclient.train.Saver([w, b]).restore(path)
    assert e.value.code == psclient.errors.DATA_LOSS and "m.data-" in e.value.message
    np.testing.assert_array_equal(w.read(), np.zeros([6, 3]))
    np.testing.assert_array_equal(b.read(), np.zeros([3]))


def test_restore_of_nonexistent_prefix_fails(session, prefix, tmp_path):
    w, _ = _vars(prefix)
    with pytest.raises(psclient.errors.OpError):
        psclient.train.Saver([w]).restore(str(tmp_path / "nothing-here"))


def test_max_to_keep_retention_and_last_checkpoints(psd_binary, tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    with LocalCluster(psd_binary, num_shards=2, state_dir=str(tmp_path / "run"),
                      coordinator_args=["--checkpoint-dir", str(ckpt), "--max-to-keep", "2"]) as c:
        with psclient.connect(c.address):
            w, _ = _vars("retention")
            saver = psclient.train.Saver()  # the coordinator's --max-to-keep 2
            assert saver.max_to_keep is None
            # Before any save: the coordinator's directory (empty).
            assert saver.last_checkpoints == []
            paths = []
            for step in range(1, 5):
                w.assign_add(np.ones([6, 3], np.float32))
                paths.append(saver.save(str(ckpt / "model.ckpt"), global_step=step))
            assert saver.last_checkpoints == paths[-2:]
            assert not os.path.exists(paths[0] + ".index")
            assert os.path.exists(paths[-1] + ".index")
            # An empty save_path / checkpoint_dir is the coordinator's --checkpoint-dir.
            assert psclient.train.latest_checkpoint() == paths[-1]
            w.assign_add(np.ones([6, 3], np.float32))
            assert saver.save(global_step=5) == str(ckpt / "model.ckpt-5")
            assert not os.path.exists(paths[2] + ".index")  # retention: kept 4 and 5
            saver.restore(paths[-1])  # the 4th save: ones + 4
            np.testing.assert_array_equal(w.read(), np.full([6, 3], 5.0))


def _exists(prefix):
    return os.path.exists(str(prefix) + ".index")


def test_var_list_saves_only_its_variables(session, prefix, tmp_path):
    w, b = _vars(prefix)
    # Not in var_list, so its being uninitialized does not stop the save.
    u = psclient.get_variable(prefix + "/uninitialized", shape=[2])
    try:
        b.assign([4.0, 5.0, 6.0])
        path = psclient.train.Saver([b]).save(str(tmp_path / "only_b"))
        b.assign([0.0, 0.0, 0.0])
        psclient.train.Saver([b]).restore(path)
        np.testing.assert_array_equal(b.read(), [4.0, 5.0, 6.0])
        with pytest.raises(psclient.errors.NotFoundError, match="not found in checkpoint"):
            psclient.train.Saver([w]).restore(path)
        # A Saver without var_list restores every variable: w is missing too.
        with pytest.raises(psclient.errors.NotFoundError, match="not found in checkpoint"):
            psclient.train.Saver().restore(path)
    finally:
        session.delete_variable(u.full_name)


def test_var_list_dict_saves_under_checkpoint_names(session, prefix, tmp_path):
    w, b = _vars(prefix)
    w.assign(np.arange(18, dtype=np.float32).reshape(6, 3))
    path = psclient.train.Saver({"renamed/weights": w}).save(str(tmp_path / "m"), global_step=3)
    assert path == str(tmp_path / "m-3")
    # The variable's own name is not in the checkpoint, the given one is,
    # and it restores into a variable of another name and partitioning.
    with pytest.raises(psclient.errors.NotFoundError, match="not found in checkpoint"):
        psclient.train.Saver([w]).restore(path)
    other = psclient.get_variable(prefix + "/other", shape=[6, 3], initialize=True,
                                  initializer=psclient.zeros_initializer(),
                                  partitioner=psclient.fixed_size_partitioner(3))
    psclient.train.Saver({"renamed/weights": other}).restore(path)
    np.testing.assert_array_equal(other.read(), np.arange(18, dtype=np.float32).reshape(6, 3))


def test_var_list_errors(session, prefix, tmp_path):
    w, b = _vars(prefix)
    with pytest.raises(TypeError, match="psclient.Variable"):
        psclient.train.Saver([w, "b"])
    with pytest.raises(ValueError, match="same name"):
        psclient.train.Saver([w, b, w])
    with pytest.raises(ValueError, match="No variables to save"):
        psclient.train.Saver([])
    assert psclient.train.Saver([], allow_empty=True).max_to_keep is None
    gone = psclient.get_variable(prefix + "/gone", shape=[1], initialize=True,
                                 initializer=psclient.zeros_initializer())
    saver = psclient.train.Saver([b, gone])
    session.delete_variable(gone.full_name)
    with pytest.raises(psclient.errors.NotFoundError, match="gone"):
        saver.save(str(tmp_path / "m"))
    assert not _exists(tmp_path / "m")
    # The coordinator checks var_list itself: a checkpoint name given twice.
    address, security = session.address, session.security
    raw = psclient._psclient.Saver(address, "", 0.0, security,
                                   variables=[b.full_name], name_map={b.full_name: w.full_name})
    with pytest.raises(psclient.errors.InvalidArgumentError, match="twice"):
        raw.save(str(tmp_path / "m"), None)


def test_saver_max_to_keep_follows_tensorflow_sequence(session, prefix, tmp_path):
    """saver_test.py's max_to_keep=2 sequence, with the cluster's own policy
    (5) left alone: a re-saved path moves to the end and deletes nothing."""
    w, b = _vars(prefix)
    saver = psclient.train.Saver([w, b], max_to_keep=2)
    assert saver.max_to_keep == 2
    s1, s2, s3 = (str(tmp_path / n) for n in ("s1", "s2", "s3"))
    saver.save(s1)
    assert saver.last_checkpoints == [s1]
    saver.save(s2)
    assert saver.last_checkpoints == [s1, s2]
    saver.save(s3)
    assert saver.last_checkpoints == [s2, s3]
    assert not _exists(s1) and not os.path.exists(s1 + ".psd-meta")
    saver.save(s2)
    assert saver.last_checkpoints == [s3, s2]
    assert _exists(s2) and _exists(s3)
    saver.save(s1)
    assert saver.last_checkpoints == [s2, s1]
    assert not _exists(s3)
    state = psclient.train.get_checkpoint_state(str(tmp_path))
    assert state.model_checkpoint_path == s1
    assert state.all_model_checkpoint_paths == [s2, s1]


@pytest.mark.parametrize("keep", [0, None])
def test_saver_max_to_keep_none_or_zero_keeps_all(session, prefix, tmp_path, keep):
    w, _ = _vars(prefix)
    saver = psclient.train.Saver([w], max_to_keep=keep)
    paths = [saver.save(str(tmp_path / "m"), global_step=i) for i in range(3)]
    assert saver.last_checkpoints == []
    assert all(_exists(p) for p in paths)
    state = psclient.train.get_checkpoint_state(str(tmp_path))
    assert state.model_checkpoint_path == paths[-1]
    assert state.all_model_checkpoint_paths == [paths[-1]]


def test_keep_checkpoint_every_n_hours_keeps_dropped_checkpoints(session, prefix, tmp_path):
    """With an interval far shorter than the time between saves, every
    checkpoint max_to_keep drops is past the next keep time, so its files
    stay (TensorFlow keeps it and forgets it); the default interval (10000
    hours) deletes them."""
    w, _ = _vars(prefix)
    keeping = psclient.train.Saver([w], max_to_keep=2, keep_checkpoint_every_n_hours=1e-9)
    assert keeping.keep_checkpoint_every_n_hours == 1e-9
    kept = [keeping.save(str(tmp_path / "keep"), global_step=i) for i in range(4)]
    assert keeping.last_checkpoints == kept[2:]
    assert all(_exists(p) for p in kept)
    # A checkpoint kept for good exists, as its files do (tf.train.checkpoint_exists).
    assert all(psclient.train.checkpoint_exists(p) for p in kept)
    other = tmp_path / "other"
    other.mkdir()
    deleting = psclient.train.Saver([w], max_to_keep=2, keep_checkpoint_every_n_hours=10000)
    dropped = [deleting.save(str(other / "m"), global_step=i) for i in range(4)]
    assert deleting.last_checkpoints == dropped[2:]
    assert [_exists(p) for p in dropped] == [False, False, True, True]
    assert [psclient.train.checkpoint_exists(p) for p in dropped] == [False, False, True, True]


def test_savers_keep_their_own_retention_per_directory(session, prefix, tmp_path):
    w, _ = _vars(prefix)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    one = psclient.train.Saver([w], max_to_keep=1)
    three = psclient.train.Saver([w], max_to_keep=3)
    for step in range(4):
        one.save(str(tmp_path / "a" / "m"), global_step=step)
        three.save(str(tmp_path / "b" / "m"), global_step=step)
    assert one.last_checkpoints == [str(tmp_path / "a" / "m-3")]
    assert three.last_checkpoints == [str(tmp_path / "b" / ("m-%d" % i)) for i in (1, 2, 3)]
    # One deletion per save, as TensorFlow: m-0, m-1 and m-2 are gone from a.
    assert [_exists(tmp_path / "a" / ("m-%d" % i)) for i in range(4)] == [False] * 3 + [True]
    assert [_exists(tmp_path / "b" / ("m-%d" % i)) for i in range(4)] == [False] + [True] * 3


def test_saver_retention_arguments_are_checked(session, prefix, tmp_path):
    w, _ = _vars(prefix)
    with pytest.raises(ValueError, match="max_to_keep"):
        psclient.train.Saver([w], max_to_keep=-1)
    with pytest.raises(ValueError, match="keep_checkpoint_every_n_hours"):
        psclient.train.Saver([w], keep_checkpoint_every_n_hours=0)
    # The coordinator checks them too, naming the value, and saves nothing.
    raw = psclient._psclient.Saver(session.address, "", 0.0, session.security, max_to_keep=-3)
    with pytest.raises(psclient.errors.InvalidArgumentError, match="max_to_keep.*-3"):
        raw.save(str(tmp_path / "m"), None)
    raw = psclient._psclient.Saver(session.address, "", 0.0, session.security,
                                   keep_checkpoint_every_n_hours=-1.0)
    with pytest.raises(psclient.errors.InvalidArgumentError, match="keep_checkpoint"):
        raw.save(str(tmp_path / "m"), None)
    assert not _exists(tmp_path / "m")


def test_sparse_mask_drops_masked_indices_in_order():
    a = psclient.IndexedSlices(np.arange(12, dtype=np.float32).reshape(4, 3), [5, 2, 7, 2],
                               dense_shape=[10, 3])
    m = psclient.sparse_mask(a, [2])
    np.testing.assert_array_equal(m.indices, [5, 7])
    np.testing.assert_array_equal(m.values, [[0, 1, 2], [6, 7, 8]])
    assert m.dense_shape == [10, 3]
    assert m.values.dtype == np.float32


def test_sparse_mask_rejects_non_integer_mask():
    a = psclient.IndexedSlices(np.ones([2, 2], np.float32), [0, 1])
    with pytest.raises(TypeError):
        psclient.sparse_mask(a, [0.5])


def test_apply_gradients_indexed_slices_with_dense_shape(session, prefix):
    v = psclient.get_variable(prefix, shape=[5, 2], initializer=psclient.zeros_initializer(),
                              partitioner=psclient.fixed_size_partitioner(2), initialize=True)
    opt = psclient.train.GradientDescentOptimizer(1.0)
    grad = psclient.IndexedSlices(np.ones([2, 2], np.float32), np.array([0, 4], np.int32),
                                  dense_shape=[5, 2])
    opt.apply_gradients([(psclient.sparse_mask(grad, [4]), v)])
    expected = np.zeros([5, 2], np.float32)
    expected[0] = -1.0
    np.testing.assert_array_equal(v.read(), expected)
    with pytest.raises(psclient.errors.InvalidArgumentError):
        opt.apply_gradients([(psclient.IndexedSlices(np.ones([1, 2], np.float32), [0],
                                                     dense_shape=[6, 2]), v)])


def test_digits_example_trains_restores_and_reaches_accuracy(psd_binary):
    examples = os.environ.get("PSCLIENT_EXAMPLES") or os.path.join(
        os.path.dirname(__file__), "..", "examples")
    out = subprocess.run([sys.executable, os.path.join(examples, "train_digits.py"),
                          "--psd-binary", psd_binary, "--steps", "300",
                          "--checkpoint-every", "50"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    m = re.search(r"test accuracy ([0-9.]+) after (\d+) steps", out.stdout)
    assert m, out.stdout
    assert float(m.group(1)) >= 0.90 and int(m.group(2)) == 300, out.stdout
    assert re.search(r"restored .*model\.ckpt-150 .*global step 150", out.stdout), out.stdout


def test_saver_def_rebuilds_the_same_saver(session, prefix, tmp_path):
    a = psclient.get_variable(prefix + "_a", shape=[2], initializer=psclient.ones_initializer(),
                              initialize=True)
    b = psclient.get_variable(prefix + "_b", shape=[2], initializer=psclient.ones_initializer(),
                              initialize=True)
    saver = psclient.train.Saver({"only_a": a}, max_to_keep=2, name="s1")
    saver_def = saver.as_saver_def()
    again = psclient.train.Saver.from_proto(saver_def)
    assert again.as_saver_def() == saver_def
    assert (again.max_to_keep, again.name) == (2, "s1")
    path = again.save(str(tmp_path / "model.ckpt"))
    a.assign(np.zeros(2, np.float32))
    b.assign(np.zeros(2, np.float32))
    psclient.train.Saver(saver_def=saver_def).restore(path)
    np.testing.assert_array_equal(a.read(), [1, 1])  # saved under "only_a"
    np.testing.assert_array_equal(b.read(), [0, 0])  # not in the Saver


@pytest.mark.parametrize("kwargs", [dict(restore_sequentially=True), dict(builder=object()),
                                    dict(write_version=1)])
def test_saver_graph_building_arguments_are_refused_by_name(session, prefix, kwargs):
    v = psclient.get_variable(prefix, shape=[1])
    with pytest.raises(psclient.errors.UnimplementedError, match=list(kwargs)[0]):
        psclient.train.Saver([v], **kwargs)


def test_each_saver_lists_only_its_own_checkpoints(session, prefix, tmp_path):
    # As in TensorFlow, a Saver's last_checkpoints are the ones it wrote,
    # empty until it saves, even where other Savers save into the directory.
    w, _ = _vars(prefix)
    first = psclient.train.Saver([w], max_to_keep=5)
    paths = [first.save(str(tmp_path / "m"), global_step=i) for i in range(2)]
    second = psclient.train.Saver([w], max_to_keep=5)
    assert second.last_checkpoints == []
    mine = second.save(str(tmp_path / "m"), global_step=7)
    assert second.last_checkpoints == [mine]
    assert first.last_checkpoints == paths
    # Saving a path again moves it to the end.
    again = first.save(str(tmp_path / "m"), global_step=0)
    assert first.last_checkpoints == [paths[1], again]


def test_reshape_is_honoured_in_both_directions(session, prefix, tmp_path):
    # TensorFlow: restoring a tensor into a variable of another shape is an
    # error unless the Saver was made with reshape=True.
    w = psclient.get_variable(prefix + "_w", shape=[2, 3], initialize=True,
                              initializer=psclient.zeros_initializer())
    w.assign(np.arange(6, dtype=np.float32).reshape(2, 3))
    path = psclient.train.Saver({"w": w}).save(str(tmp_path / "m"))
    flat = psclient.get_variable(prefix + "_flat", shape=[6], initialize=True,
                                 initializer=psclient.zeros_initializer())
    with pytest.raises(psclient.errors.InvalidArgumentError, match="reshape=True"):
        psclient.train.Saver({"w": flat}).restore(path)
    np.testing.assert_array_equal(flat.read(), np.zeros(6))
    psclient.train.Saver({"w": flat}, reshape=True).restore(path)
    np.testing.assert_array_equal(flat.read(), np.arange(6))


def test_update_checkpoint_state_writes_the_state_file(session, prefix, tmp_path):
    v = psclient.get_variable(prefix, shape=[1], initialize=True,
                              initializer=psclient.zeros_initializer())
    saver = psclient.train.Saver([v], max_to_keep=5)
    first = saver.save(str(tmp_path / "m"), global_step=1)
    second = saver.save(str(tmp_path / "m"), global_step=2)
    # Point the state back at the first checkpoint, as a trainer rolling back does.
    psclient.train.update_checkpoint_state(str(tmp_path), first, [second])
    state = psclient.train.get_checkpoint_state(str(tmp_path))
    assert state.model_checkpoint_path == first
    assert state.all_model_checkpoint_paths == [second, first]
    assert psclient.train.latest_checkpoint(str(tmp_path)) == first
    with pytest.raises(psclient.errors.PermissionDeniedError):
        psclient.train.update_checkpoint_state("/", first)
    with pytest.raises(psclient.errors.InvalidArgumentError, match="model_checkpoint_path"):
        psclient.train.update_checkpoint_state(str(tmp_path), "")
    # A checkpoint that does not exist is refused, and the state is unchanged.
    with pytest.raises(psclient.errors.NotFoundError, match="no checkpoint at"):
        psclient.train.update_checkpoint_state(str(tmp_path), str(tmp_path / "m-99"))
    with pytest.raises(psclient.errors.NotFoundError):
        psclient.train.update_checkpoint_state(str(tmp_path), first, [str(tmp_path / "gone")])
    assert psclient.train.latest_checkpoint(str(tmp_path)) == first


def test_recover_last_checkpoints_after_a_trainer_restart(session, prefix, tmp_path):
    v = psclient.get_variable(prefix, shape=[1], initialize=True,
                              initializer=psclient.zeros_initializer())
    before = psclient.train.Saver([v], max_to_keep=5)
    paths = [before.save(str(tmp_path / "m"), global_step=i) for i in range(2)]
    # A new Saver (a restarted trainer) takes the list back; a path that
    # does not exist is left out, as TensorFlow's glob leaves it.
    after = psclient.train.Saver([v], max_to_keep=5)
    assert after.last_checkpoints == []
    after.recover_last_checkpoints(paths + [str(tmp_path / "m-99")])
    assert after.last_checkpoints == paths


def test_set_last_checkpoints_is_the_list_retention_deletes_from(session, prefix, tmp_path):
    v = psclient.get_variable(prefix, shape=[1], initialize=True,
                              initializer=psclient.zeros_initializer())
    writer = psclient.train.Saver([v], max_to_keep=0)  # keeps every checkpoint, lists none
    old = [writer.save(str(tmp_path / "m"), global_step=i) for i in range(3)]
    saver = psclient.train.Saver([v], max_to_keep=2)
    saver.set_last_checkpoints_with_time([(old[0], 1.0), (old[1], 2.0)])
    assert saver.last_checkpoints == old[:2]

    # Bad input is refused by name and changes nothing.
    with pytest.raises(psclient.errors.NotFoundError, match=re.escape(str(tmp_path / "m-99"))):
        saver.set_last_checkpoints_with_time([(old[2], 1.0), (str(tmp_path / "m-99"), 1.0)])
    with pytest.raises(psclient.errors.PermissionDeniedError, match="/etc/passwd"):
        saver.set_last_checkpoints(["/etc/passwd"])
    with pytest.raises(psclient.errors.InvalidArgumentError, match="'m-2'"):
        saver.set_last_checkpoints([old[2], "m-2"])
    with pytest.raises(AssertionError):  # TensorFlow's: not a list
        saver.set_last_checkpoints(tuple(old))
    with pytest.raises(TypeError, match="item 0"):
        saver.set_last_checkpoints_with_time([old[2]])
    assert saver.last_checkpoints == old[:2]

    # max_to_keep=2 pops the oldest of the list set, one per save, and
    # deletes it: its time is before the keep_checkpoint_every_n_hours mark.
    saver.save(str(tmp_path / "m"), global_step=3)
    assert saver.last_save["deleted"] == [old[0]]
    saver.save(str(tmp_path / "m"), global_step=4)
    assert saver.last_save["deleted"] == [old[1]]
    assert not os.path.exists(old[0] + ".index")
    assert not os.path.exists(old[1] + ".index")
    assert os.path.exists(old[2] + ".index")  # never in the list
    assert saver.last_checkpoints == [str(tmp_path / "m-3"), str(tmp_path / "m-4")]

    # set_last_checkpoints: time +inf, so when it leaves the list it is kept
    # for good; m-3 and m-4 left the list and are not deleted either.
    saver.set_last_checkpoints([old[2]])
    assert saver.last_checkpoints == [old[2]]
    for step in (5, 6):
        saver.save(str(tmp_path / "m"), global_step=step)
        assert saver.last_save["deleted"] == []
    assert saver.last_checkpoints == [str(tmp_path / "m-5"), str(tmp_path / "m-6")]
    for kept in (old[2], str(tmp_path / "m-3"), str(tmp_path / "m-4")):
        assert psclient.train.checkpoint_exists(kept)

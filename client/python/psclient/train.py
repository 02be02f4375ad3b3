"""psclient.train: TensorFlow's tf.compat.v1.train optimizers, applied on the
shards (the C++ client's Optimizer: slots created on first use, one batched
message per shard per step). There is no autodiff: pass gradients computed
in numpy to apply_gradients, dense arrays or IndexedSlices.

Checkpoints: Saver, latest_checkpoint, get_checkpoint_state (the C++
client's Saver; taken and restored by the coordinator, paths on its side).

    opt = psclient.train.AdamOptimizer(0.01)
    opt.apply_gradients([(grad_w, w), (psclient.IndexedSlices(rows, ids), emb)],
                        global_step=step)
"""

import os
import warnings

import numpy as np

from . import _psclient
from . import errors
from .session import _session_of
from .variables import IndexedSlices, Variable, _dense_shape_arg, _indices_array


class Optimizer:
    """Base class; subclasses name the kind and its hyper-parameters."""

    _kind = None

    def __init__(self, use_locking=False, name=None, session=None, **params):
        self._name = name or self._kind
        self._session = _session_of(session)
        self._params = params
        self._opt = _psclient.Optimizer(self._session._s,
                                        _psclient.optimizer_config(self._kind, params))

    def get_name(self):
        return self._name

    def apply_gradients(self, grads_and_vars, global_step=None, name=None):
        """One step: grads_and_vars is a list of (gradient, Variable), gradient
        a numpy array (dense) or IndexedSlices (sparse). Pairs whose gradient
        is None are skipped, as in TensorFlow. Advances global_step by one
        when given. Returns None (psd runs the step at once)."""
        from .embedding import EmbeddingVariable, _keys_array  # imports this module
        items = []
        has_table = False
        for grad, var in grads_and_vars:
            if grad is None:
                continue
            if isinstance(var, EmbeddingVariable):
                # A table's gradient: rows of keys (IndexedSlices(values, keys)).
                if not isinstance(grad, IndexedSlices):
                    raise TypeError("apply_gradients: the gradient of embedding table %s must be "
                                    "IndexedSlices(rows, keys)" % var.full_name)
                keys = _keys_array(grad.indices, var._t.key_dtype)
                items.append((var._v, keys, var._t.key_dtype, var._rows(grad.values), None))
                has_table = True
                continue
            if not isinstance(var, Variable):
                raise TypeError("apply_gradients: %r is not a psclient.Variable" % (var,))
            if isinstance(grad, IndexedSlices):
                idx, idt = _indices_array(grad.indices)
                items.append((var._v, idx, idt, var._value(grad.values),
                              _dense_shape_arg(grad.dense_shape)))
            else:
                items.append((var._v, var._value(grad)))
        if not items:
            raise ValueError("No gradients provided for any variable")
        step = 0
        if has_table and global_step is not None:
            # Tables record the step as the version of the rows it updates.
            step = int(np.asarray(global_step.read()).reshape(-1)[0])
        self._opt.apply_gradients(items, step)
        if global_step is not None:
            global_step.assign_add(np.ones((), dtype=global_step.dtype.np))

    def compute_gradients(self, *args, **kwargs):
        raise NotImplementedError("psclient has no autodiff: compute gradients yourself and "
                                  "pass them to apply_gradients")

    minimize = compute_gradients

    def create_slots(self, var_list):
        self._opt.create_slots([v._v for v in var_list])

    def get_slot(self, var, name):
        """The slot variable `name` of `var` (None before the slot exists, as TF)."""
        from .embedding import EmbeddingVariable  # imports this module
        try:
            slot = self._opt.get_slot(var._v, name)
        except errors.NotFoundError:
            return None
        if isinstance(var, EmbeddingVariable):
            return EmbeddingVariable._wrap(self._session, _psclient.embedding_of(slot))
        return Variable._wrap(self._session, slot)

    def get_slot_names(self):
        return list(self._opt.get_slot_names())

    def variables(self):
        return [Variable._wrap(self._session, v) for v in self._opt.non_slot_variables()]


class GradientDescentOptimizer(Optimizer):
    _kind = "GradientDescent"

    def __init__(self, learning_rate, use_locking=False, name="GradientDescent", session=None):
        super().__init__(use_locking, name, session, learning_rate=learning_rate)


class MomentumOptimizer(Optimizer):
    _kind = "Momentum"

    def __init__(self, learning_rate, momentum, use_locking=False, name="Momentum",
                 use_nesterov=False, session=None):
        super().__init__(use_locking, name, session, learning_rate=learning_rate,
                         momentum=momentum, use_nesterov=use_nesterov)


class AdagradOptimizer(Optimizer):
    _kind = "Adagrad"

    def __init__(self, learning_rate, initial_accumulator_value=0.1, use_locking=False,
                 name="Adagrad", session=None):
        super().__init__(use_locking, name, session, learning_rate=learning_rate,
                         initial_accumulator_value=initial_accumulator_value)


class AdamOptimizer(Optimizer):
    _kind = "Adam"

    def __init__(self, learning_rate=0.001, beta1=0.9, beta2=0.999, epsilon=1e-08,
                 use_locking=False, name="Adam", session=None):
        super().__init__(use_locking, name, session, learning_rate=learning_rate, beta1=beta1,
                         beta2=beta2, epsilon=epsilon)


class RMSPropOptimizer(Optimizer):
    _kind = "RMSProp"

    def __init__(self, learning_rate, decay=0.9, momentum=0.0, epsilon=1e-10, use_locking=False,
                 centered=False, name="RMSProp", session=None):
        super().__init__(use_locking, name, session, learning_rate=learning_rate, decay=decay,
                         momentum=momentum, epsilon=epsilon, centered=centered)


class FtrlOptimizer(Optimizer):
    _kind = "Ftrl"

    def __init__(self, learning_rate, learning_rate_power=-0.5, initial_accumulator_value=0.1,
                 l1_regularization_strength=0.0, l2_regularization_strength=0.0,
                 use_locking=False, name="Ftrl", accum_name=None, linear_name=None,
                 l2_shrinkage_regularization_strength=0.0, session=None):
        super().__init__(use_locking, name, session, learning_rate=learning_rate,
                         learning_rate_power=learning_rate_power,
                         initial_accumulator_value=initial_accumulator_value,
                         l1_regularization_strength=l1_regularization_strength,
                         l2_regularization_strength=l2_regularization_strength,
                         l2_shrinkage_regularization_strength=l2_shrinkage_regularization_strength)


# ---------------------------------------------------------------------------
# Checkpoints: tf.compat.v1.train.Saver over the C++ client's Saver. The
# coordinator takes and restores them, so every path is on the server side
# (the coordinator's file system), and a save is one consistent cut of all
# shards.

# Saver(max_to_keep=..., keep_checkpoint_every_n_hours=...) left out: the
# coordinator's policy, which is TensorFlow's defaults (5 and 10000 hours)
# unless the cluster configured another.
_COORDINATOR_POLICY = object()


def _coordinator_of(session):
    s = _session_of(session)
    return s.address, s.security


class CheckpointState:
    """tf.train.get_checkpoint_state's CheckpointState proto, as an object."""

    def __init__(self, model_checkpoint_path, all_model_checkpoint_paths):
        self.model_checkpoint_path = model_checkpoint_path
        self.all_model_checkpoint_paths = list(all_model_checkpoint_paths)

    def __repr__(self):
        return "CheckpointState(model_checkpoint_path=%r, all_model_checkpoint_paths=%r)" % (
            self.model_checkpoint_path, self.all_model_checkpoint_paths)


def _step_of(global_step):
    if global_step is None:
        return None
    if isinstance(global_step, Variable):
        global_step = global_step.read()
    return int(np.asarray(global_step))


def _path_args(sess_or_path, save_path):
    # TF1 spells it save(sess, save_path); psclient has no graph session to
    # pass, so save(save_path) works too.
    if isinstance(sess_or_path, (str, bytes, os.PathLike)):
        if save_path is not None:
            raise TypeError("save_path given twice")
        return os.fsdecode(sess_or_path)
    return "" if save_path is None else os.fsdecode(save_path)


class _ByName(str):
    """A variable named by a SaverDef (it holds names, not handles)."""


def _var_name(v, where):
    from .embedding import EmbeddingVariable  # imports this module
    if isinstance(v, (Variable, EmbeddingVariable)):
        return v.full_name
    if isinstance(v, _ByName):
        return str(v)
    raise TypeError("Saver: %s must be a psclient.Variable, got %r" % (where, v))


class SaverDef:
    """What Saver.as_saver_def() returns and Saver(saver_def=...) takes: the
    Saver's variables (by name) and its options."""

    def __init__(self, variables, name_map, max_to_keep, keep_checkpoint_every_n_hours, name,
                 sharded, reshape=False):
        self.variables = variables
        self.name_map = name_map
        self.max_to_keep = max_to_keep
        self.keep_checkpoint_every_n_hours = keep_checkpoint_every_n_hours
        self.name = name
        self.sharded = sharded
        self.reshape = reshape

    def var_list(self):
        if self.name_map:
            return {k: _ByName(v) for k, v in self.name_map.items()}
        return [_ByName(v) for v in self.variables] or None

    def __eq__(self, other):
        return isinstance(other, SaverDef) and vars(self) == vars(other)

    def __repr__(self):
        return "SaverDef(%s)" % ", ".join("%s=%r" % kv for kv in sorted(vars(self).items()))


class Saver:
    """tf.compat.v1.train.Saver: coordinated checkpoints in TensorFlow's V2
    format (PREFIX.index + PREFIX.data-K-of-N), readable by
    tf.train.load_checkpoint.

        saver = psclient.train.Saver([w, b], max_to_keep=3)
        path = saver.save("/ckpt/model.ckpt", global_step=step)  # "/ckpt/model.ckpt-100"
        saver.restore(psclient.train.latest_checkpoint("/ckpt"))

    As in TensorFlow, var_list (a list of variables, or a dict from
    checkpoint names to variables) is what save() writes and restore()
    brings back; None is every variable of the cluster. max_to_keep
    (None or 0: keep all) and keep_checkpoint_every_n_hours are this
    Saver's retention; left out, the coordinator's policy applies
    (`psd coordinator --max-to-keep`, `psctl ckpt policy`; TensorFlow's
    defaults unless configured).

    Differences from TensorFlow:
      * paths are on the coordinator's machine, and the directory must exist
        there; an empty save_path saves under the coordinator's
        --checkpoint-dir as "model.ckpt";
      * a save is one consistent cut of the shards holding the variables;
      * retention state lives on the coordinator, per (directory, state-file
        name): Savers saving into one directory share it, it survives
        restarts of trainers and coordinator; last_checkpoints lists the
        checkpoints this Saver wrote (or set_last_checkpoints gave it) that
        retention still manages.
    """

    def __init__(self, var_list=None, reshape=False, sharded=False,
                 max_to_keep=_COORDINATOR_POLICY,
                 keep_checkpoint_every_n_hours=_COORDINATOR_POLICY, name=None,
                 restore_sequentially=False, saver_def=None, builder=None, defer_build=False,
                 allow_empty=False, write_version=None, pad_step_number=False,
                 save_relative_paths=False, filename=None, session=None, timeout=None):
        if saver_def is not None:
            if not isinstance(saver_def, SaverDef):
                raise TypeError("saver_def must come from Saver.as_saver_def(), got %r"
                                % (saver_def,))
            if var_list is not None:
                raise ValueError("Saver: give var_list or saver_def, not both")
            var_list = saver_def.var_list()
            max_to_keep = saver_def.max_to_keep
            keep_checkpoint_every_n_hours = saver_def.keep_checkpoint_every_n_hours
            name = saver_def.name if name is None else name
            sharded = saver_def.sharded
            reshape = saver_def.reshape
        if pad_step_number:
            raise errors.UnimplementedError(None, None, "Saver(pad_step_number=True) is not "
                                            "supported: the coordinator names PREFIX-STEP")
        # Arguments about how TensorFlow built its save and restore ops in a
        # graph have no meaning here: refused when set, never ignored.
        for arg, value, default in (("restore_sequentially", restore_sequentially, False),
                                    ("builder", builder, None)):
            if value != default:
                raise errors.UnimplementedError(
                    None, None, "Saver(%s=%r): psd saves and restores on the shards, part by "
                    "part, streamed; there are no graph ops to build or order" % (arg, value))
        if write_version not in (None, 2):
            raise errors.UnimplementedError(
                None, None, "Saver(write_version=%r): psd writes TensorFlow's V2 format only"
                % (write_version,))
        # sharded: psd's saves always write one data file per shard (every
        # TensorFlow reader accepts that); the flag is kept for as_saver_def.
        self._sharded = bool(sharded)
        # reshape: a tensor of another shape but as many elements restores
        # into an unpartitioned variable; without it a shape difference is
        # InvalidArgumentError, as in TensorFlow.
        self._reshape = bool(reshape)
        self.name = name
        self._session = session
        self._address, self._security = _coordinator_of(session)
        self._timeout = float(timeout or 0)
        self._max_to_keep = None
        if max_to_keep is not _COORDINATOR_POLICY:
            # TensorFlow turns None into 0: keep every checkpoint.
            self._max_to_keep = int(max_to_keep or 0)
            if self._max_to_keep < 0:
                raise ValueError("max_to_keep must be >= 0 (0 or None keeps every checkpoint), "
                                 "got %r" % (max_to_keep,))
        self._keep_hours = None
        if keep_checkpoint_every_n_hours is not _COORDINATOR_POLICY:
            self._keep_hours = float(keep_checkpoint_every_n_hours)
            if not self._keep_hours > 0 or self._keep_hours == float("inf"):
                raise ValueError("keep_checkpoint_every_n_hours must be a positive number of "
                                 "hours, got %r" % (keep_checkpoint_every_n_hours,))
        self._variables = []
        self._name_map = {}
        if isinstance(var_list, dict):
            self._name_map = {str(k): _var_name(v, "var_list[%r]" % (k,))
                              for k, v in var_list.items()}
            empty = not self._name_map
        elif var_list is not None:
            self._variables = [_var_name(v, "var_list item") for v in var_list]
            if len(set(self._variables)) != len(self._variables):
                dup = sorted({n for n in self._variables if self._variables.count(n) > 1})
                raise ValueError("At least two variables have the same name: %s" % dup[0])
            empty = not self._variables
        else:
            empty = False
        if empty and not allow_empty:
            raise ValueError("No variables to save")
        self._own = []  # prefixes this Saver saved, oldest first
        self._savers = {}  # latest_filename -> _psclient.Saver
        self._last = self._saver("")

    def as_saver_def(self):
        """A SaverDef that rebuilds this Saver (Saver(saver_def=...)): its
        variables, retention, name and sharded flag."""
        return SaverDef(list(self._variables), dict(self._name_map),
                        _COORDINATOR_POLICY if self._max_to_keep is None else self._max_to_keep,
                        _COORDINATOR_POLICY if self._keep_hours is None else self._keep_hours,
                        self.name, self._sharded, self._reshape)

    to_proto = as_saver_def

    @staticmethod
    def from_proto(saver_def, import_scope=None, session=None):
        if import_scope:
            raise errors.UnimplementedError(None, None, "Saver.from_proto(import_scope=...)")
        return Saver(saver_def=saver_def, session=session)

    @property
    def max_to_keep(self):
        """This Saver's max_to_keep; None: the coordinator's policy."""
        return self._max_to_keep

    @property
    def keep_checkpoint_every_n_hours(self):
        """This Saver's interval; None: the coordinator's policy."""
        return self._keep_hours

    def _saver(self, latest_filename):
        latest_filename = latest_filename or ""
        s = self._savers.get(latest_filename)
        if s is None:
            # keep_checkpoint_every_n_hours counts from when the C++ Saver
            # is built: here for the default state file, so with this object.
            s = _psclient.Saver(self._address, latest_filename, self._timeout, self._security,
                                self._max_to_keep, self._keep_hours, self._variables,
                                self._name_map)
            self._savers[latest_filename] = s
        return s

    def save(self, sess=None, save_path=None, global_step=None, latest_filename=None,
             meta_graph_suffix="meta", write_meta_graph=True, write_state=True,
             strip_default_attrs=False, save_debug_info=False):
        """Saves var_list (every variable without one); returns the
        checkpoint's prefix (PREFIX-STEP with a global_step, an int or a
        Variable). Takes save(save_path) or TensorFlow's save(sess,
        save_path). Details of the save (bytes, fence pause, checkpoints
        retention deleted) are in ``last_save``."""
        path = _path_args(sess, save_path)
        self._last = self._saver(latest_filename)
        self.last_save = self._last.save(path, _step_of(global_step))
        prefix = self.last_save["prefix"]
        if write_meta_graph:
            self._write_meta_graph(prefix + "." + meta_graph_suffix)
        # Retention removed these checkpoints: their meta graphs go too, as
        # TensorFlow's Saver deletes them.
        for gone in self.last_save.get("deleted", []):
            meta = gone + "." + meta_graph_suffix
            if os.path.isfile(meta):
                os.remove(meta)
        # This Saver's own list, as TensorFlow's: a re-saved path moves to
        # the end.
        self._own = [p for p in self._own if p != prefix] + [prefix]
        return prefix

    def _write_meta_graph(self, path):
        """save(write_meta_graph=True): PREFIX.meta beside the checkpoint
        when its directory is on this machine too (a local cluster, a shared
        file system); otherwise a warning says it was not written (the
        checkpoint is on the coordinator's machine)."""
        directory = os.path.dirname(path) or "."
        if not os.path.isdir(directory):
            warnings.warn("Saver.save: %s not written: %s is not a directory on this machine "
                          "(checkpoints are written on the coordinator's side); use "
                          "export_meta_graph(filename) with a local path, or "
                          "save(write_meta_graph=False)" % (path, directory), stacklevel=3)
            return
        self.export_meta_graph(path)

    def export_meta_graph(self, filename=None, collection_list=None, as_text=False,
                          export_scope=None, clear_devices=False, clear_extraneous_savers=False,
                          strip_default_attrs=False, save_debug_info=False):
        """tf.train.Saver.export_meta_graph: the session's variables and this
        Saver's definition (see psclient.meta_graph)."""
        from . import meta_graph
        return meta_graph.export_meta_graph(filename, saver_def=self.as_saver_def(),
                                            collection_list=collection_list, as_text=as_text,
                                            export_scope=export_scope, session=self._session)

    def restore(self, sess=None, save_path=None):
        """Restores var_list (every variable without one) from the checkpoint
        at PREFIX (also a directory: its latest). A variable missing from the
        checkpoint is NotFoundError; a damaged checkpoint is DataLossError
        and restores nothing."""
        path = _path_args(sess, save_path)
        if not path:
            raise ValueError("The specified path: %r is a file. Please specify only the path "
                             "prefix to the checkpoint files." % (save_path,)
                             if save_path else "Can't load save_path when it is None.")
        self._last.restore(path, [], {}, self._reshape)

    @property
    def last_checkpoints(self):
        """The checkpoints this Saver wrote that retention still manages,
        oldest first (as in TensorFlow, empty until it saves; one deleted by
        max_to_keep, or kept for good, leaves the list)."""
        if not self._own:
            return []
        managed = set()
        for directory in sorted({os.path.dirname(p) for p in self._own}):
            managed.update(c["prefix"] for c in self._last.list_checkpoints(directory)
                           if c["managed"])
        return [p for p in self._own if p in managed]

    def recover_last_checkpoints(self, checkpoint_paths):
        """After a trainer restart: this Saver's list becomes the given
        checkpoints that still exist (retention itself survives on the
        coordinator)."""
        paths = [os.fsdecode(p) for p in checkpoint_paths]
        query = _query_saver(None, self._session)
        listed = set()
        for directory in sorted({os.path.dirname(p) for p in paths}):  # one listing each
            listed.update(c["prefix"] for c in query.list_checkpoints(directory))
        self._own = [p for p in paths if p in listed]

    def set_last_checkpoints(self, last_checkpoints):
        """DEPRECATED: Use set_last_checkpoints_with_time. The checkpoints
        become this Saver's list with time +inf (as in TensorFlow: never
        deleted by retention, kept for good when they leave the list)."""
        assert isinstance(last_checkpoints, list)
        self.set_last_checkpoints_with_time([(p, float("inf")) for p in last_checkpoints])

    def set_last_checkpoints_with_time(self, last_checkpoints_with_time):
        """Sets the list of old checkpoint filenames and timestamps (seconds
        since the epoch, oldest first): later saves pop from it and delete
        as TensorFlow's Saver does. Retention lives on the coordinator per
        checkpoint directory (shared by the Savers saving there): each
        checkpoint goes to its directory's list, and the lists of the
        directories this Saver saved into are replaced too (empty when no
        checkpoint given is in them). Every path must be an absolute,
        existing checkpoint under the coordinator's writable roots
        (InvalidArgumentError, PermissionDeniedError or NotFoundError naming
        it otherwise, and nothing changes)."""
        assert isinstance(last_checkpoints_with_time, list)
        pairs = []
        for i, item in enumerate(last_checkpoints_with_time):
            if not (isinstance(item, tuple) and len(item) == 2):
                raise TypeError("set_last_checkpoints_with_time: item %d must be a (filename, "
                                "timestamp) tuple, got %r" % (i, item))
            path, when = item
            try:
                pairs.append((os.fsdecode(path), float(when)))
            except (TypeError, ValueError):
                raise TypeError("set_last_checkpoints_with_time: item %d must be a (filename, "
                                "timestamp) tuple, got %r" % (i, item)) from None
        # The directories this Saver fed: their lists are this Saver's to
        # replace, even where no checkpoint given is in them.
        dirs = sorted({os.path.dirname(p) for p in self._own})
        self._last.set_last_checkpoints_with_time(pairs, dirs)
        self._own = [p for p, _ in pairs]

def _query_saver(latest_filename, session):
    address, security = _coordinator_of(session)
    return _psclient.Saver(address, latest_filename or "", 0.0, security)


def latest_checkpoint(checkpoint_dir=None, latest_filename=None, session=None):
    """tf.train.latest_checkpoint: the newest prefix in checkpoint_dir (on
    the coordinator; None: its --checkpoint-dir), or None."""
    return _query_saver(latest_filename, session).latest_checkpoint(
        os.fsdecode(checkpoint_dir or ""))


def get_checkpoint_state(checkpoint_dir=None, latest_filename=None, session=None):
    """tf.train.get_checkpoint_state: a CheckpointState, or None without a
    state file."""
    got = _query_saver(latest_filename, session).get_checkpoint_state(
        os.fsdecode(checkpoint_dir or ""))
    return None if got is None else CheckpointState(*got)


def update_checkpoint_state(save_dir, model_checkpoint_path, all_model_checkpoint_paths=None,
                            latest_filename=None, session=None):
    """tf.train.update_checkpoint_state: writes the state file of save_dir
    (on the coordinator's side, under its checkpoint roots) naming
    model_checkpoint_path as the latest, appended to
    all_model_checkpoint_paths unless already last. Every path must name an
    existing checkpoint (NotFoundError otherwise, nothing changed)."""
    _query_saver(latest_filename, session).update_checkpoint_state(
        os.fsdecode(save_dir or ""), os.fsdecode(model_checkpoint_path),
        [os.fsdecode(p) for p in (all_model_checkpoint_paths or [])])


def checkpoint_exists(checkpoint_prefix, session=None):
    """tf.train.checkpoint_exists: True for a checkpoint the coordinator
    lists in the prefix's directory, whether retention manages it or keeps
    it for good (keep_checkpoint_every_n_hours)."""
    prefix = os.fsdecode(checkpoint_prefix)
    listed = _query_saver(None, session).list_checkpoints(os.path.dirname(prefix))
    return any(c["prefix"] == prefix for c in listed)


def export_meta_graph(filename=None, meta_info_def=None, graph_def=None, saver_def=None,
                      collection_list=None, as_text=False, export_scope=None, clear_devices=False,
                      session=None, **kwargs):
    """tf.train.export_meta_graph (see psclient.meta_graph)."""
    from . import meta_graph
    return meta_graph.export_meta_graph(filename, meta_info_def, graph_def, saver_def,
                                        collection_list, as_text, export_scope, clear_devices,
                                        session, **kwargs)


def import_meta_graph(meta_graph_or_file, clear_devices=False, import_scope=None, session=None,
                      **kwargs):
    """tf.train.import_meta_graph (see psclient.meta_graph): declares the
    variables and returns the Saver."""
    from . import meta_graph
    return meta_graph.import_meta_graph(meta_graph_or_file, clear_devices, import_scope,
                                        session, **kwargs)

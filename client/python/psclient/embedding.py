"""Embedding tables: DeepRec's get_embedding_variable and its options.

A table is a variable keyed by feature id (int64 or int32 of any value)
instead of a fixed first dimension: a key's row is made on its first
admitted use from the initializer (the same row on every shard and restart
for a given seed and key), admission filters keep rare ids out, and
eviction removes rows that stopped mattering. Names, reuse and collections
follow get_variable; checkpoints hold tables in DeepRec's layout
(NAME-keys, NAME-values, NAME-freqs, NAME-versions per part)::

    with psclient.variable_scope("ctr"):
        user = psclient.get_embedding_variable(
            "user", embedding_dim=16, partitioner=psclient.fixed_size_partitioner(4),
            ev_option=psclient.EmbeddingVariableOption(
                filter_option=psclient.CounterFilter(filter_freq=3),
                evict_option=psclient.GlobalStepEvict(steps_to_live=10000)))
    rows = user.gather(ids)                     # numpy [len(ids), 16]
    opt.apply_gradients([(psclient.IndexedSlices(grad_rows, ids), user)],
                         global_step=step)
"""

import numpy as np

from . import _psclient
from . import dtypes as _dtypes
from . import errors
from . import init_ops
from . import partitioned_variables
from .scopes import _reuse_arg
from .session import _session_of
from .variables import _caller


class CounterFilter:
    """Admits a key at its filter_freq-th lookup or update (DeepRec's)."""

    def __init__(self, filter_freq=0):
        self.filter_freq = int(filter_freq)


class CBFFilter:
    """CounterFilter with bounded memory: counts in a counting Bloom filter
    sized for max_element_size keys at false_positive_probability (a key
    may be admitted early, never late). counter_type: uint8/16/32 counters
    (None: 8 bits)."""

    def __init__(self, filter_freq=0, max_element_size=0, false_positive_probability=-1.0,
                 counter_type=None):
        self.filter_freq = int(filter_freq)
        self.max_element_size = int(max_element_size)
        self.false_positive_probability = float(false_positive_probability)
        bits = {None: 0, "uint8": 8, "uint16": 16, "uint32": 32, "uint64": 32}
        name = getattr(counter_type, "name", counter_type)
        if name not in bits and counter_type not in (8, 16, 32):
            raise ValueError("CBFFilter: counter_type must be uint8, uint16 or uint32, got %r"
                             % (counter_type,))
        self.counter_bits = bits.get(name, counter_type)


class GlobalStepEvict:
    """Evicts rows not updated for more than steps_to_live global steps (at
    checkpoints and on evict())."""

    def __init__(self, steps_to_live=None):
        self.steps_to_live = int(steps_to_live or 0)


class L2WeightEvict:
    """Evicts rows whose L2 norm is below l2_weight_threshold."""

    def __init__(self, l2_weight_threshold=-1.0):
        self.l2_weight_threshold = float(l2_weight_threshold)


class InitializerOption:
    """default_value_no_permission: what lookups of keys not admitted yet
    return (every element). `initializer` is get_embedding_variable's."""

    def __init__(self, initializer=None, default_value_dim=4096, default_value_no_permission=0.0):
        self.initializer = initializer
        self.default_value_no_permission = float(default_value_no_permission)


class EmbeddingVariableOption:
    """DeepRec's ev_option. psd keeps tables in its shards' memory: hash
    table kinds, storage tiers and init data sources are DeepRec's own and
    are refused by name when set. psd adds memory_limit_bytes (a cap per
    part; 0: the shard's limit only) and evict_lru_on_memory_limit (evict
    least recently used rows at the cap instead of failing)."""

    def __init__(self, ht_type="", ht_partition_num=1000, evict_option=None, ckpt=None,
                 filter_option=None, storage_option=None, init_option=None,
                 memory_limit_bytes=0, evict_lru_on_memory_limit=False):
        for name, value, default in (("ht_type", ht_type, ""), ("ckpt", ckpt, None),
                                     ("storage_option", storage_option, None)):
            if value != default:
                raise errors.UnimplementedError(
                    None, None, "EmbeddingVariableOption(%s=%r) is not provided by psd" % (name, value))
        self.evict_option = evict_option
        self.filter_option = filter_option
        self.init_option = init_option
        self.memory_limit_bytes = int(memory_limit_bytes)
        self.evict_lru_on_memory_limit = bool(evict_lru_on_memory_limit)

    def _fields(self, steps_to_live=None):
        d = {}
        f = self.filter_option
        if isinstance(f, CBFFilter):
            d["bloom_filter_freq"] = f.filter_freq
            d["bloom_max_element_size"] = f.max_element_size
            d["bloom_false_positive_probability"] = f.false_positive_probability
            d["bloom_counter_bits"] = f.counter_bits
        elif isinstance(f, CounterFilter):
            if f.filter_freq > 0:
                d["counter_filter_freq"] = f.filter_freq
        elif f is not None:
            raise TypeError("filter_option must be a CounterFilter or CBFFilter, got %r" % (f,))
        e = self.evict_option
        if isinstance(e, GlobalStepEvict):
            d["steps_to_live"] = e.steps_to_live
        elif isinstance(e, L2WeightEvict):
            if e.l2_weight_threshold > 0:
                d["l2_weight_threshold"] = e.l2_weight_threshold
        elif e is not None:
            raise TypeError("evict_option must be a GlobalStepEvict or L2WeightEvict, got %r" % (e,))
        if steps_to_live:
            d["steps_to_live"] = int(steps_to_live)
        if self.init_option is not None:
            d["default_value_no_permission"] = self.init_option.default_value_no_permission
        if self.memory_limit_bytes:
            d["part_memory_limit_bytes"] = self.memory_limit_bytes
        if self.evict_lru_on_memory_limit:
            d["evict_lru_on_memory_limit"] = True
        return d


def _keys_array(keys, key_dtype):
    arr = np.asarray(keys)
    want = _dtypes.as_dtype(key_dtype).np
    if arr.dtype != want:
        if not np.issubdtype(arr.dtype, np.integer):
            raise TypeError("embedding keys must be integers, got %s" % arr.dtype)
        arr = arr.astype(want)
    return arr


class EmbeddingVariable:
    """A handle on an embedding table (see the module docstring)."""

    @classmethod
    def _wrap(cls, session, t):
        obj = cls.__new__(cls)
        obj._session = session
        obj._t = t
        return obj

    @property
    def name(self):
        return self._t.name + ":0"

    @property
    def full_name(self):
        return self._t.name

    @property
    def dtype(self):
        return _dtypes.as_dtype(self._t.dtype)

    @property
    def key_dtype(self):
        return _dtypes.as_dtype(self._t.key_dtype)

    @property
    def embedding_dim(self):
        return self._t.embedding_dim

    @property
    def shape(self):
        """(None, embedding_dim): the number of rows is open."""
        return (None, self._t.embedding_dim)

    @property
    def trainable(self):
        return self._t.trainable

    @property
    def num_parts(self):
        return self._t.num_parts

    @property
    def ev_option(self):
        """The table's policies as the coordinator resolved them (a dict)."""
        return dict(self._t.spec)

    @property
    def _v(self):
        # The handle as a plain variable, for optimizers and savers.
        return self._t.variable

    def _rows(self, rows):
        return _dtypes.to_array(rows, self._t.dtype)

    def gather(self, ids, global_step=0):
        """Embedding lookup: rows of ids (any shape) -> ids.shape + [dim]."""
        return self._t.gather(_keys_array(ids, self._t.key_dtype), int(global_step), False)

    sparse_read = gather

    def lookup_for_inference(self, ids):
        """gather without side effects: no row made, no frequency counted."""
        return self._t.gather(_keys_array(ids, self._t.key_dtype), 0, True)

    def scatter_update(self, ids, rows, global_step=0):
        self._t.scatter_update(_keys_array(ids, self._t.key_dtype), self._rows(rows),
                               int(global_step))

    def scatter_add(self, ids, rows, global_step=0):
        self._t.scatter_add(_keys_array(ids, self._t.key_dtype), self._rows(rows),
                            int(global_step))

    def scatter_sub(self, ids, rows, global_step=0):
        self._t.scatter_sub(_keys_array(ids, self._t.key_dtype), self._rows(rows),
                            int(global_step))

    def size(self):
        """Rows held over all parts."""
        return self._t.size()

    def export(self):
        """(keys, values, freqs, versions) of every row."""
        d = self._t.export([])
        return d["keys"], d["values"], d["freqs"], d["versions"]

    def import_(self, keys, values, freqs=None, versions=None):
        """Puts rows in (each key once), replacing those of keys present."""
        self._t.import_(_keys_array(keys, self._t.key_dtype), self._rows(values),
                        None if freqs is None else np.asarray(freqs, np.int64),
                        None if versions is None else np.asarray(versions, np.int64), [], [])

    def delete_keys(self, ids):
        """Removes the rows of ids; returns how many there were."""
        return self._t.delete_keys(_keys_array(ids, self._t.key_dtype))

    def evict(self, global_step=0):
        """Runs the eviction policies now; returns the rows evicted."""
        return self._t.evict(int(global_step))

    def __repr__(self):
        return "<psclient.EmbeddingVariable '%s' dim=%d dtype=%s keys=%s>" % (
            self.full_name, self.embedding_dim, self.dtype.name, self.key_dtype.name)


def get_embedding_variable(name, embedding_dim, key_dtype=_dtypes.int64, value_dtype=None,
                           initializer=None, regularizer=None, trainable=True, collections=None,
                           caching_device=None, partitioner=None, validate_shape=True,
                           custom_getter=None, constraint=None, steps_to_live=None,
                           init_data_source=None, ev_option=None, reuse=None, session=None):
    """DeepRec's tf.get_embedding_variable: the table `name` under the
    current variable scope, created or reused by the scope's rules.
    partitioner: fixed_size_partitioner(N) for N parts (keys by hash), or
    None (the scope's, when it counts parts; else one part)."""
    sess = _session_of(session)
    for arg, value in (("regularizer", regularizer), ("custom_getter", custom_getter),
                       ("constraint", constraint), ("init_data_source", init_data_source)):
        if value is not None:
            raise errors.UnimplementedError(
                None, None, "get_embedding_variable(%s=...) is not provided by psd" % arg)
    if int(embedding_dim) <= 0:
        raise ValueError("get_embedding_variable %r: embedding_dim must be > 0, got %r"
                         % (name, embedding_dim))
    key_dtype = _dtypes.as_dtype(key_dtype)
    if key_dtype not in (_dtypes.int64, _dtypes.int32):
        raise TypeError("get_embedding_variable %r: key_dtype must be int64 or int32, got %s"
                        % (name, key_dtype.name))
    value_dtype = _dtypes.as_dtype(value_dtype) if value_dtype is not None else None
    ev_option = ev_option if ev_option is not None else EmbeddingVariableOption()
    if initializer is None and ev_option.init_option is not None:
        initializer = ev_option.init_option.initializer
    spec = None
    if initializer is not None:
        spec = init_ops.as_spec(initializer, [int(embedding_dim)],
                                value_dtype or _dtypes.float32)
    t = _psclient.get_embedding_variable(
        sess._s, name, int(embedding_dim), key_dtype.as_datatype_enum,
        value_dtype.as_datatype_enum if value_dtype is not None else 0, spec,
        partitioned_variables.as_spec(partitioner), _reuse_arg(reuse),
        None if trainable is None else bool(trainable), list(collections or []),
        ev_option._fields(steps_to_live), "", _caller())
    return EmbeddingVariable._wrap(sess, t)


def embedding_lookup(params, ids, global_step=0):
    """tf.nn.embedding_lookup over a table or a (partitioned) variable."""
    if isinstance(params, EmbeddingVariable):
        return params.gather(ids, global_step)
    return params.gather(ids)

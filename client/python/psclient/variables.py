"""Variables and collections: tf.Variable, IndexedSlices, the collection
queries and initialization, over a psd session (get_variable and variable
scopes are in scopes.py). This module only maps Python arguments to the C++
client and back.
"""

import os
import sys

import numpy as np

from . import _psclient
from . import dtypes as _dtypes
from . import errors
from . import init_ops
from .session import _session_of

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def _caller():
    """FILE:LINE of the first frame outside psclient ("Originally defined at")."""
    f = sys._getframe(1)
    while f is not None and os.path.dirname(os.path.abspath(f.f_code.co_filename)) == _PACKAGE_DIR:
        f = f.f_back
    return "%s:%d" % (f.f_code.co_filename, f.f_lineno) if f is not None else ""


def _indices_array(indices):
    arr = np.asarray(indices)
    if arr.dtype.kind not in "iu":
        if arr.size == 0:
            arr = arr.astype(np.int64)
        else:
            raise TypeError("indices must be integers, got %s" % arr.dtype)
    dtype = _dtypes.int32 if arr.dtype == np.int32 else _dtypes.int64
    return _dtypes.to_array(arr, dtype), dtype.as_datatype_enum


class IndexedSlices:
    """Rows of a dense tensor (tf.IndexedSlices): values[i] is row indices[i]
    of a tensor of shape dense_shape (optional; checked against the variable
    by apply_gradients when given). The C++ client's IndexedSlices."""

    def __init__(self, values, indices, dense_shape=None):
        self.values = values
        self.indices = indices
        self.dense_shape = dense_shape

    @property
    def dtype(self):
        """The values' dtype."""
        return _dtypes.infer_dtype(np.asarray(self.values))

    def __repr__(self):
        return "IndexedSlices(indices=%r, values=%r, dense_shape=%r)" % (
            self.indices, self.values, self.dense_shape)


def _dense_shape_arg(dense_shape):
    if dense_shape is None:
        return None
    return [int(d) for d in np.asarray(dense_shape).reshape(-1)]


def sparse_mask(a, mask_indices, name=None):
    """tf.sparse_mask: the slices of IndexedSlices `a` whose index is not in
    `mask_indices`, in a's order (the C++ client's SparseMask)."""
    values = np.asarray(a.values)
    dtype = _dtypes.infer_dtype(values)
    idx, idt = _indices_array(a.indices)
    mask, mdt = _indices_array(np.asarray(mask_indices).reshape(-1))
    out_values, out_indices = _psclient.sparse_mask(_dtypes.to_array(values, dtype),
                                                    dtype.as_datatype_enum, idx, idt, mask, mdt)
    return IndexedSlices(out_values, out_indices, a.dense_shape)


class VariableDef:
    """What Variable.to_proto gives and Variable.from_proto (and
    Variable(variable_def=)) take: the variable's tensor name; the value
    stays on the shards."""

    def __init__(self, variable_name, trainable=True):
        self.variable_name = variable_name
        self.trainable = trainable

    def __eq__(self, other):
        return isinstance(other, VariableDef) and vars(self) == vars(other)

    def __repr__(self):
        return "VariableDef(variable_name=%r, trainable=%r)" % (self.variable_name,
                                                               self.trainable)


class Variable:
    """A psd variable (tf.Variable); partitioned variables look like one.

    ``Variable(initial_value, name=...)`` creates a new variable with a
    default-unique name, as tf.Variable does; ``get_variable`` returns these
    too. Reads return numpy arrays that own the fetched buffer (no copy).
    """

    def __init__(self, initial_value=None, trainable=None, collections=None, validate_shape=True,
                 caching_device=None, name=None, variable_def=None, dtype=None,
                 expected_shape=None, import_scope=None, constraint=None, use_resource=None,
                 synchronization=None, aggregation=None, shape=None, session=None):
        if variable_def is not None:
            if initial_value is not None:
                raise ValueError("variable_def and initial_value are mutually exclusive.")
            other = Variable.from_proto(variable_def, session=session)
            self._session, self._v = other._session, other._v
            self._validate_shape = True
            return
        if initial_value is None:
            raise ValueError("initial_value must be specified.")
        if caching_device is not None:
            raise errors.UnimplementedError(
                None, None, "psclient.Variable(caching_device=%r): a cached copy is set up by "
                "get_variable(caching_device=...) or variable_scope(caching_device=...)"
                % (caching_device,))
        if callable(initial_value) and not isinstance(initial_value, init_ops.Initializer):
            initial_value = initial_value()
        sess = _session_of(session)
        if isinstance(initial_value, init_ops.InitializedValue):
            # tf.Variable(v.initialized_value() * a + b): computed on the
            # shards from v, with v's dtype, shape and partitioning.
            source = initial_value.source
            if dtype is not None and _dtypes.as_dtype(dtype) != source.dtype:
                raise TypeError("initial value %s is %s, not the requested dtype %s"
                                % (initial_value, source.dtype, _dtypes.as_dtype(dtype)))
            self._session = sess
            self._v = sess._s.create_variable_from(
                source._v, initial_value.scale, initial_value.offset, name or "Variable",
                trainable, list(collections or []), False, _caller())
            self._created(validate_shape)
            return
        if isinstance(initial_value, init_ops.Initializer):
            raise TypeError("psclient.Variable takes a value or v.initialized_value(), not the "
                            "initializer %r (use get_variable(initializer=...))" % (initial_value,))
        dtype = _dtypes.as_dtype(dtype) if dtype is not None else _dtypes.infer_dtype(initial_value)
        value = _dtypes.to_array(initial_value, dtype)
        self._session = sess
        self._v = sess._s.create_variable(value, dtype.as_datatype_enum, name or "Variable",
                                          trainable, list(collections or []), False, _caller())
        self._created(validate_shape)

    def _created(self, validate_shape):
        self._validate_shape = bool(validate_shape)

    @classmethod
    def from_proto(cls, variable_def, import_scope=None, session=None):
        """The variable a VariableDef (Variable.to_proto) names, in `session`."""
        name = variable_def.variable_name if isinstance(variable_def, VariableDef) else None
        if not name:
            raise TypeError("variable_def must come from Variable.to_proto(), got %r"
                            % (variable_def,))
        if import_scope:
            name = import_scope + "/" + name
        sess = _session_of(session)
        return sess.lookup_variable(name[:-2] if name.endswith(":0") else name)

    def to_proto(self, export_scope=None):
        """A VariableDef naming this variable (tf.Variable.to_proto); None
        when the variable is outside `export_scope`."""
        name = self.name
        if export_scope:
            if not name.startswith(export_scope + "/"):
                return None
            name = name[len(export_scope) + 1:]
        return VariableDef(name, self.trainable)

    @classmethod
    def _wrap(cls, session, v):
        obj = cls.__new__(cls)
        obj._validate_shape = True
        obj._session = session
        obj._v = v
        return obj

    # -- description -------------------------------------------------------

    @property
    def name(self):
        """TensorFlow's tensor name, "foo/v:0"."""
        return self._v.name + ":0"

    @property
    def full_name(self):
        """The variable's name without ":0" ("foo/v")."""
        return self._v.name

    @property
    def op_name(self):
        return self._v.name

    @property
    def shape(self):
        return tuple(self._v.shape)

    def get_shape(self):
        return self.shape

    @property
    def ndim(self):
        return len(self._v.shape)

    @property
    def dtype(self):
        return _dtypes.as_dtype(self._v.dtype)

    @property
    def trainable(self):
        return self._v.trainable

    @property
    def collections(self):
        return list(self._v.collections)

    @property
    def partitioned(self):
        return self._v.partitioned

    @property
    def partitions(self):
        """One part count per dimension (TensorFlow's partitions); [] if unpartitioned."""
        return list(self._v.partitions)

    @property
    def parts(self):
        """Each part: dict(name, shape, offset, shard_id, shard_address, ...)."""
        return self._v.parts()

    @property
    def session(self):
        return self._session

    def __repr__(self):
        return "<psclient.Variable '%s' shape=%s dtype=%s%s>" % (
            self.name, self.shape, self.dtype.name,
            " partitions=%s" % self.partitions if self.partitioned else "")

    def __eq__(self, other):
        return isinstance(other, Variable) and self._v.same_as(other._v)

    def __hash__(self):
        return hash(self._v.name)

    # -- data ops -----------------------------------------------------------

    def read_value(self):
        """The current value as a numpy array (partitioned: concatenated)."""
        return self._v.read()

    read = read_value
    numpy = read_value
    value = read_value

    def eval(self, session=None):
        """tf.Variable.eval: the value read through `session` (this
        variable's session when None)."""
        if session is None or session is self._session:
            return self._v.read()
        return session.lookup_variable(self.full_name).read()

    def __array__(self, dtype=None):
        value = self._v.read()
        return value if dtype is None else value.astype(dtype, copy=False)

    def gather(self, indices):
        """Rows along axis 0: shape indices.shape + shape[1:] (tf.gather)."""
        idx, idt = _indices_array(indices)
        return self._v.gather(idx, idt)

    sparse_read = gather

    def _value(self, value):
        return _dtypes.to_array(value, self._v.dtype)

    def assign(self, value, use_locking=None, name=None, read_value=False, validate_shape=None):
        """Sets the value; returns the value after it when read_value=True.
        validate_shape=False lets the value change the variable's shape
        (unpartitioned only); None: the variable's own validate_shape."""
        if validate_shape is None:
            validate_shape = self._validate_shape
        return self._v.assign(self._value(value), bool(read_value), bool(validate_shape))

    def assign_add(self, delta, use_locking=None, name=None, read_value=False):
        return self._v.assign_add(self._value(delta), bool(read_value))

    def assign_sub(self, delta, use_locking=None, name=None, read_value=False):
        return self._v.assign_sub(self._value(delta), bool(read_value))

    def _scatter(self, op, indices, updates, read_value):
        if isinstance(indices, IndexedSlices) and updates is None:
            indices, updates = indices.indices, indices.values
        idx, idt = _indices_array(indices)
        op(idx, idt, self._value(updates))
        return self._v.read() if read_value else None

    def scatter_update(self, sparse_delta, updates=None, use_locking=None, name=None,
                       read_value=False):
        """var[indices] = updates (last duplicate wins). `sparse_delta` is an
        IndexedSlices (TensorFlow's form), or the indices with `updates`.
        read_value=True reads the variable after the update (a separate read)."""
        return self._scatter(self._v.scatter_update, sparse_delta, updates, read_value)

    def scatter_add(self, sparse_delta, updates=None, use_locking=None, name=None,
                    read_value=False):
        return self._scatter(self._v.scatter_add, sparse_delta, updates, read_value)

    def scatter_sub(self, sparse_delta, updates=None, use_locking=None, name=None,
                    read_value=False):
        return self._scatter(self._v.scatter_sub, sparse_delta, updates, read_value)

    @property
    def device(self):
        """Where the value lives: its shard's address ("shard K at ADDRESS"),
        or each part's, comma-separated, for a partitioned variable."""
        return ", ".join("shard %s at %s" % (p["shard_id"], p["shard_address"])
                         for p in self._v.parts())

    @property
    def initializer(self):
        """What initializes the variable (TensorFlow's initializer op):
        ``v.initializer.run()`` initializes it now, if it is not yet."""
        return _InitializerOp([self], self._session)

    def count_up_to(self, limit):
        """Increments an int32/int64 scalar; returns the old value;
        OutOfRangeError at `limit`."""
        return self._v.count_up_to(int(limit))

    # -- initialization -------------------------------------------------------

    def initialized_value(self):
        """TensorFlow's Variable.initialized_value(): this variable's value
        once initialized, as the initial value of another variable
        (``psclient.Variable(v.initialized_value() * 2.0)`` or
        ``get_variable("w", initializer=v.initialized_value() + 1)``); see
        init_ops.InitializedValue."""
        return init_ops.InitializedValue(self)

    def initialize(self, force=False):
        """Runs the stored initializer (TensorFlow's `sess.run(v.initializer)`)."""
        self._v.initialize(bool(force))

    def is_initialized(self):
        return self._v.is_initialized()

    def refresh(self):
        """Asks the coordinator for the current handle (automatic on stale handles)."""
        self._v.refresh()

    @property
    def cached(self):
        """True when reads come from a copy kept in this process (declared with
        a caching_device)."""
        return self._v.cached

    def refresh_cache(self):
        """Fetches the cached copy again (others' writes show after this)."""
        self._v.refresh_cache()


# ---------------------------------------------------------------------------
# Collections and initialization

class GraphKeys:
    GLOBAL_VARIABLES = "variables"
    VARIABLES = "variables"
    TRAINABLE_VARIABLES = "trainable_variables"
    LOCAL_VARIABLES = "local_variables"
    MOVING_AVERAGE_VARIABLES = "moving_average_variables"
    # DeepRec's: every embedding table.
    EMBEDDING_VARIABLES = "embedding_variables"
    # The session's own (regularizers.py), not the coordinator's.
    REGULARIZATION_LOSSES = "regularization_losses"


def get_collection(key, session=None):
    """Variables in collection `key`, in creation order (all sessions' variables:
    the coordinator keeps collections cluster-wide). REGULARIZATION_LOSSES
    is the session's own list of RegularizationLoss entries."""
    sess = _session_of(session)
    if key == GraphKeys.REGULARIZATION_LOSSES:
        from . import regularizers  # imports this module
        return regularizers.get_regularization_losses(session=sess)
    return [_wrap_any(sess, v) for v in sess._s.list_variables(key)]


def _wrap_any(sess, v):
    """A Variable, or an EmbeddingVariable for an embedding table's handle."""
    if v.is_embedding:
        from .embedding import EmbeddingVariable  # imports this module
        return EmbeddingVariable._wrap(sess, _psclient.embedding_of(v))
    return Variable._wrap(sess, v)


def global_variables(session=None):
    return get_collection(GraphKeys.GLOBAL_VARIABLES, session)


all_variables = global_variables


def trainable_variables(session=None):
    return get_collection(GraphKeys.TRAINABLE_VARIABLES, session)


def local_variables(session=None):
    return get_collection(GraphKeys.LOCAL_VARIABLES, session)


def moving_average_variables(session=None):
    return get_collection(GraphKeys.MOVING_AVERAGE_VARIABLES, session)


def _handles(var_list):
    return [v._v for v in var_list]


class _InitializerOp:
    """An initialization to run later (TensorFlow's initializer op):
    run() initializes the variables now."""

    def __init__(self, var_list, session):
        self._var_list = list(var_list)
        self._session = session

    def run(self, session=None, force=False):
        variables_initializer(self._var_list, force=force, session=session or self._session)


def scatter_update(ref, indices, updates, use_locking=None, name=None):
    """tf.scatter_update: ref[indices] = updates; returns ref."""
    ref.scatter_update(indices, updates)
    return ref


def scatter_add(ref, indices, updates, use_locking=None, name=None):
    """tf.scatter_add: ref[indices] += updates (duplicates add up); returns ref."""
    ref.scatter_add(indices, updates)
    return ref


def scatter_sub(ref, indices, updates, use_locking=None, name=None):
    """tf.scatter_sub: ref[indices] -= updates; returns ref."""
    ref.scatter_sub(indices, updates)
    return ref


def variables_initializer(var_list, force=False, session=None):
    """Runs the initializers of `var_list` now, in parallel on the shards
    (TensorFlow returned an op to run; psd runs it at once). Initialized
    variables are left alone unless force=True."""
    var_list = list(var_list)
    if not var_list:
        return None
    sess = _session_of(session) if session is not None else var_list[0]._session
    sess._s.initialize_variables(_handles(var_list), bool(force))
    return None


def initialize_variables(var_list, name="init", force=False, session=None):
    """tf.initialize_variables(var_list, name): variables_initializer."""
    return variables_initializer(var_list, force=force, session=session)


def global_variables_initializer(session=None):
    """Initializes the global variables now, except those whose initial
    value another client supplied (theirs to initialize: a TensorFlow
    graph's initializer covers its own variables)."""
    _session_of(session)._s.initialize_collections([GraphKeys.GLOBAL_VARIABLES])


def local_variables_initializer(session=None):
    _session_of(session)._s.initialize_collections([GraphKeys.LOCAL_VARIABLES])


def initialize_local_variables(session=None):
    """tf.initialize_local_variables: local_variables_initializer."""
    local_variables_initializer(session)


def initialize_all_variables(session=None):
    """Global and local variables."""
    _session_of(session)._s.initialize_all_variables()


def is_variable_initialized(variable):
    return variable.is_initialized()


def assert_variables_initialized(var_list=None, session=None):
    """tf.assert_variables_initialized, checked now: FailedPreconditionError
    naming the uninitialized variables among var_list (all when None)."""
    missing = report_uninitialized_variables(var_list, session=session)
    if missing:
        raise errors.FailedPreconditionError(
            None, None, "Attempting to use uninitialized value%s %s"
            % ("s" if len(missing) > 1 else "", ", ".join(missing)))


def report_uninitialized_variables(var_list=None, name="report_uninitialized_variables",
                                   session=None):
    """Names (without ":0") of the variables among var_list (all when None)
    with an uninitialized part, in list order."""
    sess = _session_of(session)
    return list(sess._s.report_uninitialized_variables(_handles(var_list or [])))


def wait_for_initialized(var_list=None, timeout=60.0, session=None):
    """Blocks until every variable of var_list (all global variables when None)
    is initialized, as TensorFlow's SessionManager.wait_for_session; a
    DeadlineExceededError names the missing ones after `timeout` seconds."""
    sess = _session_of(session)
    if var_list is None:
        var_list = global_variables(sess)
    sess._s.wait_for_initialized(_handles(var_list), float(timeout))

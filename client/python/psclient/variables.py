"""Variables, get_variable, variable scopes and collections: the
tf.compat.v1 variable API over a psd session. All naming rules (scope paths,
reuse checks, default names) are the coordinator's; this module only maps
Python arguments to the C++ client and back.
"""

import functools
import os
import sys

import numpy as np

from . import _psclient
from . import dtypes as _dtypes
from . import errors
from . import init_ops
from . import partitioned_variables
from .session import _session_of


class _AutoReuse:
    def __repr__(self):
        return "psclient.AUTO_REUSE"

    def __reduce__(self):
        return "AUTO_REUSE"


AUTO_REUSE = _AutoReuse()

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def _caller():
    """FILE:LINE of the first frame outside psclient ("Originally defined at")."""
    f = sys._getframe(1)
    while f is not None and os.path.dirname(os.path.abspath(f.f_code.co_filename)) == _PACKAGE_DIR:
        f = f.f_back
    return "%s:%d" % (f.f_code.co_filename, f.f_lineno) if f is not None else ""


def _reuse_arg(reuse):
    if reuse is None:
        return None
    if reuse is AUTO_REUSE:
        return _psclient.REUSE_AUTO
    if reuse is True or reuse is False or isinstance(reuse, (bool, np.bool_)):
        return _psclient.REUSE_TRUE if reuse else _psclient.REUSE_FALSE
    raise ValueError("reuse must be True, False, None or psclient.AUTO_REUSE, got %r" % (reuse,))


def _reuse_value(code):
    return {_psclient.REUSE_FALSE: False, _psclient.REUSE_TRUE: True,
            _psclient.REUSE_AUTO: AUTO_REUSE}[code]


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
# get_variable and scopes

class VariableScope:
    """A variable scope (TensorFlow's VariableScope object). Returned by
    ``with variable_scope(...) as scope`` and get_variable_scope(); pass it to
    variable_scope() to re-enter it anywhere.

    Name, reuse and dtype are the coordinator's (the C++ session's scope);
    the defaults that are Python objects (initializer, regularizer,
    partitioner, caching_device, custom_getter) are kept here, inherited by
    the scopes entered inside it and changed with the set_* methods."""

    def __init__(self, session, handle, captured, defaults=None):
        self._session = session
        self._handle = handle        # the extension's Scope; None for the root
        self._captured = captured    # CapturedScope as of entry
        self._defaults = dict(defaults or {})

    def _now(self):
        if self._handle is not None:
            return self._handle.captured
        if self._captured is not None:
            return self._captured
        return self._session._s.current_scope()

    def _default(self, key):
        return self._defaults.get(key)

    @property
    def name(self):
        return self._now().name

    @property
    def original_name_scope(self):
        name = self.name
        return name + "/" if name else ""

    @property
    def reuse(self):
        return _reuse_value(self._now().reuse)

    @property
    def initializer(self):
        return self._default("initializer")

    @property
    def regularizer(self):
        return self._default("regularizer")

    @property
    def caching_device(self):
        return self._default("caching_device")

    @property
    def custom_getter(self):
        return self._default("custom_getter")

    @property
    def partitioner(self):
        """The partitioner given to this scope (or inherited), as given."""
        if "partitioner" in self._defaults:
            return self._defaults["partitioner"]
        return self._now().partitioner

    @property
    def dtype(self):
        d = self._now().dtype
        return _dtypes.as_dtype(d) if d else _dtypes.float32

    def set_initializer(self, initializer):
        self._defaults["initializer"] = initializer

    def set_regularizer(self, regularizer):
        self._defaults["regularizer"] = regularizer

    def set_caching_device(self, caching_device):
        if caching_device is not None:
            _device_string(caching_device)
        self._defaults["caching_device"] = caching_device

    def set_partitioner(self, partitioner):
        spec = partitioned_variables.as_spec(partitioner)
        if spec is None and self._now().partitioner is not None:
            # The coordinator's scope keeps the partitioner it was entered
            # with; there is no "none" to override it with.
            raise errors.UnimplementedError(
                None, None, "VariableScope %r: set_partitioner(None) cannot remove the "
                "partitioner the scope was entered with; enter a scope without one"
                % (self.name,))
        self._defaults["partitioner"] = spec

    def set_custom_getter(self, custom_getter):
        _check_custom_getter(custom_getter)
        self._defaults["custom_getter"] = custom_getter

    def reuse_variables(self):
        if self._handle is not None:
            self._handle.reuse_variables()
        else:
            self._session._s.reuse_variables()

    def get_variable(self, var_store, name, shape=None, dtype=None, initializer=None,
                     regularizer=None, trainable=None, collections=None, caching_device=None,
                     partitioner=None, validate_shape=True, **kwargs):
        """tf.VariableScope.get_variable: get_variable(name, ...) inside this
        scope (`var_store`, TensorFlow's variable store, is not used)."""
        with variable_scope(self, session=self._session):
            return get_variable(name, shape=shape, dtype=dtype, initializer=initializer,
                                regularizer=regularizer, trainable=trainable,
                                collections=collections, caching_device=caching_device,
                                partitioner=partitioner, validate_shape=validate_shape,
                                **kwargs)

    def __repr__(self):
        return "<psclient.VariableScope '%s' reuse=%r>" % (self.name, self.reuse)


def _nest_getters(inner, outer):
    """One custom getter that runs `inner` with a getter that runs `outer`
    (TensorFlow's order: the innermost scope's getter, or get_variable's own,
    sees the call first); either may be None."""
    if inner is None or outer is None:
        return inner or outer

    def nested(getter, *args, **kwargs):
        return inner(functools.partial(outer, getter), *args, **kwargs)

    return nested


def _check_custom_getter(custom_getter):
    if custom_getter is not None and not callable(custom_getter):
        raise ValueError("The custom_getter must be a callable, got %r" % (custom_getter,))


# The defaults a scope keeps in Python, inherited from the enclosing scope
# when not given.
_SCOPE_DEFAULTS = ("initializer", "regularizer", "caching_device", "partitioner")


class variable_scope:
    """``with psclient.variable_scope("foo", reuse=..., initializer=...) as scope:``

    name_or_scope: a name (the scope parent/name), a VariableScope to re-enter,
    or None with default_name (``layer``, ``layer_1``, ... per session).
    reuse: None/False (inherit), True, or psclient.AUTO_REUSE; reuse is never
    undone inside a reusing scope. initializer (a psclient initializer or a
    constant value), regularizer, partitioner, caching_device and dtype are
    defaults for get_variable inside. custom_getter(getter, name, *args,
    **kwargs) is called instead of the plain getter by get_variable inside;
    nested scopes' getters wrap the enclosing ones'.
    """

    def __init__(self, name_or_scope, default_name=None, values=None, initializer=None,
                 regularizer=None, caching_device=None, partitioner=None, custom_getter=None,
                 reuse=None, dtype=None, use_resource=None, constraint=None,
                 auxiliary_name_scope=True, session=None):
        if name_or_scope is None and default_name is None:
            raise TypeError("If default_name is None then name_or_scope is required")
        if not (name_or_scope is None or isinstance(name_or_scope, (str, VariableScope))):
            raise TypeError("VariableScope: name_or_scope must be a string or VariableScope.")
        _check_custom_getter(custom_getter)
        if caching_device is not None:
            _device_string(caching_device)
        self._name_or_scope = name_or_scope
        self._default_name = default_name
        given = {"initializer": initializer, "regularizer": regularizer,
                 "caching_device": caching_device,
                 "partitioner": partitioned_variables.as_spec(partitioner)}
        self._given = {k: v for k, v in given.items() if v is not None}
        self._custom_getter = custom_getter
        self._reuse = _reuse_arg(reuse)
        self._dtype = _dtypes.as_dtype(dtype).as_datatype_enum if dtype is not None else 0
        self._session = session
        self._scope = None

    def __enter__(self):
        sess = _session_of(self._session)
        if isinstance(self._name_or_scope, VariableScope):
            base = self._name_or_scope
        else:
            base = sess._scopes[-1] if sess._scopes else None
        defaults = {}
        if base is not None:
            defaults = {k: base._defaults[k] for k in _SCOPE_DEFAULTS if k in base._defaults}
        defaults.update(self._given)
        # Custom getters nest: this scope's wraps the enclosing one's.
        getter = _nest_getters(self._custom_getter,
                               base.custom_getter if base is not None else None)
        if getter is not None:
            defaults["custom_getter"] = getter
        partitioner = defaults.get("partitioner")
        caching = defaults.get("caching_device")
        caching = None if caching is None else _device_string(caching)
        if isinstance(self._name_or_scope, VariableScope):
            captured = self._name_or_scope._now()
            handle = sess._s.reenter_scope(captured, self._reuse, partitioner, self._dtype,
                                           caching)
        elif self._name_or_scope is None:
            handle = sess._s.enter_default_scope(self._default_name, self._reuse, partitioner,
                                                 self._dtype, caching)
        else:
            handle = sess._s.enter_scope(self._name_or_scope, self._reuse, partitioner,
                                         self._dtype, caching)
        self._scope = VariableScope(sess, handle, handle.captured, defaults)
        sess._scopes.append(self._scope)
        return self._scope

    def __exit__(self, exc_type, exc, tb):
        scope, self._scope = self._scope, None
        sess = scope._session
        if sess._scopes and sess._scopes[-1] is scope:
            sess._scopes.pop()
        elif scope in sess._scopes:
            # Exiting out of order pops the scopes entered after it too (C++).
            del sess._scopes[sess._scopes.index(scope):]
        try:
            scope._handle.exit()
        except errors.OpError:
            if exc_type is None:
                raise
        return False


def variable_op_scope(values, name_or_scope, default_name=None, initializer=None,
                      regularizer=None, caching_device=None, partitioner=None, reuse=None,
                      session=None):
    """tf.variable_op_scope: variable_scope(name_or_scope) when a name is given
    (used as is), else a unique default-named scope. `values` (TensorFlow
    checked they came from one graph) are accepted and not used."""
    return variable_scope(name_or_scope, default_name=default_name, values=values,
                          initializer=initializer, regularizer=regularizer,
                          caching_device=caching_device, partitioner=partitioner, reuse=reuse,
                          session=session)


def get_variable_scope(session=None):
    """The current VariableScope (the root scope outside any scope)."""
    sess = _session_of(session)
    if sess._scopes:
        return sess._scopes[-1]
    return VariableScope(sess, None, None, None)


def _is_constant(initializer):
    """Whether get_variable's initializer is a value (numpy array, list,
    scalar) rather than an initializer."""
    return initializer is not None and not isinstance(
        initializer, (init_ops.Initializer, _psclient.InitializerSpec, type)) and not callable(
            initializer)


def get_variable(name, shape=None, dtype=None, initializer=None, regularizer=None, trainable=None,
                 collections=None, caching_device=None, partitioner=None, validate_shape=True,
                 use_resource=None, custom_getter=None, constraint=None, synchronization=None,
                 aggregation=None, reuse=None, initialize=False, session=None):
    """tf.get_variable: the variable `name` under the current scope, created
    (uninitialized, as in TensorFlow: see global_variables_initializer) or
    reused by the scope's reuse rule. Naming and reuse errors are ValueErrors
    (errors.VariableExistsError, VariableNotFoundError, InvalidVariableError).

    `initializer` is a psclient initializer or a constant value (numpy array,
    list, scalar: then `shape` comes from it, and an explicit `dtype` must be
    the value's). Unset arguments come from the enclosing variable_scope.
    `regularizer` (value -> loss or None) is recorded, for a variable this
    session creates or first gets, in the session's REGULARIZATION_LOSSES
    (see psclient.get_regularization_loss). With a custom getter (this
    call's, or the scopes'), it is called as custom_getter(getter, name,
    **kwargs) with the variable's full name.
    """
    sess = _session_of(session)
    scope = sess._scopes[-1] if sess._scopes else None
    _check_custom_getter(custom_getter)
    kwargs = dict(shape=shape, dtype=dtype, initializer=initializer, regularizer=regularizer,
                  trainable=trainable, collections=collections, caching_device=caching_device,
                  partitioner=partitioner, validate_shape=validate_shape, reuse=reuse,
                  initialize=initialize)
    prefix = scope.name if scope is not None else sess._s.current_scope().name
    full_name = prefix + "/" + name if prefix else name
    getter = _nest_getters(custom_getter, scope.custom_getter if scope is not None else None)
    plain = functools.partial(_true_getter, sess)
    if getter is None:
        return plain(full_name, **kwargs)
    # As TensorFlow calls it: every argument by keyword.
    return getter(getter=plain, name=full_name, **kwargs)


def _true_getter(sess, full_name, shape=None, dtype=None, initializer=None, regularizer=None,
                 trainable=None, collections=None, caching_device=None, partitioner=None,
                 validate_shape=True, reuse=None, initialize=False, **unused):
    """get_variable's work, by full name (what a custom getter passes on)."""
    scope = sess._scopes[-1] if sess._scopes else None
    prefix = scope.name if scope is not None else sess._s.current_scope().name
    if prefix:
        if not full_name.startswith(prefix + "/"):
            raise ValueError(
                "get_variable %r: a custom getter may change a variable's name only within the "
                "current variable scope %r" % (full_name, prefix))
        name = full_name[len(prefix) + 1:]
    else:
        name = full_name
    if dtype is not None:
        dtype = _dtypes.as_dtype(dtype)
    if initializer is None and scope is not None:
        initializer = scope.initializer
    if regularizer is None and scope is not None:
        regularizer = scope.regularizer
    if partitioner is None and scope is not None and "partitioner" in scope._defaults:
        partitioner = scope._defaults["partitioner"]
    if caching_device is None and scope is not None:
        caching_device = scope.caching_device
    initial_value = None
    initial_dtype = 0
    spec = None
    if _is_constant(initializer):
        if shape is not None and list(np.shape(initializer)) != list(shape):
            raise errors.InvalidVariableError(
                None, None, "If initializer is a constant, do not specify shape.")
        try:
            init_dtype = _dtypes.infer_dtype(initializer)
        except TypeError:
            # A numpy type psd has no dtype for: only bfloat16's bits
            # (uint16) are taken, by to_array below, for an explicit dtype.
            if dtype is None:
                raise
            init_dtype = dtype
        if dtype is not None and init_dtype != dtype:
            raise ValueError("Initializer type '%s' and explicit dtype '%s' don't match."
                             % (init_dtype.name, dtype.name))
        vdtype = dtype or init_dtype
        initial_value = _dtypes.to_array(initializer, vdtype)
        initial_dtype = vdtype.as_datatype_enum
        shape = None
    elif initializer is not None:
        if isinstance(initializer, init_ops.InitializedValue):
            # Like a tensor initial value: shape and dtype are the source's.
            if shape is None:
                shape = initializer.source.shape
            if dtype is None:
                dtype = initializer.source.dtype
        resolved = dtype
        if resolved is None:
            scope_dtype = sess._s.current_scope().dtype
            resolved = _dtypes.as_dtype(scope_dtype) if scope_dtype else _dtypes.float32
        if callable(initializer) and not isinstance(
                initializer, (init_ops.Initializer, _psclient.InitializerSpec, type)):
            raise TypeError("initializer must be a psclient initializer or a value, got %r"
                            % (initializer,))
        spec = init_ops.as_spec(initializer, None if shape is None else list(shape), resolved)
    variable = Variable._wrap(sess, sess._s.get_variable(
        name, None if shape is None else [int(d) for d in shape],
        dtype.as_datatype_enum if dtype is not None else 0, spec, initial_value, initial_dtype,
        partitioned_variables.as_spec(partitioner), _reuse_arg(reuse), trainable,
        list(collections or []), bool(initialize), _caller(),
        None if caching_device is None else _device_string(caching_device)))
    variable._validate_shape = bool(validate_shape)
    if regularizer is not None:
        from . import regularizers  # imports this module
        regularizers._record(sess, variable, regularizer)
    return variable


def get_local_variable(name, shape=None, dtype=None, initializer=None, regularizer=None,
                       trainable=False, collections=None, caching_device=None, partitioner=None,
                       validate_shape=True, custom_getter=None, session=None, **kwargs):
    """tf.get_local_variable: get_variable in LOCAL_VARIABLES (not
    GLOBAL_VARIABLES), not trainable."""
    collections = list(collections or []) + [GraphKeys.LOCAL_VARIABLES]
    return get_variable(name, shape=shape, dtype=dtype, initializer=initializer,
                        regularizer=regularizer, trainable=trainable, collections=collections,
                        caching_device=caching_device, partitioner=partitioner,
                        validate_shape=validate_shape, custom_getter=custom_getter,
                        session=session, **kwargs)


def _device_string(caching_device):
    """tf's caching_device: a device string, or a callable of the op (which
    has no meaning here: any callable caches)."""
    if callable(caching_device):
        return "callable"
    return str(caching_device)


# ---------------------------------------------------------------------------
# Collections and initialization

class GraphKeys:
    GLOBAL_VARIABLES = "variables"
    VARIABLES = "variables"
    TRAINABLE_VARIABLES = "trainable_variables"
    LOCAL_VARIABLES = "local_variables"
    MOVING_AVERAGE_VARIABLES = "moving_average_variables"
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
    return [Variable._wrap(sess, v) for v in sess._s.list_variables(key)]


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

"""get_variable and variable scopes: the tf.compat.v1 naming API over a
psd session. All naming rules (scope paths, reuse checks, default names) are
the coordinator's; this module maps Python arguments to the C++ client and
keeps the scope defaults that are Python objects (initializers,
regularizers, custom getters).
"""

import functools

import numpy as np

from . import _psclient
from . import dtypes as _dtypes
from . import errors
from . import init_ops
from . import partitioned_variables
from .session import _session_of
from .variables import GraphKeys, Variable, _caller


class _AutoReuse:
    def __repr__(self):
        return "psclient.AUTO_REUSE"

    def __reduce__(self):
        return "AUTO_REUSE"


AUTO_REUSE = _AutoReuse()


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



class VariableScope:
    """A variable scope (TensorFlow's VariableScope object). Returned by
    ``with variable_scope(...) as scope`` and get_variable_scope(); pass it to
    variable_scope() to re-enter it anywhere.

    Name, reuse and dtype are the coordinator's (the C++ session's scope);
    the defaults that are Python objects (initializer, regularizer,
    partitioner, caching_device, custom_getter) are kept here, inherited by
    the scopes entered inside it and changed with the set_* methods.

    TensorFlow's constructor makes a scope that is not entered yet:
    ``VariableScope(reuse, name="outer/inner", initializer=...)`` describes
    the scope at that full name with those defaults; ``variable_scope(it)``
    enters it (wherever the caller is), as it re-enters a captured one.
    name_scope is what original_name_scope returns."""

    def __init__(self, reuse, name="", initializer=None, regularizer=None, caching_device=None,
                 partitioner=None, custom_getter=None, name_scope="", dtype=_dtypes.float32,
                 use_resource=None, constraint=None, session=None):
        if constraint is not None:
            raise errors.UnimplementedError(
                None, None, "VariableScope(constraint=%r): psd applies no projection after "
                "optimizer updates" % (constraint,))
        if not isinstance(name, str):
            raise TypeError("VariableScope: name must be a string, got %r" % (name,))
        _check_custom_getter(custom_getter)
        spec = partitioned_variables.as_spec(partitioner)
        caching = "" if caching_device is None else _device_string(caching_device)
        code = _reuse_arg(reuse)
        captured = _psclient.CapturedScope(
            name, _psclient.REUSE_FALSE if code is None else code, spec,
            _dtypes.as_dtype(dtype if dtype is not None else _dtypes.float32)
            .as_datatype_enum, caching)
        given = {"initializer": initializer, "regularizer": regularizer,
                 "caching_device": caching_device, "partitioner": spec,
                 "custom_getter": custom_getter}
        self._init(session, None, captured, {k: v for k, v in given.items() if v is not None})
        self._name_scope = name_scope
        self._use_resource = use_resource

    @classmethod
    def _make(cls, session, handle, captured, defaults=None):
        """A scope entered through variable_scope (handle) or the root."""
        scope = cls.__new__(cls)
        scope._init(session, handle, captured, defaults)
        return scope

    def _init(self, session, handle, captured, defaults):
        self._session = session
        self._handle = handle        # the extension's Scope; None for the root
        self._captured = captured    # CapturedScope as of entry (or as made)
        self._defaults = dict(defaults or {})
        self._name_scope = None      # TensorFlow's name_scope, when made with one
        self._use_resource = None

    @property
    def use_resource(self):
        return self._use_resource

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
        if self._name_scope is not None:
            return self._name_scope
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
        elif self._captured is not None:
            # A scope made with the constructor, not entered: it reuses
            # when entered.
            self._captured = self._captured.with_reuse()
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
        self._scope = VariableScope._make(sess, handle, handle.captured, defaults)
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
    return VariableScope._make(sess, None, None, None)


def _is_constant(initializer):
    """Whether get_variable's initializer is a value (numpy array, list,
    scalar) rather than an initializer."""
    return initializer is not None and not isinstance(
        initializer, (init_ops.Initializer, _psclient.InitializerSpec, type)) and not callable(
            initializer)


def get_variable(name, shape=None, dtype=None, initializer=None, regularizer=None, trainable=None,
                 collections=None, caching_device=None, partitioner=None, validate_shape=True,
                 use_resource=None, custom_getter=None, constraint=None, synchronization=None,
                 aggregation=None, reuse=None, initialize=False, replication=None, session=None):
    """tf.get_variable: the variable `name` under the current scope, created
    (uninitialized, as in TensorFlow: see global_variables_initializer) or
    reused by the scope's reuse rule. Naming and reuse errors are ValueErrors
    (errors.VariableExistsError, VariableNotFoundError, InvalidVariableError).

    `initializer` is a psclient initializer or a constant value (numpy array,
    list, scalar: then `shape` comes from it, and an explicit `dtype` must be
    the value's). Unset arguments come from the enclosing variable_scope.
    `regularizer` (value -> loss or None) is recorded, for a variable this
    session creates or first gets, in the session's REGULARIZATION_LOSSES
    (see psclient.get_regularization_loss). `replication` (1 to 3; unset:
    the cluster's) is how many shards hold each part (docs/replication.md).
    With a custom getter (this call's, or the scopes'), it is called as
    custom_getter(getter, name, **kwargs) with the variable's full name.
    """
    sess = _session_of(session)
    scope = sess._scopes[-1] if sess._scopes else None
    _check_custom_getter(custom_getter)
    kwargs = dict(shape=shape, dtype=dtype, initializer=initializer, regularizer=regularizer,
                  trainable=trainable, collections=collections, caching_device=caching_device,
                  partitioner=partitioner, validate_shape=validate_shape, reuse=reuse,
                  initialize=initialize)
    if replication is not None:
        kwargs["replication"] = replication
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
                 validate_shape=True, reuse=None, initialize=False, replication=None, **unused):
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
        None if caching_device is None else _device_string(caching_device),
        None if replication is None else int(replication)))
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



"""tf.make_template: a function that creates its variables the first time it
is called and reuses them after."""

from .session import _session_of
from .scopes import variable_scope
from .variables import GraphKeys, get_collection


class Template:
    """What make_template returns. The scope is a new, uniquely named one
    (`name_`, `name__1`, ... unless `unique_name_` gives it), entered at the
    first call or, with create_scope_now_, at construction (then the first
    call re-enters it without reuse). Every call after a successful first
    one re-enters it with reuse=True, and raises ValueError if the function
    created a trainable psclient.Variable then (it would be a new variable
    at each call). A first call that fails leaves the template uncreated: the
    next call is a first call again.
    """

    def __init__(self, name, func, create_scope_now=False, unique_name=None,
                 custom_getter=None, session=None, **kwargs):
        if name is None:
            raise ValueError("name cannot be None.")
        if not callable(func):
            raise TypeError("make_template: func_ must be callable, got %r" % (func,))
        self._name = name
        self._func = func
        self._kwargs = kwargs
        self._unique_name = unique_name
        self._custom_getter = custom_getter
        self._session = session
        self._scope = None
        self._variables_created = False
        if create_scope_now:
            with self._new_scope() as vs:
                self._scope = vs

    def _new_scope(self):
        return variable_scope(self._unique_name, default_name=self._name,
                              custom_getter=self._custom_getter, session=self._session)

    def _call(self, args, kwargs, after_first):
        sess = _session_of(self._session)
        created_before = sess._s.trainable_variables_created
        kw = dict(self._kwargs)
        kw.update(kwargs)
        result = self._func(*args, **kw)
        if after_first and sess._s.trainable_variables_created != created_before:
            raise ValueError(
                "Trainable variable created when calling a template after the first time, "
                "perhaps you used psclient.Variable when you meant psclient.get_variable "
                "(template %r, scope %r)" % (self._name, self._scope.name))
        self._variables_created = True
        return result

    def __call__(self, *args, **kwargs):
        if self._scope is None:
            with self._new_scope() as vs:
                self._scope = vs
                return self._call(args, kwargs, after_first=False)
        if self._variables_created:
            with variable_scope(self._scope, reuse=True, session=self._session):
                return self._call(args, kwargs, after_first=True)
        with variable_scope(self._scope, session=self._session):
            return self._call(args, kwargs, after_first=False)

    @property
    def name(self):
        return self._name

    @property
    def func(self):
        return self._func

    @property
    def variable_scope(self):
        return self._scope

    @property
    def variable_scope_name(self):
        return self._scope.name if self._scope is not None else None

    def _collection(self, key):
        if self._scope is None:
            return []
        prefix = self._scope.name + "/"
        return [v for v in get_collection(key, self._session)
                if v.full_name.startswith(prefix)]

    @property
    def global_variables(self):
        """The global variables under the template's scope."""
        return self._collection(GraphKeys.GLOBAL_VARIABLES)

    @property
    def trainable_variables(self):
        return self._collection(GraphKeys.TRAINABLE_VARIABLES)

    @property
    def non_trainable_variables(self):
        trainable = {v.full_name for v in self.trainable_variables}
        return [v for v in self.global_variables if v.full_name not in trainable]

    @property
    def local_variables(self):
        return self._collection(GraphKeys.LOCAL_VARIABLES)

    @property
    def variables(self):
        """Global and local variables under the template's scope."""
        return self.global_variables + self.local_variables

    trainable_weights = trainable_variables
    non_trainable_weights = non_trainable_variables
    weights = variables


def make_template(name_, func_, create_scope_now_=False, unique_name_=None, custom_getter_=None,
                  **kwargs):
    """tf.make_template(name_, func_, create_scope_now_=False, **kwargs): see
    Template. `kwargs` are passed to every call of func_ (a call's own
    keyword arguments take precedence); `session` is taken by the template
    itself, not passed on."""
    session = kwargs.pop("session", None)
    if custom_getter_ is not None and not callable(custom_getter_):
        raise ValueError("custom_getter_ must be callable, got %r" % (custom_getter_,))
    return Template(name_, func_, create_scope_now=create_scope_now_, unique_name=unique_name_,
                    custom_getter=custom_getter_, session=session, **kwargs)


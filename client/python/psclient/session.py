"""Sessions: a trainer's connection to the psd coordinator, playing the role
of a TensorFlow graph (per-session naming and reuse rules; variables shared
across sessions by name). ``psclient.connect`` opens one and makes it the
default that module-level functions (get_variable, variable_scope, ...) use.

    with psclient.connect("127.0.0.1:7070") as cluster:   # closed at the end
        w = psclient.get_variable("w", shape=[10, 4])
        psclient.global_variables_initializer()

    # A TLS cluster with bearer tokens (scripts/make-test-certs.sh):
    psclient.connect("psd-0:7070", tls_ca="ca.pem", token_file="trainer.token")

A session is safe to use from several threads; like a TensorFlow graph, build
the model (scopes, get_variable) from one thread.
"""

import os
import socket
import threading

from . import _psclient
from . import errors

_default_lock = threading.Lock()
_default_stack = []  # Sessions; the last one is the default


class Session:
    """An open session with the coordinator (TensorFlow's graph)."""

    def __init__(self, address, client=None, timeout=None, retry_budget=None, tls_ca=None,
                 tls_cert=None, tls_key=None, token_file=None):
        if client is None:
            client = "%s pid %d (python)" % (socket.gethostname(), os.getpid())
        # Checked by the C++ client when the channel is built: a token or a
        # client certificate without tls_ca is InvalidArgumentError (tokens
        # never travel in clear text), an unreadable file names itself.
        self._security = _psclient.ChannelSecurity(
            _path(tls_ca, "tls_ca"), _path(tls_cert, "tls_cert"), _path(tls_key, "tls_key"),
            _path(token_file, "token_file"))
        self._s = _psclient.Session.open(address, client, float(timeout or 0),
                                         -1.0 if retry_budget is None else float(retry_budget),
                                         self._security)
        self._address = address
        # Python-side state of entered scopes (their initializers), innermost
        # last; the C++ session keeps the scope stack itself.
        self._scopes = []
        # REGULARIZATION_LOSSES: by full name, the regularizer this session's
        # get_variable gave each variable (regularizers.py).
        self._regularization = {}
        self._made_default = False

    @property
    def address(self):
        return self._address

    @property
    def security(self):
        """The TLS and token files this session's channels use (a
        _psclient.ChannelSecurity); savers and optimizers reuse them."""
        return self._security

    @property
    def id(self):
        return self._s.id

    @property
    def closed(self):
        return self._s.closed

    def close(self):
        """Closes the session (variables stay on the cluster). Variables of this
        session fail with FailedPreconditionError afterwards. Idempotent."""
        self._s.close()
        self._scopes.clear()
        with _default_lock:
            if self in _default_stack:
                _default_stack.remove(self)

    def as_default(self):
        """Context manager making this the default session (not closing it)."""
        return _AsDefault(self)

    def list_shards(self):
        """The coordinator's view of the shards: a list of dicts."""
        return self._s.list_shards()

    def lookup_variable(self, full_name):
        """A variable by full name ("scope/v", no ":0"), outside the naming rules."""
        from .variables import Variable
        return Variable._wrap(self, self._s.lookup_variable(full_name))

    def delete_variable(self, full_name):
        """Admin: deletes a variable and its parts."""
        self._s.delete_variable(full_name)

    def __enter__(self):
        if not self._made_default:
            _push_default(self)
            self._made_default = True
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __repr__(self):
        return "<psclient.Session %s%s>" % (self._address, " closed" if self.closed else "")


def _path(value, what):
    if value is None:
        return ""
    try:
        return os.fsdecode(value)
    except TypeError:
        raise TypeError("%s must be a path (str, bytes or os.PathLike), got %r"
                        % (what, value)) from None


class _AsDefault:
    def __init__(self, session):
        self._session = session

    def __enter__(self):
        _push_default(self._session)
        return self._session

    def __exit__(self, *exc):
        with _default_lock:
            for i in range(len(_default_stack) - 1, -1, -1):
                if _default_stack[i] is self._session:
                    del _default_stack[i]
                    break
        return False


def _push_default(session):
    with _default_lock:
        _default_stack.append(session)


def connect(address, client=None, timeout=None, retry_budget=None, tls_ca=None, tls_cert=None,
            tls_key=None, token_file=None):
    """Opens a session with the coordinator at "host:port" and makes it the
    default. Returns the Session, also a context manager that closes it.

    TLS and bearer tokens, as psctl's --tls-ca/--tls-cert/--tls-key/--token-file:
    ``tls_ca`` (PEM roots that sign the servers' certificates) turns TLS on
    for the coordinator and every shard; ``tls_cert`` and ``tls_key`` add a
    client certificate (mutual TLS); ``token_file`` holds the bearer token
    (the token alone, or "<role> <token>" lines: the first is sent). A
    server that wants a token answers UnauthenticatedError without one and
    PermissionDeniedError when its role may not call the rpc."""
    session = Session(address, client=client, timeout=timeout, retry_budget=retry_budget,
                      tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key, token_file=token_file)
    _push_default(session)
    session._made_default = True
    return session


def get_default_session():
    """The default session; FailedPreconditionError when none is open."""
    with _default_lock:
        if _default_stack:
            return _default_stack[-1]
    raise errors.FailedPreconditionError(
        None, None, "no psclient session: call psclient.connect('host:port') first")


def _session_of(session):
    return session if session is not None else get_default_session()


def set_random_seed(seed, session=None):
    """tf.set_random_seed: the graph-level seed of `session` (the default
    one when None); None removes it. Random initializers declared after it
    get a seed derived from it and their own seed (or, without one, from
    the order of declarations in the session), so a program run twice gets
    the same values on any cluster. Without a graph seed an initializer's
    own seed is used as given, and one with no seed at all gets a seed the
    coordinator draws (every variable different)."""
    _session_of(session)._s.set_random_seed(None if seed is None else int(seed))

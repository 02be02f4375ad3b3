"""psclient.errors: TensorFlow's exception classes for psd's status codes.

Every error from the cluster is an ``OpError`` subclass named as in
``tf.errors`` and carrying ``.code`` (the gRPC / absl code number, as
``tf.errors`` codes) and ``.message``. Naming and reuse errors raised by
``get_variable``, ``Variable(...)`` and ``variable_scope`` (a name that exists
without reuse, reuse of a missing name, a conflicting declaration, an invalid
scope name) are also ``ValueError``s, as TensorFlow raised ValueError for
them, so ``except ValueError`` keeps working::

    try:
        psclient.get_variable("v", shape=[2])
    except ValueError as e:           # VariableExistsError: AlreadyExistsError too
        print(e.code == psclient.errors.ALREADY_EXISTS, e.message)
"""

OK = 0
CANCELLED = 1
UNKNOWN = 2
INVALID_ARGUMENT = 3
DEADLINE_EXCEEDED = 4
NOT_FOUND = 5
ALREADY_EXISTS = 6
PERMISSION_DENIED = 7
RESOURCE_EXHAUSTED = 8
FAILED_PRECONDITION = 9
ABORTED = 10
OUT_OF_RANGE = 11
UNIMPLEMENTED = 12
INTERNAL = 13
UNAVAILABLE = 14
DATA_LOSS = 15
UNAUTHENTICATED = 16


class OpError(Exception):
    """An error from a psd operation (TensorFlow's tf.errors.OpError)."""

    def __init__(self, node_def, op, message, error_code=UNKNOWN):
        # TensorFlow's signature; psd has no node_def/op (always None).
        super().__init__(message)
        self._message = message
        self._code = error_code
        self._node_def = node_def
        self._op = op

    @property
    def message(self):
        return self._message

    @property
    def code(self):
        return self._code

    @property
    def node_def(self):
        return self._node_def

    @property
    def op(self):
        return self._op

    def __str__(self):
        return self._message

    def __reduce__(self):
        return (type(self), (self._node_def, self._op, self._message))


def _define(name, code, doc):
    def __init__(self, node_def, op, message, *args):
        OpError.__init__(self, node_def, op, message, code)

    cls = type(name, (OpError,), {"__init__": __init__, "__doc__": doc, "__module__": __name__})
    return cls


CancelledError = _define("CancelledError", CANCELLED, "The operation was cancelled.")
UnknownError = _define("UnknownError", UNKNOWN, "Unknown error.")
InvalidArgumentError = _define(
    "InvalidArgumentError", INVALID_ARGUMENT,
    "Bad shape, dtype, index or bytes; a conflicting declaration.")
DeadlineExceededError = _define("DeadlineExceededError", DEADLINE_EXCEEDED,
                                "The deadline expired before the operation completed.")
NotFoundError = _define("NotFoundError", NOT_FOUND, "No such variable.")
AlreadyExistsError = _define("AlreadyExistsError", ALREADY_EXISTS,
                             "The variable exists (create without reuse).")
PermissionDeniedError = _define("PermissionDeniedError", PERMISSION_DENIED,
                                "The caller's role may not run the operation.")
UnauthenticatedError = _define("UnauthenticatedError", UNAUTHENTICATED,
                               "No valid credentials.")
ResourceExhaustedError = _define("ResourceExhaustedError", RESOURCE_EXHAUSTED,
                                 "A shard's memory limit was reached.")
FailedPreconditionError = _define("FailedPreconditionError", FAILED_PRECONDITION,
                                  "E.g. reading an uninitialized variable.")
AbortedError = _define("AbortedError", ABORTED,
                       "Stale handle, request id too old, fence timeout.")
OutOfRangeError = _define("OutOfRangeError", OUT_OF_RANGE, "E.g. count_up_to at its limit.")
UnimplementedError = _define("UnimplementedError", UNIMPLEMENTED,
                             "The operation is not implemented.")
InternalError = _define("InternalError", INTERNAL, "An internal invariant broke.")
UnavailableError = _define("UnavailableError", UNAVAILABLE, "A shard is down or a part is lost.")
DataLossError = _define("DataLossError", DATA_LOSS, "Corrupt or truncated checkpoint.")


# Naming and reuse errors: the code's class and ValueError (TensorFlow raised
# ValueError from get_variable and variable_scope).
class VariableExistsError(AlreadyExistsError, ValueError):
    """get_variable of an existing name without reuse."""


class VariableNotFoundError(NotFoundError, ValueError):
    """get_variable with reuse=True of a name that does not exist."""


class InvalidVariableError(InvalidArgumentError, ValueError):
    """A declaration that conflicts with the existing variable, or an invalid
    variable or scope name."""


_BY_CODE = {
    CANCELLED: CancelledError,
    UNKNOWN: UnknownError,
    INVALID_ARGUMENT: InvalidArgumentError,
    DEADLINE_EXCEEDED: DeadlineExceededError,
    NOT_FOUND: NotFoundError,
    ALREADY_EXISTS: AlreadyExistsError,
    PERMISSION_DENIED: PermissionDeniedError,
    UNAUTHENTICATED: UnauthenticatedError,
    RESOURCE_EXHAUSTED: ResourceExhaustedError,
    FAILED_PRECONDITION: FailedPreconditionError,
    ABORTED: AbortedError,
    OUT_OF_RANGE: OutOfRangeError,
    UNIMPLEMENTED: UnimplementedError,
    INTERNAL: InternalError,
    UNAVAILABLE: UnavailableError,
    DATA_LOSS: DataLossError,
}

_NAMING = {
    ALREADY_EXISTS: VariableExistsError,
    NOT_FOUND: VariableNotFoundError,
    INVALID_ARGUMENT: InvalidVariableError,
}


def exception_type_from_error_code(error_code):
    """The OpError subclass for a code (tf.errors.exception_type_from_error_code)."""
    return _BY_CODE.get(error_code, UnknownError)


def error_code_from_exception_type(cls):
    for code, c in _BY_CODE.items():
        if issubclass(cls, c):
            return code
    return UNKNOWN


def _from_status(code, message, naming=False):
    """Called by the extension to build the exception of a failed status."""
    cls = (_NAMING.get(code) if naming else None) or exception_type_from_error_code(code)
    return cls(None, None, message)


__all__ = [n for n in list(globals()) if n.endswith("Error") or n.isupper()] + [
    "exception_type_from_error_code", "error_code_from_exception_type"]

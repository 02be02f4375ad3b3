"""psd dtypes as TensorFlow names them, and their numpy dtypes.

``psclient.float32`` ... ``psclient.string`` are ``DType`` objects; every API
that takes a dtype also accepts a numpy dtype (``np.float16``), a numpy dtype
name (``"int64"``) or a Python type (``float`` -> float32 as in TensorFlow,
``int`` -> int32, ``bool``, ``bytes``/``str`` -> string).

numpy mapping: float16 <-> DT_HALF, bool <-> DT_BOOL (one byte each),
string <-> object arrays of ``bytes`` (str is accepted going in, UTF-8).
bfloat16 has no numpy dtype (and psclient does not depend on ml_dtypes): a
bfloat16 variable reads as a **uint16 array of the raw bfloat16 bits**;
writes take such a uint16 array, or any floating array, which is rounded to
bfloat16 (nearest even) in numpy. ``bfloat16_to_float32`` and
``float32_to_bfloat16`` convert between the two views.
"""

import numpy as np

from . import _psclient


class DType:
    """A psd element type (TensorFlow's tf.DType)."""

    __slots__ = ("_enum", "_name")

    def __init__(self, enum, name):
        self._enum = enum
        self._name = name

    @property
    def name(self):
        return self._name

    @property
    def as_datatype_enum(self):
        """The wire / TensorFlow DataType number (DT_FLOAT = 1, ...)."""
        return self._enum

    @property
    def as_numpy_dtype(self):
        """The numpy type; bfloat16 -> uint16 (raw bits), string -> object."""
        return _psclient.numpy_dtype(self._enum).type

    @property
    def np(self):
        return _psclient.numpy_dtype(self._enum)

    @property
    def size(self):
        return _psclient.dtype_size(self._enum)

    @property
    def is_floating(self):
        return _psclient.dtype_is_floating(self._enum)

    @property
    def is_integer(self):
        return _psclient.dtype_is_integer(self._enum)

    @property
    def is_numeric(self):
        return _psclient.dtype_is_numeric(self._enum)

    @property
    def is_bool(self):
        return self is bool_

    def __eq__(self, other):
        try:
            return self is as_dtype(other)
        except TypeError:
            return NotImplemented

    def __ne__(self, other):
        r = self.__eq__(other)
        return r if r is NotImplemented else not r

    def __hash__(self):
        return hash(self._enum)

    def __repr__(self):
        return "psclient." + self._name

    def __reduce__(self):
        return (as_dtype, (self._name,))


_BY_NAME = {name: DType(enum, name) for name, enum in _psclient.DTYPES.items()}
_BY_ENUM = {d.as_datatype_enum: d for d in _BY_NAME.values()}

float32 = _BY_NAME["float32"]
float64 = _BY_NAME["float64"]
float16 = _BY_NAME["float16"]
bfloat16 = _BY_NAME["bfloat16"]
int8 = _BY_NAME["int8"]
int16 = _BY_NAME["int16"]
int32 = _BY_NAME["int32"]
int64 = _BY_NAME["int64"]
uint8 = _BY_NAME["uint8"]
bool_ = _BY_NAME["bool"]
string = _BY_NAME["string"]
half = float16
double = float64

_ALIASES = {"float": float32, "double": float64, "half": float16, "bool_": bool_,
            "str": string, "bytes": string, "object": string}
_PY_TYPES = {float: float32, int: int32, bool: bool_, bytes: string, str: string}
_NP_KINDS = {
    ("f", 2): float16, ("f", 4): float32, ("f", 8): float64,
    ("i", 1): int8, ("i", 2): int16, ("i", 4): int32, ("i", 8): int64,
    ("u", 1): uint8, ("b", 1): bool_,
}


def as_dtype(value):
    """The DType of a DType, a numpy dtype/type, a name, an enum or a Python type."""
    if isinstance(value, DType):
        return value
    if isinstance(value, str):
        d = _BY_NAME.get(value) or _ALIASES.get(value)
        if d is not None:
            return d
    if isinstance(value, int) and not isinstance(value, bool) and value in _BY_ENUM:
        return _BY_ENUM[value]
    if isinstance(value, type) and value in _PY_TYPES:
        return _PY_TYPES[value]
    try:
        npd = np.dtype(value)
    except TypeError:
        raise TypeError("cannot convert %r to a psclient dtype" % (value,)) from None
    if npd.kind in ("O", "S", "U"):
        return string
    d = _NP_KINDS.get((npd.kind, npd.itemsize))
    if d is None:
        raise TypeError("numpy dtype %s has no psd dtype (psd stores %s)"
                        % (npd, ", ".join(sorted(_BY_NAME))))
    return d


def bfloat16_to_float32(bits):
    """uint16 bfloat16 bits -> float32 values (exact)."""
    bits = np.asarray(bits, dtype=np.uint16)
    return (bits.astype(np.uint32) << 16).view(np.float32)


def float32_to_bfloat16(values):
    """Floating values -> uint16 bfloat16 bits, rounded to nearest even (NaN kept)."""
    f = _contiguous(np.asarray(values, dtype=np.float32))
    u = f.view(np.uint32)
    rounded = ((u + np.uint32(0x7FFF) + ((u >> 16) & np.uint32(1))) >> 16).astype(np.uint16)
    nan = np.isnan(f)
    if nan.any():
        rounded[nan] = ((u[nan] >> 16) | np.uint32(0x40)).astype(np.uint16)
    return rounded


def to_array(value, dtype):
    """`value` as a C-contiguous numpy array of `dtype`'s numpy dtype, the form
    the extension takes (data ops read it in place; kept values are copied
    once). No copy when it already is one.

    numpy arrays of another dtype are cast when numpy's 'same_kind' rule allows
    it (float64 -> float32, int -> float, ...); so are Python scalars and
    lists, by the dtype numpy gives them, as TensorFlow converts them: None,
    a str or a float where a number or an int is wanted is a TypeError (never
    a NaN or a truncated value), and a Python int outside an integer dtype's
    range is a ValueError (never wrapped). Strings become object arrays of
    bytes/str.
    """
    dtype = as_dtype(dtype)
    if dtype is string:
        return _contiguous(np.asarray(value, dtype=object))
    if dtype is bfloat16:
        arr = np.asarray(value)
        if arr.dtype == np.uint16:
            return _contiguous(arr)
        return float32_to_bfloat16(arr)
    target = dtype.np
    kind = type(value)
    if (kind is float or kind is int) and target.kind in "fiu":
        # The common scalar (assign_add(1)), without numpy's round trip
        # through a default dtype: a float into a float dtype, an int into
        # any number dtype in range.
        if kind is int and target.kind != "f":
            low, high = _int_range(target)
            if not low <= value <= high:
                raise ValueError("%d is outside the range of %s [%d, %d]"
                                 % (value, dtype.name, low, high))
        elif kind is float and target.kind != "f":
            raise TypeError("cannot convert a float value to %s" % dtype.name)
        return np.asarray(value, dtype=target)
    arr = value if isinstance(value, np.ndarray) else np.asarray(value)
    if arr.dtype == target:
        return _contiguous(arr)
    # Integers given as Python values (numpy gave them int64 or uint64, or
    # they were numpy scalars) go to any integer dtype they fit, signed or
    # not; everything else by numpy's 'same_kind' rule.
    given_ints = arr is not value and arr.dtype.kind in "iu" and target.kind in "iu"
    if not given_ints and not np.can_cast(arr.dtype, target, "same_kind"):
        what = "None" if value is None else "a %s %s" % (
            arr.dtype, "array" if isinstance(value, np.ndarray) else "value")
        raise TypeError("cannot convert %s to %s" % (what, dtype.name))
    if given_ints and arr.size > 0:
        low, high = _int_range(target)
        if arr.ndim == 0:
            lowest = highest = int(arr)
        else:
            lowest, highest = int(arr.min()), int(arr.max())
        if lowest < low or highest > high:
            raise ValueError("%d is outside the range of %s [%d, %d]"
                             % (lowest if lowest < low else highest, dtype.name, low, high))
    return _contiguous(arr.astype(target, copy=False))


_INT_RANGES = {}


def _int_range(np_dtype):
    """(min, max) of an integer numpy dtype, as Python ints (cached: np.iinfo
    is slow next to a scalar op)."""
    r = _INT_RANGES.get(np_dtype)
    if r is None:
        info = np.iinfo(np_dtype)
        r = _INT_RANGES[np_dtype] = (int(info.min), int(info.max))
    return r


def _contiguous(arr):
    # np.ascontiguousarray would turn a scalar into shape [1].
    return arr if arr.flags.c_contiguous else arr.copy(order="C")


def infer_dtype(value):
    """The DType of an initial value (numpy arrays keep theirs; Python floats
    become float32 and ints int32, as in TensorFlow)."""
    if isinstance(value, np.ndarray) or isinstance(value, np.generic):
        return as_dtype(value.dtype)
    arr = np.asarray(value)
    if arr.dtype.kind == "f":
        return float32
    if arr.dtype.kind in "iu" and arr.dtype.itemsize == 8:
        info = np.iinfo(np.int32)
        if arr.size == 0 or (arr.min() >= info.min and arr.max() <= info.max):
            return int32
        return int64
    return as_dtype(arr.dtype)

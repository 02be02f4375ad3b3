"""Initializers by their TensorFlow names. The shard computes the values
(Philox keyed by seed and element index, so a partitioned variable's parts
hold exactly the unpartitioned values); Python only describes them.

An initializer is resolved to the extension's InitializerSpec when a variable
is declared, once its shape and dtype are known (``spec(shape, dtype)``).
"""

import math
import numbers

import numpy as np

from . import _psclient
from . import dtypes as _dtypes


class Initializer:
    """Base class; subclasses implement spec(shape, dtype)."""

    def spec(self, shape, dtype):
        raise NotImplementedError

    def get_config(self):
        return dict(vars(self))

    def __repr__(self):
        return "%s(%s)" % (type(self).__name__,
                           ", ".join("%s=%r" % kv for kv in self.get_config().items()))


def _seed(seed):
    return 0 if seed is None else int(seed)


def _is_dtype_like(value):
    try:
        _dtypes.as_dtype(value)
    except TypeError:
        return False
    return not isinstance(value, (list, tuple, np.ndarray, numbers.Integral)) or isinstance(
        value, _dtypes.DType)


class _Filled(Initializer):
    """zeros_initializer and ones_initializer: TensorFlow 0.x called them as
    zeros_initializer(shape, dtype), giving the value; later TensorFlow as
    zeros_initializer(dtype), giving an initializer. Both forms work: with a
    shape the value (a numpy array) is returned."""

    _fill = 0

    def __new__(cls, shape=None, dtype=None):
        if shape is not None and not _is_dtype_like(shape):
            np_dtype = _dtypes.as_dtype(dtype if dtype is not None else _dtypes.float32).np
            return np.full([int(d) for d in shape], cls._fill, np_dtype)
        return super().__new__(cls)

    def __init__(self, shape=None, dtype=None):
        self.dtype = shape if dtype is None else dtype


class Zeros(_Filled):
    _fill = 0

    def spec(self, shape, dtype):
        return _psclient.init_zeros()


class Ones(_Filled):
    _fill = 1

    def spec(self, shape, dtype):
        return _psclient.init_ones()


class Constant(Initializer):
    """A scalar (broadcast) or an array of the variable's full shape."""

    def __init__(self, value=0, dtype=None, verify_shape=False):
        self.value = value
        self.dtype = dtype
        self.verify_shape = verify_shape

    def spec(self, shape, dtype):
        dtype = _dtypes.as_dtype(dtype)
        value = np.asarray(self.value)
        if value.ndim > 0 and shape is not None and list(value.shape) != list(shape):
            if self.verify_shape or value.size != int(np.prod(shape, dtype=np.int64)):
                raise TypeError("constant_initializer: value of shape %s for a variable of shape %s"
                                % (list(value.shape), list(shape)))
            value = value.reshape(shape)
        return _psclient.init_constant(_dtypes.to_array(value, dtype), dtype.as_datatype_enum)


class RandomUniform(Initializer):
    def __init__(self, minval=0.0, maxval=None, seed=None, dtype=None):
        self.minval = minval
        self.maxval = maxval
        self.seed = seed
        self.dtype = dtype

    def spec(self, shape, dtype):
        maxval = self.maxval
        if maxval is None:  # TensorFlow: 1 for floats; integers need maxval
            maxval = 1.0
        return _psclient.init_random_uniform(float(self.minval), float(maxval), _seed(self.seed))


class RandomNormal(Initializer):
    def __init__(self, mean=0.0, stddev=1.0, seed=None, dtype=None):
        self.mean = mean
        self.stddev = stddev
        self.seed = seed
        self.dtype = dtype

    def spec(self, shape, dtype):
        return _psclient.init_random_normal(float(self.mean), float(self.stddev), _seed(self.seed))


class TruncatedNormal(RandomNormal):
    def spec(self, shape, dtype):
        return _psclient.init_truncated_normal(float(self.mean), float(self.stddev),
                                               _seed(self.seed))


class UniformUnitScaling(Initializer):
    """Uniform in [-limit, limit), limit = factor * sqrt(3 / input size),
    the input size taken from `full_shape` when given (TensorFlow: the whole
    variable's shape, for a variable initialized in slices), else from the
    variable's shape (a partitioned variable's parts use the whole shape)."""

    def __init__(self, factor=1.0, seed=None, dtype=None, full_shape=None):
        self.factor = factor
        self.seed = seed
        self.dtype = dtype
        self.full_shape = None if full_shape is None else [int(d) for d in full_shape]

    def spec(self, shape, dtype):
        scaling_shape = self.full_shape if self.full_shape is not None else shape
        return _psclient.init_uniform_unit_scaling(float(self.factor), _seed(self.seed),
                                                   list(scaling_shape or []))


def _fans(shape):
    shape = list(shape or [])
    if not shape:
        return 1.0, 1.0
    if len(shape) == 1:
        return float(shape[0]), float(shape[0])
    receptive = float(np.prod(shape[:-2])) if len(shape) > 2 else 1.0
    return shape[-2] * receptive, shape[-1] * receptive


class VarianceScaling(Initializer):
    """tf.variance_scaling_initializer; needs the shape, so the limits are
    computed here and the shard draws uniform / truncated normal values."""

    def __init__(self, scale=1.0, mode="fan_in", distribution="truncated_normal", seed=None,
                 dtype=None):
        if mode not in ("fan_in", "fan_out", "fan_avg"):
            raise ValueError("mode must be fan_in, fan_out or fan_avg, got %r" % (mode,))
        if distribution == "normal":
            distribution = "truncated_normal"
        if distribution not in ("truncated_normal", "untruncated_normal", "uniform"):
            raise ValueError("invalid distribution %r" % (distribution,))
        self.scale = scale
        self.mode = mode
        self.distribution = distribution
        self.seed = seed
        self.dtype = dtype

    def spec(self, shape, dtype):
        fan_in, fan_out = _fans(shape)
        n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2.0}[self.mode]
        scale = self.scale / max(1.0, n)
        if self.distribution == "uniform":
            limit = math.sqrt(3.0 * scale)
            return _psclient.init_random_uniform(-limit, limit, _seed(self.seed))
        if self.distribution == "untruncated_normal":
            return _psclient.init_random_normal(0.0, math.sqrt(scale), _seed(self.seed))
        # TensorFlow's correction for the truncation at two standard deviations.
        return _psclient.init_truncated_normal(0.0, math.sqrt(scale) / 0.87962566103423978,
                                               _seed(self.seed))


def glorot_uniform_initializer(seed=None, dtype=None):
    return VarianceScaling(1.0, "fan_avg", "uniform", seed, dtype)


def glorot_normal_initializer(seed=None, dtype=None):
    return VarianceScaling(1.0, "fan_avg", "truncated_normal", seed, dtype)


def he_normal(seed=None):
    return VarianceScaling(2.0, "fan_in", "truncated_normal", seed)


def he_uniform(seed=None):
    return VarianceScaling(2.0, "fan_in", "uniform", seed)


def lecun_normal(seed=None):
    return VarianceScaling(1.0, "fan_in", "truncated_normal", seed)


def lecun_uniform(seed=None):
    return VarianceScaling(1.0, "fan_in", "uniform", seed)


# TensorFlow 1.x names.
zeros_initializer = Zeros
ones_initializer = Ones
constant_initializer = Constant
random_uniform_initializer = RandomUniform
random_normal_initializer = RandomNormal
truncated_normal_initializer = TruncatedNormal
uniform_unit_scaling_initializer = UniformUnitScaling
variance_scaling_initializer = VarianceScaling


class InitializedValue(Initializer):
    """``v.initialized_value()`` (TensorFlow's Variable.initialized_value), and
    affine forms of it: ``v.initialized_value() * 2.0 + 1.0``. Usable as
    ``get_variable(..., initializer=...)`` (shape and dtype default to the
    source's) and as ``psclient.Variable(...)``'s initial value.

    The value is computed on the shards when the new variable is initialized:
    the coordinator initializes the source first if it is not initialized
    yet (an initialized source gives its current value), and the new
    variable's shard reads the source's shard directly. The source must have
    the same dtype, shape and partitioning. Only ``x * a + b`` with Python or
    numpy real scalars is supported; anything else raises TypeError.
    """

    # numpy scalars defer to the reflected operators below instead of
    # broadcasting over this object.
    __array_ufunc__ = None

    def __init__(self, source, scale=1.0, offset=0.0):
        self.source = source
        self.scale = float(scale)
        self.offset = float(offset)

    def get_config(self):
        return {"source": self.source.op_name, "scale": self.scale, "offset": self.offset}

    def spec(self, shape, dtype):
        return _psclient.init_from_variable(self.source.op_name, self.scale, self.offset)

    @staticmethod
    def _number(x):
        # numpy's real scalars are numbers.Real too; bools are not numbers here.
        if isinstance(x, (bool, np.bool_)) or not isinstance(x, numbers.Real):
            return None
        return float(x)

    def _affine(self, scale, offset):
        return InitializedValue(self.source, scale, offset)

    def __mul__(self, other):
        k = self._number(other)
        if k is None:
            return NotImplemented
        return self._affine(self.scale * k, self.offset * k)

    __rmul__ = __mul__

    def __truediv__(self, other):
        k = self._number(other)
        if k is None:
            return NotImplemented
        if k == 0:
            raise ZeroDivisionError("initialized_value() / 0")
        return self._affine(self.scale / k, self.offset / k)

    def __add__(self, other):
        k = self._number(other)
        if k is None:
            return NotImplemented
        return self._affine(self.scale, self.offset + k)

    __radd__ = __add__

    def __sub__(self, other):
        k = self._number(other)
        if k is None:
            return NotImplemented
        return self._affine(self.scale, self.offset - k)

    def __rsub__(self, other):
        k = self._number(other)
        if k is None:
            return NotImplemented
        return self._affine(-self.scale, k - self.offset)

    def __neg__(self):
        return self._affine(-self.scale, -self.offset)

    def __pos__(self):
        return self


def as_spec(initializer, shape, dtype):
    """An Initializer, an InitializerSpec, or None (the default) -> spec or None."""
    if initializer is None:
        return None
    if isinstance(initializer, _psclient.InitializerSpec):
        return initializer
    if isinstance(initializer, type) and issubclass(initializer, Initializer):
        initializer = initializer()  # tf accepted the class (zeros_initializer)
    if isinstance(initializer, Initializer):
        return initializer.spec(shape, dtype)
    raise TypeError("initializer must be a psclient initializer, got %r "
                    "(constant values go in initializer=psclient.constant_initializer(x) "
                    "or as a numpy array)" % (initializer,))

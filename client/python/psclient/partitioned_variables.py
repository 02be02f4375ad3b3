"""Partitioners by their TensorFlow names. The coordinator evaluates them
(TensorFlow's part counts) and places the parts; Python only describes them."""

from . import _psclient


def fixed_size_partitioner(num_shards, axis=0):
    return _psclient.partitioner_fixed_size(int(num_shards), int(axis))


def variable_axis_size_partitioner(max_shard_bytes, axis=0, bytes_per_string_element=16,
                                   max_shards=None):
    return _psclient.partitioner_variable_axis_size(int(max_shard_bytes), int(axis),
                                                    int(max_shards or 0),
                                                    int(bytes_per_string_element))


def min_max_variable_partitioner(max_partitions=1, axis=0, min_slice_size=256 << 10,
                                 bytes_per_string_element=16):
    return _psclient.partitioner_min_max(int(max_partitions), int(axis), int(min_slice_size),
                                         int(bytes_per_string_element))


def as_spec(partitioner):
    if partitioner is None or isinstance(partitioner, _psclient.PartitionerSpec):
        return partitioner
    raise TypeError("partitioner must come from psclient.fixed_size_partitioner, "
                    "variable_axis_size_partitioner or min_max_variable_partitioner; got %r"
                    % (partitioner,))

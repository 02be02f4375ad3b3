"""psclient: the Python client of psd, the sharded parameter server.

A thin layer over the C++ client (the ``_psclient`` extension): the naming
model, retries, partitioning and chunking are the C++ client's; this package
adds Python idiom. TensorFlow 1.x names, so porting a tf.Variable-era trainer
is mostly renaming imports::

    import numpy as np
    import psclient

    with psclient.connect("127.0.0.1:7070"):
        with psclient.variable_scope("model", initializer=psclient.zeros_initializer()):
            w = psclient.get_variable("w", shape=[784, 10])
            emb = psclient.get_variable("emb", shape=[10000, 64],
                                        partitioner=psclient.fixed_size_partitioner(2))
        psclient.global_variables_initializer()
        w.assign_sub(0.1 * np.ones([784, 10], np.float32))
        rows = emb.gather([3, 1, 4])         # numpy, shape [3, 64]
        print(w.name, w.shape, w.dtype)      # model/w:0 (784, 10) psclient.float32

Errors are ``psclient.errors.*`` (TensorFlow's classes, subclasses of
OpError); naming and reuse errors are also ValueErrors.
"""

from . import _psclient
from . import errors
from . import train
from .dtypes import (DType, as_dtype, bfloat16, bfloat16_to_float32, bool_, double,
                     float16, float32, float32_to_bfloat16, float64, half, int8, int16, int32,
                     int64, string, uint8)
from .embedding import (CBFFilter, CounterFilter, EmbeddingVariable, EmbeddingVariableOption,
                        GlobalStepEvict, InitializerOption, L2WeightEvict, embedding_lookup,
                        get_embedding_variable)
from .init_ops import (Constant, InitializedValue, Initializer, Ones, RandomNormal, RandomUniform,
                       TruncatedNormal, UniformUnitScaling, VarianceScaling, Zeros,
                       constant_initializer, glorot_normal_initializer,
                       glorot_uniform_initializer, he_normal, he_uniform, lecun_normal,
                       lecun_uniform, ones_initializer, random_normal_initializer,
                       random_uniform_initializer, truncated_normal_initializer,
                       uniform_unit_scaling_initializer, variance_scaling_initializer,
                       zeros_initializer)
from .partitioned_variables import (fixed_size_partitioner, min_max_variable_partitioner,
                                    variable_axis_size_partitioner)
from .session import Session, connect, get_default_session, set_random_seed
from .regularizers import (RegularizationLoss, get_regularization_loss,
                           get_regularization_losses, l1_regularizer, l2_regularizer,
                           no_regularizer, sum_regularizer)
from .templates import Template, make_template
from .scopes import (AUTO_REUSE, VariableScope, get_local_variable, get_variable,
                     get_variable_scope, variable_op_scope, variable_scope)
from .variables import (GraphKeys, IndexedSlices, Variable, VariableDef, all_variables,
                        assert_variables_initialized, get_collection, global_variables,
                        global_variables_initializer, initialize_all_variables,
                        initialize_local_variables, initialize_variables,
                        is_variable_initialized, local_variables, local_variables_initializer,
                        moving_average_variables, report_uninitialized_variables, scatter_add,
                        scatter_sub, scatter_update, sparse_mask, trainable_variables,
                        variables_initializer, wait_for_initialized)

bool = bool_  # noqa: A001  (tf.bool)

__version__ = "0.1.0"

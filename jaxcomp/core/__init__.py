"""The compressor core: protocol, combinators, parameterised leaves, adapters."""

from jaxcomp.core.base import (
    Compressor,
    EmptyState,
    MaskedNode,
    project_params,
    validate_compressor,
)
from jaxcomp.core.combinators import (
    InjectHyperparamsState,
    MaskedState,
    PartitionState,
    chain,
    identity,
    inject_hyperparams,
    masked,
    named_chain,
    partition,
    stateless,
)
from jaxcomp.core.flax_utils import NnxDef, nnx_merge, nnx_split, params_of, unbox
from jaxcomp.core.info import LeafInfo, compression_info
from jaxcomp.core.leaves import (
    Codebook,
    CompressedLeaf,
    LowRank,
    QArray,
    compressed_leaf,
    dtype_bits,
    is_compressed,
    materialize,
    static_field,
)
from jaxcomp.core.optax_bridge import KeepCompressedState, keep_compressed

__all__ = [
    "Codebook",
    "CompressedLeaf",
    "Compressor",
    "EmptyState",
    "InjectHyperparamsState",
    "KeepCompressedState",
    "LeafInfo",
    "LowRank",
    "MaskedNode",
    "MaskedState",
    "NnxDef",
    "PartitionState",
    "QArray",
    "chain",
    "compressed_leaf",
    "compression_info",
    "dtype_bits",
    "identity",
    "inject_hyperparams",
    "is_compressed",
    "keep_compressed",
    "masked",
    "materialize",
    "named_chain",
    "nnx_merge",
    "nnx_split",
    "params_of",
    "partition",
    "project_params",
    "stateless",
    "static_field",
    "unbox",
    "validate_compressor",
]

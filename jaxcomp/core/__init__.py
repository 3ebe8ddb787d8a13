"""The compressor core: protocol, combinators, parameterised leaves, adapters."""

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
from jaxcomp.core.base import Compressor, EmptyState, MaskedNode, validate_compressor
from jaxcomp.core.info import LeafInfo, compression_info
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

__all__ = [
    "Codebook", "CompressedLeaf", "LowRank", "QArray", "compressed_leaf", "dtype_bits",
    "is_compressed", "materialize", "static_field", "Compressor", "EmptyState", "MaskedNode",
    "validate_compressor", "LeafInfo", "compression_info", "InjectHyperparamsState",
    "MaskedState", "PartitionState", "chain", "identity", "inject_hyperparams", "masked",
    "named_chain", "partition", "stateless", "NnxDef", "nnx_merge", "nnx_split", "params_of",
    "unbox",
]

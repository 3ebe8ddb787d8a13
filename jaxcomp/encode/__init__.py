"""Host-side encoders behind storage accounting: Huffman coding and sparse index formats."""

from jaxcomp.encode.huffman import HuffmanCode, entropy_bits, huffman_code
from jaxcomp.encode.sparse import (
    SPARSE_FORMATS,
    Encoded,
    bitmask_encode,
    csr_encode,
    csr_view_shape,
    decode_sparse,
    dense_encode,
    encode_all,
    encode_sparse,
    relative_encode,
)

__all__ = [
    "SPARSE_FORMATS",
    "Encoded",
    "HuffmanCode",
    "bitmask_encode",
    "csr_encode",
    "csr_view_shape",
    "decode_sparse",
    "dense_encode",
    "encode_all",
    "encode_sparse",
    "entropy_bits",
    "huffman_code",
    "relative_encode",
]

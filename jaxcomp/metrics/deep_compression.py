"""Deep Compression's three storage stages: P, P+Q and P+Q+H.

Han et al. report a pruned network's storage after pruning with relative
sparse indices (P), after quantizing the surviving values to shared
centroids (P+Q), and after Huffman coding both streams (P+Q+H).
:func:`deep_compression_report` prices a parameter tree at each stage with
:func:`jaxcomp.metrics.model_size_bytes`.

References:
  Han, Mao, Dally, "Deep compression", arXiv:1510.00149.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from jaxcomp.core.leaves import CompressedLeaf
from jaxcomp.metrics.storage import (
    BASELINE_BITS,
    StorageReport,
    StorageSpec,
    finite_or_none,
    int_field,
    model_size_bytes,
)
from jaxcomp.select.leafrules import LeafRule
from jaxcomp.select.selection import flatten
from jaxcomp.select.selectors import ndim

__all__ = ["DeepCompressionReport", "deep_compression_report"]

def _per_leaf_int(value: Any, name: str, low: int, high: int,
                  pairs: list[tuple[str, Any]]) -> list[int]:
    """One int in ``[low, high]`` per ``(path, leaf)``, from a :func:`jaxcomp.select.per_leaf` rule."""
    return LeafRule(value, what=name, validate=lambda v, label: int_field(label, v, low, high)
                    ).resolve(pairs, noun="selected parameter")


@dataclasses.dataclass(frozen=True)
class DeepCompressionReport:
    """The three Deep Compression stages of one parameter tree.

    Attributes:
      pruned: P, pruning with relative indices, values at 32 bits.
      quantized: P+Q, values as ``weight_bits``-bit indices into a codebook of
        ``2**weight_bits`` 32-bit centroids (when ``codebook=True``).
      huffman: P+Q+H, Huffman coding of values and relative indices (``None``
        if not requested).
    """

    pruned: StorageReport
    quantized: StorageReport
    huffman: StorageReport | None

    @property
    def stages(self) -> dict[str, StorageReport]:
        """``{"P": ..., "P+Q": ..., "P+Q+H": ...}``."""
        out = {"P": self.pruned, "P+Q": self.quantized}
        if self.huffman is not None:
            out["P+Q+H"] = self.huffman
        return out

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per stage (and the 32-bit dense baseline): bits, bytes, bits per weight, ratio."""
        n = self.pruned.n_weights
        out = {
            "dense": {
                "total_bits": BASELINE_BITS * n,
                "total_bytes": -(-BASELINE_BITS * n // 8),
                "bits_per_weight": float(BASELINE_BITS) if n else 0.0,
                "ratio": 1.0,
            }
        }
        for name, rep in self.stages.items():
            out[name] = {
                "total_bits": rep.total_bits,
                "total_bytes": rep.total_bytes,
                "bits_per_weight": rep.bits_per_weight,
                "ratio": finite_or_none(rep.ratio),
            }
        return out

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict: the summary and every stage's report."""
        return {
            "summary": self.summary(),
            "stages": {k: v.to_dict() for k, v in self.stages.items()},
        }


def deep_compression_report(
    params: Any,
    *,
    weight_bits: int | Mapping[str, int] | Callable[[str, Any], int],
    index_bits: int | Mapping[str, int] | Callable[[str, Any], int] = 5,
    where: Any = None,
    codebook: bool = True,
    codebook_bits: int = 32,
    include_huffman: bool = True,
    strict: bool = False,
) -> DeepCompressionReport:
    """Storage after pruning (P), quantization (P+Q) and Huffman coding (P+Q+H).

    Selected leaves are stored in the ``relative`` format with
    ``index_bits``-bit fields and filler zeros. P charges 32 bits per stored
    value; P+Q charges ``weight_bits`` bits plus a codebook of
    ``2**weight_bits`` centroids at ``codebook_bits`` bits (``codebook=False``
    drops the codebook); P+Q+H Huffman-codes both streams. Other leaves are
    dense at their dtype width in every stage; compressed leaves report their
    own storage.

    Args:
      params: the pruned (and, for P+Q+H, quantized) parameter tree.
      weight_bits: value index width in [1, 32]: an int, a mapping ``regex ->
        int`` (full match, first wins; every selected leaf must match and
        every regex must give a selected leaf its width) or a callable
        ``(path, leaf) -> int`` (see :func:`jaxcomp.select.per_leaf`). Han et
        al.: 8 for conv, 5 for FC (LeNet-300-100: 6).
      index_bits: relative index width in [1, 32], same forms (Han et al.: 8
        conv, 5 FC).
      where: which dense leaves are compressed, in any ``where=`` form of
        :mod:`jaxcomp.select` (a regex must match some path); ``None`` means
        ``select.ndim(min=2)`` (kernels and embeddings; biases and norm
        parameters stay dense).
      codebook: charge a ``2**weight_bits``-entry codebook.
      codebook_bits: bits per centroid.
      include_huffman: compute P+Q+H (it needs quantized weights: each
        selected leaf must store at most ``2**weight_bits`` distinct values,
        the filler zero included).
      strict: passed to :func:`model_size_bytes` for P+Q.

    Returns:
      A :class:`DeepCompressionReport`.

    Example:
      >>> import numpy as np
      >>> rng = np.random.default_rng(0)
      >>> w = rng.choice([-0.5, 0.0, 0.0, 0.0, 0.25, 0.5], size=(64, 64)).astype(np.float32)
      >>> dc = deep_compression_report({"Dense_0": {"kernel": w, "bias": np.zeros(64)}},
      ...                              weight_bits=2, index_bits=3)
      >>> s = dc.summary()
      >>> s["P"]["ratio"] < s["P+Q"]["ratio"] < s["P+Q+H"]["ratio"]
      True

    References:
      Han, Mao, Dally, "Deep compression", arXiv:1510.00149 (Table 1, Fig. 2).
    """
    if not isinstance(codebook, bool) or not isinstance(include_huffman, bool):
        raise TypeError("codebook and include_huffman must be bools")
    pairs = [(p, x) for p, x in flatten(params, where, what="deep_compression_report",
                                        default=ndim(min=2)).pairs
             if not isinstance(x, CompressedLeaf)]
    bits = dict(zip([p for p, _ in pairs],
                    zip(_per_leaf_int(weight_bits, "weight_bits", 1, 32, pairs),
                        _per_leaf_int(index_bits, "index_bits", 1, 32, pairs))))

    def stage(quantize: bool, huff: bool) -> Callable[[str, Any], StorageSpec | None]:
        def spec(path: str, leaf: Any) -> StorageSpec | None:
            if isinstance(leaf, CompressedLeaf) or path not in bits:
                return None
            wb, ib = bits[path]
            if not quantize:
                return StorageSpec(bits=32, format="relative", index_bits=ib)
            return StorageSpec(
                bits=wb,
                format="relative",
                index_bits=ib,
                codebook=(1 << wb) if codebook else None,
                codebook_bits=codebook_bits,
                huffman=huff,
            )

        return spec

    pruned = model_size_bytes(params, stage(False, False))
    quantized = model_size_bytes(params, stage(True, False), strict=strict)
    huffman = model_size_bytes(params, stage(True, True)) if include_huffman else None
    return DeepCompressionReport(pruned=pruned, quantized=quantized, huffman=huffman)

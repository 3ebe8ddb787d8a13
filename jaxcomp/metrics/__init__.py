"""Model size, runtime memory and compute, counted honestly.

* Size: :func:`count_params`, :func:`count_nonzero`, :func:`param_table`,
  :func:`summarize_params`, and :func:`model_size_bytes` for storage under
  bit widths, sparse formats, codebooks and Huffman coding
  (:func:`deep_compression_report` gives Han et al.'s P / P+Q / P+Q+H).
* Compute and memory: :func:`analyze` counts MACs from the jaxpr (1 MAC =
  2 FLOPs), effective MACs and bit-operations under compression, XLA's own
  FLOPs/bytes and the compiled memory footprint.
* Time: :func:`measure_latency`.
"""

from jaxcomp.metrics.analyze import Analysis, Layer, analyze
from jaxcomp.metrics.counting import (
    KindTotals,
    ParamRow,
    ParamSummary,
    count_nonzero,
    count_params,
    param_table,
    summarize_params,
)
from jaxcomp.metrics.deep_compression import DeepCompressionReport, deep_compression_report
from jaxcomp.metrics.jaxpr_count import JaxprCount, OpCount, count_jaxpr, count_macs
from jaxcomp.metrics.latency import Latency, measure_latency
from jaxcomp.metrics.report import CONVENTION, format_bytes, format_count
from jaxcomp.metrics.storage import StorageReport, StorageRow, StorageSpec, model_size_bytes
from jaxcomp.metrics.xla import MemoryStats, XlaCost, xla_cost

__all__ = [
    "CONVENTION",
    "Analysis",
    "DeepCompressionReport",
    "JaxprCount",
    "KindTotals",
    "Latency",
    "Layer",
    "MemoryStats",
    "OpCount",
    "ParamRow",
    "ParamSummary",
    "StorageReport",
    "StorageRow",
    "StorageSpec",
    "XlaCost",
    "analyze",
    "count_jaxpr",
    "count_macs",
    "count_nonzero",
    "count_params",
    "deep_compression_report",
    "format_bytes",
    "format_count",
    "measure_latency",
    "model_size_bytes",
    "param_table",
    "summarize_params",
    "xla_cost",
]

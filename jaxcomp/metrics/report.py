"""Human-readable reports of an :class:`~jaxcomp.metrics.analyze.Analysis`.

:func:`analysis_table` builds a ``rich.table.Table`` (one row per layer and a
caption with the totals); :func:`render_text` turns any rich renderable into
plain text; :func:`format_count` and :func:`format_bytes` print large numbers
compactly. Every table states its convention: 1 MAC = 2 FLOPs.
"""

from __future__ import annotations

import io
import math
from typing import Any

__all__ = ["CONVENTION", "analysis_table", "format_bytes", "format_count", "render_text"]

CONVENTION = "1 MAC = 2 FLOPs"

_SI = ["", " K", " M", " G", " T", " P", " E"]
_BIN = [" B", " KiB", " MiB", " GiB", " TiB", " PiB"]


def format_count(n: float | None, digits: int = 3) -> str:
    """Formats a count with an SI suffix and ``digits`` significant digits.

    Example:
      >>> format_count(4_089_184_256), format_count(266_200), format_count(532), format_count(None)
      ('4.09 G', '266 K', '532', '-')
      >>> format_count(999_999)
      '1 M'
    """
    if n is None:
        return "-"
    n = float(n)
    if not math.isfinite(n):
        return str(n)
    sign = "-" if n < 0 else ""
    n = abs(n)
    if n < 1000:
        return sign + (f"{int(n)}" if n == int(n) else f"{n:.{digits}g}")
    k = 0
    while k < len(_SI) - 1:
        scaled = float(f"{n / 1000**k:.{digits}g}")
        if scaled < 1000:
            break
        k += 1
    return f"{sign}{n / 1000**k:.{digits}g}{_SI[k]}"


def format_bytes(n: float | None, digits: int = 3) -> str:
    """Formats a byte count with a binary suffix.

    Example:
      >>> format_bytes(102_760_448), format_bytes(64), format_bytes(None)
      ('98 MiB', '64 B', '-')
    """
    if n is None:
        return "-"
    n = float(n)
    k = 0
    while k < len(_BIN) - 1 and float(f"{n / 1024**k:.{digits}g}") >= 1024:
        k += 1
    return f"{n / 1024**k:.{digits}g}{_BIN[k]}"


def _shape(s: Any) -> str:
    return "-" if s is None else "×".join(str(d) for d in s) or "scalar"


def analysis_table(analysis: Any, *, max_rows: int | None = None) -> Any:
    """A ``rich.table.Table`` of an analysis: one row per layer, totals in the caption.

    Args:
      analysis: an :class:`~jaxcomp.metrics.analyze.Analysis`.
      max_rows: show at most this many layer rows (the rest are summarised).

    Returns:
      A ``rich.table.Table`` whose title states "1 MAC = 2 FLOPs".
    """
    from rich.table import Table

    table = Table(title=f"jaxcomp analysis ({CONVENTION})", show_lines=False)
    for col, just in [
        ("layer", "left"),
        ("op", "left"),
        ("input", "right"),
        ("weight", "right"),
        ("output", "right"),
        ("MACs", "right"),
        ("×", "right"),
        ("density", "right"),
        ("w/a bits", "right"),
        ("eff. MACs", "right"),
        ("BOPs", "right"),
    ]:
        table.add_column(col, justify=just)
    layers = list(analysis.layers)
    shown = layers if max_rows is None else layers[:max_rows]
    for l in shown:
        table.add_row(
            l.name,
            l.op,
            _shape(l.input_shape),
            _shape(l.weight_shape),
            _shape(l.output_shape),
            format_count(l.macs),
            str(l.multiplier),
            f"{l.density:.3f}",
            f"{l.weight_bits}/{l.act_bits}",
            format_count(l.effective_macs),
            format_count(l.bops),
        )
    if len(shown) < len(layers):
        rest = layers[len(shown) :]
        table.add_row(
            f"... {len(rest)} more",
            "",
            "",
            "",
            "",
            format_count(sum(l.macs for l in rest)),
            "",
            "",
            "",
            format_count(sum(l.effective_macs for l in rest)),
            format_count(sum(l.bops for l in rest)),
        )
    lines = [
        (
            f"total: {format_count(analysis.macs)} MACs = {format_count(analysis.flops)} FLOPs; "
            f"effective {format_count(analysis.effective_macs)} MACs; "
            f"{format_count(analysis.bops)} BOPs ({CONVENTION})"
        ),
    ]
    extra = []
    if analysis.weight_transform_macs:
        extra.append(f"weight transforms {format_count(analysis.weight_transform_macs)} MACs")
    if analysis.fft_flops:
        extra.append(f"FFT {format_count(analysis.fft_flops)} FLOPs")
    if analysis.elementwise_flops:
        extra.append(f"elementwise {format_count(analysis.elementwise_flops)} FLOPs")
    if extra:
        lines.append("; ".join(extra))
    if analysis.xla_flops is not None or analysis.memory is not None:
        mem = analysis.memory
        lines.append(
            f"XLA: {format_count(analysis.xla_flops)} FLOPs, "
            f"{format_bytes(analysis.xla_bytes_accessed)} accessed, "
            f"peak {format_bytes(mem.peak_bytes if mem else None)}, "
            f"compile {analysis.compile_seconds:.2f} s"
            if analysis.compile_seconds is not None
            else f"XLA: {format_count(analysis.xla_flops)} FLOPs"
        )
    for w in analysis.warnings:
        lines.append(f"warning: {w}")
    table.caption = "\n".join(lines)
    return table


def render_text(renderable: Any, width: int = 160) -> str:
    """Renders a rich renderable to plain text (no colours or styles)."""
    from rich.console import Console

    buf = io.StringIO()
    console = Console(file=buf, width=width, color_system=None, force_terminal=False)
    console.print(renderable)
    return buf.getvalue()

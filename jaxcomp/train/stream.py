"""How :func:`~jaxcomp.train.fit` walks its training batches: epochs, totals, resuming.

:func:`plan` turns the accepted batch sources (a re-iterable collection, an
iterator, :func:`jaxcomp.data.batches`, a function ``epoch -> iterable``)
into one stream of ``(epoch, batch, end_of_epoch)`` and the run's total
number of steps. ``skip`` drops the first batches of the run, so that a
resumed run sees exactly the batches an uninterrupted one would:
``jaxcomp.data.batches`` jumps there directly (its batches are a function
of their position), any other source is read and the skipped batches are
discarded.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import Any

__all__ = ["plan"]


def _with_last(it: Iterable[Any]) -> Iterator[tuple[Any, bool]]:
    it = iter(it)
    try:
        prev = next(it)
    except StopIteration:
        return
    for x in it:
        yield prev, False
        prev = x
    yield prev, True


def plan(train_batches: Any, epochs: int | None, steps: int | None,
         skip: int = 0) -> tuple[Iterator[tuple[Any, Any, bool]], int | None]:
    """Returns (stream of ``(epoch, batch, end_of_epoch)`` after ``skip`` batches, run total).

    The total counts the whole run, skipped batches included (``None`` when
    unknown).

    Example:
      >>> stream, total = plan([{"i": 0}, {"i": 1}, {"i": 2}], epochs=2, steps=None, skip=2)
      >>> total, [(e, b["i"], last) for e, b, last in stream]
      (6, [(0, 2, True), (1, 0, False), (1, 1, False), (1, 2, True)])
    """
    spe = getattr(train_batches, "steps_per_epoch", None)
    is_iterator = hasattr(train_batches, "__next__")

    def skipped(gen):
        return itertools.islice(gen, skip, None) if skip else gen

    if callable(train_batches) and not hasattr(train_batches, "__iter__"):
        if epochs is None and steps is None:
            raise ValueError("fit: with a batch factory train_batches(epoch), pass steps= or epochs=")

        def from_factory():
            for e in itertools.count() if epochs is None else range(epochs):
                for b, last in _with_last(train_batches(e)):
                    yield e, b, last
        return skipped(from_factory()), steps

    if not hasattr(train_batches, "__iter__"):
        raise TypeError(
            "fit: train_batches must be an iterable of batch dicts, or a function epoch -> "
            f"iterable; got {type(train_batches).__name__}"
        )
    if spe is not None and hasattr(train_batches, "position"):  # jaxcomp.data.batches
        finite = getattr(train_batches, "epochs", None)
        if epochs is None and steps is None and finite is None:
            raise ValueError(
                "fit: train_batches repeats forever (batches(..., epochs=None)); pass steps= or "
                "epochs="
            )
        pos0 = int(train_batches.position)
        total = steps
        if epochs is not None:
            total = epochs * spe if steps is None else min(steps, epochs * spe)
        if finite is not None:
            left = max(0, finite * spe - pos0)
            total = left if total is None else min(total, left)
        if skip:
            train_batches.position = pos0 + skip  # its batches depend only on the position

        def from_batches():
            it = iter(train_batches)
            for i in itertools.count(pos0 + skip):
                try:
                    b = next(it)
                except StopIteration:
                    return
                yield (i // spe if spe else 0), b, spe > 0 and (i + 1) % spe == 0
        return from_batches(), total

    if not is_iterator and hasattr(train_batches, "__len__"):  # re-iterable collection
        n = len(train_batches)
        if epochs is None:
            total = n if steps is None else steps

            def repeated():
                for e in itertools.count():
                    for b, last in _with_last(train_batches):
                        yield e, b, last
                    if steps is None:
                        return
            return skipped(repeated()), total
        total = epochs * n if steps is None else min(steps, epochs * n)

        def by_epoch():
            for e in range(epochs):
                for b, last in _with_last(train_batches):
                    yield e, b, last
        return skipped(by_epoch()), total

    if epochs is not None:
        raise ValueError(
            "fit: epochs= needs to know where epochs end: pass a list of batches, "
            "jaxcomp.data.batches(...), or a function epoch -> iterable; or use steps="
        )

    def plain():
        for b in train_batches:
            yield None, b, False
    return skipped(plain()), steps

"""Optional packages of the ``research`` extra, imported with an actionable error.

``jaxcomp run``, study configs, plots and some datasets need packages that
a plain ``pip install jaxcomp`` does not bring: :data:`RESEARCH_PACKAGES`.
:func:`require_extra` imports one or raises :class:`MissingExtraError`
saying what to install; :func:`missing_extra` recognises such a failure
(also one raised deeper, e.g. by a dataset loader) for the command line.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["INSTALL_HINT", "RESEARCH_PACKAGES", "MissingExtraError", "missing_extra",
           "require_extra"]

#: import name -> distribution name, for the packages of ``jaxcomp[research]``.
RESEARCH_PACKAGES = {
    "ml_collections": "ml-collections",
    "matplotlib": "matplotlib",
    "mnist1d": "mnist1d",
    "mlxtend": "mlxtend",
    "sklearn": "scikit-learn",
}
INSTALL_HINT = 'pip install "jaxcomp[research]"'


class MissingExtraError(ModuleNotFoundError):
    """An optional package of the ``research`` extra is not installed."""


def _root(name: str | None) -> str | None:
    return name.split(".")[0] if name else None


def require_extra(module: str, feature: str) -> Any:
    """Imports ``module`` or raises :class:`MissingExtraError` naming the extra to install.

    Args:
      module: the import name, e.g. ``"matplotlib.pyplot"``.
      feature: what needs it, for the message (``"jaxcomp run"``).

    Example:
      >>> require_extra("json", "an example").__name__
      'json'
    """
    try:
        return importlib.import_module(module)
    except ImportError as e:
        root = _root(getattr(e, "name", None)) or _root(module)
        dist = RESEARCH_PACKAGES.get(root, root)
        raise MissingExtraError(
            f"{feature} needs the optional package '{dist}' (import {root}), part of the research "
            f"extra: {INSTALL_HINT}",
            name=root,
        ) from e


def missing_extra(exc: BaseException) -> str | None:
    """The research package (import name) whose absence caused ``exc``, or ``None``.

    Follows ``__cause__``/``__context__`` so an ``ImportError`` re-raised
    by a loader is recognised too.

    Example:
      >>> missing_extra(ModuleNotFoundError("No module named 'sklearn'", name="sklearn"))
      'sklearn'
      >>> missing_extra(ModuleNotFoundError("No module named 'torch'", name="torch")) is None
      True
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ImportError):
            root = _root(getattr(exc, "name", None))
            if root in RESEARCH_PACKAGES:
                return root
        exc = exc.__cause__ or exc.__context__
    return None

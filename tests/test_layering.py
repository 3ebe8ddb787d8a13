"""The package's layering, read from the import statements of jaxcomp/ with ``ast``.

Lower rooms (``core``, ``select``, ``parallel``, ``ops``) import nothing from the
families above them; ``data`` does not reach into ``train``; ``train`` does not
reach into ``prune``; the library never loads ``research/`` code; and the
lower rooms and ``prune`` use no other module's private (leading underscore) names.
"""

from __future__ import annotations

import ast
import dataclasses
import pathlib
import textwrap

import pytest

import jaxcomp

ROOT = pathlib.Path(jaxcomp.__file__).resolve().parent

FAMILIES = ("prune", "quant", "distill", "metrics", "train", "data", "models", "experiment",
            "cli")
# Compression families are siblings: none reaches into another's modules (what two
# families share sits in a lower room, e.g. ``ops``).
SIBLINGS = ("prune", "quant")
LOWER = ("core", "select", "parallel", "ops")

# Modules that may execute a file as Python code, and why.
CODE_LOADERS = {"jaxcomp.config.loading": "loads configs/<study>.py files (plain data)"}
_LOADING_CALLS = {"spec_from_file_location", "exec_module", "run_path", "run_module",
                  "SourceFileLoader", "load_source", "exec", "__import__"}


@dataclasses.dataclass(frozen=True)
class Imp:
    """One imported target: ``module`` (dotted) and, for ``from m import n``, the name."""

    source: str  # the importing module
    module: str
    name: str | None
    line: int

    @property
    def targets(self) -> tuple[str, ...]:
        """Dotted names this import may load: ``m`` and, for ``from m import n``, ``m.n``."""
        return (self.module,) if self.name is None else (self.module, f"{self.module}.{self.name}")

    def __str__(self) -> str:
        what = self.module if self.name is None else f"from {self.module} import {self.name}"
        return f"{self.source}:{self.line}: {what}"


def module_name(path: pathlib.Path, root: pathlib.Path = ROOT) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(source: str, module: str, is_package: bool = False) -> list[Imp]:
    """Every import in ``source`` (top level and inside functions), relative ones resolved."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [Imp(module, a.name, None, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = module.split(".")
                if not is_package:
                    pkg = pkg[:-1]
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join(pkg + ([base] if base else []))
            out += [Imp(module, base, a.name, node.lineno) for a in node.names]
    return out


def _sources(root: pathlib.Path = ROOT):
    for path in sorted(root.rglob("*.py")):
        yield path, module_name(path, root), path.read_text()


def all_imports(root: pathlib.Path = ROOT) -> list[Imp]:
    out = []
    for path, mod, src in _sources(root):
        out += imports_of(src, mod, path.name == "__init__.py")
    return out


def within(name: str, room: str) -> bool:
    return name == room or name.startswith(room + ".")


def violations(imps: list[Imp], source_room: str, forbidden: tuple[str, ...]) -> list[str]:
    """Imports made in ``source_room`` that load a module of a ``forbidden`` room.

    A bare ``import jaxcomp`` (or ``from jaxcomp import *``) counts too: it
    loads every family.
    """
    bad = []
    for imp in imps:
        if not within(imp.source, source_room):
            continue
        whole = (imp.module == "jaxcomp" and imp.name in (None, "*"))
        if whole or any(within(t, room) for t in imp.targets for room in forbidden):
            bad.append(str(imp))
    return bad


def private_imports(imps: list[Imp]) -> list[str]:
    """``from jaxcomp.x import _y`` where the importer is not ``jaxcomp.x`` itself."""
    return [
        str(imp) for imp in imps
        if within(imp.module, "jaxcomp") and imp.name is not None
        and imp.name.startswith("_") and not imp.name.startswith("__")
        and imp.module != imp.source
    ]


def research_loading(root: pathlib.Path = ROOT) -> list[str]:
    """Imports of ``research`` and file-executing calls outside :data:`CODE_LOADERS`."""
    bad = []
    for path, mod, src in _sources(root):
        tree = ast.parse(src)
        for imp in imports_of(src, mod, path.name == "__init__.py"):
            if any(within(t, "research") for t in imp.targets):
                bad.append(str(imp))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
            if name in _LOADING_CALLS and mod not in CODE_LOADERS:
                bad.append(f"{mod}:{node.lineno}: calls {name}()")
            if name == "import_module" and node.args and isinstance(node.args[0], ast.Constant) \
                    and str(node.args[0].value).startswith("research"):
                bad.append(f"{mod}:{node.lineno}: import_module({node.args[0].value!r})")
    return bad


@pytest.fixture(scope="module")
def imps():
    return all_imports()


# ------------------------------------------------------------ the rules


def test_data_imports_nothing_from_train(imps):
    assert violations(imps, "jaxcomp.data", ("jaxcomp.train",)) == []


def test_train_imports_nothing_from_prune(imps):
    assert violations(imps, "jaxcomp.train", ("jaxcomp.prune",)) == []


@pytest.mark.parametrize("family", SIBLINGS)
def test_compression_families_import_no_sibling(imps, family):
    others = tuple(f"jaxcomp.{f}" for f in SIBLINGS + ("distill", "train", "config")
                   if f != family)
    assert violations(imps, f"jaxcomp.{family}", others) == []


@pytest.mark.parametrize("room", LOWER)
def test_lower_rooms_import_no_family(imps, room):
    forbidden = tuple(f"jaxcomp.{f}" for f in FAMILIES)
    assert violations(imps, f"jaxcomp.{room}", forbidden) == []


def test_library_never_loads_research_code():
    assert research_loading() == []


def test_no_private_cross_module_imports(imps):
    # anywhere in the library: a name another module needs is public in its home
    assert private_imports(imps) == []


def test_parallel_is_a_subpackage_and_train_reexports_it():
    from jaxcomp import parallel, train
    from jaxcomp.train import mesh as train_mesh

    assert jaxcomp.parallel is parallel and "parallel" in jaxcomp.__all__
    for name in ("make_mesh", "shard_batch", "replicate", "batch_sharding"):
        assert getattr(train, name) is getattr(parallel, name)
        assert getattr(train_mesh, name) is getattr(parallel, name)
        assert getattr(parallel, name).__module__ == "jaxcomp.parallel.mesh"


def test_key_checks_live_in_core_and_train_reexports_them():
    from jaxcomp.train import state

    assert jaxcomp.check_key is jaxcomp.core.check_key is state.check_key
    assert jaxcomp.is_prng_key is jaxcomp.core.is_prng_key is state.is_prng_key
    assert jaxcomp.core.check_key.__module__ == "jaxcomp.core.keys"


# ------------------------------------------------------------ the checker itself


SAMPLE = textwrap.dedent("""
    import numpy as np
    from jaxcomp import train
    from jaxcomp.core import chain

    def f():
        from jaxcomp.train.mesh import _check_axis
        from . import sibling
        from ..prune import masks
        import research.kd.main
        import importlib.util
        spec = importlib.util.spec_from_file_location("m", "research/kd/main.py")
        importlib.import_module("research.kd")
""")


def test_imports_of_finds_nested_and_relative_imports():
    got = {(i.module, i.name) for i in imports_of(SAMPLE, "jaxcomp.data.batching")}
    assert {("numpy", None), ("jaxcomp", "train"), ("jaxcomp.core", "chain"),
            ("jaxcomp.train.mesh", "_check_axis"), ("jaxcomp.data", "sibling"),
            ("jaxcomp.prune", "masks"), ("research.kd.main", None)} <= got
    # inside a package __init__, "." is the package itself
    got = {(i.module, i.name) for i in imports_of("from . import x", "jaxcomp.data", True)}
    assert got == {("jaxcomp.data", "x")}


def test_violations_and_private_imports_flag_the_sample():
    imps = imports_of(SAMPLE, "jaxcomp.data.batching")
    bad = violations(imps, "jaxcomp.data", ("jaxcomp.train",))
    assert len(bad) == 2 and "from jaxcomp import train" in bad[0]
    assert violations(imps, "jaxcomp.data", ("jaxcomp.prune",)) == [
        "jaxcomp.data.batching:9: from jaxcomp.prune import masks"]
    assert violations(imps, "jaxcomp.core", ("jaxcomp.train",)) == []
    assert private_imports(imps) == [
        "jaxcomp.data.batching:7: from jaxcomp.train.mesh import _check_axis"]
    whole = imports_of("import jaxcomp", "jaxcomp.core.base")
    assert violations(whole, "jaxcomp.core", ("jaxcomp.prune",)) == [
        "jaxcomp.core.base:1: jaxcomp"]
    # a module's own private names are not cross-module
    own = imports_of("from jaxcomp.core.base import _x", "jaxcomp.core.base")
    assert private_imports(own) == []


def test_research_loading_flags_imports_and_file_execution(tmp_path):
    pkg = tmp_path / "jaxcomp"
    (pkg / "config").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "study.py").write_text(SAMPLE)
    (pkg / "config" / "loading.py").write_text(
        "import importlib.util\nspec = importlib.util.spec_from_file_location('c', 'x.py')\n")
    bad = research_loading(pkg)
    assert "jaxcomp.study:10: research.kd.main" in bad
    assert "jaxcomp.study:12: calls spec_from_file_location()" in bad
    assert "jaxcomp.study:13: import_module('research.kd')" in bad
    assert not any(b.startswith("jaxcomp.config.loading") for b in bad)

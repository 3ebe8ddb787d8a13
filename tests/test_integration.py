"""End-to-end: registered models, compressors and metrics together; README/CI."""

import pathlib
import re
import subprocess
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcomp as jc

ROOT = pathlib.Path(__file__).resolve().parents[1]


class FixedMaskState(NamedTuple):
    masks: dict

    def __jaxcomp_info__(self):
        return {p: jc.LeafInfo(density=float(np.mean(np.asarray(m))))
                for p, m in jc.select.leaves_with_paths(self.masks)}


def fixed_masks(sparsity, *, key):
    """A test compressor: a random mask of exactly `sparsity` zeros per selected leaf."""

    def init(params):
        leaves, treedef = jax.tree.flatten(params)
        masks = []
        for i, w in enumerate(leaves):
            n = w.size
            keep = np.random.default_rng(i).permutation(n)[: n - round(sparsity * n)]
            m = np.zeros(n, bool)
            m[keep] = True
            masks.append(jnp.asarray(m.reshape(w.shape)))
        return FixedMaskState(jax.tree.unflatten(treedef, masks))

    def apply(params, state):
        return jax.tree.map(lambda w, m: w * m, params, state.masks)

    def update(params, state, *, step, grads=None, **extra):
        return apply(params, state), state

    return jc.Compressor(init, apply, update)


def test_masked_lenet300_effective_macs_and_state_info():
    spec = jc.models.get_model("lenet300")
    params = spec.init(jax.random.key(0))["params"]
    comp = jc.masked(fixed_masks(0.9, key=0), r".*/kernel")
    cstate = comp.init(params)
    x = spec.example_input(1)

    # masks applied inside the analysed function
    a = jc.metrics.analyze(lambda p, x: spec.apply_fn(comp.apply(p, cstate), x), params, x,
                           compile=False)
    assert a.macs == 266_200
    assert a.effective_macs == pytest.approx(0.1 * 266_200, rel=0.01)

    # masks applied outside; the compression state reports the same densities
    view = comp.apply(params, cstate)
    b = jc.metrics.analyze(lambda p, x: spec.apply_fn(p, x), view, x, compression=cstate,
                           compile=False)
    assert b.effective_macs == pytest.approx(0.1 * 266_200, rel=0.01)
    # biases start at zero: the non-zeros are the 10% of kernel entries kept
    assert jc.metrics.count_nonzero(view) == 23_520 + 3_000 + 100


def test_materialized_lowrank_model_runs_and_is_counted():
    spec = jc.models.get_model("lenet300")
    params = spec.init(jax.random.key(0))["params"]
    w = params["fc1"]["kernel"]
    u, s, vt = jnp.linalg.svd(w, full_matrices=False)
    r = 20
    lr = dict(params)
    lr["fc1"] = {"bias": params["fc1"]["bias"], "kernel": jc.LowRank(u[:, :r] * s[:r], vt[:r])}
    x = jax.random.normal(jax.random.key(1), (4, 784))
    y = spec.apply_fn(jc.materialize(lr), x)
    assert y.shape == (4, 10)
    a = jc.metrics.analyze(lambda p, x: spec.apply_fn(jc.materialize(p), x), lr, x[:1],
                           compile=False)
    fc1 = next(layer for layer in a.layers
               if layer.weight_path == "fc1/kernel" and layer.op == "dense")
    assert fc1.compute_fraction == pytest.approx(r * (784 + 300) / (784 * 300))
    assert a.weight_transform_macs == 784 * r * 300
    assert jc.metrics.count_params(lr) == 266_610 - 784 * 300 + r * (784 + 300)


def _readme_command(marker):
    text = (ROOT / "README.md").read_text()
    m = re.search(re.escape(marker) + r"\s*```sh\n(.+?)\n```", text)
    assert m, f"README.md has no ```sh block after {marker}"
    return m.group(1)


def test_ci_runs_exactly_the_readme_test_command():
    cmd = _readme_command("<!-- test-command -->")
    assert "pytest" in cmd and 'pip install -e ".[test]"' in cmd
    script = ROOT / ".ci" / "run"
    out = subprocess.run([str(script), "--print"], capture_output=True, text=True, check=True)
    assert out.stdout == cmd + "\n"
    main = _readme_command("<!-- main-command -->")
    assert main.endswith("jaxcomp summary lenet5")

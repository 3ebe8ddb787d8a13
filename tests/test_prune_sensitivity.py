"""Tests for jaxcomp.prune.oneshot.sensitivity."""

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcomp.prune.masks import magnitude_mask
from jaxcomp.prune.oneshot.sensitivity import SensitivityTable, sensitivity_scan
from jaxcomp.prune.patterns import NM


def _params():
    # Distinct magnitudes so magnitude pruning at s zeros exactly round(s * 20) weights.
    w = jnp.arange(1.0, 21.0).reshape(4, 5)
    return {"enc.0": {"kernel": w, "bias": jnp.zeros(5)}, "head": {"kernel": -w}}


def _zero_frac(x):
    return float(jnp.mean(x == 0))


def _eval(p):
    # Known per-layer effect: the encoder costs 0.5 per unit of sparsity, the head 0.01.
    return 1.0 - 0.5 * _zero_frac(p["enc.0"]["kernel"]) - 0.01 * _zero_frac(p["head"]["kernel"])


def test_table_values_and_suggestion():
    t = sensitivity_scan(_eval, _params(), sparsities=(0.9, 0.1, 0.2, 0.5, 0.5))
    assert t.paths == ("enc.0/kernel", "head/kernel")
    assert t.sparsities == (0.1, 0.2, 0.5, 0.9)
    assert t.baseline == 1.0
    np.testing.assert_allclose(t.values[0], [0.95, 0.9, 0.75, 0.55])
    np.testing.assert_allclose(t.values[1], [0.999, 0.998, 0.995, 0.991])
    np.testing.assert_allclose(t.drops[0], [0.05, 0.1, 0.25, 0.45])
    sug = t.suggest(max_drop=0.15)
    assert sug == {re.escape("enc.0/kernel"): 0.2, "head/kernel": 0.9}
    assert sug == {r"enc\.0/kernel": 0.2, "head/kernel": 0.9}
    assert t.suggest(max_drop=0.01) == {r"enc\.0/kernel": 0.0, "head/kernel": 0.9}
    assert t.suggest(max_drop=0.1, relative=True)[r"enc\.0/kernel"] == 0.2
    assert t.row("head/kernel")[0.5] == pytest.approx(0.995)
    # The suggestion is a valid allocation= map: the masks get those sparsities.
    m = magnitude_mask(_params(), None, allocation=sug)
    assert _zero_frac(m["enc.0"]["kernel"]) == pytest.approx(0.2)  # fraction of False
    assert _zero_frac(m["head"]["kernel"]) == pytest.approx(0.9)
    assert "enc.0/kernel" in str(t)


def test_suggestion_is_monotone_prefix():
    t = SensitivityTable(("a",), (0.1, 0.2, 0.3), np.array([[0.99, 0.5, 0.99]]), 1.0)
    assert t.suggest(max_drop=0.05) == {"a": 0.1}


def test_loss_metric_and_one_leaf_at_a_time():
    seen = []

    def loss(p):
        seen.append((_zero_frac(p["enc.0"]["kernel"]), _zero_frac(p["head"]["kernel"])))
        return 2.0 + _zero_frac(p["head"]["kernel"])

    t = sensitivity_scan(loss, _params(), sparsities=(0.5,), higher_is_better=False,
                         metric="loss")
    assert seen == [(0.0, 0.0), (0.5, 0.0), (0.0, 0.5)]  # baseline, then one leaf at a time
    np.testing.assert_allclose(t.drops, [[0.0], [0.5]])
    assert t.suggest(max_drop=0.1) == {r"enc\.0/kernel": 0.5, "head/kernel": 0.0}


def test_json_roundtrip_and_plot(tmp_path):
    t = sensitivity_scan(_eval, _params(), sparsities=(0.5, 0.9), metric="accuracy")
    d = json.loads(t.to_json())
    assert d["rows"]["head/kernel"] == pytest.approx([0.995, 0.991])
    assert d["metric"] == "accuracy" and d["sparsities"] == [0.5, 0.9]
    t2 = SensitivityTable.from_json(t.to_json())
    assert t2.paths == t.paths and np.allclose(t2.values, t.values)
    out = t.plot(tmp_path / "sens.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_methods_patterns_where():
    p = _params()
    t = sensitivity_scan(_eval, p, sparsities=(0.5,), where=r"head/.*", method="random",
                         key=jax.random.key(0))
    assert t.paths == ("head/kernel",) and t.method == "random"
    # A custom score that prefers pruning the *largest* weights.
    t = sensitivity_scan(lambda q: float(jnp.sum(jnp.abs(q["head"]["kernel"]))), p,
                         sparsities=(0.5,), where=r"head/kernel", method=lambda w: -jnp.abs(w))
    assert t.values[0, 0] == pytest.approx(sum(range(1, 11)))
    t = sensitivity_scan(_eval, p, sparsities=(0.4,), pattern="channel")
    assert t.values[1, 0] == pytest.approx(1 - 0.01 * 0.4)  # 2 of 5 output channels


def test_bad_inputs():
    p = _params()
    with pytest.raises(ValueError, match="selects no parameter"):
        sensitivity_scan(_eval, p, where=lambda path, leaf: False)
    with pytest.raises(ValueError, match="sparsities"):
        sensitivity_scan(_eval, p, sparsities=(0.5, 1.0))
    with pytest.raises(ValueError, match="key"):
        sensitivity_scan(_eval, p, method="random")
    with pytest.raises(TypeError, match="method"):
        sensitivity_scan(_eval, p, method="taylor")
    with pytest.raises(TypeError, match="fixed sparsity"):
        sensitivity_scan(_eval, p, pattern=NM(2, 4))
    with pytest.raises(TypeError, match="scalar"):
        sensitivity_scan(lambda q: jnp.ones(3), p, sparsities=(0.5,))

    def nan_when_head_pruned(q):
        return float("nan") if _zero_frac(q["head"]["kernel"]) > 0 else 1.0

    with pytest.raises(ValueError, match="'head/kernel' pruned to sparsity 0.5"):
        sensitivity_scan(nan_when_head_pruned, p, sparsities=(0.5,))

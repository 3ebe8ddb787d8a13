"""Channel surgery: traced dependencies, smaller models equal to masked ones, real savings."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcomp import metrics
from jaxcomp.models import get_model
from jaxcomp.prune.channels.surgery import channel_dependencies, remove_channels, zero_channels


class CNN(nn.Module):
    widths: tuple = (4, 6)
    hidden: int = 5

    @nn.compact
    def __call__(self, x, train=False):
        for i, w in enumerate(self.widths):
            x = nn.Conv(w, (3, 3), name=f"conv{i + 1}")(x)
            x = nn.BatchNorm(use_running_average=not train, name=f"bn{i + 1}")(x)
            x = nn.relu(x)
        x = nn.avg_pool(x, (2, 2), (2, 2))
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(self.hidden, name="fc1")(x))
        return nn.Dense(3, name="fc2")(x)


def _randomize(v, seed=0):
    leaves, treedef = jax.tree.flatten(v)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    out = [jax.random.uniform(k, x.shape, minval=0.5, maxval=1.5) if x.ndim == 1 else
           jax.random.normal(k, x.shape) * 0.5 for k, x in zip(keys, leaves)]
    return jax.tree.unflatten(treedef, out)


def _cnn():
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 1))
    v = _randomize(CNN().init(jax.random.key(0), x))  # non-trivial BN statistics too
    return x, v


MASKS = {"conv1": np.array([True, False, True, False]),
         "conv2": np.array([False, True, True, True, True, True]),
         "fc1": np.array([True, True, False, True, True])}


def test_cnn_chain_groups():
    x, v = _cnn()
    groups = {min(p for p, _ in g.producers): g for g in channel_dependencies(CNN().apply, v, x)}
    g1 = groups["params/conv1/kernel"]
    assert g1.followers == {("params/conv1/bias", 0), ("params/bn1/scale", 0),
                            ("params/bn1/bias", 0), ("batch_stats/bn1/mean", 0),
                            ("batch_stats/bn1/var", 0)}
    assert g1.consumers == {("params/conv2/kernel", 2, 1)}
    g2 = groups["params/conv2/kernel"]
    assert g2.consumers == {("params/fc1/kernel", 0, 1)}  # flatten: channel = i % 6
    assert not g1.blocked and not g2.blocked
    assert groups["params/fc2/kernel"].blocked  # the logits


def test_cnn_surgery_equals_masked_model_and_saves_compute():
    x, v = _cnn()
    res = remove_channels(CNN().apply, v, MASKS, x)
    assert res.widths == {"conv1": 2, "conv2": 5, "fc1": 4}
    small = CNN(widths=(2, 5), hidden=4)
    out_small = small.apply(res.variables, x)
    ref = CNN().apply(zero_channels(CNN().apply, v, MASKS, x), x)
    np.testing.assert_allclose(np.asarray(out_small), np.asarray(ref), atol=1e-5, rtol=1e-5)
    # the flattened consumer lost the 4x4 positions of the removed conv2 channel
    assert res.variables["params"]["fc1"]["kernel"].shape == (4 * 4 * 5, 4)
    np.testing.assert_array_equal(
        np.asarray(res.variables["params"]["fc1"]["kernel"]),
        np.asarray(v["params"]["fc1"]["kernel"]).reshape(16, 6, 5)[:, 1:, :].reshape(80, 5)[
            :, [0, 1, 3, 4]])
    # parameter counts drop by the hand-computed amount
    n0 = metrics.count_params(v["params"])
    n1 = metrics.count_params(res.variables["params"])
    before = (9 * 1 * 4 + 4 + 8) + (9 * 4 * 6 + 6 + 12) + (96 * 5 + 5) + (5 * 3 + 3)
    after = (9 * 1 * 2 + 2 + 4) + (9 * 2 * 5 + 5 + 10) + (80 * 4 + 4) + (4 * 3 + 3)
    assert (n0, n1) == (before, after)
    a0 = metrics.analyze(lambda v, x: CNN().apply(v, x), v, x)
    a1 = metrics.analyze(lambda v, x: small.apply(v, x), res.variables, x)
    assert a1.macs < a0.macs
    assert a1.macs == 2 * (64 * 9 * 1 * 2 + 64 * 9 * 2 * 5 + 80 * 4 + 4 * 3)
    if a0.xla_flops is not None:
        assert a1.xla_flops < a0.xla_flops


def test_residual_coupling_resnet20():
    spec = get_model("resnet20")
    x = jnp.ones((1, 8, 8, 3))
    v = _randomize(spec.init(jax.random.key(0)), 3)
    f = lambda v, x: spec.apply_fn(v, x)
    groups = channel_dependencies(f, v, x)
    stem = next(g for g in groups if ("params/conv1/kernel", 3) in g.producers)
    prods = {p for p, _ in stem.producers}
    assert {"params/stage1_block0/conv2/kernel", "params/stage1_block1/conv2/kernel",
            "params/stage1_block2/conv2/kernel"} <= prods
    assert not stem.blocked
    keep = np.arange(16) % 2 == 0
    masks = {"conv1": keep}
    for b in range(3):
        masks[f"stage1_block{b}/conv1"] = np.arange(16) < 8
    # a partial mask on one coupled producer keeps the union: the others keep all here
    res = remove_channels(f, v, masks, x)
    assert res.widths["conv1"] == 8 and res.widths["stage1_block1/conv2"] == 8
    small = get_model("resnet20", widths=(8, 32, 64))
    out = small.apply_fn(res.variables, x)
    ref = spec.apply_fn(zero_channels(f, v, masks, x), x)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-4, rtol=1e-4)


def test_coupled_masks_union():
    class Res(nn.Module):
        w: int = 4

        @nn.compact
        def __call__(self, x):
            h = nn.Dense(self.w, name="a")(x)
            h = h + nn.Dense(self.w, name="b")(nn.relu(h))
            return nn.Dense(2, name="out")(h)

    x = jax.random.normal(jax.random.key(0), (3, 5))
    v = _randomize(Res().init(jax.random.key(1), x))
    m = {"a": np.array([True, False, False, True]), "b": np.array([True, True, False, False])}
    res = remove_channels(Res().apply, v, m, x)
    assert res.widths == {"a": 3, "b": 3}
    union = {"a": np.array([True, True, False, True])}
    np.testing.assert_allclose(np.asarray(Res(w=3).apply(res.variables, x)),
                               np.asarray(Res().apply(zero_channels(Res().apply, v, union, x), x)),
                               atol=1e-5)


def test_depthwise_follows_and_blocked_cases():
    class DW(nn.Module):
        c: int = 4

        @nn.compact
        def __call__(self, x):
            h = nn.relu(nn.Conv(self.c, (1, 1), name="pw1")(x))
            h = nn.Conv(self.c, (3, 3), feature_group_count=self.c, name="dw")(h)
            h = nn.LayerNorm(name="ln")(nn.Conv(6, (1, 1), name="pw2")(nn.relu(h)))
            return nn.Dense(2, name="fc")(h.mean((1, 2)))

    x = jnp.ones((1, 5, 5, 2))
    v = _randomize(DW().init(jax.random.key(0), x))
    groups = {min(p for p, _ in g.producers): g for g in channel_dependencies(DW().apply, v, x)}
    g = groups["params/pw1/kernel"]
    assert ("params/dw/kernel", 3) in g.followers and ("params/dw/bias", 0) in g.followers
    keep = np.array([True, False, True, True])
    res = remove_channels(DW().apply, v, {"pw1": keep}, x)
    assert res.variables["params"]["dw"]["kernel"].shape == (3, 3, 1, 3)
    np.testing.assert_allclose(
        np.asarray(DW(c=3).apply(res.variables, x)),
        np.asarray(DW().apply(zero_channels(DW().apply, v, {"pw1": keep}, x), x)), atol=1e-5)
    # LayerNorm normalises over the channels of pw2: removing them changes the statistics
    assert any("reduces over the channel axis" in b for b in groups["params/pw2/kernel"].blocked)
    with pytest.raises(ValueError, match="cannot be removed: .*reduces over the channel axis"):
        remove_channels(DW().apply, v, {"pw2": np.arange(6) < 3}, x)


def test_errors():
    x, v = _cnn()
    with pytest.raises(ValueError, match="'conv9' is not a channel producer"):
        remove_channels(CNN().apply, v, {"conv9": np.ones(4, bool)}, x)
    with pytest.raises(ValueError, match="must be a bool vector of 4 channels"):
        remove_channels(CNN().apply, v, {"conv1": np.ones(3, bool)}, x)
    with pytest.raises(ValueError, match="must be a bool vector"):
        remove_channels(CNN().apply, v, {"conv1": np.ones(4)}, x)
    with pytest.raises(ValueError, match="removes every channel"):
        remove_channels(CNN().apply, v, {"conv1": np.zeros(4, bool)}, x)
    with pytest.raises(ValueError, match="output of the function"):
        remove_channels(CNN().apply, v, {"fc2": np.array([True, False, True])}, x)
    # keys with params/ prefix and /kernel suffix name the same producer
    a = remove_channels(CNN().apply, v, {"params/conv1/kernel": MASKS["conv1"]}, x)
    b = remove_channels(CNN().apply, v, {"conv1": MASKS["conv1"]}, x)
    assert a.widths == b.widths == {"conv1": 2}

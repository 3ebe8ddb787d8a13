"""Canonical paths, where= resolution, selectors and rules."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx
from hypothesis import given
from hypothesis import strategies as st

import jaxcomp as jc
from jaxcomp import select


def _params():
    return {
        "block_0": {"Conv_0": {"kernel": jnp.ones((3, 3, 4, 8)), "bias": jnp.zeros(8)}},
        "Dense_0": {"kernel": jnp.ones((8, 10), jnp.bfloat16), "bias": jnp.zeros(10)},
        "steps": jnp.zeros((), jnp.int32),
    }


def test_paths_plain_tree():
    assert select.paths(_params()) == [
        "Dense_0/bias", "Dense_0/kernel", "block_0/Conv_0/bias", "block_0/Conv_0/kernel", "steps",
    ]
    assert select.paths({"layers": [jnp.ones(1), jnp.ones(1)]}) == ["layers/0", "layers/1"]


def test_paths_equal_for_linen_boxed_unboxed_and_nnx():
    class Lin(nn.Module):
        @nn.compact
        def __call__(self, x):
            init = nn.with_partitioning(nn.initializers.lecun_normal(), (None, "model"))
            return nn.Dense(3, kernel_init=init, name="fc")(x)

    boxed = Lin().init(jax.random.key(0), jnp.ones((1, 2)))["params"]
    assert isinstance(boxed["fc"]["kernel"], nn.Partitioned)
    assert select.paths(boxed) == ["fc/bias", "fc/kernel"]
    assert select.paths(jc.unbox(boxed)) == ["fc/bias", "fc/kernel"]

    class NLin(nnx.Module):
        def __init__(self, rngs):
            self.fc = nnx.Linear(2, 3, rngs=rngs)

    _, state = nnx.split(NLin(nnx.Rngs(0)))
    assert select.paths(state) == ["fc/bias", "fc/kernel"]
    _, pure, _ = jc.nnx_split(NLin(nnx.Rngs(0)))
    assert select.paths(pure) == ["fc/bias", "fc/kernel"]


def test_path_str_handles_every_key_kind():
    from jax.tree_util import DictKey, FlattenedIndexKey, GetAttrKey, SequenceKey

    kp = (DictKey("a"), GetAttrKey("b"), SequenceKey(2), FlattenedIndexKey(3), GetAttrKey("value"))
    assert select.path_str(kp) == "a/b/2/3"
    assert select.path_str(("encoder", 0, "kernel")) == "encoder/0/kernel"


def test_compressed_leaf_is_one_leaf_with_the_kernel_path():
    p = {"fc": {"kernel": jc.LowRank(jnp.ones((4, 2)), jnp.ones((2, 3)))}}
    assert select.paths(p) == ["fc/kernel"]
    assert select.resolve(select.ndim(min=2), p) == {"fc": {"kernel": True}}


def test_resolve_none_bool_and_regex_full_match():
    p = _params()
    assert all(jax.tree.leaves(select.resolve(None, p)))
    assert not any(jax.tree.leaves(select.resolve(False, p)))
    flags = select.resolve(r".*/kernel", p)
    assert flags["Dense_0"]["kernel"] and flags["block_0"]["Conv_0"]["kernel"]
    assert not flags["Dense_0"]["bias"] and not flags["steps"]
    # full match: 'kernel' alone matches no path, and says how to fix it
    with pytest.raises(ValueError, match=r"matches no parameter.*whole path.*r'\.\*/kernel'"):
        select.resolve("kernel", p)


def test_empty_match_lists_close_paths_first():
    with pytest.raises(ValueError) as e:
        select.resolve("Dense_0/kernal", _params())
    listing = str(e.value).split("closest first):\n")[1].splitlines()
    assert listing[0].strip() == "Dense_0/kernel"
    assert "allow_empty=True" in str(e.value)
    assert not any(jax.tree.leaves(select.resolve("nope", _params(), allow_empty=True)))


def test_resolve_bool_tree_and_prefix():
    p = _params()
    full = jax.tree.map(lambda x: x.ndim == 2, p)
    assert select.resolve(full, p) == full
    prefix = {"block_0": True, "Dense_0": False, "steps": False}
    flags = select.resolve(prefix, p)
    assert flags["block_0"]["Conv_0"] == {"kernel": True, "bias": True}
    assert flags["Dense_0"] == {"kernel": False, "bias": False}
    with pytest.raises(ValueError, match="does not match the params tree structure"):
        select.resolve({"other": True}, p)
    with pytest.raises(TypeError, match="must hold Python bools"):
        select.resolve(jax.tree.map(lambda x: 1, p), p)


def test_resolve_rejects_bad_types_and_regex():
    with pytest.raises(TypeError, match="where must be"):
        select.resolve(3, _params())
    with pytest.raises(ValueError, match="not a valid regular expression"):
        select.resolve("([", _params())


def test_callable_and_selectors():
    p = _params()
    assert select.selected_paths(lambda path, x: path.startswith("block"), p) == [
        "block_0/Conv_0/bias", "block_0/Conv_0/kernel"]
    assert select.selected_paths(select.ndim(min=2), p) == ["Dense_0/kernel",
                                                            "block_0/Conv_0/kernel"]
    assert select.selected_paths(select.ndim(max=0), p) == ["steps"]
    assert select.selected_paths(select.size(min=100), p) == ["block_0/Conv_0/kernel"]
    assert select.selected_paths(select.dtype(jnp.bfloat16), p) == ["Dense_0/kernel"]
    assert select.selected_paths(select.dtype("int"), p) == ["steps"]
    assert select.selected_paths(select.dtype("float") & ~select.path(".*kernel"), p) == [
        "Dense_0/bias", "block_0/Conv_0/bias"]
    assert select.selected_paths(select.path("steps") | select.size(min=100), p) == [
        "block_0/Conv_0/kernel", "steps"]
    lr = {"a": jc.LowRank(jnp.ones((2, 1)), jnp.ones((1, 2))), "b": jnp.ones(2)}
    assert select.selected_paths(select.leaf_type(jc.LowRank), lr) == ["a"]


def test_selector_argument_errors():
    with pytest.raises(ValueError, match="min=3 exceeds max=1"):
        select.ndim(min=3, max=1)
    with pytest.raises(ValueError, match="non-negative int"):
        select.size(min=-1)
    with pytest.raises(ValueError, match="neither a dtype nor"):
        select.dtype("floaty")
    with pytest.raises(TypeError):
        select.path(3)


def test_callable_errors_name_the_path():
    def bad(path, leaf):
        raise KeyError("boom")

    with pytest.raises(KeyError, match="failed on parameter 'Dense_0/bias'"):
        select.resolve(bad, _params())


@given(lo=st.integers(0, 4), hi=st.integers(0, 4), smin=st.integers(0, 300))
def test_selector_algebra_is_boolean(lo, hi, smin):
    p = _params()
    a, b = select.ndim(min=lo), select.size(min=smin)
    fa = jax.tree.leaves(select.resolve(a, p, allow_empty=True))
    fb = jax.tree.leaves(select.resolve(b, p, allow_empty=True))
    f_and = jax.tree.leaves(select.resolve(a & b, p, allow_empty=True))
    f_or = jax.tree.leaves(select.resolve(a | b, p, allow_empty=True))
    f_not = jax.tree.leaves(select.resolve(~a, p, allow_empty=True))
    assert f_and == [x and y for x, y in zip(fa, fb)]
    assert f_or == [x or y for x, y in zip(fa, fb)]
    assert f_not == [not x for x in fa]


def test_rules_first_match_wins_and_default():
    p = _params()
    r = select.rules([(r"block_0/.*kernel", "conv"), (select.ndim(min=2), "dense")],
                     default="rest")
    labels = r(p)
    assert labels["block_0"]["Conv_0"]["kernel"] == "conv"
    assert labels["Dense_0"]["kernel"] == "dense"
    assert labels["Dense_0"]["bias"] == "rest" and labels["steps"] == "rest"
    assert r.labels == ["conv", "dense", "rest"]


def test_rules_errors():
    p = _params()
    with pytest.raises(ValueError, match="no select.rules pattern matches these parameters:"
                       "(.|\n)*Dense_0/bias(.|\n)*pass default="):
        select.rules([(r".*kernel", "k")])(p)
    with pytest.raises(ValueError, match="pattern '.\\*kernel' gives no parameter its value: "
                       "every path it matches is taken by an earlier pattern"):
        select.rules([(r".*", "all"), (r".*kernel", "k")])(p)
    with pytest.raises(ValueError, match="pattern 'Dense_9/.*' matches no parameter path"):
        select.rules([(r"Dense_9/.*", "x")], default="rest")(p)
    # a Selector that matches nothing is not an error (only a regex is checked)
    r = select.rules([(select.ndim(min=5), "big")], default="rest")
    assert set(jax.tree.leaves(r(p))) == {"rest"}
    with pytest.raises(TypeError, match="label must be a string"):
        select.rules([(r".*", 3)])
    with pytest.raises(TypeError, match="pair"):
        select.rules([r".*"])


def test_masked_nodes_are_skipped():
    p = {"a": jc.MaskedNode(), "b": jnp.ones(2)}
    assert select.paths(p) == ["b"]
    assert select.resolve(r"b", p)["b"] is True


def test_resolve_is_static_under_jit():
    @jax.jit
    def f(p):
        flags = select.resolve(r".*kernel", p)
        return jax.tree.map(lambda fl, x: x * 0 if fl else x, flags, p)

    out = f(_params())
    assert float(out["Dense_0"]["kernel"].sum()) == 0 and float(out["Dense_0"]["bias"].sum()) == 0
    np.testing.assert_array_equal(out["steps"], 0)


class _PairError(Exception):
    """An exception whose constructor takes two required arguments."""

    def __init__(self, code, detail):
        super().__init__(code, detail)
        self.code, self.detail = code, detail


def _raising_where(raised):
    def where(path, leaf):
        if path == "Dense_0/kernel":
            raised.append(_PairError(7, "no kernels"))
            raise raised[-1]
        return True

    return where


@pytest.mark.parametrize("under_jit", [False, True])
def test_callable_exception_is_reraised_unchanged_with_a_note(under_jit):
    raised = []
    where = _raising_where(raised)

    def run(p):
        select.resolve(where, p)
        return p["steps"]

    with pytest.raises(_PairError) as err:
        (jax.jit(run) if under_jit else run)(_params())
    assert err.value is raised[-1]  # the very object the callable raised, not a rebuilt one
    assert (err.value.code, err.value.detail) == (7, "no kernels")
    assert any("where=where failed on parameter 'Dense_0/kernel'" in n for n in err.value.__notes__)


@pytest.mark.parametrize("under_jit", [False, True])
def test_rules_callable_exception_is_reraised_unchanged_with_a_note(under_jit):
    raised = []
    r = select.rules([(r"block_0/.*", "conv"), (_raising_where(raised), "rest")])

    def run(p):
        r(p)
        return p["steps"]

    with pytest.raises(_PairError) as err:
        (jax.jit(run) if under_jit else run)(_params())
    assert err.value is raised[-1]
    assert any("rule 1" in n and "'Dense_0/kernel'" in n for n in err.value.__notes__)


def test_value_dependent_callable_under_jit_keeps_jax_error_and_explains():
    def positive(path, leaf):
        return bool(jnp.all(leaf > 0))  # needs values: impossible on traced leaves

    assert select.resolve(positive, _params(), allow_empty=True)["Dense_0"]["kernel"] is True
    with pytest.raises(jax.errors.TracerBoolConversionError) as err:
        jax.jit(lambda p: select.resolve(positive, p, allow_empty=True)["steps"] * p["steps"])(
            _params())
    notes = "\n".join(err.value.__notes__)
    assert "failed on parameter" in notes and "decide from the path, shape and dtype" in notes

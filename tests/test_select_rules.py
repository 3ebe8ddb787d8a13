"""select.flatten / Selected and select.per_leaf / LeafRule."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxcomp as jc
from jaxcomp import select
from jaxcomp.core.base import MaskedNode


def _params():
    return {
        "conv": {"kernel": jnp.ones((3, 3, 2, 4)), "bias": jnp.zeros(4)},
        "fc": {"kernel": jnp.ones((4, 3)), "bias": jnp.zeros(3)},
    }


# ------------------------------------------------------------------------------------------
# flatten / Selected


def test_flatten_selects_and_keeps_order():
    p = _params()
    sel = select.flatten(p, r".*/kernel", what="demo")
    assert sel.paths == ["conv/bias", "conv/kernel", "fc/bias", "fc/kernel"]
    assert sel.idx == [1, 3] and len(sel) == 2
    assert sel.sel_paths == ["conv/kernel", "fc/kernel"]
    assert sel.flags == [False, True, False, True]
    assert sel.sel_leaves[0] is p["conv"]["kernel"]
    assert [q for q, _ in sel.pairs] == sel.sel_paths
    assert "2 of 4" in repr(sel)


def test_flatten_default_is_used_only_for_none():
    p = _params()
    assert select.flatten(p, what="d").sel_paths == select.paths(p)  # default: every leaf
    sel = select.flatten(p, None, what="d", default=select.ndim(max=1))
    assert sel.sel_paths == ["conv/bias", "fc/bias"]
    assert select.flatten(p, r"fc/.*", what="d", default=select.ndim(max=1)).sel_paths == [
        "fc/bias", "fc/kernel"]


def test_rebuild_replaces_only_selected_and_keeps_other_objects():
    p = _params()
    sel = select.flatten(p, r".*/kernel", what="demo")
    out = sel.rebuild([jnp.zeros((3, 3, 2, 4)), jnp.zeros((4, 3))])
    assert out["conv"]["bias"] is p["conv"]["bias"] and out["fc"]["bias"] is p["fc"]["bias"]
    assert float(out["fc"]["kernel"].sum()) == 0.0
    seen = []
    out = sel.rebuild(sel.sel_leaves, others=lambda path, x: seen.append(path) or x + 1)
    assert seen == ["conv/bias", "fc/bias"]
    assert float(out["fc"]["bias"].sum()) == 3.0 and out["fc"]["kernel"] is p["fc"]["kernel"]
    base = [jnp.full(np.shape(x), 7.0) for x in sel.leaves]
    assert float(sel.rebuild(sel.sel_leaves, base=base)["fc"]["bias"][0]) == 7.0
    with pytest.raises(ValueError, match="demo: rebuild got 1 values for 2 selected leaves"):
        sel.rebuild([jnp.zeros(1)])


def test_masked_and_of_masked_round_trip():
    p = _params()
    sel = select.flatten(p, r".*/kernel", what="demo")
    tree = sel.masked()
    assert isinstance(tree["conv"]["bias"], MaskedNode)
    assert tree["fc"]["kernel"] is p["fc"]["kernel"]
    assert select.paths(tree) == sel.sel_paths
    ms = sel.of_masked(sel.masked([jnp.ones((3, 3, 2, 4), bool), jnp.ones((4, 3), bool)]),
                       "masks")
    assert [m.shape for m in ms] == [(3, 3, 2, 4), (4, 3)]
    with pytest.raises(ValueError, match="masked got 1 values"):
        sel.masked([1])


def test_of_masked_refuses_a_state_of_other_paths_with_the_same_shapes():
    # Two leaves of the same shape: a state built for one selection fits the other by
    # position and shape, and only the paths tell them apart.
    w = jnp.ones((4, 4))
    p = {"enc": {"kernel": w}, "dec": {"kernel": w}}
    masks = select.flatten(p, r"enc/.*", what="demo").masked([jnp.ones((4, 4), bool)])
    other = select.flatten(p, r"dec/.*", what="demo")
    with pytest.raises(ValueError) as e:
        other.of_masked(masks, "the state's masks")
    msg = str(e.value)
    assert "demo: the state's masks does not have the paths of the selected parameters" in msg
    assert "only in the state's masks:\n    enc/kernel" in msg
    assert "only in the selected parameters:\n    dec/kernel" in msg
    assert "Re-run init" in msg
    # a renamed tree with the same shapes
    renamed = {"a": {"kernel": w}, "b": {"kernel": w}}
    sel = select.flatten(renamed, True, what="demo")
    with pytest.raises(ValueError, match=r"only in masks:\n    dec/kernel"):
        sel.of_masked(select.flatten(p, True, what="x").masked(), "masks")


def test_of_masked_checks_shapes():
    sel = select.flatten({"w": jnp.ones((4, 4))}, True, what="demo")
    with pytest.raises(ValueError, match=r"demo: 'w' in masks has shape \(4, 3\); the "
                                         r"parameter has \(4, 4\)"):
        sel.of_masked({"w": jnp.ones((4, 3), bool)}, "masks")
    assert sel.of_masked({"w": jnp.ones((4, 3))}, "masks", check_shapes=False)[0].shape == (4, 3)


def test_of_reads_selected_leaves_and_checks_paths_and_shapes():
    p = _params()
    sel = select.flatten(p, r"fc/kernel", what="demo")
    g = jax.tree.map(lambda x: 2 * x, p)
    assert sel.of(g, "grads")[0] is g["fc"]["kernel"]
    assert len(sel.leaves_of(g, "grads")) == 4
    # same shapes, another name: refused (counting leaves is not enough)
    bad = {"conv": p["conv"], "dense": p["fc"]}
    with pytest.raises(ValueError) as e:
        sel.of(bad, "grads")
    assert "only in grads:\n    dense/bias\n    dense/kernel" in str(e.value)
    assert "only in the params:\n    fc/bias\n    fc/kernel" in str(e.value)
    assert "Pass grads with the structure of the params" in str(e.value)
    with pytest.raises(ValueError, match="'fc/kernel' in grads has shape"):
        sel.of({**p, "fc": {"kernel": jnp.ones((3, 4)), "bias": p["fc"]["bias"]}}, "grads")
    # same names in another order (a list reversed)
    lst = select.flatten([jnp.ones(2), jnp.ones(2)], True, what="demo")
    with pytest.raises(ValueError, match=r"\(1 leaves for 2\):\n  only in the params:\n    1\nFix"):
        lst.of([jnp.ones(2)], "grads", fix="Fix it.")
    # the same names in another order
    nested = select.flatten({"a": [jnp.ones(2), jnp.ones(2)]}, True, what="demo")
    with pytest.raises(ValueError, match="another order or number; leaf 0 is 'a/1' in grads, "
                                         "'a/0' in the params"):
        nested.of({"a/0": jnp.ones(2), "a": {"1": jnp.ones(2)}}, "grads")


def test_boxed_params_and_unboxed_grads_have_the_same_paths():
    from flax import linen as nn

    boxed = {"fc": {"kernel": nn.Partitioned(jnp.ones((2, 2)), (None, "model"))}}
    sel = select.flatten(boxed, True, what="demo")
    assert sel.of({"fc": {"kernel": jnp.zeros((2, 2))}}, "grads")[0].shape == (2, 2)
    assert isinstance(sel.rebuild([jnp.zeros((2, 2))])["fc"]["kernel"], nn.Partitioned)


def test_compressed_leaves_stay_whole():
    lr = jc.LowRank(jnp.ones((4, 2)), jnp.ones((2, 3)))
    sel = select.flatten({"fc": {"kernel": lr}, "b": jnp.ones(3)}, r"b", what="demo")
    assert sel.paths == ["b", "fc/kernel"] and sel.leaves[1] is lr
    assert sel.rebuild([jnp.zeros(3)])["fc"]["kernel"] is lr


def test_with_selected_shares_the_rest():
    p = _params()
    sel = select.flatten(p, r"fc/kernel", what="demo")
    sel2 = sel.with_selected([jnp.zeros((4, 3))])
    assert float(sel2.sel_leaves[0].sum()) == 0.0 and float(sel.sel_leaves[0].sum()) == 12.0
    assert sel2.leaves[0] is sel.leaves[0]


def test_empty_selection_messages():
    p = _params()
    with pytest.raises(ValueError) as e:
        select.flatten(p, r"fc/kernal", what="magnitude_pruning")
    msg = str(e.value)
    assert msg.startswith("magnitude_pruning: where='fc/kernal' matches no parameter")
    assert msg.split("closest first):\n")[1].splitlines()[0].strip() == "fc/kernel"
    assert msg.endswith("Select at least one parameter, e.g. where=r'.*/kernel'.")
    with pytest.raises(ValueError, match=r"demo: where= selects no parameter \(every flag is "
                                         r"False\)\. Available paths:\n    conv/bias"):
        select.flatten(p, jax.tree.map(lambda _: False, p), what="demo")
    with pytest.raises(ValueError, match="(?s)demo: where=nope selects no kernel.*Try this"):
        select.flatten(p, nope, what="demo", noun="kernel", hint="Try this.")
    with pytest.raises(ValueError, match=r"where=None \(the default, size\(min=1000"):
        select.flatten(p, None, what="demo", default=select.size(min=1000))
    with pytest.raises(ValueError, match=r"where=None \(the default, 'x.\*'\)"):
        select.flatten(p, None, what="demo", default=r"x.*")
    with pytest.raises(ValueError, match=r"(?s)the default, every leaf.*no leaves"):
        select.flatten({}, what="demo")
    assert select.flatten(p, False, what="demo", allow_empty=True).idx == []
    with pytest.raises(ValueError, match=r"(?s)where='a' matches no parameter.*no leaves"):
        select.flatten({}, "a", what="demo")


def nope(path, leaf):
    return False


def test_empty_selection_names_callables():
    with pytest.raises(ValueError, match="where=nope selects no parameter"):
        select.flatten(_params(), nope, what="demo")


def test_leaf_check_runs_on_selected_leaves_only():
    seen = []
    select.flatten(_params(), r".*/kernel", what="d", leaf_check=lambda p, x: seen.append(p))
    assert seen == ["conv/kernel", "fc/kernel"]

    def no_4d(path, x):
        if x.ndim == 4:
            raise ValueError(f"'{path}' is 4-D")

    with pytest.raises(ValueError, match="'conv/kernel' is 4-D"):
        select.flatten(_params(), r".*/kernel", what="d", leaf_check=no_4d)


def test_flatten_passes_where_errors_through():
    with pytest.raises(ValueError, match="not a valid regular expression"):
        select.flatten(_params(), "(", what="d")
    with pytest.raises(TypeError, match="where must be"):
        select.flatten(_params(), 3, what="d")


@settings(max_examples=40, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=6))
def test_rebuild_masked_invariants(flags):
    p = {f"l{i}": jnp.full((i + 1,), float(i)) for i in range(len(flags))}
    where = {f"l{i}": f for i, f in enumerate(flags)}
    sel = select.flatten(p, where, what="h", allow_empty=True)
    assert sel.flags == [where[q] for q in sel.paths]
    # rebuilding with the selected leaves gives the same objects back
    back = sel.rebuild(sel.sel_leaves)
    assert all(back[k] is p[k] for k in p)
    # the masked tree has exactly the selected leaves, and of_masked reads them back
    m = sel.masked()
    assert select.paths(m) == sel.sel_paths
    assert all(a is b for a, b in zip(sel.of_masked(m, "m"), sel.sel_leaves))


# ------------------------------------------------------------------------------------------
# per_leaf / LeafRule


def test_per_leaf_forms():
    p = _params()
    assert select.per_leaf(3, p) == [3, 3, 3, 3]
    assert select.per_leaf(None, p) == [None] * 4
    assert select.per_leaf("int8", p) == ["int8"] * 4
    assert select.per_leaf({r"conv/.*": 8, r".*kernel": 4}, p, default=32) == [8, 8, 32, 4]
    assert select.per_leaf([(r"conv/.*", 8), (r".*kernel", 4)], p, default=32) == [8, 8, 32, 4]
    assert select.per_leaf(((select.ndim(min=2), "2d"),), p, default="1d") == [
        "1d", "2d", "1d", "2d"]
    assert select.per_leaf({select.path("fc/.*") & select.ndim(max=1): 1}, p, default=0) == [
        0, 0, 1, 0]
    assert select.per_leaf(lambda path, x: x.ndim, p) == [1, 4, 1, 2]
    assert select.per_leaf({lambda path, x: x.ndim == 4: "conv"}, p, default="-") == [
        "-", "conv", "-", "-"]


def test_per_leaf_reads_mapping_like_configs():
    import ml_collections
    from flax.core import FrozenDict

    cfg = ml_collections.ConfigDict({"rates": {"fc/kernel": 0.1}})
    assert select.per_leaf(cfg.rates, _params(), default=0.2) == [0.2, 0.2, 0.2, 0.1]
    assert select.per_leaf(FrozenDict({"fc/kernel": 1}), _params(), default=0) == [0, 0, 0, 1]


def test_per_leaf_on_paths_and_selected():
    assert select.per_leaf({r"a/.*": 1}, paths=["a/x", "b/y"], default=0) == [1, 0]
    assert select.per_leaf(lambda path, leaf: leaf, paths=["a"]) == [None]
    sel = select.flatten(_params(), r".*/kernel", what="d")
    assert select.per_leaf({r"fc/.*": 2}, sel, default=1) == [1, 2]
    with pytest.raises(TypeError, match="exactly one"):
        select.per_leaf(1)
    with pytest.raises(TypeError, match="exactly one"):
        select.per_leaf(1, _params(), paths=["a"])
    with pytest.raises(TypeError, match="paths= must be"):
        select.per_leaf(1, paths="a/b")


def test_callable_values_are_scalars_on_request():
    def schedule(step):
        return 0.5

    assert select.per_leaf(schedule, paths=["a", "b"], callable_values=True) == [schedule] * 2
    assert select.per_leaf({r".*": schedule}, paths=["a"]) == [schedule]


def test_unmatched_leaves_without_default_are_named():
    p = _params()
    with pytest.raises(ValueError) as e:
        select.per_leaf({r".*kernel": 4}, p, what="bits")
    msg = str(e.value)
    assert msg.startswith("no bits pattern matches these parameters:\n    conv/bias\n    fc/bias")
    assert "'.*kernel'" in msg and "r'.*' last" in msg
    with pytest.raises(ValueError, match="no bits pattern matches selected kernel 'fc/kernel'.*"
                                         "Do this"):
        select.per_leaf({r"conv/.*": 4}, select.flatten(p, r".*kernel", what="d"), what="bits",
                        noun="selected kernel", hint="Do this.")
    with pytest.raises(ValueError, match="no bits pattern matches parameter 'x'"):
        select.LeafRule({r"y": 1}, what="bits").value("x")


def test_unused_patterns_are_errors_unless_allowed():
    p = _params()
    with pytest.raises(ValueError) as e:
        select.per_leaf({r"fc/kernal": 4}, p, default=0, what="bits")
    msg = str(e.value)
    assert "bits pattern 'fc/kernal' matches no parameter path" in msg
    assert msg.split("closest first):\n")[1].splitlines()[0].strip() == "fc/kernel"
    # shadowed: it matches, but an earlier pattern takes every leaf it matches
    with pytest.raises(ValueError, match=r"(?s)pattern 'fc/kernel' gives no parameter its value.*"
                                         r"taken by an earlier pattern:\n    fc/kernel"):
        select.per_leaf([(r".*kernel", 4), (r"fc/kernel", 8)], p, default=0, what="bits")
    with pytest.raises(ValueError, match=r"pattern size\(min=10000, max=None\) matches no"):
        select.per_leaf({select.size(min=10_000): 1}, p, default=0)
    assert select.per_leaf({r"fc/kernal": 4}, p, default=0, allow_unused=True) == [0] * 4


def test_validate_labels_name_the_entry():
    def positive(v, label):
        if v <= 0:
            raise ValueError(f"{label}={v} must be > 0")
        return int(v)

    with pytest.raises(ValueError, match=r"bits\['fc/.\*'\]=0 must be > 0"):
        select.per_leaf({r"fc/.*": 0}, _params(), default=1, what="bits", validate=positive)
    with pytest.raises(ValueError, match=r"^bits=-1 must be > 0"):
        select.per_leaf(-1, _params(), what="bits", validate=positive)
    with pytest.raises(ValueError, match=r"bits for 'conv/bias'=0 must be > 0"):
        select.per_leaf(lambda p, x: x.ndim - 1, _params(), what="bits", validate=positive)
    with pytest.raises(ValueError, match=r"bits\[size\(min=1, max=None\)\]=0"):
        select.per_leaf([(select.size(min=1), 0)], _params(), what="bits", validate=positive)
    # validate's value is used; it is not called on the default
    assert select.per_leaf({r"fc/.*": 2.0}, _params(), default="d", validate=positive) == [
        "d", "d", 2, 2]


def test_callable_errors_say_which_parameter():
    def boom(path, leaf):
        raise KeyError("no")

    with pytest.raises(KeyError) as e:
        select.per_leaf(boom, _params(), what="bits")
    assert "bits callable on parameter 'conv/bias'" in "".join(e.value.__notes__)


def test_malformed_rules():
    with pytest.raises(TypeError, match=r"bits\[1\] must be a \(pattern, value\) pair"):
        select.per_leaf([(r".*", 1), (4, 4, 4)], paths=["a"], what="bits")
    with pytest.raises(TypeError, match=r"pass \{'\.\*': value\}"):
        select.per_leaf((4, 4), paths=["a"], what="block")
    with pytest.raises(TypeError, match="pattern 3 must be a regex string"):
        select.per_leaf({3: 1}, paths=["a"], what="bits")
    with pytest.raises(ValueError, match=r"bits: invalid regex '\('"):
        select.per_leaf({"(": 1}, paths=["a"], what="bits")


def test_leaf_rule_object():
    rule = select.LeafRule([(r"a/.*", 1), (r".*", 2)], what="r")
    assert rule.is_rules and rule.first("a/x") == 0 and rule.first("b") == 1
    assert [e.label for e in rule.entries] == ["r['a/.*']", "r['.*']"]
    assert rule.value("b") == 2
    assert "r: {'a/.*': 1, '.*': 2}" in repr(rule)
    assert not select.LeafRule(5).is_rules and select.LeafRule(5).value("x") == 5
    assert "everywhere" in repr(select.LeafRule(5))
    assert "callable" in repr(select.LeafRule(lambda p, x: 1))
    assert select.LeafRule(lambda p, x: p).value("q") == "q"
    assert select.LeafRule({r"y": 1}).value("x", default=0) == 0


_SEGMENTS = ["a", "b", "conv", "fc", "kernel", "bias", "0", "1"]
_PATTERNS = [r".*", r"a/.*", r".*/kernel", r"conv/.*", r"fc/.*", r".*bias", r"b/0",
             r"(a|b)/.*", r"[a-c].*", r"fc/kernel", r".*0.*"]


@settings(max_examples=80, deadline=None)
@given(
    paths=st.lists(st.lists(st.sampled_from(_SEGMENTS), min_size=1, max_size=3)
                   .map("/".join), min_size=0, max_size=8),
    rules=st.lists(st.tuples(st.sampled_from(_PATTERNS), st.integers(0, 9)), max_size=5),
)
def test_first_match_wins_equals_brute_force(paths, rules):
    got = select.per_leaf(rules, paths=paths, default=-1, allow_unused=True)
    want = []
    for p in paths:
        for pat, v in rules:
            if re.fullmatch(pat, p):
                want.append(v)
                break
        else:
            want.append(-1)
    assert got == want
    # A mapping keeps the first value of a repeated key in the position it was first given.
    as_dict = {}
    for pat, v in rules:
        as_dict.setdefault(pat, v)
    assert select.per_leaf(as_dict, paths=paths, default=-1, allow_unused=True) == want
    # without allow_unused, the error is raised exactly when some rule gives no path its value
    used = {next((i for i, (pat, _) in enumerate(rules) if re.fullmatch(pat, p)), None)
            for p in paths}
    if all(i in used for i in range(len(rules))):
        assert select.per_leaf(rules, paths=paths, default=-1) == want
    else:
        with pytest.raises(ValueError, match="pattern"):
            select.per_leaf(rules, paths=paths, default=-1)

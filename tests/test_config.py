"""Config loading, overrides and registries: every bad config names its field."""

import textwrap

import ml_collections
import pytest

from jaxcomp.config import ConfigError, Registry, apply_overrides, get_field, load_config, require


def _write(tmp_path, body):
    p = tmp_path / "study.py"
    p.write_text(textwrap.dedent(body))
    return p


CONFIG = """
import ml_collections

def get_config():
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.lr = 1e-3
    c.name = "x"
    c.flag = False
    c.prune = ml_collections.ConfigDict({"sparsity": 0.5, "where": ".*/kernel"})
    c.stages = [{"method": "fake_quantization", "bits": 8}]
    c.seeds = [0, 1, 2]
    return c
"""


def test_load_and_override(tmp_path):
    c = load_config(_write(tmp_path, CONFIG), ["--config.prune.sparsity=0.9", "--config.seed=3",
                                               "--config.lr=1", "--config.name=abc",
                                               "--config.flag=True", "--config.stages.0.bits=4",
                                               "--config.seeds=[5, 6]"])
    assert c.prune.sparsity == 0.9 and c.seed == 3 and c.lr == 1.0 and isinstance(c.lr, float)
    assert c.name == "abc" and c.flag is True and c.stages[0]["bits"] == 4 and c.seeds == [5, 6]
    assert c.config_path.endswith("study.py")
    assert get_field(c, "prune.where") == ".*/kernel"
    assert get_field(c, "prune.missing", None) is None


@pytest.mark.parametrize(
    "override,msg",
    [
        ("--config.prune.sparsty=0.9", r"config.prune.sparsty: no such field; did you mean 'sparsity'"),
        ("--config.seed=0.5", r"config.seed: expected a value of type int"),
        ("--config.flag=1", r"config.flag: expected True or False"),
        ("--config.stages.3.bits=4", r"config.stages.3: index '3' is out of range"),
        ("--config.lr='fast'", r"config.lr: expected a value of type float"),
        ("prune.sparsity=0.9", r"must look like --config.field.sub=value"),
        ("--config.=1", r"empty field name"),
    ],
)
def test_bad_overrides_name_the_field(tmp_path, override, msg):
    with pytest.raises(ConfigError, match=msg):
        load_config(_write(tmp_path, CONFIG), [override])


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.py")
    with pytest.raises(ConfigError, match="must define get_config"):
        load_config(_write(tmp_path, "x = 1\n"))
    with pytest.raises(ConfigError, match="must return an ml_collections.ConfigDict"):
        load_config(_write(tmp_path, "def get_config():\n    return 3\n"))


def test_registry_build_and_errors():
    reg = Registry("compressor")

    @reg.register("scale")
    def scale(factor: float, *, bias: float = 0.0):
        if factor <= 0:
            raise ValueError("factor must be positive")
        return (factor, bias)

    assert reg.build({"name": "scale", "factor": 2.0}, field="config.c") == (2.0, 0.0)
    assert reg.build(ml_collections.ConfigDict({"method": "scale", "factor": 1.0, "bias": 1.0}),
                     field="config.c", key="method") == (1.0, 1.0)
    assert "scale" in reg and reg.names() == ["scale"]
    with pytest.raises(ConfigError, match=r"config.c.name: unknown compressor 'scael'; did you mean 'scale'"):
        reg.build({"name": "scael", "factor": 1.0}, field="config.c")
    with pytest.raises(ConfigError, match=r"config.c.fctor: not an argument of scale; did you mean 'factor'"):
        reg.build({"name": "scale", "fctor": 1.0}, field="config.c")
    with pytest.raises(ConfigError, match=r"config.c.factor: missing"):
        reg.build({"name": "scale"}, field="config.c")
    with pytest.raises(ConfigError, match=r"config.c \(scale\): factor must be positive"):
        reg.build({"name": "scale", "factor": -1.0}, field="config.c")
    with pytest.raises(ConfigError, match=r"config.c.name: missing"):
        reg.build({"factor": 1.0}, field="config.c")
    with pytest.raises(ValueError, match="already registered"):
        reg.register("scale", lambda: None)


def test_require():
    c = ml_collections.ConfigDict({"steps": 10, "lr": 1, "flag": True, "name": "a"})
    assert require(c, "steps", int) == 10
    assert require(c, "lr", float) == 1
    with pytest.raises(ConfigError, match=r"config.flag: expected int"):
        require(c, "flag", int)
    with pytest.raises(ConfigError, match=r"config.steps: invalid value 10; must be odd"):
        require(c, "steps", int, check=lambda v: v % 2, hint="must be odd")
    with pytest.raises(ConfigError, match=r"config.nope: no such field"):
        require(c, "nope", int)


def test_apply_overrides_returns_same_object():
    c = ml_collections.ConfigDict({"a": 1})
    assert apply_overrides(c, []) is c


def test_build_optimizer_matches_optax():
    import jax
    import jax.numpy as jnp
    import optax

    from jaxcomp.config import build_optimizer

    params = {"w": jnp.arange(3.0)}
    grads = {"w": jnp.array([1.0, -2.0, 0.5])}
    tx = build_optimizer({"name": "adamw", "learning_rate": {"name": "linear_schedule",
                          "init_value": 0.1, "end_value": 0.0, "transition_steps": 10},
                          "weight_decay": 0.01, "clip_norm": 1.0})
    ref = optax.chain(optax.clip_by_global_norm(1.0),
                      optax.adamw(optax.linear_schedule(0.1, 0.0, 10), weight_decay=0.01))
    s1, s2 = tx.init(params), ref.init(params)
    for _ in range(3):
        u1, s1 = tx.update(grads, s1, params)
        u2, s2 = ref.update(grads, s2, params)
        assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), u1, u2))
    with pytest.raises(ConfigError, match=r"config.optimizer.name: unknown optimizer 'adamm'"):
        build_optimizer({"name": "adamm", "learning_rate": 1e-3})
    with pytest.raises(ConfigError, match=r"config.optimizer.learning_rate.name: unknown schedule"):
        build_optimizer({"name": "adam", "learning_rate": {"name": "cosine"}})
    with pytest.raises(ConfigError, match=r"config.optimizer.learning_rate: expected a number"):
        build_optimizer({"name": "adam", "learning_rate": "fast"})
    with pytest.raises(ConfigError, match=r"clip_norm: expected a positive number"):
        build_optimizer({"name": "adam", "learning_rate": 1e-3, "clip_norm": -1})


def test_build_compressor_chain_and_errors():
    import jax.numpy as jnp

    import jaxcomp as jc
    from jaxcomp.config import COMPRESSORS, build_compressor

    if "test_identity" not in COMPRESSORS:
        COMPRESSORS.register("test_identity", lambda: jc.identity())
    c = build_compressor([{"method": "test_identity"}, {"method": "test_identity"}])
    p = {"w": jnp.ones(2)}
    assert len(c.init(p)) == 2
    with pytest.raises(ConfigError, match=r"config.compression.1.method: unknown compressor"):
        build_compressor([{"method": "test_identity"}, {"method": "nope"}])
    with pytest.raises(ConfigError, match="an empty list"):
        build_compressor([])


def test_pruning_compressors_from_config():
    import jax
    import jax.numpy as jnp

    from jaxcomp.config import build_compressor

    params = {"fc": {"kernel": jax.random.normal(jax.random.key(0), (10, 10)), "bias": jnp.ones(10)}}
    comp = build_compressor({"method": "magnitude_pruning",
                             "sparsity": {"name": "polynomial", "initial_sparsity": 0.0,
                                          "final_sparsity": 0.5, "begin_step": 0, "end_step": 10,
                                          "update_every": 5},
                             "where": r".*/kernel"})
    s = comp.init(params)
    _, s = comp.update(params, s, step=10)
    assert int(jnp.sum(comp.apply(params, s)["fc"]["kernel"] == 0)) == 50
    nm = build_compressor({"method": "magnitude_pruning", "sparsity": None, "pattern": "2:4",
                           "where": r".*/kernel"})
    w = {"l": {"kernel": jax.random.normal(jax.random.key(1), (4, 8))}}
    nm_state = nm.init(w)
    kept = nm.apply(w, nm_state)["l"]["kernel"] != 0
    assert kept.reshape(4, 2, 4).sum(-1).tolist() == [[2, 2]] * 4
    with pytest.raises(ConfigError, match=r"sparsity.name: unknown pruning schedule 'poly'"):
        build_compressor({"method": "magnitude_pruning", "sparsity": {"name": "poly"}})
    with pytest.raises(ConfigError, match=r"config.compression.scop: not an argument"):
        build_compressor({"method": "magnitude_pruning", "sparsity": 0.5, "scop": "global"})
    with pytest.raises(ConfigError, match=r"config.compression \(magnitude_pruning\)"):
        build_compressor({"method": "magnitude_pruning", "sparsity": 1.5})


@pytest.mark.parametrize(
    "lr,msg",
    [
        (-1e-3, r"learning_rate: must be a positive finite number, got -0.001"),
        (0.0, r"learning_rate: must be a positive finite number, got 0.0"),
        (float("nan"), r"learning_rate: must be a positive finite number, got nan"),
        (float("inf"), r"learning_rate: must be a positive finite number, got inf"),
        ({"name": "warmup_cosine_decay_schedule", "init_value": 0.0, "peak_value": -0.1,
          "warmup_steps": 10, "decay_steps": 100},
         r"learning_rate.peak_value: a learning-rate level must be a finite number >= 0"),
        ({"name": "cosine_decay_schedule", "init_value": float("nan"), "decay_steps": 100},
         r"learning_rate.init_value: a learning-rate level must be a finite number >= 0"),
        ({"name": "linear_schedule", "init_value": 0.0, "end_value": 0.0,
          "transition_steps": 10}, r"learning_rate: the schedule never rises above 0"),
    ],
)
def test_learning_rates_must_be_positive_and_finite(lr, msg):
    from jaxcomp.config import build_optimizer

    with pytest.raises(ConfigError, match=msg):
        build_optimizer({"name": "sgd", "learning_rate": lr}, field="config.train.optimizer")


def test_valid_learning_rate_schedules_are_accepted():
    from jaxcomp.config import build_optimizer

    # a warmup from 0 and a decay to 0 are fine
    build_optimizer({"name": "adam", "learning_rate": {
        "name": "warmup_cosine_decay_schedule", "init_value": 0.0, "peak_value": 1e-3,
        "warmup_steps": 10, "decay_steps": 100, "end_value": 0.0}})
    build_optimizer({"name": "sgd", "learning_rate": 1})  # an int is a number too


def test_generic_configs_reject_unknown_top_level_fields():
    from jaxcomp.config.validation import check_config

    base = {"name": "x", "seeds": [0], "data": {}, "model": {}, "train": {}}
    check_config(ml_collections.ConfigDict(base))
    with pytest.raises(ConfigError, match=r"config.compresion: unknown field; did you mean "
                                          r"'compression'\? Known: name, seeds"):
        check_config(ml_collections.ConfigDict({**base, "compresion": [{"method": "x"}]}))
    with pytest.raises(ConfigError, match=r"config.zzz: unknown field; Known:"):
        check_config({**base, "zzz": 1})
    # a study with an entry point has its own fields; the common ones are still checked
    check_config({"entry": "research/x/main.py", "seeds": [0, 1], "teacher": {}, "alpha": 0.5})
    for bad, msg in [({"seeds": "0"}, r"config.seeds: expected a non-empty list"),
                     ({"seeds": []}, r"config.seeds: expected a non-empty list"),
                     ({"seeds": [0, 1.5]}, r"config.seeds.1: expected an integer"),
                     ({"seeds": [1, 1]}, r"config.seeds: repeated seeds"),
                     ({"seeds": [0], "name": 3}, r"config.name: expected a string"),
                     ({"seeds": [0], "entry": ""}, r"config.entry")]:
        with pytest.raises(ConfigError, match=msg):
            check_config({"entry": "research/x/main.py", **bad} if "entry" not in bad else bad)
    with pytest.raises(ConfigError, match=r"config.seeds: missing"):
        check_config({"data": {}})
    check_config({"entry": "research/x/main.py"})  # seeds are optional for a study


def test_missing_ml_collections_is_named(tmp_path, monkeypatch):
    import sys

    from jaxcomp.config.extras import MissingExtraError

    path = _write(tmp_path, "def get_config():\n    return {}\n")
    monkeypatch.setitem(sys.modules, "ml_collections", None)
    with pytest.raises(MissingExtraError, match=r"'ml-collections' .*pip install \"jaxcomp\[research\]\""):
        load_config(path)

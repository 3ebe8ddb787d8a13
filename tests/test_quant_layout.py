"""The public face of ``jaxcomp.quant``: its names, their homes, and the registry."""

import inspect

import jaxcomp as jc
import jaxcomp.quant as jq
from jaxcomp.config import COMPRESSORS

FACTORIES = ("fake_quantization", "lsq_quantization", "binary_connect", "xnor_binarization",
             "ternary_weights", "abc_binarization", "weight_sharing")


def test_every_public_name_resolves_to_a_quant_object():
    assert len(set(jq.__all__)) == len(jq.__all__)
    for name in jq.__all__:
        obj = getattr(jq, name)
        home = getattr(obj, "__module__", "")
        assert home.startswith("jaxcomp.quant."), (name, home)
        assert inspect.getdoc(obj), f"jaxcomp.quant.{name} has no docstring"


def test_every_compressor_factory_is_registered_and_builds_a_compressor():
    for name in FACTORIES:
        assert name in COMPRESSORS.names(), f"register {name} in jaxcomp.config.builders"
    comp = COMPRESSORS.build({"method": "fake_quantization", "bits": 4, "where": ".*/kernel"},
                             field="c", key="method")
    assert isinstance(comp, jc.Compressor)


def test_top_level_exposes_the_family():
    assert jc.quant is jq and "quant" in jc.__all__

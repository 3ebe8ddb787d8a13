"""Calibration passes of one-shot pruning: data chunks, the layers a model runs, their inputs.

:func:`obs_prune <jaxcomp.prune.oneshot.obs_model.obs_prune>` and
:func:`thinet_prune_layer <jaxcomp.prune.oneshot.thinet.thinet_prune_layer>`
walk a Flax linen model layer by layer: they split the calibration data
into chunks (:func:`calibration_chunks`), list the modules the model runs in
forward order (:func:`linen_layers`) and, for one layer at a time, record
the inputs of its calls with the forward pass stopped after the layer's
last call (:func:`layer_inputs`). The recording is
:func:`jaxcomp.ops.capture.capture_linen`, the mechanism distillation's
feature taps use too. They live in :mod:`jaxcomp.ops.hessian`, shared with
the quantization family's GPTQ, and are re-exported here.
"""

from jaxcomp.ops.hessian import calibration_chunks, layer_inputs, linen_layers

__all__ = ["calibration_chunks", "layer_inputs", "linen_layers"]

"""Quantization, binarization and parameter sharing.

Array-level functions use the literature's short names; compressor factories
end in the action and plug into the core protocol (``init``/``apply``/
``update``/``project``/``due``/``reached``), so they chain with pruning and run
in :func:`jaxcomp.train.make_train_step` like any other compressor.

* **Uniform quantization** — :func:`fake_quant` (quantize-dequantize with
  straight-through gradients; per tensor, channel or group; stochastic
  rounding), :func:`compute_scale`, :func:`quantize` / :func:`dequantize`
  (:class:`~jaxcomp.QArray` codes), calibration (:func:`calibrate`: absmax,
  min/max, percentile, MSE; EMA ranges), learned quantizers (LSQ, PACT),
  :func:`fixed_point`, and the compressors :func:`fake_quantization` and
  :func:`lsq_quantization` (mixed precision by per-path ``bits`` rules).
* **Binary and ternary** — BinaryConnect (:func:`binary_connect`), BNN sign
  activations (:func:`binary_activation`), XNOR-Net
  (:func:`xnor_binarization`), TWN (:func:`ternary_weights`), ABC-Net
  (:func:`abc_binarization`); :func:`binary_export` stores them at 1–M bits.
* **Parameter sharing** — :func:`kmeans_quantize` (jit-able 1-D k-means into a
  :class:`~jaxcomp.Codebook`), trained quantization (:func:`weight_sharing`,
  centroids fine-tuned by the summed gradients of their members), HashedNets
  (:class:`HashedArray`, :func:`hash_kernels`), and a real model file
  (:func:`export_model` / :func:`load_model`: relative sparse indices,
  Huffman-coded codebook indices).
* **Post-training quantization** — GPTQ (:func:`gptq`, the sequential driver
  :func:`gptq_quantize`), per-layer sensitivities and a HAQ-like
  mixed-precision search under a size or BOPs budget
  (:func:`mixed_precision_search`).
* **Activations and integer-only inference** — :func:`quantize_activations` /
  :func:`act_quantized` quantize layer inputs of an unchanged Flax model by
  path rules; :func:`export_integer` turns a fake-quant model into an
  int8/int32 network with fixed-point requantization and folded batch norm.

References:
  Jacob et al., arXiv:1712.05877; Esser et al. (LSQ), arXiv:1902.08153;
  Choi et al. (PACT), arXiv:1805.06085; Gupta et al., arXiv:1502.02551;
  Courbariaux et al. (BinaryConnect), arXiv:1511.00363; Hubara et al.,
  arXiv:1602.02830; Rastegari et al. (XNOR-Net), arXiv:1603.05279; Li et al.
  (TWN), arXiv:1605.04711; Lin et al. (ABC-Net), arXiv:1711.11294; Han et al.
  (Deep Compression), arXiv:1510.00149; Chen et al. (HashedNets),
  arXiv:1504.04788; Frantar et al. (GPTQ), arXiv:2210.17323; Wang et al.
  (HAQ), arXiv:1811.08886.
"""

from jaxcomp.quant.binary.core import BinaryState, binary_export
from jaxcomp.quant.binary.sign import (
    BinaryConnectState,
    XnorBinarizationState,
    binarize,
    binary_activation,
    binary_connect,
    xnor_binarization,
    xnor_input_scale,
    xnor_weights,
)
from jaxcomp.quant.binary.ternary import (
    AbcBinarizationState,
    TernaryWeightsState,
    abc_bases,
    abc_binarization,
    abc_binarize,
    ternarize,
    ternary_weights,
)
from jaxcomp.quant.calibration import (
    EmaRange,
    calibrate,
    calibration_range,
    ema_range_init,
    ema_range_update,
)
from jaxcomp.quant.compressors import (
    FakeQuantizationState,
    LsqQuantizationState,
    fake_quantization,
    lsq_params,
    lsq_quantization,
)
from jaxcomp.quant.export import export_quantized
from jaxcomp.quant.fixed_point import fixed_point, fixed_point_range
from jaxcomp.quant.integer.model import IntegerModel, export_integer
from jaxcomp.quant.integer.ops import (
    fold_batchnorm,
    int_conv,
    int_dense,
    quantize_multiplier,
    requantize,
)
from jaxcomp.quant.intercept import ActRanges, act_quantized, quantize_activations
from jaxcomp.quant.learned import PACT, LsqArray, lsq_fake_quant, lsq_init_step, pact
from jaxcomp.quant.ptq.gptq import GPTQOutput, gptq, round_to_nearest
from jaxcomp.quant.ptq.gptq_model import GPTQLayerStats, GPTQResult, gptq_quantize
from jaxcomp.quant.ptq.mixed_precision import MixedPrecisionPolicy, mixed_precision_search
from jaxcomp.quant.ptq.sensitivity import (
    BitSensitivity,
    hessian_sensitivity,
    hessian_trace,
    quantization_sensitivity,
)
from jaxcomp.quant.sharing.hashing import HashedArray, hash_array, hash_kernels
from jaxcomp.quant.sharing.kmeans import kmeans_1d, kmeans_objective, kmeans_quantize
from jaxcomp.quant.sharing.model_file import export_model, load_model
from jaxcomp.quant.sharing.trained import WeightSharingState, weight_sharing
from jaxcomp.quant.uniform import (
    compute_scale,
    dequantize,
    fake_quant,
    quant_range,
    quantize,
    round_ste,
    stochastic_round,
)

__all__ = [
    "PACT",
    "AbcBinarizationState",
    "ActRanges",
    "BinaryConnectState",
    "BinaryState",
    "BitSensitivity",
    "EmaRange",
    "FakeQuantizationState",
    "GPTQLayerStats",
    "GPTQOutput",
    "GPTQResult",
    "HashedArray",
    "IntegerModel",
    "LsqArray",
    "LsqQuantizationState",
    "MixedPrecisionPolicy",
    "TernaryWeightsState",
    "WeightSharingState",
    "XnorBinarizationState",
    "abc_bases",
    "abc_binarization",
    "abc_binarize",
    "act_quantized",
    "binarize",
    "binary_activation",
    "binary_connect",
    "binary_export",
    "calibrate",
    "calibration_range",
    "compute_scale",
    "dequantize",
    "ema_range_init",
    "ema_range_update",
    "export_integer",
    "export_model",
    "export_quantized",
    "fake_quant",
    "fake_quantization",
    "fixed_point",
    "fixed_point_range",
    "fold_batchnorm",
    "gptq",
    "gptq_quantize",
    "hash_array",
    "hash_kernels",
    "hessian_sensitivity",
    "hessian_trace",
    "int_conv",
    "int_dense",
    "kmeans_1d",
    "kmeans_objective",
    "kmeans_quantize",
    "load_model",
    "lsq_fake_quant",
    "lsq_init_step",
    "lsq_params",
    "lsq_quantization",
    "mixed_precision_search",
    "pact",
    "quant_range",
    "quantization_sensitivity",
    "quantize",
    "quantize_activations",
    "quantize_multiplier",
    "requantize",
    "round_ste",
    "round_to_nearest",
    "stochastic_round",
    "ternarize",
    "ternary_weights",
    "weight_sharing",
    "xnor_binarization",
    "xnor_input_scale",
    "xnor_weights",
]

"""Precision passes: static/dynamic INT8, INT4 weight-only, FP16, BF16 and FP8.

The integer passes wrap onnxruntime's own tools (``quantize_static``, ``quantize_dynamic``,
``MatMulNBitsQuantizer``) and FP16 its converter, rather than re-implement them; the wrappers
add what the tools leave to the caller: deterministic node names (the tools select nodes by
name), opset upgrades, calibration from in-memory feeds with input checks, node selection that
``candidates()`` can report before the pass runs, and a temporary directory so nothing
half-written is left behind. BF16 and FP8 are written on onnx-ir.

Every pass takes ``nodes_to_exclude`` (node names kept in FP32) and has
``candidates(model)``: the names of the nodes it would quantize, in graph order, after its own
exclusions. Both refer to the names ``ensure_node_names`` gives.

Modules: ``model`` (the proto a pass works on), ``calibrate`` (calibration data),
``int8_static``, ``int8_dynamic``, ``int4``, ``float16``, ``bfloat16``, ``float8`` (one pass
each), ``revert`` (layers put back to FP32 by graph edit), ``quiet`` (the tools' console
chatter).
"""

from lepton_compile.passes.quantize.bfloat16 import BF16_BLOCK_LIST, BFloat16Pass
from lepton_compile.passes.quantize.calibrate import (
    MIN_CALIBRATION_SAMPLES,
    check_calibration,
    histogram_sample_cap,
)
from lepton_compile.passes.quantize.float8 import FP8_E4M3_MAX, QuantizeFP8Pass
from lepton_compile.passes.quantize.float16 import FP16_BLOCK_LIST, Float16Pass
from lepton_compile.passes.quantize.int4 import INT4_QDQ_OPSET, QuantizeInt4WeightOnlyPass
from lepton_compile.passes.quantize.int8_dynamic import QuantizeDynamicInt8Pass
from lepton_compile.passes.quantize.int8_static import CALIBRATE_METHODS, QuantizeStaticInt8Pass
from lepton_compile.passes.quantize.model import QDQ_MIN_OPSET, ensure_node_names
from lepton_compile.passes.quantize.revert import revert_nodes, revert_qdq

__all__ = [
    "BF16_BLOCK_LIST",
    "CALIBRATE_METHODS",
    "FP8_E4M3_MAX",
    "FP16_BLOCK_LIST",
    "INT4_QDQ_OPSET",
    "MIN_CALIBRATION_SAMPLES",
    "QDQ_MIN_OPSET",
    "BFloat16Pass",
    "Float16Pass",
    "QuantizeDynamicInt8Pass",
    "QuantizeFP8Pass",
    "QuantizeInt4WeightOnlyPass",
    "QuantizeStaticInt8Pass",
    "check_calibration",
    "ensure_node_names",
    "histogram_sample_cap",
    "revert_nodes",
    "revert_qdq",
]

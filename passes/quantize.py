"""Precision passes: FP32 -> FP16 (FP32 inputs/outputs kept), and FP32 -> static INT8 QDQ.

Both wrap onnxruntime's own tools (``onnxruntime.transformers.float16`` and
``onnxruntime.quantization.quantize_static``) rather than re-implement them; the wrappers add
what the tools leave to the caller: opset upgrade for per-channel QDQ, calibration from
in-memory feeds, and a temporary directory so nothing half-written is left behind.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnx_ir.passes.common
from onnx import version_converter

log = logging.getLogger(__name__)

# Ops that stay in FP32: numerically fragile in FP16 (reductions over many elements, exp/log
# ranges) or without FP16 kernels on common providers.
FP16_BLOCK_LIST = (
    "Resize",
    "Range",
    "RandomNormalLike",
    "RandomUniformLike",
    "NonMaxSuppression",
    "TopK",
    "CumSum",
    "Upsample",
    "Einsum",
    "Loop",
    "If",
    "Scan",
)

# Per-channel QuantizeLinear/DequantizeLinear (the `axis` attribute) arrived in opset 13.
QDQ_MIN_OPSET = 13


def _to_proto(model: ir.Model | onnx.ModelProto) -> onnx.ModelProto:
    return model if isinstance(model, onnx.ModelProto) else ir.serde.serialize_model(model)


def _default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


class Float16Pass(ir.passes.FunctionalPass):
    """Convert float tensors and ops to FP16, keeping FP32 graph inputs and outputs."""

    def __init__(self, block_list: Sequence[str] = FP16_BLOCK_LIST):
        super().__init__()
        self.block_list = list(block_list)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        from onnxruntime.transformers.float16 import convert_float_to_float16

        proto = _to_proto(model)
        converted = convert_float_to_float16(
            proto,
            keep_io_types=True,
            op_block_list=self.block_list,
            disable_shape_infer=False,
        )
        # keep_io_types appends the input Casts after their consumers (onnxconverter-common
        # #208 has the same bug): restore topological order.
        out = ir.serde.deserialize_model(converted)
        ir.passes.common.TopologicalSortPass()(out)
        return ir.passes.PassResult(out, modified=True)


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """onnxruntime's quantizer logs advice through the root logger; keep it off the console."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        root.setLevel(level)


class _FeedReader:
    """onnxruntime's CalibrationDataReader protocol over a list of feeds."""

    def __init__(self, feeds: Sequence[Mapping[str, np.ndarray]]):
        self._feeds = list(feeds)
        self._it: Iterator[Mapping[str, np.ndarray]] = iter(self._feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        nxt = next(self._it, None)
        return dict(nxt) if nxt is not None else None

    def rewind(self) -> None:
        self._it = iter(self._feeds)


class QuantizeStaticInt8Pass(ir.passes.FunctionalPass):
    """Static INT8 QDQ: per-channel symmetric weights, activations calibrated on given feeds."""

    def __init__(
        self,
        calibration: Sequence[Mapping[str, np.ndarray]],
        per_channel: bool = True,
        calibrate_method: str = "minmax",
        activation_symmetric: bool = False,
        activation_type: str = "int8",
    ):
        super().__init__()
        if not calibration:
            raise ValueError("static INT8 quantization needs at least one calibration feed")
        self.calibration = list(calibration)
        self.per_channel = per_channel
        self.calibrate_method = calibrate_method
        self.activation_symmetric = activation_symmetric
        self.activation_type = activation_type

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        from onnxruntime.quantization import (
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )

        methods = {
            "minmax": CalibrationMethod.MinMax,
            "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile,
        }
        proto = _to_proto(model)
        if _default_opset(proto) < QDQ_MIN_OPSET:
            proto = version_converter.convert_version(proto, QDQ_MIN_OPSET)
        with tempfile.TemporaryDirectory(prefix="lepton-q-") as tmp, _quiet_root_logger():
            src = Path(tmp) / "in.onnx"
            dst = Path(tmp) / "out.onnx"
            onnx.save(proto, src)
            quantize_static(
                str(src),
                str(dst),
                _FeedReader(self.calibration),
                quant_format=QuantFormat.QDQ,
                per_channel=self.per_channel,
                activation_type=QuantType.QUInt8
                if self.activation_type == "uint8"
                else QuantType.QInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=methods[self.calibrate_method],
                extra_options={
                    "ActivationSymmetric": self.activation_symmetric,
                    "WeightSymmetric": True,
                },
            )
            out = onnx.load(str(dst))
        return ir.passes.PassResult(ir.serde.deserialize_model(out), modified=True)

"""Static INT8 QDQ: onnxruntime's quantize_static, calibrated on in-memory feeds, ranges cached."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from lepton_compile.passes.quantize.calibrate import (
    FeedReader,
    check_calibration,
    count_calibration,
    histogram_sample_cap,
)
from lepton_compile.passes.quantize.model import (
    QDQ_MIN_OPSET,
    check_exclusions,
    elem_types,
    finish,
    float_nodes,
    prepare,
    save,
    unchanged,
)
from lepton_compile.passes.quantize.quiet import quiet_root_logger

log = logging.getLogger(__name__)

CALIBRATE_METHODS = ("minmax", "entropy", "percentile")


def _static_op_types() -> list[str]:
    """The op types onnxruntime's quantize_static quantizes by default (QDQ and QLinear)."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return sorted(set(QDQRegistry) | set(QLinearOpsRegistry))


class QuantizeStaticInt8Pass(ir.passes.FunctionalPass):
    """Static INT8 QDQ: symmetric (per-channel) weights, activations calibrated on given feeds.

    ``activation_symmetric=True`` is the GPU/TensorRT setting (zero points at zero).
    ``op_types`` limits the op types (default: all onnxruntime quantizes).
    ``calibration_cache_dir``: where activation ranges are kept, keyed by the model, the
    samples and the calibration settings, so that passes with the same calibration (say,
    asymmetric and symmetric activations from one MinMax run) calibrate once.
    """

    def __init__(
        self,
        calibration: Sequence[Mapping[str, np.ndarray]],
        per_channel: bool = True,
        calibrate_method: str = "minmax",
        percentile: float = 99.999,
        activation_symmetric: bool = False,
        activation_type: str = "int8",
        op_types: Sequence[str] | None = None,
        nodes_to_exclude: Sequence[str] = (),
        calibration_cache_dir: str | None = None,
    ):
        super().__init__()
        if calibrate_method not in CALIBRATE_METHODS:
            raise ValueError(
                f"calibrate_method must be one of {', '.join(CALIBRATE_METHODS)}, "
                f"got {calibrate_method!r}"
            )
        if activation_type not in ("int8", "uint8"):
            raise ValueError(f"activation_type must be int8 or uint8, got {activation_type!r}")
        if not 0.0 < percentile <= 100.0:
            raise ValueError(f"percentile must be in (0, 100], got {percentile}")
        self.calibration = count_calibration(calibration, "static INT8 quantization")
        self.per_channel = per_channel
        self.calibrate_method = calibrate_method
        self.percentile = percentile
        self.activation_symmetric = activation_symmetric
        self.activation_type = activation_type
        self.op_types = tuple(op_types) if op_types is not None else None
        self.nodes_to_exclude = check_exclusions(nodes_to_exclude)
        self.calibration_cache_dir = calibration_cache_dir

    def _calibration_cache(
        self, proto: onnx.ModelProto, feeds: Sequence[Mapping[str, np.ndarray]], op_types: list
    ) -> Path | None:
        """The ranges file for this model, these samples and these calibration settings."""
        import hashlib
        import inspect

        from onnxruntime.quantization import quantize_static

        if not self.calibration_cache_dir:
            return None
        if "calibration_cache_path" not in inspect.signature(quantize_static).parameters:
            return None  # an onnxruntime without the ranges cache: calibrate every time
        h = hashlib.sha256()
        try:
            h.update(proto.SerializeToString())
        except Exception:  # past protobuf's limit: too large to key cheaply, calibrate anew
            return None
        for f in feeds:
            for k in sorted(f):
                a = np.ascontiguousarray(f[k])
                h.update(f"{k}|{a.dtype}|{a.shape}|".encode())
                h.update(a.tobytes())
        settings: list[Any] = [self.calibrate_method, sorted(op_types), self.activation_type]
        if self.calibrate_method == "percentile":
            settings.append(self.percentile)
        h.update(repr(settings).encode())
        return Path(self.calibration_cache_dir) / f"ranges-{h.hexdigest()[:32]}.json"

    def _candidates(self, proto: onnx.ModelProto) -> list[str]:
        op_types = self.op_types if self.op_types is not None else _static_op_types()
        excluded = set(self.nodes_to_exclude)
        nodes = float_nodes(proto, op_types, elem_types(proto))
        return [n.name for n in nodes if n.name not in excluded]

    def candidates(self, model: ir.Model | onnx.ModelProto) -> list[str]:
        """Nodes of the quantized op types that read a float tensor, less the exclusions."""
        return self._candidates(prepare(model, QDQ_MIN_OPSET))

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        from onnxruntime.quantization import (
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )

        proto = prepare(model, QDQ_MIN_OPSET)
        feeds = check_calibration(self.calibration, proto, "static INT8 quantization")
        names = self._candidates(proto)
        if not names:
            return unchanged(model)
        methods = {
            "minmax": CalibrationMethod.MinMax,
            "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile,
        }
        op_types = self.op_types if self.op_types is not None else _static_op_types()
        if self.calibrate_method in ("entropy", "percentile"):
            cap = histogram_sample_cap(proto)
            if cap is not None and len(feeds) > cap:
                log.info("histogram calibration on %d of %d samples (memory)", cap, len(feeds))
                feeds = feeds[:cap]
        self.samples_used = len(feeds)
        ranges = self._calibration_cache(proto, feeds, list(op_types))
        with tempfile.TemporaryDirectory(prefix="lepton-q-") as tmp, quiet_root_logger():
            src = Path(tmp) / "in.onnx"
            dst = Path(tmp) / "out.onnx"
            external = save(proto, src)
            # onnxruntime reads the ranges from the file when it exists, else calibrates and
            # writes it: here a private copy, renamed into place, so no reader sees half.
            fresh = ranges is not None and not ranges.is_file()
            self.ranges_reused = ranges is not None and not fresh
            cache_path = ranges
            if fresh and ranges is not None:
                ranges.parent.mkdir(parents=True, exist_ok=True)
                cache_path = ranges.with_name(f".{ranges.name}.{os.getpid()}.tmp")
            cache_arg = {} if cache_path is None else {"calibration_cache_path": str(cache_path)}
            quantize_static(
                str(src),
                str(dst),
                FeedReader(feeds),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(op_types),
                per_channel=self.per_channel,
                activation_type=QuantType.QUInt8
                if self.activation_type == "uint8"
                else QuantType.QInt8,
                weight_type=QuantType.QInt8,
                nodes_to_quantize=names,
                nodes_to_exclude=list(self.nodes_to_exclude),
                calibrate_method=methods[self.calibrate_method],
                use_external_data_format=external,
                extra_options={
                    "ActivationSymmetric": self.activation_symmetric,
                    "WeightSymmetric": True,
                    "CalibPercentile": self.percentile,
                },
                **cache_arg,
            )
            if fresh and ranges is not None and cache_path is not None and cache_path.is_file():
                os.replace(cache_path, ranges)
            out = onnx.load(str(dst))
        return finish(out)

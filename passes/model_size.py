"""Protobuf's 2 GiB message limit: the one threshold past which a model lives in files.

A model whose serialized size passes the limit cannot be serialized in memory, so it is
written with its weights as external data, checked by onnx.checker from its path and
loaded by onnxruntime from its path. Every part of the tool asks ``over_limit`` (or reads a
model through ``model_source``) instead of comparing sizes itself, so the rule has one home.

``LEPTON_PROTO_LIMIT_BYTES`` lowers the limit (tests do, so that the external-data path runs
end to end on small models; worker processes inherit it through the environment).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import onnx
from google.protobuf.message import EncodeError

# A margin below 2**31 - 1: the ModelProto around the graph adds a few bytes when saved.
DEFAULT_LIMIT_BYTES = 2**31 - 2**20

ENV_LIMIT = "LEPTON_PROTO_LIMIT_BYTES"


def proto_limit() -> int:
    """The size in bytes past which a model is handled through files with external data."""
    text = os.environ.get(ENV_LIMIT, "")
    try:
        value = int(text) if text else DEFAULT_LIMIT_BYTES
    except ValueError:
        value = DEFAULT_LIMIT_BYTES
    return max(1, min(value, DEFAULT_LIMIT_BYTES))


def over_limit(model: onnx.ModelProto) -> bool:
    """True when ``model`` cannot (or, under a lowered limit, must not) be serialized whole."""
    return model.ByteSize() > proto_limit()


@contextlib.contextmanager
def model_source(model: onnx.ModelProto, prefix: str = "lepton-") -> Iterator[bytes | str]:
    """What onnx.checker and onnxruntime read ``model`` from: its bytes, or, past the limit,
    the path of a temporary copy with external data (removed on exit).

    Serialized once and sized from the bytes: asking ``ByteSize`` first costs about as much
    again on a large model.
    """
    try:
        data: bytes | None = model.SerializeToString()
    except (EncodeError, ValueError, OverflowError):  # past protobuf's 2 GiB
        data = None
    if data is not None and len(data) <= proto_limit():
        yield data
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        path = Path(tmp) / "model.onnx"
        copy = onnx.ModelProto()
        copy.CopyFrom(model)  # saving with external data moves the weights out of the proto
        onnx.save_model(copy, str(path), save_as_external_data=True, location="model.onnx.data")
        yield str(path)

"""Protobuf's 2 GiB message limit: the one threshold past which a model lives in files.

A model whose serialized size passes the limit cannot be serialized in memory, so it is
written with its weights as external data, checked by onnx.checker from its path and
loaded by onnxruntime from its path. Every part of the tool asks ``over_limit`` instead of
comparing sizes itself, so the rule has one home.

``LEPTON_PROTO_LIMIT_BYTES`` lowers the limit (tests do, so that the external-data path runs
end to end on small models; worker processes inherit it through the environment).
"""

from __future__ import annotations

import os

import onnx

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

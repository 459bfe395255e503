"""Exporting the zoo's BERT encoders: a pinned checkpoint archive -> ONNX, checked against torch.

The archive (``config.json`` and ``model.safetensors``) is read with the ``safetensors``
package; the encoder is rebuilt in torch under HF BertModel's parameter names, exported with
torch.onnx, and the export is compared with the torch module in onnxruntime before it is kept.
Both torch and safetensors are imported only when a model is exported.
"""

from __future__ import annotations

import io
import json
import logging
import os
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from lepton_compile.bench.zoo.catalogue import ZooError

__all__ = ["BUILDERS", "build_bert_encoder", "export_bert", "read_safetensors"]

log = logging.getLogger(__name__)

# safetensors dtype tag -> numpy dtype (the format is little-endian). numpy has no bfloat16,
# so BF16 is widened to float32 below; other tags are refused by name.
_ST_DTYPES = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "i1",
    "U64": "<u8",
    "U32": "<u4",
    "U16": "<u2",
    "U8": "u1",
    "BOOL": "?",
}


def read_safetensors(source: bytes | str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Tensors of a safetensors file (its bytes or its path) as numpy arrays.

    The ``safetensors`` package parses and checks the file (header, dtypes, offsets); a
    malformed file raises ValueError with its reason. BF16 tensors are widened to float32
    (``safetensors.numpy.load`` refuses them: numpy has no bfloat16).
    """
    try:
        from safetensors import SafetensorError, deserialize
    except ImportError:
        raise ZooError("reading a checkpoint needs safetensors (pip install safetensors)") from None
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    try:
        views = deserialize(data)
    except SafetensorError as e:
        raise ValueError(f"safetensors: {e}") from None
    out: dict[str, np.ndarray] = {}
    for key, view in views:
        dtype, raw = view["dtype"], view["data"]
        if dtype == "BF16":
            bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            arr = bits.view(np.float32)
        elif dtype in _ST_DTYPES:
            stored = np.dtype(_ST_DTYPES[dtype])
            arr = np.frombuffer(raw, dtype=stored).astype(stored.newbyteorder("="), copy=False)
        else:
            raise ValueError(f"safetensors: {key}: unsupported dtype {dtype}")
        out[key] = arr.reshape(view["shape"])
    return out


def build_bert_encoder(config: dict[str, Any], weights: dict[str, np.ndarray]) -> Any:
    """A torch module equivalent to HF transformers' BertModel (eager attention, eval mode)
    with `weights` loaded strictly under HF's parameter names.

    forward(input_ids, attention_mask, token_type_ids) -> last_hidden_state.
    """
    import math

    import torch
    from torch import nn

    if config.get("hidden_act", "gelu") != "gelu":
        raise ZooError(f"bert: hidden_act {config['hidden_act']!r} is not supported")
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise ZooError("bert: only absolute position embeddings are supported")
    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    head_dim = hidden // heads
    eps = float(config.get("layer_norm_eps", 1e-12))

    class Embeddings(nn.Module):
        position_ids: torch.Tensor

        def __init__(self) -> None:
            super().__init__()
            self.word_embeddings = nn.Embedding(
                config["vocab_size"], hidden, padding_idx=config.get("pad_token_id", 0)
            )
            self.position_embeddings = nn.Embedding(config["max_position_embeddings"], hidden)
            self.token_type_embeddings = nn.Embedding(config["type_vocab_size"], hidden)
            self.LayerNorm = nn.LayerNorm(hidden, eps=eps)
            self.register_buffer(
                "position_ids", torch.arange(config["max_position_embeddings"]).unsqueeze(0)
            )

        def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
            positions = self.position_ids[:, : input_ids.shape[1]]
            x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
            x = x + self.position_embeddings(positions)
            return self.LayerNorm(x)

    class SelfAttention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.query = nn.Linear(hidden, hidden)
            self.key = nn.Linear(hidden, hidden)
            self.value = nn.Linear(hidden, hidden)

        def _heads(self, x: torch.Tensor) -> torch.Tensor:
            return x.view(x.shape[0], x.shape[1], heads, head_dim).transpose(1, 2)

        def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            q, k, v = (
                self._heads(self.query(x)),
                self._heads(self.key(x)),
                self._heads(self.value(x)),
            )
            scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(head_dim)
            probs = torch.softmax(scores + mask, dim=-1)
            ctx = torch.matmul(probs, v).transpose(1, 2)
            return ctx.reshape(x.shape[0], x.shape[1], hidden)

    class DenseNorm(nn.Module):  # HF BertSelfOutput / BertOutput: LayerNorm(dense(x) + residual)
        def __init__(self, d_in: int) -> None:
            super().__init__()
            self.dense = nn.Linear(d_in, hidden)
            self.LayerNorm = nn.LayerNorm(hidden, eps=eps)

        def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
            return self.LayerNorm(self.dense(x) + residual)

    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.self = SelfAttention()
            self.output = DenseNorm(hidden)

        def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return self.output(self.self(x, mask), x)

    class Intermediate(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.dense = nn.Linear(hidden, config["intermediate_size"])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return nn.functional.gelu(self.dense(x))  # exact (erf) GELU, HF's "gelu"

    class Layer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attention = Attention()
            self.intermediate = Intermediate()
            self.output = DenseNorm(config["intermediate_size"])

        def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            a = self.attention(x, mask)
            return self.output(self.intermediate(a), a)

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.ModuleList(Layer() for _ in range(config["num_hidden_layers"]))

    class Pooler(nn.Module):  # loaded so that the checkpoint loads strictly; not exported
        def __init__(self) -> None:
            super().__init__()
            self.dense = nn.Linear(hidden, hidden)

    class BertModel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embeddings = Embeddings()
            self.encoder = Encoder()
            self.pooler = Pooler()

        def forward(
            self,
            input_ids: torch.Tensor,
            attention_mask: torch.Tensor,
            token_type_ids: torch.Tensor,
        ) -> torch.Tensor:
            x = self.embeddings(input_ids, token_type_ids)
            # HF's extended mask: 0 where attended, dtype-min where masked, over key positions.
            mask = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
            for layer in self.encoder.layer:
                x = layer(x, mask)
            return x

    model = BertModel()
    state = {k: torch.from_numpy(np.array(v)) for k, v in weights.items()}
    model.load_state_dict(state, strict=True)
    return model.eval()


def export_bert(archive: bytes, out: Path, dynamic: bool = False) -> str:
    """Export the BERT checkpoint in zip `archive` to ONNX at `out`; return torch's version.

    With `dynamic`, batch and sequence are dynamic axes (dim_params ``batch`` and
    ``sequence``). The export is run in onnxruntime and compared with the torch module before
    it is kept: at the traced shape, and for a dynamic export at two other shapes as well.
    """
    try:
        import torch
    except ImportError:
        raise ZooError("exporting minilm-l6 needs torch (pip install torch)") from None

    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        config = json.loads(zf.read("config.json"))
        weights = read_safetensors(zf.read("model.safetensors"))
    model = build_bert_encoder(config, weights)
    gen = torch.Generator().manual_seed(0)

    def example(batch: int, seq: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        input_ids = torch.randint(0, config["vocab_size"], (batch, seq), generator=gen)
        attention_mask = torch.ones(batch, seq, dtype=torch.int64)
        attention_mask[:, seq - seq // 8 :] = 0  # exercise the mask path in the check below
        token_type_ids = torch.randint(0, config["type_vocab_size"], (batch, seq), generator=gen)
        return input_ids, attention_mask, token_type_ids

    args = example(1, 128)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    axes = {"batch": 0, "sequence": 1}
    dynamic_axes = None
    if dynamic:
        dynamic_axes = {n: {i: a for a, i in axes.items()} for n in names}
        dynamic_axes["last_hidden_state"] = {0: "batch", 1: "sequence"}
    with torch.no_grad(), warnings.catch_warnings():
        # dynamo=False is deliberate (no onnxscript export dependency, stable bytes).
        warnings.filterwarnings(
            "ignore", "You are using the legacy TorchScript", DeprecationWarning
        )
        torch.onnx.export(
            model,
            args,
            str(out),
            input_names=names,
            output_names=["last_hidden_state"],
            opset_version=17,
            dynamo=False,
            do_constant_folding=True,
            dynamic_axes=dynamic_axes,
        )
        checks = [args, example(2, 64), example(3, 17)] if dynamic else [args]
        diff = 0.0
        for check in checks:
            want = model(*check).numpy()
            feeds = dict(zip(names, (a.numpy() for a in check), strict=True))
            diff = max(diff, _max_abs_diff_ort(out, feeds, want))
    label = "minilm-l6-dyn" if dynamic else "minilm-l6"
    log.info("%s: max |onnxruntime - torch| = %.3g", label, diff)
    if not diff < 1e-3:
        raise ZooError(f"{label}: export differs from torch by {diff:.3g} (limit 1e-3)")
    return str(torch.__version__)


def _max_abs_diff_ort(path: Path, feeds: dict[str, np.ndarray], want: np.ndarray) -> float:
    import onnxruntime as ort

    onnx.checker.check_model(str(path))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, feeds)
    return float(np.abs(got - want).max())


# ModelSpec.export -> builder(checkpoint archive bytes, output path) -> torch's version
BUILDERS: dict[str, Callable[[bytes, Path], str]] = {
    "bert": export_bert,
    "bert-dynamic": lambda archive, out: export_bert(archive, out, dynamic=True),
}

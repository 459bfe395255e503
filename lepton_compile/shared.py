"""What several recipes of one run compute alike, computed once: kept on disk in the run's work
directory, keyed by what makes it the same.

Each recipe is built in its own worker process, so work that recipes share cannot stay in
memory between them: the FP32 reference outputs that every accuracy search compares against,
a pass pipeline that several recipes start from (``fused`` under fp16, int8-mixed, int8-gpu,
pruning), and the activation ranges that static INT8 recipes with the same calibration method
fit on the same samples. The first recipe to need one computes and stores it; the others load
it. Files are written under a temporary name and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import onnx

log = logging.getLogger(__name__)

T = TypeVar("T")


def feeds_fingerprint(feeds: Sequence[Mapping[str, np.ndarray]]) -> str:
    """sha256 over the names, dtypes, shapes and bytes of every array of every feed."""
    h = hashlib.sha256()
    for f in feeds:
        for k in sorted(f):
            a = np.ascontiguousarray(f[k])
            h.update(f"{k}|{a.dtype}|{a.shape}|".encode())
            h.update(a.tobytes())
        h.update(b"\0")
    return h.hexdigest()


def model_fingerprint(model: onnx.ModelProto) -> str:
    """sha256 of the serialized model; node by node and tensor by tensor past protobuf's limit."""
    try:
        return hashlib.sha256(model.SerializeToString()).hexdigest()
    except Exception:  # too large to serialize whole: hash its parts
        h = hashlib.sha256()
        g = model.graph
        for n in g.node:
            h.update(n.SerializeToString())
        for t in g.initializer:
            h.update(f"{t.name}|{t.data_type}|{list(t.dims)}|".encode())
            h.update(t.raw_data)
            for e in t.external_data:
                h.update(f"{e.key}={e.value}".encode())
        for vi in (*g.input, *g.output):
            h.update(vi.SerializeToString())
        for o in model.opset_import:
            h.update(f"{o.domain}:{o.version}".encode())
        return h.hexdigest()


def key(*parts: Any) -> str:
    """A short stable key for JSON-able parts."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class SharedStore:
    """Results shared by the recipes of one run, under ``root`` (None: nothing is shared)."""

    def __init__(self, root: str | os.PathLike[str] | None):
        self.root = Path(root) if root else None
        self._fingerprints: dict[int, tuple[onnx.ModelProto, str]] = {}
        self.reused: list[str] = []  # what this process loaded instead of computing

    @property
    def enabled(self) -> bool:
        return self.root is not None

    def fingerprint(self, model: onnx.ModelProto) -> str:
        """``model_fingerprint``, computed once per model object in this process."""
        hit = self._fingerprints.get(id(model))
        if hit is not None and hit[0] is model:
            return hit[1]
        fp = model_fingerprint(model)
        self._fingerprints[id(model)] = (model, fp)
        return fp

    def path(self, what: str, k: str, suffix: str) -> Path | None:
        """Where the result ``what`` with key ``k`` lives (None when sharing is off)."""
        if self.root is None:
            return None
        return self.root / f"{what}-{k}{suffix}"

    def value(self, what: str, k: str, compute: Callable[[], T]) -> T:
        """The stored value, or ``compute()`` stored for the next recipe."""
        p = self.path(what, k, ".pkl")
        if p is not None and p.is_file():
            try:
                with p.open("rb") as f:
                    out = pickle.load(f)
                log.debug("shared %s reused (%s)", what, p.name)
                self.reused.append(what)
                return out
            except Exception as e:  # a damaged file is recomputed, never trusted
                log.debug("shared %s unreadable (%s): recomputed", what, e)
        out = compute()
        if p is not None:
            self._write(p, lambda f: pickle.dump(out, f, protocol=pickle.HIGHEST_PROTOCOL))
        return out

    def model(
        self, what: str, k: str, compute: Callable[[], tuple[onnx.ModelProto, T]]
    ) -> tuple[onnx.ModelProto, T]:
        """A stored model and its pickled companion (records), or ``compute()`` stored."""
        p = self.path(what, k, ".onnx")
        side = self.path(what, k, ".pkl")
        if p is not None and side is not None and p.is_file() and side.is_file():
            try:
                model = onnx.load(str(p), load_external_data=True)
                with side.open("rb") as f:
                    extra = pickle.load(f)
                log.debug("shared %s reused (%s)", what, p.name)
                self.reused.append(what)
                return model, extra
            except Exception as e:
                log.debug("shared %s unreadable (%s): recomputed", what, e)
        model, extra = compute()
        if p is not None and side is not None:
            from lepton_compile import modelio

            try:
                p.parent.mkdir(parents=True, exist_ok=True)
                modelio.save_model(model, p)  # atomic: temp name, then rename
                self._write(side, lambda f: pickle.dump(extra, f))
            except Exception as e:  # sharing is an optimization: never a reason to fail
                log.debug("shared %s not stored: %s", what, e)
        return model, extra

    def _write(self, p: Path, dump: Callable[[Any], None]) -> None:
        tmp = None
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", dir=p.parent)
            with os.fdopen(fd, "wb") as f:
                dump(f)
            os.replace(tmp, p)
        except Exception as e:  # sharing is an optimization: never a reason to fail
            log.debug("shared result not stored (%s): %s", p.name, e)
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)

"""Result-cache glue: which variant results can be reused, and how they are stored.

A variant's key covers everything that makes its figures comparable: the model's bytes, the
fixed input shapes and the eval/calibration inputs, the recipe, backend and device, the
device record (``bench.device.record_key``), tool versions, the protocol and the accuracy
constraint. Built artifacts are kept next to the database (``artifacts/<key>.onnx``).

Measurements are only reused when EVERY variant of the run is in the cache: figures of one
run are compared with figures of the same run, never mixed with fresh ones. A partial hit
reuses the built artifacts (the expensive part: quantization calibration) and measures anew.
Objects the selection needs (fidelity, measurement) are stored pickled: the cache is a local,
per-user file, in the same trust domain as the models the user hands the tool.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import pickle
import shutil
from collections.abc import Sequence
from typing import Any

import numpy as np

from lepton_compile.bench.cache import NullCache, ResultCache, open_cache, result_key
from lepton_compile.variant import Status

log = logging.getLogger(__name__)

# A variant result is reusable only in these states; a timeout or crash may not repeat.
_REUSABLE = ("ok", "rejected", "dropped")


def inputs_fingerprint(feeds: Sequence[dict[str, np.ndarray]]) -> str:
    h = hashlib.sha256()
    for f in feeds:
        for k in sorted(f):
            a = np.ascontiguousarray(f[k])
            h.update(k.encode())
            h.update(str(a.dtype).encode() + str(a.shape).encode())
            h.update(a.tobytes())
    return h.hexdigest()


class VariantCache:
    """Keys, lookups and stores for one compile run."""

    def __init__(self, enabled: bool, path: str | os.PathLike[str] | None, common: dict):
        self.store: ResultCache | NullCache = open_cache(enabled, path)
        self.enabled = enabled and isinstance(self.store, ResultCache)
        self.common = common
        self.dir = (
            self.store.path.parent / "artifacts" if isinstance(self.store, ResultCache) else None
        )

    def key(self, v: Any) -> str:
        # The backend's load options (lepton's modes) make variants of one recipe differ.
        return result_key(
            recipe=v.recipe.to_dict(),
            backend=v.backend,
            backend_options={"device": v.device, **v.options},
            **self.common,
        )

    def lookup(self, v: Any) -> dict[str, Any] | None:
        if not self.enabled:
            return None
        value = self.store.get(self.key(v))
        if value and value.get("status") == "skipped" and value.get("deterministic"):
            value["artifact_path"] = None  # not applicable to this model: nothing was built
            return value
        if not value or value.get("status") not in _REUSABLE:
            return None
        art = self.dir / value["artifact"] if self.dir and value.get("artifact") else None
        if art is None or not art.exists():
            return None
        value["artifact_path"] = art
        return value

    def restore(self, v: Any, value: dict[str, Any], with_measurement: bool) -> None:
        """Fill a VariantResult from a cached value."""
        v.status = Status(value["status"])
        v.reason = value.get("reason", "")
        v.build = value.get("build", {})
        v.session = value.get("session", {})
        v.size_bytes = value["size_bytes"]
        v.fidelity = _unpickle(value.get("fidelity"))
        if with_measurement:
            v.measurement = _unpickle(value.get("measurement"))
            v.ratios = _unpickle(value.get("ratios")) or {}
            v.screen = value.get("screen")
            v.race = value.get("race") or {}
        elif v.status == "dropped":
            v.status, v.reason = Status.OK, ""  # built and verified; racing is measured anew
        v.cache = {"hit": True, "measurement_reused": with_measurement, "key": self.key(v)[:16]}

    def _labels(self, v: Any) -> dict[str, str]:
        """What `cache list` shows of an entry."""
        return {
            "model": self.common.get("model_sha256", "")[:16],
            "recipe": v.recipe.name,
            "backend": f"{v.backend}-{v.device}",
        }

    def save(self, v: Any) -> None:
        if self.enabled and v.status == "skipped" and v.build.get("skip") == "deterministic":
            self.store.put(
                self.key(v),
                {
                    "status": v.status,
                    "reason": v.reason,
                    "build": v.build,
                    "deterministic": True,
                    "size_bytes": 0,
                },
                self._labels(v),
            )
            return
        if not self.enabled or v.status not in _REUSABLE or v.artifact is None or not self.dir:
            return
        if v.status in ("ok", "dropped") and v.measurement is None:
            return
        key = self.key(v)
        name = f"{key}.onnx"
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            if v.artifact.with_name(v.artifact.name + ".data").exists():
                return  # external data is named after its model file: not worth the care
            dst = self.dir / name
            if not dst.exists():
                tmp = dst.with_name(f".{name}.{os.getpid()}.tmp")
                shutil.copyfile(v.artifact, tmp)
                os.replace(tmp, dst)
        except OSError as e:
            log.warning("result cache: artifact not stored (%s)", e)
            return
        self.store.put(
            key,
            {
                "status": v.status,
                "reason": v.reason,
                "build": v.build,
                "session": v.session,
                "size_bytes": v.size_bytes,
                "artifact": name,
                "fidelity": _pickle(v.fidelity),
                "measurement": _pickle(v.measurement),
                "ratios": _pickle(v.ratios),
                "screen": v.screen,
                "race": v.race,
            },
            self._labels(v),
        )

    def point_key(self, v: Any, batch: int) -> str:
        return result_key(
            recipe=v.recipe.to_dict(),
            backend=v.backend,
            backend_options={"device": v.device, **v.options},
            serving_batch=batch,
            **self.common,
        )

    def lookup_point(self, v: Any, batch: int) -> Any:
        """A cached serving point of ``v`` at ``batch`` (a ``serving.ServingPoint``), or None."""
        if not self.enabled:
            return None
        value = self.store.get(self.point_key(v, batch))
        point = _unpickle(value.get("point")) if value else None
        return point if point is not None and point.status == "ok" else None

    def save_point(self, v: Any, batch: int, point: Any) -> None:
        """Keep a measured point (failures may not repeat: they are measured again)."""
        if not self.enabled or point is None or point.status != "ok":
            return
        labels = {**self._labels(v), "backend": f"{v.backend}-{v.device} @ batch {batch}"}
        self.store.put(self.point_key(v, batch), {"point": _pickle(point)}, labels)

    def close(self) -> None:
        self.store.close()


def _pickle(obj: Any) -> str | None:
    return None if obj is None else base64.b64encode(pickle.dumps(obj)).decode()


def _unpickle(text: str | None) -> Any:
    return None if not text else pickle.loads(base64.b64decode(text))


def prune_artifacts(path: str | os.PathLike[str] | None = None) -> int:
    """Remove stored artifacts whose result is no longer in the cache; returns how many."""
    store = ResultCache(path)
    try:
        keys = {r.key for r in store.list()}
        adir = store.path.parent / "artifacts"
        removed = 0
        if adir.is_dir():
            for f in adir.glob("*.onnx"):
                if f.stem not in keys:
                    f.unlink(missing_ok=True)
                    removed += 1
        return removed
    finally:
        store.close()

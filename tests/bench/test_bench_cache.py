"""Result cache: round trip, key stability, two writer processes, clear, corrupt-file recovery."""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lepton_compile.bench import cache as cache_mod
from lepton_compile.bench.cache import (
    NullCache,
    ResultCache,
    cache_key,
    default_cache_path,
    open_cache,
    result_key,
)

PARTS: dict[str, Any] = {
    "model_sha256": "ab" * 32,
    "recipe": {"passes": ["fold", "fuse_conv_bn"], "options": {"level": 2, "keep": True}},
    "backend": "ort",
    "backend_options": {"providers": ["CPUExecutionProvider"], "intra_op_threads": 4},
    "device": "0123456789ab",
    "versions": {"onnxruntime": "1.32.0", "onnx": "1.23.2", "lepton-compile": "0.1.0"},
    "protocol": {"trials": 5, "warmup_runs": 3, "min_trial_s": 0.25},
}

VALUE = {"latency_ms": {"p50": 1.25, "ci95": 0.01}, "energy_j": {"per_inference": 0.5}}
META = {"model": "resnet50.onnx", "recipe": "fused", "backend": "ort"}


@pytest.fixture
def db(tmp_path: Path) -> ResultCache:
    c = ResultCache(tmp_path / "results.sqlite")
    yield c
    c.close()


def test_round_trip(db: ResultCache) -> None:
    k = db.key(**PARTS)
    assert db.get(k) is None
    assert db.put(k, VALUE, META) is True
    assert db.get(k) == VALUE
    assert db.put(k, {"latency_ms": {"p50": 2.0}}, META)  # replaces
    assert db.get(k) == {"latency_ms": {"p50": 2.0}} and len(db) == 1
    assert db.get(k, max_age_s=3600) is not None
    time.sleep(0.01)
    assert db.get(k, max_age_s=0.001) is None
    db.close()
    with ResultCache(db.path) as again:  # persisted
        assert again.get(k) == {"latency_ms": {"p50": 2.0}}
    with pytest.raises(TypeError, match="JSON"):
        db.put("k", {"x": object()})
    with pytest.raises(TypeError):
        db.put("k", [1, 2])  # type: ignore[arg-type]


def test_key_stable_and_sensitive() -> None:
    k = cache_key(**PARTS)
    assert len(k) == 64 and int(k, 16) >= 0
    # Order of keywords and of dict entries does not matter, nor tuple vs list, 1 vs 1.0.
    shuffled = {name: PARTS[name] for name in reversed(list(PARTS))}
    shuffled["recipe"] = {
        "options": {"keep": True, "level": 2.0},
        "passes": ("fold", "fuse_conv_bn"),
    }
    assert cache_key(**shuffled) == k
    # Any change to any part changes the key.
    changes = {
        "model_sha256": "cd" * 32,
        "recipe": {"passes": ["fuse_conv_bn", "fold"], "options": {"level": 2, "keep": True}},
        "backend": "lepton",
        "backend_options": {"providers": ["CPUExecutionProvider"], "intra_op_threads": 8},
        "device": "ba9876543210",
        "versions": {"onnxruntime": "1.33.0", "onnx": "1.23.2", "lepton-compile": "0.1.0"},
        "protocol": {"trials": 7, "warmup_runs": 3, "min_trial_s": 0.25},
    }
    seen = {k}
    for name, new in changes.items():
        kk = cache_key(**{**PARTS, name: new})
        assert kk not in seen, name
        seen.add(kk)
    assert cache_key(**PARTS, extra=None) != k  # a part given is a part keyed
    assert cache_key(**{**PARTS, "backend_options": {"flag": True}}) != cache_key(
        **{**PARTS, "backend_options": {"flag": 1}}
    )
    with pytest.raises(TypeError, match="cannot key"):
        cache_key(x=object())

    @dataclass
    class Proto:
        trials: int = 5

    assert cache_key(protocol=Proto()) == cache_key(protocol={"trials": 5})
    # Stable across processes and releases (a new KEY_VERSION must change this): pinned.
    pinned = "3ebba5e189227b631c36f5d099ba02a13a31c3e6292da692a7ab6ed26c7beb93"
    assert cache_key(c={"z": None}, b=[1.5, "x"], a=1) == pinned


def test_result_key_uses_record_key() -> None:
    rec = {
        "cpu": {"model": "AMD EPYC", "sockets": 1, "threads_available": 16},
        "os": {"system": "Linux", "machine": "x86_64"},
        "python": {"version": "3.11.7"},
        "packages": {"onnxruntime": "1.32.0"},
        "providers": ["CPUExecutionProvider"],
        "gpus": [{"name": "NVIDIA H100 80GB HBM3", "temperature_c": 40}],
    }
    base = {"model_sha256": "ab", "recipe": {"p": []}, "backend": "ort", "backend_options": {}}
    k = result_key(**base, device_record=rec, protocol={"trials": 5})
    drifted = json.loads(json.dumps(rec))
    drifted["gpus"][0]["temperature_c"] = 80  # drift is not in the key
    assert result_key(**base, device_record=drifted, protocol={"trials": 5}) == k
    other = json.loads(json.dumps(rec))
    other["packages"]["onnxruntime"] = "1.33.0"
    assert result_key(**base, device_record=other, protocol={"trials": 5}) != k


def test_list_and_clear(db: ResultCache) -> None:
    keys = [cache_key(i=i) for i in range(3)]
    for i, k in enumerate(keys):
        db.put(k, {"i": i}, {"model": f"m{i}.onnx", "recipe": {"passes": ["a"]}, "backend": "ort"})
        time.sleep(0.002)
    rows = db.list()
    assert [r.key for r in rows] == keys[::-1]  # newest first
    r = rows[-1]
    assert r.key_prefix == keys[0][:12] and r.model == "m0.onnx" and r.backend == "ort"
    assert r.recipe == '{"passes":["a"]}'  # non-string meta is stored as canonical JSON
    assert r.size == len('{"i":0}') and r.created <= time.time()
    assert set(r.to_dict()) >= {"key_prefix", "created", "model", "recipe", "backend", "size"}
    assert db.clear(older_than_s=3600) == 0
    with sqlite3.connect(db.path) as raw:  # age one row
        raw.execute("UPDATE results SET created = created - 7200 WHERE key = ?", (keys[0],))
    assert db.clear(older_than_s=3600) == 1 and len(db) == 2
    assert db.clear() == 2 and db.list() == []


def _writer(path: str, tag: str, n: int, start: Any) -> None:
    c = ResultCache(path)
    start.wait(30)
    ok = all(c.put(cache_key(tag=tag, i=i), {"i": i, "tag": tag}, {"model": tag}) for i in range(n))
    # interleave reads with the other writer's writes
    ok = ok and all(c.get(cache_key(tag=tag, i=i)) == {"i": i, "tag": tag} for i in range(0, n, 7))
    c.close()
    raise SystemExit(0 if ok else 3)


def test_two_writer_processes(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.sqlite")
    # fork where there is one: the children need no fresh interpreter and imports
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    start = ctx.Event()
    procs = [ctx.Process(target=_writer, args=(path, tag, 200, start)) for tag in ("a", "b")]
    for p in procs:
        p.start()
    time.sleep(0.05)
    start.set()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    with ResultCache(path) as c:
        assert len(c) == 400
        assert all(
            c.get(cache_key(tag=t, i=i)) == {"i": i, "tag": t} for t in "ab" for i in range(200)
        )


def test_corrupt_file_is_moved_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "results.sqlite"
    path.write_bytes(b"this is not an sqlite database" * 100)
    Path(str(path) + "-wal").write_bytes(b"stale wal")
    with caplog.at_level(logging.WARNING, logger=cache_mod.__name__):
        c = ResultCache(path)
        assert c.put("k", {"v": 1}) and c.get("k") == {"v": 1}
    assert "moved aside" in caplog.text
    assert any(".corrupt-" in p.name for p in tmp_path.iterdir())
    # the stale -wal was moved aside or dropped, never replayed into the new database
    wal = Path(str(path) + "-wal")
    assert not wal.exists() or wal.read_bytes() != b"stale wal"
    c.close()


def test_corruption_found_later_is_recovered(tmp_path: Path) -> None:
    path = tmp_path / "results.sqlite"
    c = ResultCache(path)
    c.put("k", {"v": 1})
    c.close()
    with open(path, "r+b") as f:  # clobber the header of a valid database
        f.write(b"\0" * 100)
    c = ResultCache(path)
    assert c.get("k") is None  # lost, not crashed
    assert c.put("k2", {"v": 2}) and c.get("k2") == {"v": 2}
    c.close()


def test_schema_change_drops_old_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "results.sqlite"
    with ResultCache(path) as c:
        c.put("k", {"v": 1})
    monkeypatch.setattr(cache_mod, "SCHEMA_VERSION", cache_mod.SCHEMA_VERSION + 1)
    with ResultCache(path) as c:
        assert c.get("k") is None and len(c) == 0
        c.put("k", {"v": 2})
    with ResultCache(path) as c:
        assert c.get("k") == {"v": 2}
    monkeypatch.undo()  # an older release meets the newer file: leaves it alone
    with ResultCache(path) as c:
        assert c.disabled_reason and "newer" in c.disabled_reason
        assert c.get("k") is None and c.put("k", {"v": 3}) is False
    with sqlite3.connect(path) as raw:
        assert raw.execute("SELECT count(*) FROM results").fetchone()[0] == 1


def test_unusable_location_never_raises(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    c = ResultCache(blocker / "sub" / "results.sqlite")  # parent is a file
    assert c.disabled_reason is not None
    assert c.get("k") is None and c.put("k", {"v": 1}) is False
    assert c.list() == [] and c.clear() == 0


def test_default_path_and_null_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEPTON_CACHE", str(tmp_path))
    assert default_cache_path() == tmp_path / "results.sqlite"
    monkeypatch.setenv("LEPTON_CACHE", str(tmp_path / "x.db"))
    assert default_cache_path() == tmp_path / "x.db"
    monkeypatch.delenv("LEPTON_CACHE")
    assert default_cache_path().name == "results.sqlite"
    null = open_cache(enabled=False)
    assert isinstance(null, NullCache)
    assert null.put("k", {"v": 1}) is False and null.get("k") is None and null.list() == []
    assert isinstance(open_cache(path=tmp_path / "y.db"), ResultCache)


def test_parse_age() -> None:
    assert cache_mod.parse_age("15m") == 900 and cache_mod.parse_age("2") == 2
    assert cache_mod.parse_age(" 7D ") == 7 * 86400 and cache_mod.parse_age("2w") == 14 * 86400
    for bad in ("soon", "", "-1s", "nan"):
        with pytest.raises(ValueError, match="bad age"):
            cache_mod.parse_age(bad)


def test_source_fingerprint_follows_the_code(tmp_path):
    """An edited pass must not get yesterday's cached artifacts: the key follows the source."""
    from lepton_compile.bench.device import source_fingerprint

    pkg = tmp_path / "pkg"
    (pkg / "passes").mkdir(parents=True)
    (pkg / "passes" / "fuse.py").write_text("def run():\n    return 1\n")
    before = source_fingerprint((str(pkg),))
    assert before == source_fingerprint((str(pkg),))
    (pkg / "passes" / "fuse.py").write_text("def run():\n    return 2\n")
    source_fingerprint.cache_clear()
    assert source_fingerprint((str(pkg),)) != before


def test_result_key_includes_the_source_fingerprint(monkeypatch):
    from lepton_compile.bench import device
    from lepton_compile.bench.cache import result_key

    parts = dict(
        model_sha256="ab" * 32,
        recipe={"name": "fused"},
        backend="ort",
        backend_options={},
        device_record={"cpu": {"model": "x"}, "packages": {"onnx": "1"}},
        protocol={"trials": 5},
    )
    monkeypatch.setattr(device, "own_version", lambda: "0.1.0+src.aaaa")
    a = result_key(**parts)
    monkeypatch.setattr(device, "own_version", lambda: "0.1.0+src.bbbb")
    assert result_key(**parts) != a

"""Result cache: measured figures in SQLite, keyed by everything that could change them.

    cache = ResultCache()                            # $LEPTON_CACHE or ~/.cache/.../results.sqlite
    k = cache.key(model_sha256=sha, recipe=recipe, backend="ort",
                  backend_options=opts, device=record_key(rec), versions=versions,
                  protocol=asdict(protocol))
    hit = cache.get(k)
    if hit is None:
        hit = measure_it()
        cache.put(k, hit, meta={"model": "resnet50.onnx", "recipe": "fused", "backend": "ort"})

Validity is the key: a result is reused only when every part that went into its key is equal,
so a new model file, recipe, backend option, machine, package version or protocol makes a new
key and the old row is simply not found (``clear(older_than_s=...)`` removes such rows).
``result_key()`` builds a key from the usual parts, device record and versions included.

Concurrency: WAL journal, a busy timeout and retries on "database is locked", every write one
``INSERT OR REPLACE`` in its own ``BEGIN IMMEDIATE`` transaction, so several processes may
write to one file at once. A connection is opened per process (a forked child reopens).

Robustness: the cache must never fail a compile. Database and file-system errors are logged and
turn into a miss (``get`` -> None, ``put`` -> False, ``list`` -> [], ``clear`` -> 0); a file that
is not a database, or is malformed, is moved aside (``*.corrupt-<time>``) with a warning and a
fresh one is created. A higher ``SCHEMA_VERSION`` drops the older rows on first open; a file
written by a newer release is left alone and caching is off.
Non-JSON values are a caller bug and raise ``TypeError``.

Its command line is ``lepton-compile cache list|clear``.
"""

from __future__ import annotations

import builtins
import dataclasses
import hashlib
import json
import logging
import math
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

__all__ = [
    "ENV_CACHE",
    "KEY_VERSION",
    "SCHEMA_VERSION",
    "CacheRow",
    "NullCache",
    "ResultCache",
    "cache_key",
    "default_cache_path",
    "open_cache",
    "parse_age",
    "result_key",
]

log = logging.getLogger(__name__)

ENV_CACHE = "LEPTON_CACHE"
SCHEMA_VERSION = 1  # bump when the table layout or the meaning of a stored value changes
KEY_VERSION = 1  # bump when the way keys are built changes
# SQLite's busy handler waits up to _BUSY_TIMEOUT_S for a writer; the retries cover the few
# cases where it returns "locked" at once (WAL recovery, a schema change in flight).
_BUSY_TIMEOUT_S = 10.0
_RETRIES = 5
_TRANSIENT = ("locked", "busy")
_CORRUPT = ("not a database", "malformed", "corrupt", "disk image")

T = TypeVar("T")


def default_cache_path() -> Path:
    """``$LEPTON_CACHE`` (a file, or a directory to hold ``results.sqlite``), else
    ``~/.cache/lepton-compile/results.sqlite``."""
    env = os.environ.get(ENV_CACHE)
    if env:
        p = Path(env).expanduser()
        return p / "results.sqlite" if p.is_dir() or env.endswith(("/", os.sep)) else p
    return Path.home() / ".cache" / "lepton-compile" / "results.sqlite"


# --- keys -------------------------------------------------------------------------------------


def _canonical(x: Any) -> Any:
    """JSON-ready form with one spelling per value: dict order, tuple vs list, set order,
    Path vs str and dataclass vs dict do not change a key; objects without a stable form are
    refused rather than stringified (a repr with an address would never match again)."""
    if x is None or isinstance(x, (bool, int, str)):
        return x
    if isinstance(x, float):
        if math.isnan(x) or math.isinf(x):
            return {"__float__": repr(x)}
        if x.is_integer() and abs(x) < 2**53:
            return int(x)  # 1.0 and 1 are the same option
        return x
    if isinstance(x, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(x.items(), key=lambda kv: str(kv[0]))}
    if isinstance(x, (list, tuple)):
        return [_canonical(v) for v in x]
    if isinstance(x, (set, frozenset)):
        return sorted((_canonical(v) for v in x), key=lambda v: json.dumps(v, sort_keys=True))
    if isinstance(x, os.PathLike):
        return os.fspath(x)
    if isinstance(x, bytes):
        return {"__bytes__": x.hex()}
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return _canonical(dataclasses.asdict(x))
    if hasattr(x, "dtype") and hasattr(x, "tolist"):  # numpy scalars and arrays
        return _canonical(x.tolist())
    raise TypeError(f"cannot key on a {type(x).__name__}: pass plain data (dict, list, str, ...)")


def cache_key(**parts: Any) -> str:
    """sha256 (hex) of a canonical JSON of ``parts``: every keyword and its value are in it.

    The usual parts (see ``result_key``): ``model_sha256`` (of the model file), ``recipe``
    (the ordered pass list with options, a dict), ``backend`` and ``backend_options``,
    ``device`` (``bench.device.record_key`` of the device record), ``versions`` (tool and
    package versions, a dict) and ``protocol`` (the measurement protocol, a dict). A caller
    may add more; leaving a part out means results that differ only in it share a key.
    """
    blob = json.dumps(
        {"key_version": KEY_VERSION, "parts": _canonical(parts)},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
        allow_nan=False,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def result_key(
    *,
    model_sha256: str,
    recipe: Any,
    backend: str,
    backend_options: Mapping[str, Any] | None,
    device_record: Mapping[str, Any],
    protocol: Any,
    versions: Mapping[str, Any] | None = None,
    **extra: Any,
) -> str:
    """``cache_key`` of the standard parts. ``device_record`` is reduced with
    ``bench.device.record_key`` (what makes figures comparable, not clocks or temperatures);
    ``versions`` defaults to the record's package versions plus lepton-compile's own version
    and source fingerprint (``bench.device.own_version``)."""
    from lepton_compile.bench.device import own_version, package_versions, record_key

    if versions is None:
        versions = dict(device_record.get("packages") or package_versions())
        # The version string stays the same while the code changes: key on the code too.
        versions["lepton-compile"] = own_version()
    return cache_key(
        model_sha256=model_sha256,
        recipe=recipe,
        backend=backend,
        backend_options=dict(backend_options or {}),
        device=record_key(dict(device_record)),
        versions=dict(versions),
        protocol=protocol,
        **extra,
    )


# --- the store --------------------------------------------------------------------------------


@dataclass(frozen=True)
class CacheRow:
    """One stored result, as ``list()`` shows it."""

    key: str
    created: float  # unix time
    model: str | None
    recipe: str | None
    backend: str | None
    size: int  # bytes of the stored JSON value

    @property
    def key_prefix(self) -> str:
        return self.key[:12]

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["key_prefix"] = self.key_prefix
        return d


class _NewerSchema(Exception):
    """The file belongs to a newer release: leave its rows alone, do not cache."""


def _is_transient(e: sqlite3.Error) -> bool:
    return isinstance(e, sqlite3.OperationalError) and any(w in str(e).lower() for w in _TRANSIENT)


def _is_corrupt(e: sqlite3.Error) -> bool:
    return isinstance(e, sqlite3.DatabaseError) and any(w in str(e).lower() for w in _CORRUPT)


def _meta_text(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, str):
        return v
    return json.dumps(_canonical(v), sort_keys=True, separators=(",", ":"))


class ResultCache:
    """SQLite store of JSON results; see the module docstring. Thread-safe; process-safe."""

    key = staticmethod(cache_key)

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path).expanduser() if path is not None else default_cache_path()
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._pid = -1
        self.disabled_reason: str | None = None
        self._with_retry(lambda c: None, "open")

    # connection management

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            self.path, timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(_BUSY_TIMEOUT_S * 1000)}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()
            if not mode or str(mode[0]).lower() != "wal":
                log.debug("result cache %s: journal mode %s (WAL refused)", self.path, mode)
            conn.execute("PRAGMA synchronous = NORMAL")
            self._ensure_schema(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _ensure_schema(self, conn: sqlite3.Connection) -> None:
        row = None
        try:
            row = conn.execute("SELECT version FROM schema_version").fetchone()
        except sqlite3.OperationalError as e:
            if "no such table" not in str(e):
                raise
        if row is not None and row[0] == SCHEMA_VERSION:
            return
        if row is not None and row[0] > SCHEMA_VERSION:
            raise _NewerSchema(f"written by a newer lepton-compile (schema {row[0]})")
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = conn.execute("SELECT version FROM schema_version").fetchone()
            if row is not None and row[0] > SCHEMA_VERSION:
                raise _NewerSchema(f"written by a newer lepton-compile (schema {row[0]})")
            if row is None or row[0] != SCHEMA_VERSION:  # another process may have done it
                if row is not None:
                    log.info(
                        "result cache %s: schema %s -> %s, old rows dropped",
                        self.path,
                        row[0],
                        SCHEMA_VERSION,
                    )
                conn.execute("DROP TABLE IF EXISTS results")
                conn.execute("DELETE FROM schema_version")
                conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
            conn.execute(
                """CREATE TABLE IF NOT EXISTS results (
                    key TEXT PRIMARY KEY,
                    created REAL NOT NULL,
                    model TEXT,
                    recipe TEXT,
                    backend TEXT,
                    meta TEXT NOT NULL,
                    value TEXT NOT NULL
                )"""
            )
            conn.execute("CREATE INDEX IF NOT EXISTS results_created ON results (created)")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None or self._pid != os.getpid():
            # A connection must not cross fork(): the child opens its own.
            self._conn = self._open()
            self._pid = os.getpid()
        return self._conn

    def _drop_connection(self) -> None:
        """Close this process's connection; one inherited through fork() is the parent's to
        close, so it is only forgotten."""
        if self._conn is not None and self._pid == os.getpid():
            try:
                self._conn.close()
            except sqlite3.Error:
                pass
        self._conn = None

    def _move_aside(self, why: str) -> None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self._drop_connection()
        moved = []
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(self.path) + suffix)
            if src.exists():
                # The -wal of a broken database must not be replayed into the new one.
                dst = Path(f"{self.path}.corrupt-{stamp}-{os.getpid()}{suffix}")
                try:
                    src.replace(dst)
                    moved.append(dst.name)
                except OSError as e:
                    log.warning("result cache: could not move %s aside: %s", src, e)
        log.warning(
            "result cache %s is unreadable (%s); moved aside as %s and starting afresh",
            self.path,
            why,
            ", ".join(moved) or "nothing",
        )

    def _with_retry(
        self, fn: Callable[[sqlite3.Connection], T], what: str, default: Any = None
    ) -> Any:
        """Run ``fn`` on the connection: retry while locked, recover once from corruption,
        and give ``default`` (logging why) on any other database or file-system error."""
        if self.disabled_reason is not None:
            return default
        recovered = False
        delay = 0.01
        with self._lock:
            for attempt in range(_RETRIES + 1):
                try:
                    return fn(self._connection())
                except sqlite3.Error as e:
                    if _is_corrupt(e) and not recovered:
                        recovered = True
                        self._move_aside(str(e))
                        continue
                    if _is_transient(e) and attempt < _RETRIES:
                        time.sleep(delay * (1 + random.random()))
                        delay = min(delay * 2, 1.0)
                        continue
                    log.warning("result cache %s: %s failed: %s", self.path, what, e)
                    if self._conn is not None and self._conn.in_transaction:
                        try:
                            self._conn.execute("ROLLBACK")
                        except sqlite3.Error:
                            pass
                    return default
                except (OSError, _NewerSchema) as e:
                    self.disabled_reason = f"{type(e).__name__}: {e}"
                    log.warning("result cache %s disabled: %s", self.path, e)
                    return default
        return default

    # public API

    def get(self, key: str, *, max_age_s: float | None = None) -> dict[str, Any] | None:
        """The value stored under ``key`` (a miss when absent, older than ``max_age_s``, or
        unreadable)."""

        def run(c: sqlite3.Connection) -> dict[str, Any] | None:
            row = c.execute("SELECT created, value FROM results WHERE key = ?", (key,)).fetchone()
            if row is None:
                return None
            if max_age_s is not None and time.time() - row[0] > max_age_s:
                return None
            try:
                value = json.loads(row[1])
            except ValueError:
                log.warning("result cache: value of %s is not JSON; dropped", key[:12])
                c.execute("DELETE FROM results WHERE key = ?", (key,))
                return None
            return value if isinstance(value, dict) else None

        return self._with_retry(run, "get")

    def put(
        self, key: str, value: Mapping[str, Any], meta: Mapping[str, Any] | None = None
    ) -> bool:
        """Store ``value`` (a JSON-ready mapping) under ``key``, replacing what was there.
        ``meta``: what ``list()`` shows (``model``, ``recipe``, ``backend``) and anything else
        worth keeping beside the value. True when stored."""
        if not isinstance(value, Mapping):
            raise TypeError("result cache values must be mappings")
        meta = dict(meta or {})
        try:
            text = json.dumps(value, allow_nan=True, separators=(",", ":"))
            meta_text = json.dumps(_canonical(meta), sort_keys=True)
        except (TypeError, ValueError) as e:
            raise TypeError(f"result cache values must be JSON-ready: {e}") from None
        row = (
            key,
            time.time(),
            _meta_text(meta.get("model")),
            _meta_text(meta.get("recipe")),
            _meta_text(meta.get("backend")),
            meta_text,
            text,
        )

        def run(c: sqlite3.Connection) -> bool:
            c.execute("BEGIN IMMEDIATE")
            try:
                c.execute(
                    "INSERT OR REPLACE INTO results "
                    "(key, created, model, recipe, backend, meta, value) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    row,
                )
                c.execute("COMMIT")
            except BaseException:
                if c.in_transaction:
                    c.execute("ROLLBACK")
                raise
            return True

        return bool(self._with_retry(run, "put", default=False))

    def list(self) -> builtins.list[CacheRow]:
        """Every stored result, newest first."""

        def run(c: sqlite3.Connection) -> list[CacheRow]:
            rows = c.execute(
                "SELECT key, created, model, recipe, backend, length(CAST(value AS BLOB)) "
                "FROM results ORDER BY created DESC, key"
            ).fetchall()
            return [CacheRow(*r) for r in rows]

        return self._with_retry(run, "list", default=[])

    def clear(self, older_than_s: float | None = None) -> int:
        """Delete every row (or those older than ``older_than_s`` seconds); the count deleted."""

        def run(c: sqlite3.Connection) -> int:
            c.execute("BEGIN IMMEDIATE")
            try:
                if older_than_s is None:
                    n = c.execute("DELETE FROM results").rowcount
                else:
                    cutoff = time.time() - older_than_s
                    n = c.execute("DELETE FROM results WHERE created < ?", (cutoff,)).rowcount
                c.execute("COMMIT")
            except BaseException:
                if c.in_transaction:
                    c.execute("ROLLBACK")
                raise
            return int(n)

        return int(self._with_retry(run, "clear", default=0))

    def close(self) -> None:
        with self._lock:
            self._drop_connection()

    def __enter__(self) -> ResultCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return int(
            self._with_retry(
                lambda c: c.execute("SELECT count(*) FROM results").fetchone()[0], "count", 0
            )
        )


class NullCache:
    """The cache of ``--no-cache``: same interface, stores nothing, never hits."""

    key = staticmethod(cache_key)
    path = None
    disabled_reason = "disabled (--no-cache)"

    def get(self, key: str, *, max_age_s: float | None = None) -> dict[str, Any] | None:
        return None

    def put(
        self, key: str, value: Mapping[str, Any], meta: Mapping[str, Any] | None = None
    ) -> bool:
        return False

    def list(self) -> builtins.list[CacheRow]:
        return []

    def clear(self, older_than_s: float | None = None) -> int:
        return 0

    def close(self) -> None:
        pass

    def __enter__(self) -> NullCache:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def __len__(self) -> int:
        return 0


def open_cache(
    enabled: bool = True, path: str | os.PathLike[str] | None = None
) -> ResultCache | NullCache:
    """``ResultCache(path)``, or a ``NullCache`` when ``enabled`` is False (``--no-cache``)."""
    return ResultCache(path) if enabled else NullCache()


# --- ages -----------------------------------------------------------------------------------

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_age(text: str) -> float:
    """ "90", "90s", "15m", "12h", "7d", "2w" -> seconds."""
    t = text.strip().lower()
    unit = _UNITS.get(t[-1:], None)
    num = t[:-1] if unit is not None else t
    try:
        v = float(num) * (unit or 1)
    except ValueError:
        raise ValueError(f"bad age {text!r}: want e.g. 90s, 15m, 12h, 7d") from None
    if v < 0 or math.isnan(v):
        raise ValueError(f"bad age {text!r}: must be >= 0")
    return v

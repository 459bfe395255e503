"""Model intake: loading, checking, fixing dynamic shapes, and the errors it gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import LIGHT_DIR, text_model

from lepton_compile.errors import InputError
from lepton_compile.intake import find_score_outputs, load_model, parse_shape_arg


def test_parse_shape_arg():
    assert parse_shape_arg("images=1x3x224x224") == ("images", [1, 3, 224, 224])
    assert parse_shape_arg("a:0=2,5") == ("a:0", [2, 5])
    for bad in ("images", "=1x2", "x=1xa", "x=0x3"):
        with pytest.raises(InputError):
            parse_shape_arg(bad)


def test_dynamic_batch_defaults_to_one_and_is_noted(tinycnn_path: Path):
    m = load_model(tinycnn_path)
    assert m.inputs[0].shape == (1, 3, 96, 96)
    assert any("batch" in n for n in m.notes)
    assert "probs" in m.score_outputs


def test_input_shape_fixes_and_shares_symbols(tmp_path: Path):
    model = text_model(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (int64[B, S] ids, int64[B, S] mask) => (int64[B, S] y) { y = Add (ids, mask) }
        """
    )
    p = tmp_path / "m.onnx"
    onnx.save(model, p)
    m = load_model(p, {"ids": [2, 7]})
    assert [s.shape for s in m.inputs] == [(2, 7), (2, 7)]


def test_unfixed_dynamic_dim_names_it_and_the_flag(tmp_path: Path):
    model = text_model(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[N, 3, H, W] x) => (float[N, 3, H, W] y) { y = Relu (x) }
        """
    )
    p = tmp_path / "m.onnx"
    onnx.save(model, p)
    with pytest.raises(
        InputError, match=r"'x' has dynamic dimension 2 \(H\).*--input-shape x=1x3xNxN"
    ):
        load_model(p)


def test_input_shape_errors(tinycnn_path: Path):
    with pytest.raises(InputError, match="not an input"):
        load_model(tinycnn_path, {"nope": [1, 3, 96, 96]})
    with pytest.raises(InputError, match="rank"):
        load_model(tinycnn_path, {"images": [1, 3, 96]})
    with pytest.raises(InputError, match="fixed to 3"):
        load_model(tinycnn_path, {"images": [1, 4, 96, 96]})


def test_initializers_listed_as_inputs_are_not_user_inputs():
    m = load_model(LIGHT_DIR / "light_squeezenet.onnx")
    assert [s.name for s in m.inputs] == ["data_0"]


@pytest.mark.parametrize(
    "content, match",
    [
        (None, "no such file"),
        (b"", "empty file"),
        (b"hello, this is plainly not a model\n" * 3, "ONNX"),
    ],
)
def test_bad_files(tmp_path: Path, content: bytes | None, match: str):
    p = tmp_path / "bad.onnx"
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(InputError, match=match):
        load_model(p)


def test_truncated_file(tmp_path: Path, tinycnn_path: Path):
    data = tinycnn_path.read_bytes()
    p = tmp_path / "trunc.onnx"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="trunc.onnx"):
        load_model(p)


def test_invalid_graph(tmp_path: Path):
    model = text_model(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2] x) => (float[2] y) { y = Add (x, missing) }
        """
    )
    p = tmp_path / "invalid.onnx"
    onnx.save(model, p)
    with pytest.raises(InputError, match="invalid ONNX graph"):
        load_model(p)


def test_score_outputs():
    model = text_model(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1, 4] x, float[1, 5, 6] s) => (float[1, 4] a, float[1, 5, 6] b, float[1, 5, 6] c) {
            a = Softmax (x)
            b = Softmax (s)
            c = Relu (s)
        }
        """
    )
    model = onnx.shape_inference.infer_shapes(model)
    assert find_score_outputs(model) == {"a", "b"}


def test_model_is_not_modified(tinycnn_path: Path):
    before = tinycnn_path.read_bytes()
    load_model(tinycnn_path, {"images": [1, 3, 96, 96]})
    assert tinycnn_path.read_bytes() == before


def test_sha256_and_size(tinycnn_path: Path):
    import hashlib

    m = load_model(tinycnn_path)
    assert m.sha256 == hashlib.sha256(tinycnn_path.read_bytes()).hexdigest()
    assert m.size_bytes == tinycnn_path.stat().st_size
    assert np.dtype(m.inputs[0].dtype) == np.float32


def test_negative_dim_value_is_dynamic(tmp_path: Path):
    model = text_model(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1, 3, 8, 8] x) => (float[1, 3, 8, 8] y) { y = Relu (x) }
        """
    )
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[0].dim_value = -1  # Paddle's way of writing a dynamic dimension
    dims[2].dim_value = -1
    p = tmp_path / "m.onnx"
    onnx.save(model, p)
    with pytest.raises(InputError, match="dynamic dimension 2"):
        load_model(p)
    m = load_model(p, {"x": [2, 3, 5, 8]})
    assert m.inputs[0].shape == (2, 3, 5, 8)


def _corrupt(model: onnx.ModelProto, old: bytes, new: bytes) -> bytes:
    """The model's bytes with one string replaced by another of the same length (the framing
    stays valid, so protobuf parses the file and only the text is corrupt)."""
    data = model.SerializeToString()
    assert len(old) == len(new) and data.count(old) == 1
    return data.replace(old, new)


@pytest.mark.parametrize(
    "old, new, where",
    [
        # In an op type, which onnx.checker's message quotes; in a doc string, never looked at.
        (b"Relu", b"Rel\xf5", r"model\.graph\.node\[0\]\.op_type"),
        (b"a doc", b"a d\xffc", r"model\.graph\.doc_string"),
    ],
)
def test_flipped_bytes_in_a_string_are_bad_input(tmp_path: Path, old: bytes, new: bytes, where):
    model = text_model(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1, 4] x) => (float[1, 4] y) { h = Relu (x)
        y = Add (h, x) }
        """
    )
    model.graph.doc_string = "a doc"
    p = tmp_path / "flipped.onnx"
    p.write_bytes(_corrupt(model, old, new))
    with pytest.raises(InputError, match=rf"flipped\.onnx: not a valid ONNX file \({where} is not"):
        load_model(p)


def test_any_checker_failure_is_bad_input(tmp_path: Path, monkeypatch):
    def boom(*args, **kwargs):
        raise UnicodeDecodeError("utf-8", b"\xf5", 0, 1, "invalid start byte")

    monkeypatch.setattr(onnx.checker, "check_model", boom)
    model = text_model(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1, 4] x) => (float[1, 4] y) { y = Relu (x) }
        """
    )
    p = tmp_path / "m.onnx"
    onnx.save(model, p)
    with pytest.raises(InputError, match="m.onnx: invalid ONNX graph: .*invalid start byte"):
        load_model(p)


def test_dynamic_dim_of_a_rank_one_input_names_the_flag(tmp_path: Path):
    # The example for the flag used to index the (empty) list of fixed dims: IndexError.
    model = text_model(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[N] x) => (float[N] y) { y = Relu (x) }
        """
    )
    p = tmp_path / "m.onnx"
    onnx.save(model, p)
    with pytest.raises(InputError, match=r"'x' has dynamic dimension 0 \(N\).*--input-shape x=N"):
        load_model(p)


@pytest.mark.parametrize("where", ["input", "output", "initializer"])
def test_unknown_data_type_is_bad_input(tmp_path: Path, where: str):
    # onnx.checker lets any number through here; numpy's dtype lookup then raised KeyError.
    model = text_model(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1, 4] x) => (float[1, 4] y) { y = Add (x, b) }
        """,
        {"b": np.ones((1, 4), np.float32)},
    )
    if where == "input":
        model.graph.input[0].type.tensor_type.elem_type = 99
    elif where == "output":
        model.graph.output[0].type.tensor_type.elem_type = 99
    else:
        model.graph.initializer[0].data_type = 99
    p = tmp_path / "m.onnx"
    p.write_bytes(model.SerializeToString())
    with pytest.raises(InputError, match=rf"invalid ONNX graph: {where} '\w' has unknown data"):
        load_model(p)


def _weights_model() -> onnx.ModelProto:
    return text_model(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1, 3] x) => (float[1, 3] y) { y = Mul (x, s) }
        """,
        {"s": np.ones(3, np.float32)},
    )


@pytest.mark.parametrize(
    "damage, match",
    [
        ("type", r"tensor 's' has 12 bytes of data; shape \[3\] of UINT8 needs 3"),
        ("long", r"tensor 's' has 16 bytes of data; shape \[3\] of FLOAT needs 12"),
        ("typed", r"tensor 's': its values do not fit shape \[3\] of FLOAT"),
        ("constant", r"tensor 's' has 16 bytes of data; shape \[3\] of FLOAT needs 12"),
    ],
)
def test_tensor_data_that_does_not_fit_its_shape_is_bad_input(tmp_path: Path, damage, match):
    # onnx.checker refuses too little data but passes too much; constant folding then raised
    # (optimize --no-verify: exit code 3).
    model = _weights_model()
    s = model.graph.initializer[0]
    if damage == "type":
        s.data_type = onnx.TensorProto.UINT8
    elif damage == "long":
        s.raw_data += b"\x00" * 4
    elif damage == "typed":
        s.ClearField("raw_data")
        s.float_data.extend([1.0, 2.0, 3.0, 4.0])
    else:
        t = onnx.TensorProto()
        t.CopyFrom(s)
        t.raw_data += b"\x00" * 4
        del model.graph.initializer[:]
        model.graph.node.insert(0, onnx.helper.make_node("Constant", [], ["s"], value=t))
    p = tmp_path / "m.onnx"
    p.write_bytes(model.SerializeToString())
    with pytest.raises(InputError, match=match):
        load_model(p)


def test_optimize_without_verification_refuses_tensor_data_that_does_not_fit(
    tmp_path: Path, capsys
):
    from lepton_compile.cli import main

    model = _weights_model()
    model.graph.initializer[0].data_type = onnx.TensorProto.UINT8
    p = tmp_path / "m.onnx"
    p.write_bytes(model.SerializeToString())
    out = tmp_path / "o.onnx"
    assert main(["optimize", str(p), "-o", str(out), "--no-verify", "-q"]) == 2
    err = capsys.readouterr().err
    assert "needs 3" in err and "Traceback" not in err and not out.exists()

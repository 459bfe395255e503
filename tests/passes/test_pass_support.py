"""The passes' shared support: one-line errors, proto walks, onnxruntime sessions."""

from __future__ import annotations

import numpy as np
import pytest

from lepton_compile.passes import ort_session
from lepton_compile.passes.errors import PassInputError, one_line
from lepton_compile.passes.model_size import ENV_LIMIT
from lepton_compile.passes.testing import model_from_text
from lepton_compile.passes.walk import model_nodes, proto_graphs, proto_nodes

IF_MODEL = """
<ir_version: 8, opset_import: ["" : 17]>
g (bool c, float[2] x) => (float[2] y) {
    a = Relu (x)
    y = If (c) <
        then_branch = t () => (float[2] ty) { ty = Neg (a) },
        else_branch = e () => (float[2] ey) { ey = Abs (a) }
    >
}
"""


def test_one_line_is_the_first_non_empty_line_trimmed():
    assert one_line(ValueError("\n  first line  \nsecond")) == "first line"
    assert one_line(PassInputError("")) == "PassInputError"
    assert one_line("  text  ") == "text"
    assert one_line("") == ""
    assert one_line(RuntimeError("x" * 400)) == "x" * 300
    assert one_line(RuntimeError("abcdef"), limit=3) == "abc"


def test_proto_walks_visit_subgraphs_in_depth_first_order():
    model = model_from_text(IF_MODEL)
    assert [g.name for g in proto_graphs(model.graph)] == ["g", "t", "e"]
    # Each node is followed by its subgraphs' nodes: positions name nodes stably.
    assert [n.op_type for n in proto_nodes(model.graph)] == ["Relu", "If", "Neg", "Abs"]
    assert [n.op_type for n in model_nodes(model)] == ["Relu", "If", "Neg", "Abs"]


@pytest.mark.parametrize("limit", [None, "64"])
def test_session_reads_a_model_from_bytes_or_past_the_limit_from_a_file(
    monkeypatch: pytest.MonkeyPatch, limit: str | None
):
    if limit is not None:
        monkeypatch.setenv(ENV_LIMIT, limit)  # the model is larger: it goes through a file
    model = model_from_text(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2, 4] x) => (float[2, 4] y) { y = Add (x, w) }
        """,
        {"w": np.arange(8, dtype=np.float32).reshape(2, 4)},
    )
    x = np.ones((2, 4), np.float32)
    for level in ort_session.OPTIMIZATION_LEVELS:
        (y,) = ort_session.session(model, optimization=level).run(None, {"x": x})
        np.testing.assert_array_equal(y, x + np.arange(8, dtype=np.float32).reshape(2, 4))
    with pytest.raises(ValueError, match="optimization must be one of"):
        ort_session.session_options("fast")

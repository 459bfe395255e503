"""Subgraph walks over ONNX protos: every graph, every node, If/Loop/Scan bodies included.

The passes on onnx-ir walk with onnx-ir's own traversal (``ir.traversal.RecursiveGraphIterator``,
``ir.Model.graphs()``); these are the same walks for code that works on ``onnx.ModelProto``
(onnxruntime's tools, onnx.checker, graph edits of a quantized proto).
"""

from __future__ import annotations

from collections.abc import Iterator

import onnx


def node_subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    """The graphs held in ``node``'s attributes (GRAPH and GRAPHS), in attribute order."""
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs


def proto_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``graph`` and every subgraph below it, depth first."""
    yield graph
    for node in graph.node:
        for sub in node_subgraphs(node):
            yield from proto_graphs(sub)


def proto_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node of ``graph`` and its subgraphs, each node followed by its subgraphs' nodes.

    The order is stable (a depth-first walk), so a node's position in it can name the node.
    """
    for node in graph.node:
        yield node
        for sub in node_subgraphs(node):
            yield from proto_nodes(sub)


def model_nodes(model: onnx.ModelProto) -> Iterator[onnx.NodeProto]:
    """Nodes of the main graph, its subgraphs and the model-local functions."""
    yield from proto_nodes(model.graph)
    for function in model.functions:
        for node in function.node:
            yield node
            for sub in node_subgraphs(node):
                yield from proto_nodes(sub)

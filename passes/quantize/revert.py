"""Layers of a compressed model put back to FP32 by graph edit: QDQ bypassed, or the original
node spliced in where the compressed one was.

The accuracy search keeps some layers uncompressed; reverting them in the all-layers model is
far cheaper than compressing the whole model again without them. ``revert_qdq`` serves QDQ
models (static INT8), ``revert_nodes`` steps that replace a node by a chain ending in the same
output tensor (dynamic INT8, INT4 MatMulNBits). Each returns None when the model does not have
the shape it needs, so that the caller can rebuild instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import onnx

from lepton_compile.passes.walk import node_subgraphs, proto_nodes

# Activations that onnxruntime's QDQ quantizer folds into the following QuantizeLinear.
FOLDED_ACTIVATIONS = ("Relu", "Clip")


def revert_qdq(
    quantized: onnx.ModelProto, original: onnx.ModelProto, names: Sequence[str]
) -> onnx.ModelProto | None:
    """``quantized`` with the named nodes fed by FP32 tensors again (their QDQ bypassed).

    For each named node whose input comes from a DequantizeLinear, the input is reconnected to
    the tensor the same node read in ``original`` (an activation still present in the QDQ
    graph and produced by the same node, or a weight initializer copied back). Returns None
    when a named node is not in both graphs with the same input count, so the caller can
    rebuild instead.
    """
    if not names:
        return quantized
    orig_nodes = {n.name: n for n in original.graph.node if n.name}
    q = onnx.ModelProto()
    q.CopyFrom(quantized)
    g = q.graph
    producers = {o: n for n in g.node for o in n.output}
    q_nodes = {n.name: n for n in g.node if n.name}
    present = {t.name for t in g.initializer} | {i.name for i in g.input}
    present |= {o for n in g.node for o in n.output}
    orig_inits = {t.name: t for t in original.graph.initializer}
    orig_producer_nodes = {o: n for n in original.graph.node for o in n.output}
    orig_producers = {o: n.name for o, n in orig_producer_nodes.items()}
    restored: dict[str, str] = {}  # activation name -> its re-applied FP32 copy
    for name in names:
        qn, on = q_nodes.get(name), orig_nodes.get(name)
        if qn is None or on is None or len(qn.input) != len(on.input):
            return None
        for i, (qi, oi) in enumerate(zip(qn.input, on.input, strict=True)):
            p = producers.get(qi)
            if p is None or p.op_type != "DequantizeLinear" or qi == oi or not oi:
                continue
            if oi not in orig_inits:
                # An activation: bypass its QDQ only if the FP32 tensor of that name still
                # means the same thing. The quantizer folds a Relu/Clip that precedes a
                # QuantizeLinear into the quantized range, so the name can now hold the
                # pre-activation values: then the activation is applied again, in FP32.
                src = producers.get(oi)
                if (src.name if src is not None else None) != orig_producers.get(oi):
                    act = orig_producer_nodes.get(oi)
                    if act is None or act.op_type not in FOLDED_ACTIVATIONS:
                        continue  # not a case we can restore: keep the dequantized input
                    if oi not in restored:
                        restored[oi] = _reapply(g, act, oi, orig_inits, present)
                    qn.input[i] = restored[oi]
                    continue
            if oi not in present:
                if oi not in orig_inits:
                    return None
                g.initializer.append(orig_inits[oi])
                present.add(oi)
            qn.input[i] = oi
    _remove_dead(q)
    return q


def revert_nodes(
    compressed: onnx.ModelProto, original: onnx.ModelProto, names: Sequence[str]
) -> onnx.ModelProto | None:
    """``compressed`` with the named nodes put back as they are in ``original``, by graph edit.

    For steps that replace a node by a chain ending in a tensor of the same name and type
    (dynamic INT8, INT4 MatMulNBits): the chain's last node gives way to the original node,
    its weights come back, and what only fed the chain goes. The same model a rebuild with
    ``nodes_to_exclude`` gives, without quantizing the whole model again for every probe.
    Returns None when a named node's compressed form does not have that shape.
    """
    if not names:
        return compressed
    orig_nodes = {n.name: n for n in original.graph.node if n.name}
    orig_inits = {t.name: t for t in original.graph.initializer}
    q = onnx.ModelProto()
    q.CopyFrom(compressed)
    g = q.graph
    inits = {t.name: t for t in g.initializer}
    present = set(inits) | {i.name for i in g.input} | {o for n in g.node for o in n.output}
    for name in names:
        on = orig_nodes.get(name)
        if on is None:
            return None
        outs = {o for o in on.output if o}
        at = [k for k, n in enumerate(g.node) if outs & set(n.output)]
        if not at or any(set(o for o in g.node[k].output if o) - outs for k in at):
            return None  # not a chain ending in exactly this node's outputs
        for i in on.input:
            if not i or i in present and i not in orig_inits:
                continue
            if i not in orig_inits:
                return None  # an activation the compressed graph no longer has
            have = inits.get(i)
            if have is not None:
                want = orig_inits[i]
                if (have.data_type, list(have.dims)) != (want.data_type, list(want.dims)):
                    return None  # the name now holds another tensor
                continue
            g.initializer.append(want := orig_inits[i])
            inits[i] = want
            present.add(i)
        node = onnx.NodeProto()
        node.CopyFrom(on)
        first = at[0]
        for k in reversed(at):
            del g.node[k]
        g.node.insert(first, node)
    _remove_dead(q)
    return q


def _reapply(
    g: onnx.GraphProto,
    act: onnx.NodeProto,
    name: str,
    orig_inits: Mapping[str, onnx.TensorProto],
    present: set[str],
) -> str:
    """Append a copy of ``act`` that reads ``name`` (its input's value) and return its output."""
    out = f"{name}_fp32_restored"
    node = onnx.NodeProto()
    node.CopyFrom(act)
    node.name = f"{act.name}_restored"
    node.input[0] = name
    for extra in node.input[1:]:  # Clip's min/max: bring the constants along
        if extra and extra not in present and extra in orig_inits:
            g.initializer.append(orig_inits[extra])
            present.add(extra)
    del node.output[:]
    node.output.append(out)
    # Keep topological order: right after the node that writes ``name``.
    pos = next((k + 1 for k, n in enumerate(g.node) if name in n.output), 0)
    g.node.insert(pos, node)
    present.add(out)
    return out


def _remove_dead(model: onnx.ModelProto) -> None:
    """Drop nodes and initializers that no graph output depends on any more."""
    g = model.graph
    needed = {o.name for o in g.output}
    keep = []
    for n in reversed(list(g.node)):
        if any(o in needed for o in n.output) or n.op_type in ("If", "Loop", "Scan"):
            keep.append(n)
            needed.update(i for i in n.input if i)
            for sub in node_subgraphs(n):  # subgraphs read outer names
                needed.update(i for node in proto_nodes(sub) for i in node.input)
    keep.reverse()
    if len(keep) != len(g.node):
        del g.node[:]
        g.node.extend(keep)
    inits = [t for t in g.initializer if t.name in needed]
    if len(inits) != len(g.initializer):
        del g.initializer[:]
        g.initializer.extend(inits)

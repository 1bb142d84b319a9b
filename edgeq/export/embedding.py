"""The embedding table in the exported graph: a float tied head shares it (FusedMatMul), and an 8-bit
tied head shares its MatMulNBits codes with the embedding lookup (GatherBlockQuantized), so the
table's bytes are stored once either way."""
from __future__ import annotations

import numpy as np

from ..qweight import QuantizedWeight
from .matmulnbits import MS_DOMAIN, NodeLayout, use_ms_domain, weight_digest


def share_tied_head(model_proto, embedding: np.ndarray) -> bool:
    """A tied head exports as MatMul(x, E^T) with E^T folded into a second copy of the embedding (113 MB
    on SmolLM2). Point it at the embedding itself through FusedMatMul(transB=1); return whether it did."""
    from onnx import helper, numpy_helper

    graph = model_proto.graph
    inits = {init.name: init for init in graph.initializer}
    table = weight_digest(embedding)
    head = weight_digest(embedding.T)
    table_name = next((n for n, i in inits.items() if tuple(i.dims) == embedding.shape
                       and weight_digest(numpy_helper.to_array(i)) == table), None)
    if table_name is None:
        return False
    for index, node in enumerate(graph.node):
        copy = inits.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        if copy is None or tuple(copy.dims) != embedding.T.shape or \
                weight_digest(numpy_helper.to_array(copy)) != head:
            continue
        graph.node[index].CopyFrom(helper.make_node(
            "FusedMatMul", [node.input[0], table_name], list(node.output), name=node.name or "lm_head_tied",
            domain=MS_DOMAIN, transA=0, transB=1, alpha=1.0))
        graph.initializer.remove(copy)
        use_ms_domain(model_proto)
        return True
    return False


def shares_codes_with_lookup(qw: QuantizedWeight, layout: NodeLayout) -> bool:
    """MatMulNBits' B [V, K/block, block] holds exactly the bytes of a [V, K] 8-bit table when no block is
    padded; only then can one initializer serve both nodes."""
    return layout.bits == 8 and qw.shape[1] % layout.block == 0


def quantize_tied_embedding(model_proto, head_name: str, qw: QuantizedWeight, layout: NodeLayout) -> bool:
    """Replace Gather(table, ids) by GatherBlockQuantized over the 8-bit head's own B initializer (a
    [V, K/block, block] view, quantize_axis 2) and a Reshape back to [.., K]; the float table goes."""
    from onnx import helper, numpy_helper

    if not shares_codes_with_lookup(qw, layout):
        return False
    graph = model_proto.graph
    inits = {init.name: init for init in graph.initializer}
    table = qw.dequantize().numpy()
    digest = weight_digest(table)
    for index, node in enumerate(graph.node):
        data = inits.get(node.input[0]) if node.op_type == "Gather" else None
        if data is None or tuple(data.dims) != table.shape or weight_digest(numpy_helper.to_array(data)) != digest:
            continue
        prefix = head_name.replace(".", "_")
        v, k = qw.shape
        blocks = k // layout.block
        graph.initializer.extend([
            numpy_helper.from_array(qw.scale.numpy().astype(np.float32).reshape(v, blocks, 1), f"{prefix}_scales_3d"),
            numpy_helper.from_array(qw.zero.numpy().astype(np.uint8).reshape(v, blocks, 1), f"{prefix}_zero_points_3d"),
            numpy_helper.from_array(np.array([0, 0, k], dtype=np.int64), f"{prefix}_embedding_shape")])
        blocked = f"{node.output[0]}_blocked"
        lookup = helper.make_node(
            "GatherBlockQuantized", [f"{prefix}_B", node.input[1], f"{prefix}_scales_3d", f"{prefix}_zero_points_3d"],
            [blocked], name="embedding_GatherBlockQuantized", domain=MS_DOMAIN, gather_axis=0, quantize_axis=2,
            block_size=layout.block, bits=8)
        reshape = helper.make_node("Reshape", [blocked, f"{prefix}_embedding_shape"], list(node.output),
                                   name="embedding_Reshape")
        graph.node.remove(node)
        graph.node.insert(index, reshape)
        graph.node.insert(index, lookup)
        graph.initializer.remove(data)
        use_ms_domain(model_proto)
        return True
    return False

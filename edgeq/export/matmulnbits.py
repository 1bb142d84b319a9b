"""MatMul(x, W^T) -> com.microsoft::MatMulNBits(x, B, scales, zero_points) from our QuantizedWeight.

Linears are found by value, not by name: an exported MatMul whose B initializer is bit-identical to the
dequantized W_hat^T of a quantized linear is that linear (exporters rename and transpose initializers;
values survive). The codes, scales and integer zero points are ours, never re-quantized.

What onnxruntime 1.32's CPU kernel accepts (measured): bits 2, 4, 8; power-of-two blocks >= 16; 2-bit
only up to block 128 on the fast path. 3-bit codes go into the 4-bit container unchanged (values 0..7).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from .. import pack
from ..errors import EdgeqError
from ..qweight import QuantizedWeight

MS_DOMAIN = "com.microsoft"
ORT_BITS = (2, 4, 8)


@dataclass(frozen=True)
class NodeLayout:
    bits: int          # container width written to the node (3-bit codes live in 4)
    block: int         # MatMulNBits block_size
    blocks: int        # blocks per row


def node_layout(name: str, qw: QuantizedWeight) -> NodeLayout:
    """How a QuantizedWeight maps onto MatMulNBits, or a clear refusal."""
    n, k = qw.shape
    bits = 4 if qw.bits == 3 else qw.bits
    if bits not in ORT_BITS:
        raise EdgeqError(f"{name}: {qw.bits}-bit weights cannot run in onnxruntime's MatMulNBits "
                         f"(it runs 2, 4 and 8 bits; 3-bit is stored as 4); quantize with --bits 2, 3, 4 or 8")
    per_channel = qw.group_size >= k
    block = 1 << max(4, (k - 1).bit_length()) if per_channel else qw.group_size
    if not per_channel and (block < 16 or block & (block - 1)):
        raise EdgeqError(f"{name}: group size {qw.group_size} is not a power of two >= 16")
    if bits == 2 and block > 128:
        raise EdgeqError(f"{name}: 2-bit with block {block} has no fast MatMulNBits kernel (2-bit is fast only "
                         f"at blocks 32, 64, 128); quantize 2-bit with --group-size 32, 64 or 128")
    return NodeLayout(bits, block, -(-k // block))


def node_tensors(qw: QuantizedWeight, layout: NodeLayout) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(B uint8 [N, blocks, block*bits/8], scales float32 [N*blocks], zero_points uint8 packed per row)."""
    b = pack.pack_blocks(qw.q.numpy(), layout.bits, layout.block)
    scales = qw.scale.numpy().astype(np.float32).reshape(-1)
    zeros = pack.pack_codes(qw.zero.numpy(), layout.bits)
    if layout.bits == 8:
        zeros = zeros.reshape(qw.shape[0], -1)
    return b, scales, zeros.reshape(-1)


def weight_digest(w_t: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(w_t, dtype=np.float32).tobytes()).hexdigest()


def replace_matmuls(model_proto, qweights: dict[str, QuantizedWeight], accuracy_level: int) -> dict[str, NodeLayout]:
    """Rewrite every MatMul whose weight equals a quantized linear's W_hat^T; return {linear: layout}."""
    from onnx import helper, numpy_helper

    graph = model_proto.graph
    wanted = {weight_digest(qw.dequantize().numpy().T): name for name, qw in qweights.items()}
    initializers = {init.name: init for init in graph.initializer}
    replaced, used_inits, new_nodes, new_inits = {}, set(), [], []
    for node in graph.node:
        weight = initializers.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        name = wanted.get(weight_digest(numpy_helper.to_array(weight))) if weight is not None else None
        if name is None or name in replaced:
            new_nodes.append(node)
            if name in replaced:
                raise EdgeqError(f"{name} appears twice in the exported graph")
            continue
        qw = qweights[name]
        layout = node_layout(name, qw)
        b, scales, zeros = node_tensors(qw, layout)
        prefix = name.replace(".", "_")
        for suffix, array in (("B", b), ("scales", scales), ("zero_points", zeros)):
            new_inits.append(numpy_helper.from_array(array, f"{prefix}_{suffix}"))
        n, k = qw.shape
        new_nodes.append(helper.make_node(
            "MatMulNBits", [node.input[0], f"{prefix}_B", f"{prefix}_scales", f"{prefix}_zero_points"],
            list(node.output), name=f"{prefix}_MatMulNBits", domain=MS_DOMAIN, K=k, N=n, bits=layout.bits,
            block_size=layout.block, accuracy_level=accuracy_level))
        used_inits.add(weight.name)
        replaced[name] = layout
    missing = sorted(set(qweights) - set(replaced))
    if missing:
        raise EdgeqError(f"{len(missing)} quantized linears were not found in the exported graph, e.g. {missing[0]}")
    still_used = {i for n in new_nodes for i in n.input}
    del graph.node[:]
    graph.node.extend(new_nodes)
    kept = [init for init in graph.initializer if init.name not in used_inits or init.name in still_used]
    del graph.initializer[:]
    graph.initializer.extend(kept + new_inits)
    use_ms_domain(model_proto)
    return replaced


def use_ms_domain(model_proto):
    from onnx import helper
    if not any(op.domain == MS_DOMAIN for op in model_proto.opset_import):
        model_proto.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))


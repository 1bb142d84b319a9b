"""Slice an exported 8-bit MatQuant model to 4 or 2 bits on the device, from its own initializers: no
checkpoint, no torch. What a mobile app does at load time: ship one int8 file, pick the width from the
memory and battery it has, build the session from the sliced bytes (nothing is written to disk).

The export lists the MatMulNBits nodes that may be sliced in the model's metadata (the decoder's linears,
never the 8-bit output head, whose RTN zero points are not nested). Needs numpy and onnx.
"""
from __future__ import annotations

import json

import numpy as np

from ..planning import mixnmatch
from ..quant import nesting, pack
from ..errors import EdgeqError

SLICEABLE_KEY = "edgeq.sliceable_nodes"   # comma-separated MatMulNBits node names
WIDTHS_KEY = "edgeq.nested_widths"        # the widths the codes were optimised for, e.g. "8,4,2"
ESTIMATES_KEY = "edgeq.slice_estimates"   # JSON {node: [what each width's slice costs the model]}


def model_to_open(path, bits: int | float | None):
    """What onnxruntime should open: the file itself, or with `bits` its sliced model as bytes."""
    if bits is None:
        return path
    import onnx
    proto = onnx.load(str(path))  # external data, if any, is read in too
    slice_model(proto, bits)
    return proto.SerializeToString()


def sliceable_nodes(proto) -> set[str]:
    """Names of the MatMulNBits nodes the export marked as sliceable (empty if none)."""
    value = _metadata(proto).get(SLICEABLE_KEY, "")
    return set(value.split(",")) if value else set()


def nested_widths(proto) -> list[int] | None:
    """The widths the codes were optimised for (a MatQuant export), widest first; None if not recorded."""
    value = _metadata(proto).get(WIDTHS_KEY)
    return sorted(map(int, value.split(",")), reverse=True) if value else None


def _metadata(proto) -> dict[str, str]:
    return {p.key: p.value for p in proto.metadata_props}


def slice_model(proto, bits: int | float) -> dict[str, int]:
    """In place: each node listed under SLICEABLE_KEY gets the `bits`-bit slice of its 8-bit codes; a float
    is an average (Mix'n'Match): each node's width planned from the stored estimates. Returns the widths."""
    if isinstance(bits, float):
        return slice_nodes(proto, device_plan(proto, bits))
    if bits not in pack.CONTAINER:
        raise EdgeqError(f"can slice to {sorted(pack.CONTAINER)} bits (what onnxruntime runs), not {bits}")
    return slice_nodes(proto, dict.fromkeys(sliceable_nodes(proto), bits))


def device_plan(proto, budget: float) -> dict[str, int]:
    """{node: width} for an average of `budget` code bits, from the export's slice estimates and the nodes'
    N x K, over the served widths onnxruntime runs."""
    meta = _metadata(proto)
    if ESTIMATES_KEY not in meta:
        raise EdgeqError("this model stores no slice estimates: export a matquant checkpoint quantized by this "
                         "edgeq to slice it by a budget, or give one width (an integer)")
    estimates = json.loads(meta[ESTIMATES_KEY])
    served = nested_widths(proto)
    widths = [b for b in served if b in pack.CONTAINER]
    attrs = {n.name: {a.name: a.i for a in n.attribute} for n in proto.graph.node if n.name in estimates}
    units = {name: (attrs[name]["N"] * attrs[name]["K"], [e for b, e in zip(served, est) if b in widths])
             for name, est in estimates.items()}
    return mixnmatch.plan(units, widths, budget)


def slice_nodes(proto, widths: dict[str, int]) -> dict[str, int]:
    """In place: each named node (listed under SLICEABLE_KEY) sliced to its width; 8 leaves it as stored."""
    names = sliceable_nodes(proto)
    if not names:
        raise EdgeqError("this model lists no sliceable nodes: export an 8-bit checkpoint (e.g. --method matquant) "
                         "with `edgeq export` to get one")
    inits = {t.name: t for t in proto.graph.initializer}
    nodes = [n for n in proto.graph.node if n.name in names]
    if len(nodes) != len(names):
        raise EdgeqError(f"{len(names) - len(nodes)} sliceable nodes named in the metadata are not in the graph")
    for node in nodes:
        if widths.get(node.name, 8) != 8:
            _slice_node(node, inits, widths[node.name])
    return widths


def _slice_node(node, inits: dict, bits: int) -> None:
    from onnx import numpy_helper
    attrs = {a.name: a for a in node.attribute}
    if attrs["bits"].i != 8:
        raise EdgeqError(f"{node.name}: stored with {attrs['bits'].i} bits, not 8")
    b_init, scale_init, zero_init = (inits[name] for name in node.input[1:4])
    b = numpy_helper.to_array(b_init)                         # [N, blocks, block]: one code per byte
    n, blocks, _ = b.shape
    zero = numpy_helper.to_array(zero_init).reshape(n, blocks).astype(np.int16)
    try:
        zero_r = nesting.slice_zero(zero, 8, bits)
    except EdgeqError as err:
        raise EdgeqError(f"{node.name}: {err}") from None
    q_r = nesting.slice_codes(b.astype(np.int16), 8, bits).astype(np.uint8)
    container = pack.CONTAINER[bits]
    scales = numpy_helper.to_array(scale_init) * np.float32(1 << (8 - bits))
    for init, array in ((b_init, pack.pack_codes(q_r, container)), (scale_init, scales),
                        (zero_init, pack.pack_codes(zero_r.astype(np.uint8), container).reshape(-1))):
        init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(array), init.name))
    attrs["bits"].i = container


def sliceable_metadata(proto, head_prefix: str, widths, estimates: dict[str, list[float]] | None = None) -> None:
    """Record in the model which MatMulNBits nodes hold sliceable 8-bit codes (all but the head's), the
    widths they serve and, for Mix'n'Match, each node's slice estimates ({node: [one per width]})."""
    names = [n.name for n in proto.graph.node if n.op_type == "MatMulNBits" and not n.name.startswith(head_prefix)
             and any(a.name == "bits" and a.i == 8 for a in n.attribute)]
    if names:
        from onnx import helper
        props = {SLICEABLE_KEY: ",".join(names)}
        if widths:
            props[WIDTHS_KEY] = ",".join(map(str, widths))
        if widths and estimates and set(names) <= set(estimates):
            props[ESTIMATES_KEY] = json.dumps({n: estimates[n] for n in names})
        helper.set_model_props(proto, props)


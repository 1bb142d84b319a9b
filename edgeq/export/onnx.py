"""`edgeq export`: checkpoint (or float model) -> validated ONNX decoder folder.

Everything happens in a temporary folder that is renamed into place only after onnx.checker, an ORT
session and a parity check against torch (same dequantized weights) have passed; a failed export leaves
nothing. Refusals (bad widths/blocks) happen before any work starts.
"""
from __future__ import annotations

import gc
import json
import time
from pathlib import Path

import numpy as np
import torch

from ..io import checkpoint
from ..io.head import attach_head, head_spec
from ..errors import EdgeqError
from ..util.paths import check_output_folder
from ..runtime.session import MODEL_FILE, OrtDecoder, cpu_session
from ..runtime.slicing import sliceable_metadata
from .decoder import build_decoder, matmulnbits_name
from .genai import write_genai_config
from ..quant.qweight import QuantizedWeight
from ..quant.layout import HEAD_WIDTHS, node_layout

# relative L2 error of logits, ORT vs torch, on a fixed prompt (see PARITY_PROMPT). The graph's weights
# are always checked at accuracy level 0 (fp32 compute), where a correct export agrees to about 1e-6
# (SmolLM2 W4 g128: 2.1e-6); the level asked for, if another, must then only stay sane: int8
# activations cost about 0.5% per MatMulNBits node and 30 blocks amplify it (W4 g128: 5.8e-2; W2 g64,
# a fragile model: 2.0e-1), while a wrongly packed node gives errors of order 1.
EXACT_LIMIT = 1e-3
APPROXIMATE_LIMIT = 0.5
ACCURACY_LEVELS = range(5)
PARITY_PROMPT = ("It is a truth universally acknowledged, that a single man in possession of a good fortune, "
                 "must be in want of a wife.")


def load_for_export(model: str | None, fp32: bool, bits: int | float | None = None):
    """(torch model, tokenizer, {linear: QuantizedWeight}, label, checkpoint meta or {}); with `bits`, the
    checkpoint's codes sliced to that width."""
    from transformers import AutoTokenizer

    from ..io import models
    from ..io.inputs import kind_of, resolve_model
    if fp32:
        if bits is not None:
            raise EdgeqError("--bits slices a quantized checkpoint; --fp32 exports a float model")
        given = resolve_model(model).refuse_unless("float", command="export --fp32")
        loaded, _ = models.load_model(given.source)
        return loaded, models.load_tokenizer(given.source), {}, given.label, {}
    if kind_of(model) not in ("checkpoint", "quantized"):  # a float model is not fetched only to be refused
        raise EdgeqError(f"not an edgeq checkpoint: {model} (export a float model with --fp32)")
    given = resolve_model(model)
    from ..io.quantized_folder import load_quantized
    loaded, qweights, meta = load_quantized(given, bits)
    return loaded, AutoTokenizer.from_pretrained(given.path), qweights, given.label, meta


def node_estimates(meta: dict, config) -> dict[str, list[float]] | None:
    """{MatMulNBits node: its linears' summed slice estimates} of a nested checkpoint (None without them),
    for a device to plan Mix'n'Match widths from the export alone."""
    if not meta.get("slice_estimates"):
        return None
    groups, units = checkpoint.slice_units(meta, config)
    return {matmulnbits_name(group): units[group[0]][1] for group in groups}


def served_widths(meta: dict) -> list[int] | None:
    """The widths a nested checkpoint's codes serve (its method's default when the run did not name them)."""
    from ..solvers import get_method
    if not meta.get("method") or not get_method(meta["method"]).nested:
        return None
    return list(get_method(meta["method"]).resolve(meta.get("solver_opts", {})).widths)


def quantize_lm_head(model, arch, bits: int) -> QuantizedWeight:
    """RTN of the output head at 8 or 4 bits, written into the torch model (the parity reference; see
    head.attach_head for what becomes of a tied embedding)."""
    from ..io.models import get_module
    from ..solvers import get_solver
    weight = get_module(model, arch.lm_head).weight.data
    qw = get_solver("rtn")(weight, None, head_spec(weight.shape[1], bits))
    attach_head(model, arch, qw)
    return qw


def save_model(proto, path: Path, inline_limit: int = 1 << 30) -> None:
    """One .onnx file while the weights are small; beyond `inline_limit` bytes (protobuf refuses files
    over 2 GB) the weights go to model.onnx.data beside it, which onnxruntime maps on load."""
    import onnx
    weights = sum(len(init.raw_data) for init in proto.graph.initializer)
    onnx.save(proto, str(path), save_as_external_data=weights > inline_limit, all_tensors_to_one_file=True,
              location=path.name + ".data", size_threshold=1024)
    data = path.with_name(path.name + ".data")
    if data.exists():  # onnx creates it private (0600): a folder copied to a device would not be readable
        data.chmod(path.stat().st_mode & 0o777)


def parity_ids(tokenizer) -> np.ndarray:
    return np.array([tokenizer(PARITY_PROMPT, add_special_tokens=False)["input_ids"]])


def reference_logits(model, tokenizer) -> np.ndarray:
    """torch's logits on the parity prompt: taken before the graph is built, so that the torch model can be
    let go before any onnxruntime session exists (a 1.5B model's float copy is 6.8 GB)."""
    with torch.no_grad():
        return model(input_ids=torch.from_numpy(parity_ids(tokenizer)), use_cache=False).logits[0].numpy()


def parity(reference: np.ndarray, decoder: OrtDecoder, tokenizer) -> float:
    got, _ = decoder.forward(parity_ids(tokenizer), decoder.empty_past())
    return float(np.linalg.norm(got[0] - reference) / np.linalg.norm(reference))


def check_parity(reference: np.ndarray, tokenizer, path: Path, accuracy_level: int) -> dict[int, float]:
    """{level: relative logit error against torch's `reference_logits`} for level 0 (the exact check of the
    weights) and the level asked for; raises if either is over its limit. A graph without MatMulNBits (fp32)
    is the same at every level and is run once, held to the exact limit."""
    errors = {}
    exact = level0_twin(path) if accuracy_level != 0 else None
    if exact is not None:
        try:
            errors[0] = parity(reference, OrtDecoder(cpu_session(exact)), tokenizer)
        finally:
            exact.unlink()
    errors[accuracy_level] = parity(reference, OrtDecoder(cpu_session(path)), tokenizer)
    errors.setdefault(0, errors[accuracy_level])
    for level, error in errors.items():
        limit = EXACT_LIMIT if level == 0 or exact is None else APPROXIMATE_LIMIT
        if not error <= limit:
            raise EdgeqError(f"exported graph disagrees with torch at accuracy level {level}: relative logit "
                             f"error {error:.2e} > {limit}")
    return errors


def level0_twin(path: Path) -> Path | None:
    """The saved graph with every MatMulNBits at accuracy level 0, written beside it (None when it has no
    MatMulNBits): read back without its external data, which the twin shares (same folder, same location),
    rather than a copy of the whole model in memory."""
    import onnx
    twin = onnx.load(str(path), load_external_data=False)
    nbits = [node for node in twin.graph.node if node.op_type == "MatMulNBits"]
    if not nbits:
        return None
    for node in nbits:
        for attr in node.attribute:
            if attr.name == "accuracy_level":
                attr.i = 0
    exact = path.with_name("parity_level0.onnx")
    onnx.save(twin, str(exact))
    return exact


def export(model: str | None, out, *, fp32: bool = False, accuracy_level: int = 4, lm_head: str | None = None,
           ort_format: bool = False, bits: int | float | None = None) -> dict:
    """Write the validated ONNX folder `out`; `bits` exports that slice of a (MatQuant) checkpoint.
    lm_head None: the checkpoint's own calibrated head if it has one, else float, so that the export computes
    what its checkpoint computes (benchmarks/head_widths.py measures what each head width costs)."""
    import onnx

    from ..util.paths import atomic_folder
    from ..io.models import arch_of
    t0 = time.perf_counter()
    out = Path(out)
    check_output_folder(out)
    if accuracy_level not in ACCURACY_LEVELS:
        raise EdgeqError(f"accuracy level must be 0..4, got {accuracy_level}")
    if lm_head not in (None, *HEAD_WIDTHS):
        raise EdgeqError(f"--lm-head must be one of {', '.join(HEAD_WIDTHS)}, got {lm_head!r}")
    loaded, tokenizer, qweights, label, meta = load_for_export(model, fp32, bits)
    for name, qw in qweights.items():
        node_layout(name, qw)  # refuse what onnxruntime cannot run fast before any work
    arch = arch_of(loaded.config)
    calibrated_head = arch.lm_head in qweights
    if lm_head is not None and calibrated_head:
        raise EdgeqError(f"{model}'s head was quantized with the model ({qweights[arch.lm_head].bits} bits, "
                         "calibrated): drop --lm-head")
    lm_head = lm_head or "fp"
    if HEAD_WIDTHS[lm_head]:
        qweights = {**qweights, arch.lm_head: quantize_lm_head(loaded, arch, HEAD_WIDTHS[lm_head])}
    config = loaded.config
    stored_bits = {name: qw.bits for name, qw in qweights.items()}
    with atomic_folder(out) as tmp:
        write_genai_config(config, tokenizer, tmp)  # first: it refuses what genai cannot load
        path = tmp / MODEL_FILE
        reference = reference_logits(loaded, tokenizer)
        proto, layouts = build_decoder(loaded, qweights, accuracy_level, arch)
        del loaded, qweights  # the graph holds every weight now: the torch model and codes are let go
        gc.collect()
        head = arch.lm_head.replace(".", "_")
        sliceable_metadata(proto, head, served_widths(meta), node_estimates(meta, config) if bits is None else None)
        save_model(proto, path)
        ops = [node.op_type for node in proto.graph.node]
        del proto  # its weights are in the file now; a 1.5B model's are gigabytes
        onnx.checker.check_model(str(path))
        errors = check_parity(reference, tokenizer, path, accuracy_level)
        if ort_format:
            cpu_session(path, optimized_path=tmp / "model.ort", save_format="ORT")
        tokenizer.save_pretrained(tmp)
        config.save_pretrained(tmp)
        report = {
            "source": label, "fp32": fp32, "sliced_to_bits": bits, "accuracy_level": accuracy_level,
            "lm_head": f"{stored_bits[arch.lm_head]}, calibrated" if calibrated_head else lm_head,
            "graph_nodes": len(ops), "matmulnbits_nodes": ops.count("MatMulNBits"),
            "tied_head_shares_embedding": "FusedMatMul" in ops,
            "embedding": f"{stored_bits[arch.lm_head]}-bit, shares the head's codes" if "GatherBlockQuantized" in ops else "float32",
            "parity_relative_logit_error": errors[accuracy_level],
            "parity_relative_logit_error_level_0": errors[0],
            "layers": {name: {"bits": lay.bits, "block_size": lay.block,
                              "stored_bits": stored_bits[name]} for name, lay in layouts.items()},
            "bytes": {f.name: f.stat().st_size for f in tmp.iterdir()},
            "seconds": round(time.perf_counter() - t0, 1),
        }
        (tmp / "export.json").write_text(json.dumps(report, indent=2) + "\n")
    return report

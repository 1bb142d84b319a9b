"""`edgeq export CKPT --format gptq`: an edgeq checkpoint as a Hugging Face folder in the GPTQ format, the one
transformers, vLLM, SGLang and onnxruntime-genai's builder all load (AutoGPTQ's v1 layout, as GPTQModel writes it
by default), so that a model calibrated here runs on a GPU server too.

The tensors of each linear: quant/gptq_format.py.

What maps exactly: the codes and the integer zero points. What is rounded: the scales, float32 to float16
(`scale_error` reports the largest relative change), and the float tensors, written in float16 as GPTQ folders
are. 3-bit codes go into the 4-bit container unchanged (values 0..7; onnxruntime's and the builder's readers
have no 3-bit packing), as in edgeq's own ONNX export. A group that does not tile K (g128 on K = 576) is written
as the largest group dividing both, each repeating its group's scale and zero point: the same weights. Layers
whose width or group differs from the folder's main one are listed in GPTQModel's `dynamic` field, which the
builder reads too."""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import torch

from ..errors import EdgeqError
from ..quant.gptq_format import container_bits, dequantize_gptq, gptq_tensors, written_group
from ..quant.qweight import QuantizedWeight

def is_symmetric(qw: QuantizedWeight) -> bool:
    return bool((qw.zero == 1 << (qw.bits - 1)).all())


def module_pattern(name: str) -> str:
    """GPTQModel's `dynamic` key for one module: a positive regex matching its name and its tensors' names."""
    return f"+:^{re.escape(name)}(\\.|$)"


def quantization_config(qweights: dict[str, QuantizedWeight], head: str) -> dict:
    """The config.json `quantization_config`: the most common (bits, group) as the folder's, the rest dynamic."""
    grids = {name: (container_bits(name, qw), written_group(qw)) for name, qw in qweights.items()}
    main_bits, main_group = Counter(g for name, g in grids.items() if name != head).most_common(1)[0][0]
    per_channel = all(written_group(qw) == qw.shape[1] for qw in qweights.values())
    dynamic = {module_pattern(name): {"bits": bits, "group_size": group}
               for name, (bits, group) in grids.items() if (bits, group) != (main_bits, main_group)
               and not (per_channel and bits == main_bits)}
    config = {"quant_method": "gptq", "checkpoint_format": "gptq", "bits": main_bits,
              "group_size": -1 if per_channel else main_group,
              "desc_act": any(qw.input_order is not None for qw in qweights.values()), "static_groups": False,
              "sym": all(is_symmetric(qw) for qw in qweights.values()), "true_sequential": True,
              "lm_head": head in qweights}
    if dynamic:
        config["dynamic"] = dynamic
    return config


def scale_error(qweights: dict[str, QuantizedWeight]) -> float:
    """The largest relative change of a scale written in float16."""
    worst = 0.0
    for qw in qweights.values():
        s = qw.scale[qw.scale != 0]
        if s.numel():
            worst = max(worst, float(((s.half().float() - s) / s).abs().max()))
    return worst


def float_tensors(model, qweights: dict[str, QuantizedWeight], arch) -> dict[str, torch.Tensor]:
    """Every tensor but the quantized linears' weights, in float16. A quantized head unties a tied model:
    its table is then the embedding's alone."""
    skip = {f"{name}.weight" for name in qweights}
    tied = getattr(model.config, "tie_word_embeddings", False) and arch.lm_head not in qweights
    if tied:
        skip.add(f"{arch.lm_head}.weight")
    state = {}
    for key, value in model.state_dict().items():
        if key not in skip and value.is_floating_point():
            state[key] = value.detach().to(torch.float16).contiguous().clone()
    return state


def check_written(tensors: dict[str, torch.Tensor], qweights: dict[str, QuantizedWeight], limit: float) -> float:
    """Every linear read back from the written tensors by the format alone equals its codes' weight up to the
    float16 scales; returns the largest relative error."""
    worst = 0.0
    for name, qw in qweights.items():
        back = dequantize_gptq(tensors, name, container_bits(name, qw))
        exact = qw.dequantize()
        error = float((back - exact).norm() / exact.norm().clamp(min=1e-30))
        if not error <= limit:
            raise EdgeqError(f"{name}: the written GPTQ tensors read back {error:.1e} away from the codes")
        worst = max(worst, error)
    return worst


def write_gptq_folder(tmp: Path, model, tokenizer, qweights: dict[str, QuantizedWeight], arch) -> dict:
    """Write the folder's files into `tmp` (the caller renames it into place); returns what was written."""
    from safetensors.torch import save_file
    tensors = float_tensors(model, qweights, arch)
    for name, qw in qweights.items():
        tensors.update(gptq_tensors(name, qw))
    readback = check_written(tensors, qweights, limit=1e-3)
    config = model.config
    config.quantization_config = quantization_config(qweights, arch.lm_head)
    if arch.lm_head in qweights:
        config.tie_word_embeddings = False
    config.torch_dtype = "float16"
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(tmp)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    report = {"format": "gptq", "quantization_config": config.quantization_config, "linears": len(qweights),
              "scale_float16_relative_error": scale_error(qweights), "readback_relative_error": readback,
              "bytes": (tmp / "model.safetensors").stat().st_size}
    (tmp / "edgeq_export.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def untie_final_mix(model, arch, head_quantized: bool, label: str) -> None:
    """A rotated model's tied head reads its table after a d x d matrix (io/head.py's final mix), which no
    GPTQ reader runs: a float head takes the matrix into an untied head of its own (table @ mix; the mix is
    symmetric); a quantized one cannot, and is refused."""
    import torch
    from ..io.head import detach_final_mix, final_mix
    from ..io.models import get_module
    if final_mix(model, arch) is None:
        return
    if head_quantized:
        raise EdgeqError(f"{label} was rotated with a tied head whose codes the embedding shares: the GPTQ format "
                         "has no place for the matrix after its final norm; export with --lm-head fp, or to ONNX")
    mix = detach_final_mix(model, arch)
    table = get_module(model, arch.embed).weight.data
    get_module(model, arch.lm_head).weight = torch.nn.Parameter(table @ mix, requires_grad=False)
    model.config.tie_word_embeddings = False


def export_gptq(model: str, out, *, lm_head: str | None = None, bits: int | float | None = None) -> dict:
    """Write `out`, a Hugging Face folder in the GPTQ format, from an edgeq checkpoint (its `bits` slice, and
    its head at `lm_head` bits if the checkpoint's head is float). Nothing is left at `out` if any check fails."""
    from ..io.models import arch_of
    from ..quant.layout import HEAD_WIDTHS
    from ..util.paths import atomic_folder, check_output_folder
    from .onnx import load_for_export, quantize_lm_head
    out = Path(out)
    check_output_folder(out)
    if lm_head not in (None, *HEAD_WIDTHS):
        raise EdgeqError(f"--lm-head must be one of {', '.join(HEAD_WIDTHS)}, got {lm_head!r}")
    loaded, tokenizer, qweights, label, meta = load_for_export(model, False, bits)
    arch = arch_of(loaded.config)
    if lm_head is not None and arch.lm_head in qweights:
        raise EdgeqError(f"{model}'s head was quantized with the model: drop --lm-head")
    if HEAD_WIDTHS.get(lm_head or "fp"):
        qweights = {**qweights, arch.lm_head: quantize_lm_head(loaded, arch, HEAD_WIDTHS[lm_head])}
    for name, qw in qweights.items():
        container_bits(name, qw)  # refused before anything is written
    untie_final_mix(loaded, arch, arch.lm_head in qweights, model)
    with atomic_folder(out) as tmp:
        report = write_gptq_folder(tmp, loaded, tokenizer, qweights, arch)
    return {**report, "source": label, "method": meta.get("method")}

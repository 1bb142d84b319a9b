"""Quantize speed against its floor, on a random-init model of a real shape (no download, nothing large travels):
the calibration phases of one method on one device, each beside the time its arithmetic would take at the GEMM
rate measured on the same device in the same run.

    python benchmarks/quantize_speed.py [--config benchmarks/configs/smollm2-135m.json] [--method gptq]
        [--bits 4 --group-size 128] [--samples 128 --seq-len 128 --batch-size 2] [--device cpu|cuda]
        [--calib-dtype float32|bfloat16|auto] [--profile] [--results benchmarks/results/quantize_speed.jsonl]

Floors: forward = every block linear's 2 x tokens x in x out as it runs (counted by hooks, so it follows the
method's own passes) plus causal attention's 2 x tokens x window x heads x head_dim, at the rate of a matmul of
the forward's shapes in the forward's dtype; Hessians = 2 x tokens x K^2 per input group, at the rate of an
X^T X of those shapes. Phase times come from the pipeline's own timers (what `edgeq quantize` prints)."""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import RESULTS_DIR, append_result, stamp  # noqa: E402

CONFIGS = Path(__file__).resolve().parent / "configs"


def random_model(config_path: Path, layers: int | None = None, seed: int = 0):
    """A random-init model of the config's shape (the first `layers` blocks only, when given: every phase but
    the load scales with the blocks)."""
    from transformers import AutoConfig, AutoModelForCausalLM
    fields = json.loads(config_path.read_text())
    fields.pop("architectures", None)
    if layers:
        fields["num_hidden_layers"] = layers
    config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    return model, config


class FlopCounter:
    """Forward FLOPs of every block linear and attention call, counted as they run."""

    def __init__(self, model, arch):
        from edgeq.io.models import get_module
        self.linear = 0.0
        self.attention = 0.0
        self.handles = []
        for block in get_module(model, arch.blocks):
            for module in block.modules():
                if isinstance(module, torch.nn.Linear):
                    self.handles.append(module.register_forward_hook(self._count_linear))
            attention = getattr(block, "self_attn", None)
            if attention is not None:
                self.handles.append(attention.register_forward_pre_hook(self._count_attention, with_kwargs=True))
        self.attn_width = model.config.num_attention_heads * getattr(
            model.config, "head_dim", model.config.hidden_size // model.config.num_attention_heads)

    def _count_linear(self, module, args, out):
        self.linear += 2.0 * args[0].numel() * module.out_features  # tokens x in x out

    def _count_attention(self, module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        batch, length = hidden.shape[:2]
        self.attention += 2.0 * batch * length * length * self.attn_width  # causal QK^T and AV

    def remove(self):
        for handle in self.handles:
            handle.remove()


def gemm_rate(m: int, k: int, n: int, dtype, device: str, seconds: float = 1.0) -> float:
    """FLOP/s of [m, k] @ [k, n] in dtype on device, best of repeated runs for about `seconds`."""
    a = torch.randn(m, k, device=device).to(dtype)
    b = torch.randn(k, n, device=device).to(dtype)
    best, spent = float("inf"), 0.0
    while spent < seconds:
        sync(device)
        t = time.perf_counter()
        a @ b
        sync(device)
        elapsed = time.perf_counter() - t
        best, spent = min(best, elapsed), spent + elapsed
    return 2.0 * m * k * n / best


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def hessian_flops(arch, model, tokens: int) -> float:
    from edgeq.io.models import get_module
    block = get_module(model, arch.blocks)[0]
    per_block = sum(2.0 * tokens * get_module(block, group[0]).in_features ** 2 for group in arch.input_groups)
    return per_block * model.config.num_hidden_layers


def run(args) -> dict:
    from edgeq.calib.pipeline import Recipe, quantize_model
    from edgeq.config import QuantConfig
    from edgeq.io.models import arch_of
    model, config = random_model(args.config, args.layers)
    arch = arch_of(config)
    windows = torch.randint(0, config.vocab_size, (args.samples, args.seq_len), generator=torch.Generator().manual_seed(0))
    quant = QuantConfig(method=args.method, bits=args.bits, group_size=args.group_size, samples=args.samples,
                        seq_len=args.seq_len, batch_size=args.batch_size, device=args.device,
                        calib_dtype=args.calib_dtype)
    quant.validate()
    recipe = Recipe(quant, {})
    dtype = recipe.calib_dtype
    counter = FlopCounter(model, arch)
    profiler = cProfile.Profile() if args.profile else None
    t = time.perf_counter()
    if profiler:
        profiler.enable()
    _, timings = quantize_model(model, arch, recipe, windows, device=args.device, progress=False)
    if profiler:
        profiler.disable()
    wall = time.perf_counter() - t
    counter.remove()
    rows = args.batch_size * args.seq_len
    d, i = config.hidden_size, config.intermediate_size
    rates = {str(dt).removeprefix("torch."): {"forward": gemm_rate(rows, d, i, dt, args.device),
                                               "hessian": gemm_rate(d, rows, d, dt, args.device)}
             for dt in dict.fromkeys([torch.float32, dtype])}
    used = rates[str(dtype).removeprefix("torch.")]
    fp32 = rates["float32"]
    forward_flops = counter.linear + counter.attention
    h_flops = hessian_flops(arch, model, args.samples * args.seq_len)
    record = {
        "config": args.config.name, "layers": config.num_hidden_layers, "method": args.method, "bits": args.bits, "group_size": args.group_size,
        "samples": args.samples, "seq_len": args.seq_len, "batch_size": args.batch_size, "device": args.device,
        "calib_dtype": str(dtype).removeprefix("torch."), "threads": torch.get_num_threads(),
        "seconds": {"wall": round(wall, 2), "forward": round(timings.forward, 2),
                    "hessian": round(timings.hessian, 2), "solver": round(timings.solver, 2),
                    "block_training": round(timings.block_training, 2)},
        "tflop": {"forward": round(forward_flops / 1e12, 3), "hessian": round(h_flops / 1e12, 3)},
        "gflops_measured": {name: {k: round(v / 1e9, 1) for k, v in r.items()} for name, r in rates.items()},
        "floor_seconds": {"forward": round(forward_flops / used["forward"], 2),
                          "hessian": round(h_flops / used["hessian"], 2),
                          "forward_fp32": round(forward_flops / fp32["forward"], 2),
                          "hessian_fp32": round(h_flops / fp32["hessian"], 2)},
    }
    if args.device == "cuda":
        record["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2 ** 20, 1)
    if profiler:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(15)
        print(out.getvalue())
    return record


def report(record: dict) -> str:
    s, f = record["seconds"], record["floor_seconds"]
    lines = [f"{record['config']} ({record['layers']} blocks) {record['method']} W{record['bits']} g{record['group_size']}, "
             f"{record['samples']} x {record['seq_len']} windows, {record['device']} ({record['threads']} threads), "
             f"calibration products in {record['calib_dtype']}: wall {s['wall']} s",
             f"  {'phase':<10}{'seconds':>9}{'floor':>9}{'x floor':>9}{'fp32 floor':>12}"]
    for phase in ("forward", "hessian"):
        lines.append(f"  {phase:<10}{s[phase]:>9.1f}{f[phase]:>9.1f}{s[phase] / max(f[phase], 1e-9):>9.2f}"
                     f"{f[phase + '_fp32']:>12.1f}")
    lines.append(f"  {'solver':<10}{s['solver']:>9.1f}")
    if s["block_training"]:
        lines.append(f"  {'training':<10}{s['block_training']:>9.1f}")
    lines.append(f"  GEMM GFLOP/s: {json.dumps(record['gflops_measured'])}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=CONFIGS / "smollm2-135m.json")
    parser.add_argument("--layers", type=int, help="build only the first N blocks (default: all)")
    parser.add_argument("--method", default="gptq")
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=128)
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--calib-dtype", default="float32")
    parser.add_argument("--profile", action="store_true", help="print cProfile's top functions by own time")
    parser.add_argument("--results", type=Path, default=RESULTS_DIR / "quantize_speed.jsonl")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)
    record = {**stamp(), **run(args)}
    print(report(record))
    if not args.no_save:
        append_result(args.results, record)


if __name__ == "__main__":
    main()

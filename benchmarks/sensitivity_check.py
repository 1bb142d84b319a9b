"""Which sensitivity estimate predicts what quantizing a layer really costs? For a set of linears of the
bundled SmolLM2-135M, put that one linear at its 2-bit weight from a uniform checkpoint (all others fp32),
measure the held-out NLL increase, and rank-correlate it with each estimator's figure for that width.

    edgeq quantize --method gptq --budget 3.0 --out runs/mixed/gptq-3.0
    edgeq quantize --method gptq --bits 2 --group-size 64 --out runs/mixed/gptq-w2-g64
    python benchmarks/sensitivity_check.py --estimates runs/mixed/gptq-3.0 --reference runs/mixed/gptq-w2-g64

--estimates: a mixed checkpoint (its quantization.json holds both estimators' figures per layer and width);
--reference: a uniform checkpoint whose width is one of the candidates. ~1 s per window and layer here.
"""
import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch

from edgeq.io import checkpoint, models
from edgeq.evaluation import heldout
from edgeq.calib import data
from edgeq.evaluation.nll import window_nll
from edgeq.planning.mixed import label
from edgeq.quant.grid import QuantSpec


def mean_nll(model, arch, windows) -> float:
    total, count = 0.0, 0
    for w in range(windows.shape[0]):
        s, c = window_nll(model, arch, windows[w:w + 1])
        total, count = total + s, count + c
    return total / count


def spearman(a, b) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--estimates", required=True)
    parser.add_argument("--reference", required=True)
    parser.add_argument("--blocks", nargs="*", type=int, default=[0, 5, 10, 15, 20, 25, 29])
    parser.add_argument("--max-windows", type=int, default=8)
    parser.add_argument("--text", default="builtin:persuasion", help="a file or builtin:NAME")
    args = parser.parse_args()
    record = json.loads((Path(args.estimates) / "quantization.json").read_text())["sensitivity"]
    meta = checkpoint.read_meta(args.reference)
    _, qweights, _ = checkpoint.load_checkpoint(args.reference)
    some = next(iter(meta["layers"].values()))
    width = label(QuantSpec(some["bits"], some["group_size"]))
    column = record["candidates"].index(width)

    source = models.bundled_source()
    model, config = models.load_model(source)
    arch = models.arch_of(config)
    body, _ = heldout.read_text(args.text)
    windows = data.eval_windows(data.tokenize(models.load_tokenizer(source), body), 512, args.max_windows)
    base = mean_nll(model, arch, windows)
    names = [f"{arch.blocks}.{b}.{n}" for b in args.blocks for n in arch.linears]
    measured = []
    for name in names:
        linear = models.get_module(model, name)
        keep = linear.weight.data
        linear.weight.data = qweights[name].dequantize()
        measured.append(mean_nll(model, arch, windows) - base)
        linear.weight.data = keep
        print(f"{name:40s} dNLL {measured[-1]:+.5f}", flush=True)
    print(f"\n{len(names)} linears at {width}, one at a time; held-out {args.max_windows} x 512 tokens; "
          f"fp32 NLL {base:.4f} (perplexity {math.exp(base):.2f})")
    for est, table in record["estimates"].items():
        predicted = [table[n][column] for n in names]
        top = set(np.argsort(measured)[-10:]) & set(np.argsort(predicted)[-10:])
        print(f"{est:8s} Spearman {spearman(measured, predicted):+.3f}; of the 10 costliest layers measured, "
              f"{len(top)} are in its top 10; sum over these layers {sum(predicted):.4g} (measured sum "
              f"{sum(measured):.4f} nats)")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()

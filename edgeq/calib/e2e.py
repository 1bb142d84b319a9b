"""End-to-end scale training (EfficientQAT's E2E-QP, Chen et al. 2024, arXiv 2407.11062), `--e2e-epochs N`.

After the block-by-block calibration every code is frozen and the scales of every quantized linear are
trained together, on the calibration windows, so that the quantized model's next-token distribution matches
the float model's: the loss is KL(float || quantized) of the two softmaxes, the mean over tokens.

Why on top of block training: --block-epochs and the learned methods fit each block's output on its own;
their errors add up along the residual stream, and what counts is what the head makes of the last state.
Trained on the model's output, an early block's scales can correct what only shows later. The float model's
distribution is the target, not the calibration text's next tokens, which would teach the model that text.
Scales train as s0 exp(r), as blockwise.py trains them (one learning rate for scales orders of magnitude
apart); zero points stay on their integer grid. A tied table whose lookup shares the head's codes is one
tensor in the model, so the lookup and the head train the same scales, as the export shares them.
"""
from __future__ import annotations

import dataclasses
import math

import torch
from torch.func import functional_call

from ..quant.qweight import QuantizedWeight
from ..util.progress import progress_bar
from .blockwise import centred_codes, scaled_weight
from .reconstruct import frozen


def train_scales(student, teacher, qweights: dict[str, QuantizedWeight], windows: torch.Tensor, epochs: int,
                 lr: float, batch_size: int, seed: int = 0, progress: bool = True) -> tuple[dict, dict]:
    """Return ({linear: QuantizedWeight with trained scales}, a record: the mean KL of each epoch, the first
    step's KL). student: the quantized model (its linears' weights are replaced by codes x trained scales in
    every step); teacher: the float model; windows [S, L] token ids, shuffled each epoch (seeded)."""
    codes = {name: centred_codes(qw, qw.bits) for name, qw in qweights.items()}
    base = {name: qw.scale.float() for name, qw in qweights.items()}
    log_ratio = {name: torch.zeros_like(s, requires_grad=True) for name, s in base.items()}
    optimizer = torch.optim.Adam(log_ratio.values(), lr=lr)
    order = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(windows.shape[0] / batch_size)
    bar = progress_bar(total=epochs * steps_per_epoch, desc="e2e scales", unit="step", enabled=progress)
    record = {"epochs": epochs, "lr": lr, "windows": windows.shape[0], "windows_per_step": batch_size,
              "kl_per_epoch": []}
    with frozen(student):
        for _ in range(epochs):
            total = 0.0
            for rows in torch.randperm(windows.shape[0], generator=order).split(batch_size):
                weights = {f"{name}.weight": scaled_weight(codes[name], base[name] * log_ratio[name].exp(),
                                                           qweights[name]) for name in qweights}
                loss = output_divergence(student, teacher, weights, windows[rows])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                kl = float(loss.detach())
                total += kl * len(rows)
                record.setdefault("kl_first_step", kl)
                bar.update()
                bar.set_postfix_str(f"kl {kl:.4g}")
            record["kl_per_epoch"].append(total / windows.shape[0])
    bar.close()
    trained = {name: dataclasses.replace(qw, scale=(base[name] * log_ratio[name].detach().exp()).to(qw.scale))
               for name, qw in qweights.items()}
    return trained, record


def output_divergence(student, teacher, weights: dict[str, torch.Tensor], ids: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) of the next-token distributions, the mean over every position of `ids`, the
    student run with `weights` in place of its own."""
    with torch.no_grad():
        target = teacher(input_ids=ids, use_cache=False).logits.log_softmax(-1)
    logits = functional_call(student, weights, (), {"input_ids": ids, "use_cache": False}).logits
    log_q = logits.log_softmax(-1)
    return torch.nn.functional.kl_div(log_q.flatten(0, -2), target.flatten(0, -2), log_target=True,
                                      reduction="batchmean")

"""Block reconstruction: learn how every linear of one block rounds, so that the quantized block on the
quantized model's inputs reproduces the float block's outputs on the float model's inputs (the target
FlexRound and AutoRound train for). The methods differ only in their parameterisation (a `Rounding`:
parameters(), weight() differentiable, project() after a step, result() -> QuantizedWeight) and in their
optimiser: Adam with a cosine decay (FlexRound, LRQ) or signed gradient descent with a linear decay
(SignRound). A rounding with a `widths` attribute (nested codes, matround) is trained on the block error
summed over those widths' slices, weight(bits) giving each.

Which parameters are kept: AutoRound keeps the step whose batch loss was lowest. With our small batches
(2 windows of 128 tokens) a batch's loss says more about the batch than about the parameters: on SmolLM2
LRQ W3 g128 every block from 13 on kept the same early step (7-30 of 150, the steps of the easiest
batches), throwing most of the training away. So three candidates are scored on the whole calibration
set, the same loss the pipeline reports as `after`: the start, the step of the lowest batch loss and the
last step; the lowest is kept, so a block never ends worse than it started.
"""
from __future__ import annotations

import contextlib
import time

import torch
from torch.func import functional_call

from ..solvers.method import BLOCK_LOSSES, Schedule  # noqa: F401  (Schedule: the trainer's input)


OPTIMIZERS = ("adam", "sign")


def token_errors(out: torch.Tensor, target: torch.Tensor, loss: str = "mse") -> torch.Tensor:
    """Each token's error [..., L] of block outputs [..., L, D] against their targets (see BLOCK_LOSSES);
    their mean is the block loss."""
    squared = (out - target).square()
    if loss == "mse":
        return squared.mean(dim=-1)
    if loss == "relative":
        return squared.sum(dim=-1) / target.square().sum(dim=-1).clamp(min=torch.finfo(target.dtype).tiny)
    raise ValueError(f"block loss must be one of {BLOCK_LOSSES}, got {loss!r}")


@contextlib.contextmanager
def frozen(block):
    """The block's own parameters take no gradient while its quantization parameters train."""
    trainable = [p for p in block.parameters() if p.requires_grad]
    for p in trainable:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in trainable:
            p.requires_grad_(True)


def forward_with(block, weights: dict[str, torch.Tensor], x: torch.Tensor, kwargs: dict) -> torch.Tensor:
    """The block's output hidden states with `weights` ({"<linear>.weight": tensor}) in place of its own."""
    out = functional_call(block, weights, (x,), kwargs)
    return out[0] if isinstance(out, (tuple, list)) else out


def width_weighted_loss(block, weights_of, widths: list[tuple[int | None, float]], x: torch.Tensor,
                        target: torch.Tensor, kwargs: dict, loss: str = "mse") -> torch.Tensor:
    """sum_r w_r / sum(w) * error(block with weights_of(bits_r) on x, target): MatQuant's loss over the widths
    its codes serve, one forward each; widths [(None, 1.0)] is the plain block output error."""
    total = sum(weight for _, weight in widths)
    value = 0.0
    for bits, weight in widths:
        out = forward_with(block, weights_of(bits), x, kwargs)
        value = value + weight / total * token_errors(out, target, loss).mean()
    return value


@torch.no_grad()
def calibration_loss(block, weights_of, widths, batches, targets: torch.Tensor, loss: str = "mse") -> float:
    """The width-weighted block output error over every calibration window (batches weighted by their rows).
    The weights are built once, not per batch: a rounding's weight() costs as much as a batch's forward."""
    fixed = {bits: weights_of(bits) for bits, _ in widths}
    total, rows = 0.0, 0
    for b, _ in batches:
        x, kwargs = batches.inputs(b)
        n = x.shape[0]  # the last batch may be short
        total += n * float(width_weighted_loss(block, fixed.get, widths, x, batches.take(b, targets), kwargs, loss))
        rows += n
    return total / rows


def make_optimizer(params: list[torch.Tensor], schedule: Schedule):
    if schedule.optimizer == "adam":
        opt = torch.optim.Adam(params, lr=schedule.lr)
        return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=schedule.steps, eta_min=0.0)
    if schedule.optimizer == "sign":  # signSGD: plain SGD on the gradient's sign, lr decaying linearly to 0
        opt = torch.optim.SGD(params, lr=schedule.lr)
        return opt, torch.optim.lr_scheduler.LinearLR(opt, 1.0, 0.0, total_iters=schedule.steps)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {schedule.optimizer!r}")


def reconstruct_block(block, roundings: dict, batches, targets: torch.Tensor, schedule: Schedule,
                      report=None, loss: str = "mse") -> dict:
    """Train `roundings` ({local linear name: Rounding}) for `schedule.steps` steps, each on one batch of
    `batches` (calib.batches.Batches: the quantized model's states) against the same rows of `targets`,
    batches drawn in shuffled epochs; leave each at the candidate (start, lowest batch loss, last step) with
    the lowest loss on all the batches. Returns the loss record: first step's loss, best batch loss and its
    step, each candidate's whole-set loss, the one kept, seconds. report(step, loss, best) is called every step."""
    params = [p for r in roundings.values() for p in r.parameters()]
    widths = getattr(next(iter(roundings.values())), "widths", None) or [(None, 1.0)]  # nested codes: several

    def weights_of(bits):
        return {f"{name}.weight": r.weight() if bits is None else r.weight(bits) for name, r in roundings.items()}
    optimizer, decay = make_optimizer(params, schedule)
    order = _shuffled_batches(batches.count, schedule.steps, schedule.seed)
    best, best_step, first, best_params = float("inf"), -1, None, None
    start_params = [p.detach().clone() for p in params]
    t = time.perf_counter()
    with frozen(block):
        for step, b in enumerate(order):
            x, kwargs = batches.inputs(b)
            error = width_weighted_loss(block, weights_of, widths, x, batches.take(b, targets), kwargs, loss)
            value = float(error.detach())
            first = value if first is None else first
            if value < best:  # the loss of the parameters before this step's update
                best, best_step = value, step
                best_params = [p.detach().clone() for p in params]
            optimizer.zero_grad(set_to_none=True)
            error.backward()
            if schedule.optimizer == "sign":
                for p in params:
                    p.grad.sign_()
            optimizer.step()
            decay.step()
            for r in roundings.values():
                r.project()
            if report is not None:
                report(step, value, best)
        candidates = {"start": start_params, "last": [p.detach().clone() for p in params]}
        if best_step > 0:  # at step 0 the lowest batch loss is the start's
            candidates["best_batch"] = best_params
        whole = keep_lowest(params, candidates,
                            lambda: calibration_loss(block, weights_of, widths, batches, targets, loss))
    return {"first": first, "best": best, "best_step": best_step, "steps": schedule.steps,
            "whole_set": {name: float(f"{v:.6g}") for name, v in whole.items()}, "kept": min(whole, key=whole.get),
            "seconds": round(time.perf_counter() - t, 2)}


@torch.no_grad()
def keep_lowest(params: list[torch.Tensor], candidates: dict[str, list[torch.Tensor]], score) -> dict[str, float]:
    """Put each candidate's values into `params` and score() it; leave `params` at the lowest. Returns the
    scores by candidate."""
    scores = {}
    for name, values in candidates.items():
        for p, v in zip(params, values):
            p.copy_(v)
        scores[name] = score()
    for p, v in zip(params, candidates[min(scores, key=scores.get)]):
        p.copy_(v)
    return scores


def _shuffled_batches(batches: int, steps: int, seed: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    order = []
    while len(order) < steps:
        order += torch.randperm(batches, generator=generator).tolist()
    return order[:steps]

"""Block-by-block calibration: capture block 0's inputs, then for each block accumulate the Hessians of
its linears (hooks), solve every linear, and re-run the block with its quantized weights so the next
block calibrates on quantized inputs. Only one block's activations and Hessians are alive at a time; the
hidden states are overwritten in place, batch by batch.

After each finished block the state (next block's inputs, the block's quantized weights) is written to a
resume folder, so an interrupted run picks up where it stopped and ends with the same result.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .. import grid
from ..checkpoint import (load_tensor_file, load_tensors, qweights_from_tensors, qweights_layout, qweights_to_tensors,
                          save_tensor_file, save_tensors)
from ..models import Arch, get_module, is_streamed, load_block, release_weights
from ..memory import release_freed_memory
from ..progress import progress_bar
from ..qweight import QuantizedWeight
from ..solvers import get_method, weighted_error
from .blockwise import refine_scales
from .capture import block_output, capture_block_inputs, hessian_hooks, to_device
from .reconstruct import reconstruct_block


@dataclass(frozen=True)
class Recipe:
    """Everything that determines the result of a run (and so whether a resume folder belongs to it)."""
    method: str
    spec: grid.QuantSpec
    solver_opts: dict = field(default_factory=dict)
    batch_size: int = 2
    block_epochs: int = 0
    block_lr: float = 5e-3
    layer_specs: dict = field(default_factory=dict)  # linear -> QuantSpec where it differs (mixed precision)
    propagate: str = "quantized"  # the next block's inputs: this block's outputs with quantized or float weights

    def spec_of(self, linear: str, k: int) -> grid.QuantSpec:
        """The linear's grid for its K input columns (see grid.fit_to_columns)."""
        return grid.fit_to_columns(self.layer_specs.get(linear, self.spec), k)

    def digest(self, model_label: str, calib_digest: str) -> str:
        layers = {name: asdict(spec) for name, spec in self.layer_specs.items()}
        blob = json.dumps([model_label, calib_digest, self.method, asdict(self.spec), self.solver_opts,
                           self.batch_size, self.block_epochs, self.block_lr, layers]
                          + ([self.propagate] if self.propagate != "quantized" else []), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class Timings:
    forward: float = 0.0
    hessian: float = 0.0
    solver: float = 0.0
    block_training: float = 0.0
    layer_errors: dict = field(default_factory=dict)  # linear -> H-weighted error (calibrated methods)
    block_losses: dict = field(default_factory=dict)  # block -> output MSE per training epoch, then after


class ResumeState:
    """A folder holding the inputs of the next block and the finished blocks' quantized weights."""

    def __init__(self, folder: Path | None, run_digest: str):
        self.folder, self.run_digest = folder, run_digest

    def next_block(self) -> int:
        """Where to resume: 0 unless the folder is this run's and holds the next block's inputs (a folder
        from before they were stored as safetensors has hidden.pt, which is not read)."""
        if self.folder is None or not (self.folder / "state.json").exists():
            return 0
        state = json.loads((self.folder / "state.json").read_text())
        if state.get("run") != self.run_digest or not (self.folder / "hidden.safetensors").exists():
            return 0
        return state["next_block"]

    def save(self, next_block: int, hidden: torch.Tensor, qweights: dict[str, QuantizedWeight],
             fp_hidden: torch.Tensor | None = None) -> None:
        """fp_hidden: the float model's states, which learned-rounding methods train towards."""
        if self.folder is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        block = next_block - 1
        save_tensors(self.folder / f"block_{block:04d}.safetensors", qweights_to_tensors(qweights),
                     {"layout": json.dumps(qweights_layout(qweights))})
        for name, states in (("hidden", hidden), ("fp_hidden", fp_hidden)):
            if states is not None:
                save_tensor_file(self.folder / f"{name}.safetensors", states)
        (self.folder / "state.tmp").write_text(json.dumps({"run": self.run_digest, "next_block": next_block}))
        os.replace(self.folder / "state.tmp", self.folder / "state.json")  # the commit point of the block

    def load_qweights(self, blocks: int) -> dict[str, QuantizedWeight]:
        from safetensors import safe_open
        qweights = {}
        for b in range(blocks):
            path = self.folder / f"block_{b:04d}.safetensors"
            with safe_open(str(path), "pt") as f:
                layout = json.loads(f.metadata()["layout"])
            qweights.update(qweights_from_tensors(load_tensors(path), layout))
        return qweights

    def load_hidden(self, name: str = "hidden") -> torch.Tensor | None:
        path = self.folder / f"{name}.safetensors"
        return load_tensor_file(path) if path.exists() else None

    def discard(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


def quantize_model(model, arch: Arch, recipe: Recipe, windows: torch.Tensor | None, *, device="cpu",
                   resume: ResumeState | None = None, progress: bool = True, on_block_done=None):
    """Quantize every linear of every block in place; return ({qualified name: QuantizedWeight}, Timings).

    windows: calibration token windows [S, L]; None for methods that need no calibration (RTN).
    on_block_done(i): called after block i is committed (tests use it to simulate an interruption).
    With a resume folder, finished blocks' codes live only there (not in memory) until the end.
    """
    method = get_method(recipe.method)
    learned, calibrated = method.learned, method.calibrated
    solver = None if learned else method.solver()
    blocks = get_module(model, arch.blocks)
    resume = resume or ResumeState(None, "")
    start = resume.next_block()
    hidden = resume.load_hidden() if start else None
    for i in range(start):
        load_block(model, arch, i)
    _apply(model, resume.load_qweights(start) if start else {})
    in_memory = {}  # codes of finished blocks, kept here only when there is no resume folder
    timings = Timings()
    captured = None
    float_inputs = recipe.propagate == "float"  # each block's float outputs are written over its inputs
    if calibrated:
        t = time.perf_counter()
        captured, kwargs_per_batch = capture_block_inputs(model, arch, windows, recipe.batch_size)
        hidden = captured if hidden is None else hidden
        timings.forward += time.perf_counter() - t
    fp_hidden = None  # learned rounding: the float model's own states at the current block's input
    if learned:
        fp_hidden = resume.load_hidden("fp_hidden") if start else hidden.clone()

    bar = progress_bar(range(start, len(blocks)), desc="quantize", unit="block", enabled=progress,
               initial=start, total=len(blocks))
    for i in bar:
        load_block(model, arch, i)
        block = blocks[i].to(device)
        prefix = f"{arch.blocks}.{i}."
        if learned:
            block_q, timings.block_losses[str(i)] = _learn_block(block, arch, prefix, hidden, fp_hidden,
                                                                 kwargs_per_batch, recipe, device, timings, bar)
            t = time.perf_counter()
            timings.block_losses[str(i)]["after"] = run_block_in_place(block, hidden, kwargs_per_batch,
                                                                       recipe.batch_size, device, fp_hidden)
            timings.forward += time.perf_counter() - t
            _finish_block(model, blocks, i, block, block_q, hidden, fp_hidden, resume, in_memory)
            if on_block_done is not None:
                on_block_done(i)
            continue
        targets = torch.empty_like(hidden) if calibrated and recipe.block_epochs else None
        if calibrated:
            hessians = collect_hessians(block, arch, hidden, kwargs_per_batch, recipe.batch_size, device, timings,
                                         hidden if float_inputs else targets)
        block_q = {}
        for group in arch.input_groups:
            H = hessians[group[0]].hessian() if calibrated else None
            for name in group:
                bar.set_postfix_str(f"{name}")
                linear = get_module(block, name)
                t = time.perf_counter()
                qw = solver(linear.weight.data, H, recipe.spec_of(prefix + name, linear.weight.shape[1]),
                            **recipe.solver_opts)
                W_hat = qw.dequantize().to(device)
                timings.solver += time.perf_counter() - t
                if calibrated:
                    timings.layer_errors[prefix + name] = weighted_error(linear.weight.data, W_hat, H)
                linear.weight.data = W_hat
                block_q[prefix + name] = qw
        if targets is not None:
            block_q, timings.block_losses[str(i)] = _train_block_scales(
                block, block_q, prefix, hidden, targets, kwargs_per_batch, recipe, device, timings)
        if calibrated and not float_inputs and (i < len(blocks) - 1 or targets is not None):  # last: feeds nothing
            t = time.perf_counter()
            loss = run_block_in_place(block, hidden, kwargs_per_batch, recipe.batch_size, device, targets)
            if targets is not None:
                timings.block_losses[str(i)].append(loss)
            timings.forward += time.perf_counter() - t
        del targets
        _finish_block(model, blocks, i, block, block_q, hidden, None, resume, in_memory)
        if on_block_done is not None:
            on_block_done(i)
    bar.close()
    if resume.folder is None:
        return in_memory, timings
    del hidden, captured, fp_hidden
    release_freed_memory()  # the hidden states go before the codes come back
    return resume.load_qweights(len(blocks)), timings


def _finish_block(model, blocks, i, block, block_q, hidden, fp_hidden, resume, in_memory) -> None:
    """Block i is done: back to the CPU, its codes committed (to the resume folder or kept in memory)."""
    blocks[i] = block.to("cpu")
    if resume.folder is None:
        in_memory.update(block_q)
    resume.save(i + 1, hidden, block_q, fp_hidden)
    if is_streamed(model):
        release_weights(model, block_q)
    release_freed_memory()


def _learn_block(block, arch, prefix, hidden, fp_hidden, kwargs_per_batch, recipe, device, timings, bar):
    """Learned rounding of one block: fp_hidden becomes the float block's outputs (the targets, and the
    next block's float inputs); every linear's rounding is trained on the quantized inputs `hidden` to
    reproduce them; the block gets the trained weights. Returns (its QuantizedWeights, the loss record)."""
    t = time.perf_counter()
    run_block_in_place(block, fp_hidden, kwargs_per_batch, recipe.batch_size, device)
    timings.forward += time.perf_counter() - t
    t = time.perf_counter()
    method = get_method(recipe.method)
    schedule = method.schedule(recipe.solver_opts)
    weights = {name: get_module(block, name).weight.data for group in arch.input_groups for name in group}
    roundings = {name: method.rounding(w, recipe.spec_of(prefix + name, w.shape[1]), **recipe.solver_opts)
                 for name, w in weights.items()}

    def report(step, loss, best):
        if step % 10 == 0 or step == schedule.steps - 1:
            bar.set_postfix_str(f"step {step + 1}/{schedule.steps} loss {loss:.3g} best {best:.3g} "
                                f"{time.perf_counter() - t:.0f}s")

    record = reconstruct_block(block, roundings, hidden, fp_hidden, kwargs_per_batch, recipe.batch_size,
                               schedule, device, report)
    block_q = {}
    for name, rounding in roundings.items():
        qw = rounding.result()
        get_module(block, name).weight.data = qw.dequantize().to(device)
        block_q[prefix + name] = qw
    timings.block_training += time.perf_counter() - t
    return block_q, record


def _apply(model, qweights: dict[str, QuantizedWeight]) -> None:
    """Put dequantized weights into the model (a streamed model keeps only the quantized form)."""
    for name, qw in qweights.items():
        get_module(model, name).weight.data = qw.dequantize()
    if is_streamed(model):
        release_weights(model, qweights)


def _batches(hidden: torch.Tensor, batch_size: int):
    for b, start in enumerate(range(0, hidden.shape[0], batch_size)):
        yield b, slice(start, start + batch_size)


@torch.no_grad()
def collect_hessians(block, arch, hidden, kwargs_per_batch, batch_size, device, timings, targets=None):
    """Hessians of the block's linears on `hidden`; the float block's outputs go to `targets` if given
    (targets may be `hidden` itself: each batch is read before its rows are overwritten)."""
    accumulators, remove = hessian_hooks(block, arch, device)
    t = time.perf_counter()
    try:
        for b, rows in _batches(hidden, batch_size):
            out = block_output(block, hidden[rows].to(device), to_device(kwargs_per_batch[b], device))
            if targets is not None:
                targets[rows] = out.to(targets.device)
    finally:
        remove()
    hessian_time = sum(acc.seconds for acc in accumulators.values())
    timings.hessian += hessian_time
    timings.forward += time.perf_counter() - t - hessian_time
    return accumulators


@torch.no_grad()
def run_block_in_place(block, hidden, kwargs_per_batch, batch_size, device, targets=None):
    """hidden <- block(hidden), batch by batch, so the next block's inputs need no second buffer.
    With targets, returns the mean squared error of the outputs against them."""
    squared = 0.0
    for b, rows in _batches(hidden, batch_size):
        out = block_output(block, hidden[rows].to(device), to_device(kwargs_per_batch[b], device))
        if targets is not None:
            squared += float(torch.nn.functional.mse_loss(out, targets[rows].to(device), reduction="sum"))
        hidden[rows] = out.to(hidden.device)
    return squared / hidden.numel()


def _trained_widths(recipe: Recipe) -> list[tuple[int, float]] | None:
    """A nested method's scales are trained for every slice it serves, weighted as its solver weighs them."""
    method = get_method(recipe.method)
    if not method.nested:
        return None
    from ..nesting import MultiWidthLoss
    options = method.resolve(recipe.solver_opts)
    return MultiWidthLoss.of(options.widths, options.weights).weighted_widths


def _train_block_scales(block, block_q, prefix, hidden, targets, kwargs_per_batch, recipe, device, timings):
    """Stage 2: scales trained against the float block's outputs; the block gets the trained weights.
    Returns (the block's QuantizedWeights, the mean output error of each epoch)."""
    t = time.perf_counter()
    local = {name[len(prefix):]: qw for name, qw in block_q.items()}
    trained, losses = refine_scales(block, local, hidden, targets, kwargs_per_batch, recipe.batch_size,
                                    recipe.block_epochs, recipe.block_lr, device, _trained_widths(recipe))
    for name, qw in trained.items():
        get_module(block, name).weight.data = qw.dequantize().to(device)
    timings.block_training += time.perf_counter() - t
    return {prefix + name: qw for name, qw in trained.items()}, losses

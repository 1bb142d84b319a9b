"""Block-by-block calibration, knowing no method: capture block 0's inputs, then for each block let the
method's kind quantize it (`BLOCK_QUANTIZERS`), commit it, and go on with the next block's inputs. Only one
block's activations and Hessians are alive at a time; the hidden states are overwritten in place, batch by batch.

- layer methods (`quantize_layerwise`): accumulate the Hessians of the block's linears (hooks), solve every
  linear, optionally train the block's scales, and re-run the block with its quantized weights so the next
  block calibrates on quantized inputs;
- learned methods (`quantize_learned`): train every linear's rounding on the block's output against the
  float model's, which are carried alongside.

After each finished block the state (next block's inputs, the block's quantized weights) is written to a
resume folder (resume.py), so an interrupted run picks up where it stopped and ends with the same result.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

from ..quant import grid
from ..io.checkpoint import PackedCodes
from ..config import FORWARD_CALL_BYTES, QuantConfig
from ..util.memory import release_freed_memory
from ..io.models import Arch, get_module, is_streamed, layer_kinds, load_block, release_weights
from ..util.progress import progress_bar
from ..quant.qweight import QuantizedWeight
from ..io.safetensors_scan import release_mapped_tables
from ..solvers import Method, get_method, weighted_error
from ..transforms import block_transforms
from .batches import Batches
from .blockwise import refine_scales
from .capture import (HessianAccumulator, StopForward, block_output, capture_block_inputs, hessian_accumulators,
                      hessian_hooks, stop_at)
from .precision import compute_in, resolve_calib_dtype
from .reconstruct import reconstruct_block
from .resume import ResumeState
from .upstream import Upstream, input_catcher


@dataclass
class Recipe:
    """Everything that determines the result of a run (and so whether a resume folder belongs to it): the
    run's QuantConfig, and the grid of every linear whose grid differs (mixed precision, --layer-grid)."""
    config: QuantConfig
    layer_specs: dict = field(default_factory=dict)  # linear -> QuantSpec where it differs

    @classmethod
    def of(cls, method: str, spec: grid.QuantSpec, solver_opts: dict | None = None, layer_specs=None,
           **config_fields) -> "Recipe":
        """A recipe for a method on a grid, the other QuantConfig fields by name (tests, benchmarks)."""
        config = QuantConfig(method=method, bits=spec.bits, group_size=spec.group_size, sym=spec.sym,
                             solver_opts=dict(solver_opts or {}), **config_fields)
        return cls(config, dict(layer_specs or {}))

    method = property(lambda self: self.config.method)
    spec = property(lambda self: self.config.spec)
    solver_opts = property(lambda self: self.config.solver_opts)
    batch_size = property(lambda self: self.config.batch_size)
    block_epochs = property(lambda self: self.config.block_epochs)
    block_lr = property(lambda self: self.config.block_lr)
    propagate = property(lambda self: self.config.propagate)
    head_bits = property(lambda self: self.config.lm_head)  # the output head's bits (None: it stays float)
    first_token_weight = property(lambda self: self.config.first_token_weight)
    correct_upstream = property(lambda self: self.config.correct_upstream)
    true_sequential = property(lambda self: self.config.true_sequential)
    block_loss = property(lambda self: self.config.trained_block_loss)

    @property
    def calib_dtype(self) -> torch.dtype:
        """The calibration forward's products (precision.py), 'auto' resolved for this device."""
        config = self.config
        widths = [config.bits, *(bits for _, bits, _ in config.layer_grids),
                  *(config.mixed.widths if config.mixed else ())]
        return resolve_calib_dtype(config.calib_dtype, config.device, config.trains_blocks, min(widths))

    @property
    def calibrated(self) -> bool:
        """Whether the run reads calibration inputs: the method's, or a block transform's (awq under rtn)."""
        return get_method(self.method).calibrated or bool(block_transforms(self.config.transforms))

    @property
    def scales_inputs(self) -> bool:
        return "awq" in self.config.transforms

    def forward_batch(self, model_config, seq_len: int) -> int:
        """Windows per block call: --batch-size where blocks are trained (the training batch), else as many as
        config.FORWARD_CALL_BYTES allows for the block's widest float32 activation per token (the MLP's
        intermediate, or the attention scores of every head over the window), never fewer than --batch-size."""
        if self.config.trains_blocks:
            return self.batch_size
        width = max(model_config.hidden_size, getattr(model_config, "intermediate_size", 0) or 0,
                    model_config.num_attention_heads * seq_len)
        return max(self.batch_size, FORWARD_CALL_BYTES // (4 * width * seq_len))

    def spec_of(self, linear: str, k: int) -> grid.QuantSpec:
        """The linear's grid for its K input columns (see grid.fit_to_columns)."""
        return grid.fit_to_columns(self.layer_specs.get(linear, self.spec), k)

    def digest(self, model_label: str, calib_digest: str) -> str:
        layers = {name: asdict(spec) for name, spec in self.layer_specs.items()}
        blob = json.dumps([model_label, calib_digest, self.method, asdict(self.spec), self.solver_opts,
                           self.batch_size, self.block_epochs, self.block_lr, layers]
                          + ([self.propagate] if self.propagate != "quantized" else [])
                          + ([f"head {self.head_bits}"] if self.head_bits else [])
                          + ([f"first {self.first_token_weight}"] if self.first_token_weight != 1.0 else [])
                          + ([f"upstream {self.correct_upstream}"] if self.correct_upstream else [])
                          + (["true-sequential"] if self.true_sequential else [])
                          + ([f"loss {self.block_loss}"] if self.block_loss != "mse" else [])
                          + ([f"calib {self.calib_dtype}"] if self.calib_dtype != torch.float32 else [])
                          + ([f"transforms {list(self.config.transforms)} seed {self.config.seed}"]
                             if self.config.transforms else []),
                          sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class Timings:
    forward: float = 0.0
    hessian: float = 0.0
    solver: float = 0.0
    block_training: float = 0.0
    layer_errors: dict = field(default_factory=dict)  # linear -> H-weighted error (calibrated methods)
    block_losses: dict = field(default_factory=dict)  # block -> output MSE per training epoch, then after
    awq: dict = field(default_factory=dict)  # block -> each input group's searched alpha (transforms/awq.py)
    resumed_from_block: int = 0  # > 0: the blocks before it ran in an earlier, interrupted process


@dataclass
class BlockJob:
    """One block to quantize: everything a block quantizer reads."""
    block: torch.nn.Module
    model_config: object
    index: int
    last: bool                     # the last block feeds no other
    arch: Arch
    recipe: Recipe
    method: Method
    batches: Batches | None        # the block's calibration inputs (None for a method without calibration)
    fp_states: torch.Tensor | None  # learned methods: the float model's states at this block's input
    timings: Timings
    status: Callable[[str], None]  # a short progress note

    @property
    def prefix(self) -> str:
        return f"{self.arch.blocks}.{self.index}."

    def linears(self) -> list[tuple[str, torch.Tensor]]:
        return [(name, get_module(self.block, name).weight.data) for group in self.arch.input_groups
                for name in group]

    def spec_of(self, name: str, W: torch.Tensor) -> grid.QuantSpec:
        return self.recipe.spec_of(self.prefix + name, W.shape[1])


def quantize_model(model, arch: Arch, recipe: Recipe, windows: torch.Tensor | None, *, device="cpu",
                   resume: ResumeState | None = None, progress: bool = True, on_block_done=None):
    """Quantize every linear of every block in place; return (PackedCodes, Timings): every linear's codes as the
    checkpoint stores them, packed (`.unpacked()` gives {qualified name: QuantizedWeight}).

    windows: calibration token windows [S, L]; None for methods that need no calibration (RTN).
    on_block_done(i): called after block i is committed (tests use it to simulate an interruption).
    With a resume folder, finished blocks' codes live only there (not in memory) until the end; without one
    they are packed as each block finishes (half the bytes of one code a byte).
    """
    method = get_method(recipe.method)
    blocks = get_module(model, arch.blocks)
    resume = resume or ResumeState(None, "")
    start = resume.next_block()
    for i in range(start):
        load_block(model, arch, i)
    _apply(model, resume.load_qweights(start) if start else {})
    _set_floats(model, resume.load_floats(start) if start else {})
    timings = Timings(resumed_from_block=start)
    batches, fp_states = None, None
    if recipe.calibrated:
        t = time.perf_counter()
        size = recipe.forward_batch(model.config, windows.shape[1])
        captured, kwargs_per_batch = capture_block_inputs(model, arch, windows, size)
        batches = Batches(resume.load_hidden() if start else captured, kwargs_per_batch, size, device,
                          dtype=recipe.calib_dtype)
        del captured
        release_mapped_tables()  # the embedding's pages: the block loop never reads it
        timings.forward += time.perf_counter() - t
    if method.learned or recipe.correct_upstream:  # the float model's own states at the current block's input:
        # the learned methods' training targets; the upstream correction's float inputs
        fp_states = resume.load_hidden("fp_hidden") if start else batches.hidden.clone()
    in_memory = PackedCodes({}, {})  # codes of finished blocks, kept here only when there is no resume folder
    kinds = layer_kinds(model.config)
    bar = progress_bar(range(start, len(blocks)), desc="quantize", unit="block", enabled=progress,
                       initial=start, total=len(blocks))
    for i in bar:
        load_block(model, arch, i)
        feeds_nothing = i == len(blocks) - 1 and not recipe.head_bits  # a calibrated head reads the last outputs
        block_batches = batches.for_kind(kinds[i]) if batches else None
        job = BlockJob(blocks[i].to(device), model.config, i, feeds_nothing, arch, recipe, method, block_batches, fp_states,
                       timings, bar.set_postfix_str)
        block_q = BLOCK_QUANTIZERS[method.kind](job)
        blocks[i] = job.block.to("cpu")
        if resume.folder is None:
            in_memory.update(PackedCodes.of(block_q))
        resume.save(i + 1, batches.hidden if batches else None, block_q, fp_states,
                    _float_parameters(blocks[i], f"{arch.blocks}.{i}.", block_q))
        if is_streamed(model):
            release_weights(model, block_q)
        release_freed_memory()
        if on_block_done is not None:
            on_block_done(i)
    bar.close()
    head = {arch.lm_head: quantize_head(model, arch, recipe, batches, timings)} if recipe.head_bits else {}
    if resume.folder is None:
        packed = in_memory
    else:
        del batches, fp_states
        release_freed_memory()  # the hidden states go before the codes come back
        packed = resume.load_packed(len(blocks))  # as the checkpoint stores them: never unpacked whole
    packed.update(PackedCodes.of(head))
    return packed, timings


@torch.no_grad()
def quantize_head(model, arch: Arch, recipe: Recipe, batches: Batches | None, timings: Timings) -> QuantizedWeight:
    """The output head at recipe.head_bits, solved on the Hessian of the final norm's outputs (the quantized
    model's last states) by the method's layer solver, or GPTQ for a method that has none of its own
    (learned, nested); a method without calibration rounds it. Written into the model (head.attach_head)."""
    from ..io.head import attach_head, head_spec
    method = get_method(recipe.method)
    own = method.kind == "layer" and not method.nested
    solver, opts = (method.solver(), recipe.solver_opts) if own else (get_method("gptq").solver(), {})
    W = get_module(model, arch.lm_head).weight.data
    H = None
    if batches is not None:
        norm = get_module(model, arch.final_norm)
        # the head, its norm and the states stay on the CPU
        acc = HessianAccumulator(W.shape[1], W.device, recipe.first_token_weight, batches.dtype)
        for _, rows in batches:
            acc.add(norm(batches.hidden[rows].to(W.device)))
        H = acc.hessian()
        timings.hessian += acc.seconds
    t = time.perf_counter()
    qw = solver(W, H, head_spec(W.shape[1], recipe.head_bits), **opts)
    timings.solver += time.perf_counter() - t
    if H is not None:
        timings.layer_errors[arch.lm_head] = weighted_error(W, qw.dequantize(), H)
    attach_head(model, arch, qw)
    return qw


def quantize_layerwise(job: BlockJob) -> dict[str, QuantizedWeight]:
    """Solve every linear of the block on its Hessian (or without one), then propagate: the next block's
    inputs are this block's outputs with its quantized weights (or its float ones with --propagate float).
    The Hessians come from one pass of the float block (GPTQ's default), or with --true-sequential from one pass
    per input group, each on the inputs that the block's groups quantized before it give."""
    recipe, batches, timings = job.recipe, job.batches, job.timings
    float_inputs = recipe.propagate == "float"  # each block's float outputs are written over its inputs
    targets = torch.empty_like(batches.hidden) if batches is not None and recipe.block_epochs else None
    upstream = _upstream(job) if batches is not None and recipe.correct_upstream else None
    passes = [(group,) for group in job.arch.input_groups] if recipe.true_sequential else [job.arch.input_groups]
    block_q = {}
    for k, groups in enumerate(passes):
        hessians = _hessian_pass(job, groups, k == 0, k == len(passes) - 1, targets, upstream) \
            if batches is not None else None
        block_q.update(_solve_groups(job, groups, hessians, upstream))
    if targets is not None:
        block_q, timings.block_losses[str(job.index)] = _train_block_scales(job, block_q, targets)
    if batches is not None and not float_inputs and (not job.last or targets is not None):  # last: feeds nothing
        t = time.perf_counter()
        loss = batches.run(job.block, targets, recipe.block_loss)
        if targets is not None:
            timings.block_losses[str(job.index)].append(loss)
        timings.forward += time.perf_counter() - t
    return block_q


def _hessian_pass(job: BlockJob, groups, first: bool, last: bool, targets, upstream: Upstream | None) -> dict:
    """One pass of the block over the batches, collecting the Hessians of `groups`. The first pass runs the block
    while it is still float: its outputs are the block-training targets (with --propagate float, the next
    block's inputs), and it takes awq's statistics (of every group: the scales are searched and folded at once).
    With more passes to come, the upstream pairs go on on a float copy of the block as it is after awq."""
    recipe = job.recipe
    outputs = (job.batches.hidden if recipe.propagate == "float" else targets) if first else None
    awq_now = recipe.scales_inputs and first
    hessians = collect_hessians(job.block, job.arch, job.batches, job.timings, outputs, recipe.first_token_weight,
                                track_abs=awq_now, upstream=upstream, groups=None if awq_now else groups,
                                advance=last)
    if awq_now:
        _scale_inputs(job, hessians, upstream)
    if upstream is not None and first and not last:
        upstream.keep_float_block(job.block, job.arch)
    return hessians


def _solve_groups(job: BlockJob, groups, hessians: dict | None, upstream: Upstream | None) -> dict:
    """Solve the groups' linears on their Hessians and write the dequantized weights into the block."""
    recipe, timings = job.recipe, job.timings
    solver = job.method.solver()
    block_q = {}
    for group in groups:
        # popped and taken: each accumulator's K x K sum becomes the Hessian (down_proj's are the largest)
        H = hessians.pop(group[0]).take_hessian() if hessians is not None else None
        target = upstream.correction(group[0], H) if upstream is not None else (lambda W: W)
        for name in group:
            job.status(name)
            t = time.perf_counter()
            W = target(get_module(job.block, name).weight.data)  # the weight the solver fits (upstream.py)
            qw = solver(W, H, job.spec_of(name, W), **recipe.solver_opts)
            W_hat = qw.dequantize().to(W.device)
            timings.solver += time.perf_counter() - t
            if H is not None:
                timings.layer_errors[job.prefix + name] = weighted_error(W, W_hat, H)
            get_module(job.block, name).weight.data = W_hat
            block_q[job.prefix + name] = qw
    return block_q


def quantize_learned(job: BlockJob) -> dict[str, QuantizedWeight]:
    """Learned rounding of one block: the float states become the float block's outputs (the targets, and
    the next block's float inputs); every linear's rounding is trained on the quantized inputs to reproduce
    them; the block gets the trained weights and the quantized states move on through it."""
    timings, batches = job.timings, job.batches
    if job.recipe.scales_inputs:  # on the quantized inputs, before the float block's outputs are taken
        _scale_inputs(job, collect_hessians(job.block, job.arch, batches, timings, track_abs=True))
    t = time.perf_counter()
    batches.with_states(job.fp_states).run(job.block)
    timings.forward += time.perf_counter() - t
    t = time.perf_counter()
    schedule = job.method.schedule(job.recipe.solver_opts)
    roundings = {name: job.method.rounding(W, job.spec_of(name, W), **job.recipe.solver_opts)
                 for name, W in job.linears()}

    def report(step, loss, best):
        if step % 10 == 0 or step == schedule.steps - 1:
            job.status(f"step {step + 1}/{schedule.steps} loss {loss:.3g} best {best:.3g} "
                       f"{time.perf_counter() - t:.0f}s")

    record = reconstruct_block(job.block, roundings, batches, job.fp_states, schedule, report, job.recipe.block_loss)
    block_q = {}
    for name, rounding in roundings.items():
        qw = rounding.result()
        get_module(job.block, name).weight.data = qw.dequantize().to(batches.device)
        block_q[job.prefix + name] = qw
    timings.block_training += time.perf_counter() - t
    t = time.perf_counter()
    record["after"] = batches.run(job.block, job.fp_states, job.recipe.block_loss)
    timings.block_losses[str(job.index)] = record
    timings.forward += time.perf_counter() - t
    return block_q


BLOCK_QUANTIZERS = {"layer": quantize_layerwise, "learned": quantize_learned}  # by Method.kind


def _upstream(job: BlockJob) -> Upstream:
    """The block's upstream correction, H damped as the method's solver damps it (GPTQ's default otherwise)."""
    from ..solvers.gptq import GPTQOptions
    damp = getattr(job.method.resolve(job.recipe.solver_opts), "damp", GPTQOptions.damp)
    return Upstream(job.fp_states, job.recipe.correct_upstream, damp, job.recipe.first_token_weight)


def _scale_inputs(job: BlockJob, accumulators: dict, upstream: Upstream | None = None) -> None:
    """awq: search the block's input scales on its Hessians, fold them into its weights, and rescale the
    Hessians to the scaled inputs the solvers now see."""
    from ..transforms import awq
    t = time.perf_counter()
    stats = {name: (acc.hessian(), acc.mean_abs()) for name, acc in accumulators.items()}
    scales, record = awq.scale_block(job.block, job.arch, job.model_config, stats, job.spec_of)
    del stats
    for name, s in scales.items():
        accumulators[name].rescale_inputs(s)
        if upstream is not None:
            upstream.rescale_inputs(name, s)
    job.timings.awq[str(job.index)] = record
    job.timings.solver += time.perf_counter() - t


def _float_parameters(block, prefix: str, block_q: dict) -> dict[str, torch.Tensor]:
    """The block's parameters that stay float (norms, biases), as they are now: a transform may have changed
    them (awq divides norms and biases), so a resumed run takes them from the resume folder."""
    return {prefix + name: p.detach() for name, p in block.named_parameters()
            if not (name.endswith(".weight") and prefix + name[:-len(".weight")] in block_q)}


def _set_floats(model, floats: dict[str, torch.Tensor]) -> None:
    for name, value in floats.items():
        module, attribute = name.rsplit(".", 1)
        getattr(get_module(model, module), attribute).data = value


def _apply(model, qweights: dict[str, QuantizedWeight]) -> None:
    """Put dequantized weights into the model (a streamed model keeps only the quantized form)."""
    for name, qw in qweights.items():
        get_module(model, name).weight.data = qw.dequantize()
    if is_streamed(model):
        release_weights(model, qweights)


@torch.no_grad()
def collect_hessians(block, arch, batches: Batches, timings, targets=None, first_token_weight: float = 1.0,
                     track_abs: bool = False, upstream: Upstream | None = None, groups=None, advance: bool = True):
    """Hessians of the block's linears (of `groups`' linears, all input groups by default) on the batches'
    states; the block's outputs go to `targets` if given (targets may be the states themselves: each batch is
    read before its rows are overwritten). Without targets nobody reads the outputs, so each pass ends at the
    last collected group's input: down_proj's GEMM (a quarter of a Llama block's) is never run. With `upstream`,
    each batch also runs on the float model's states (upstream.py), which move on to their outputs if
    `advance`; that pass runs on the block itself unless the upstream keeps a float copy, so it may not end early."""
    groups = groups or arch.input_groups
    if upstream is None:
        accumulators, remove = hessian_hooks(block, arch, batches.device, first_token_weight, batches.dtype,
                                             track_abs, groups)
    else:  # one catcher for both passes: the Hessians are fed from the quantized pass's inputs only
        accumulators = hessian_accumulators(block, arch, batches.device, first_token_weight, batches.dtype, track_abs,
                                            groups)
        seen, remove = input_catcher(block, arch)
        upstream.begin(accumulators)
    ends_early = targets is None and (upstream is None or upstream.float_block is not None)
    stop = stop_at(get_module(block, groups[-1][0])) if ends_early else None  # after the hooks: they run first
    t = time.perf_counter()
    try:
        # one autocast region for every batch: each weight is cast to the products' dtype once, not per batch
        with compute_in(batches.dtype, batches.device):
            for b, rows in batches:
                try:
                    out = block_output(block, *batches.inputs(b))
                except StopForward:
                    out = None
                if upstream is not None:
                    upstream.pair(block, batches, b, seen, accumulators, advance)
                if targets is not None:
                    targets[rows] = out.to(targets.device)
    finally:
        remove()
        if stop is not None:
            stop.remove()
    hessian_time = sum(acc.seconds + (upstream.crosses[name].seconds if upstream else 0.0)
                       for name, acc in accumulators.items())
    timings.hessian += hessian_time
    timings.forward += time.perf_counter() - t - hessian_time
    return accumulators


def _trained_widths(method: Method, solver_opts: dict) -> list[tuple[int, float]] | None:
    """A nested method's scales are trained for every slice it serves, weighted as its solver weighs them."""
    if not method.nested:
        return None
    from ..quant.nesting import MultiWidthLoss
    options = method.resolve(solver_opts)
    return MultiWidthLoss.of(options.widths, options.weights).weighted_widths


def _train_block_scales(job: BlockJob, block_q, targets):
    """Stage 2: scales trained against the float block's outputs; the block gets the trained weights.
    Returns (the block's QuantizedWeights, the mean output error of each epoch)."""
    t = time.perf_counter()
    recipe, prefix = job.recipe, job.prefix
    local = {name[len(prefix):]: qw for name, qw in block_q.items()}
    trained, losses = refine_scales(job.block, local, job.batches, targets, recipe.block_epochs, recipe.block_lr,
                                    _trained_widths(job.method, recipe.solver_opts), recipe.block_loss)
    for name, qw in trained.items():
        get_module(job.block, name).weight.data = qw.dequantize().to(job.batches.device)
    job.timings.block_training += time.perf_counter() - t
    return {prefix + name: qw for name, qw in trained.items()}, losses

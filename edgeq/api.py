"""The quantize job end to end: validate every input first (so a refusal leaves nothing on disk), load,
calibrate block by block, write the checkpoint atomically, report where time and memory went."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__, grid
from .calib.sources import DEFAULT_SAMPLES, DEFAULT_SEQ_LEN
from .errors import EdgeqError
from .export import HEAD_WIDTHS
from .heldout import evaluate_texts
from .memory import peak_rss_mb, release_freed_memory
from .mixed import MixedPrecision
from .paths import check_output_folder, exclusive_output


@dataclass(frozen=True)
class QuantConfig:
    """What to quantize and how; the CLI's flags map one to one onto these fields."""
    method: str = "gptq"
    bits: int = 4
    group_size: int = 128
    sym: bool = False
    samples: int = DEFAULT_SAMPLES
    seq_len: int = DEFAULT_SEQ_LEN
    batch_size: int = 2
    seed: int = 0
    device: str = "cpu"
    solver_opts: dict = field(default_factory=dict)
    block_epochs: int = 0      # block-wise scale training after the solver (decoupleQ's stage 2); 0 = off
    block_lr: float = 5e-3     # Adam on log(scale / solver's scale); best of those tried on SmolLM2 W2
    mixed: "MixedPrecision | None" = None  # a width per linear under a size budget (then bits/group unused)
    layer_grids: tuple = ()    # (substring of a linear's name, bits, group size): hand-set grids, later wins
    propagate: str = "quantized"  # next block's calibration inputs: the quantized (GPTQ's) or the float model's
    lm_head: int | None = None  # quantize the output head too, at these bits, on its own Hessian; None: float
    # Each window's first position counts this many times in every Hessian. It holds the attention sink
    # (on SmolLM2 its hidden state is ~160x any other's by block 15) whose keys and values every later
    # token reads; shorter calibration windows, i.e. more first tokens per token, measured better off-domain.
    first_token_weight: float = 1.0
    block_loss: str | None = None  # block training's output error (solvers.method.BLOCK_LOSSES); None: the
                                   # default of the method's kind of training (solvers.method.DEFAULT_BLOCK_LOSS)

    @property
    def spec(self) -> grid.QuantSpec:
        return grid.QuantSpec(self.bits, self.group_size, self.sym)

    @property
    def trains_blocks(self) -> bool:
        """Whether each block is trained on its output error: a learned method, or --block-epochs."""
        from .solvers.method import get_method
        return bool(self.block_epochs) or get_method(self.method).learned

    @property
    def trained_block_loss(self) -> str:
        """The block loss that block training (a learned method or --block-epochs) lowers."""
        from .solvers.method import DEFAULT_BLOCK_LOSS, get_method
        return self.block_loss or DEFAULT_BLOCK_LOSS[get_method(self.method).kind]

    def validate(self) -> None:
        """Every refusal that needs no file and no model: run before anything is read or loaded."""
        from .solvers import get_method
        method = get_method(self.method)
        options = method.resolve(self.solver_opts)  # unknown options and bad values refused here
        check_device(self.device)
        check_training_options(self, method.calibrated, method.learned)
        if self.lm_head not in HEAD_WIDTHS.values():
            raise EdgeqError(f"the head is quantized at {' or '.join(k for k, v in HEAD_WIDTHS.items() if v)} bits "
                             f"(a tied embedding shares its codes), not {self.lm_head}")
        if method.nested:
            if self.mixed or self.layer_grids:
                raise EdgeqError(f"{self.method} stores one width for every linear, sliced to the others; it does "
                                 "not mix widths per layer (--budget, --layer-grid)")
            if self.bits != max(options.widths):
                raise EdgeqError(f"{self.method} stores the widest width: bits must be {max(options.widths)} for "
                                 f"widths {list(options.widths)}")


def resume_folder(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def check_device(device: str) -> None:
    import torch
    if device == "cuda" and not torch.cuda.is_available():
        raise EdgeqError("--device cuda asked for, but torch sees no CUDA GPU; use --device cpu")
    if device not in ("cpu", "cuda"):
        raise EdgeqError(f"device must be cpu or cuda, got {device!r}")


def check_training_options(config: QuantConfig, calibrated: bool, learned: bool) -> None:
    """Refusals of --block-epochs, --block-lr, --block-loss and --propagate that need no model."""
    from .solvers.method import BLOCK_LOSSES, get_method, method_names
    if config.block_epochs < 0 or not config.block_lr > 0:
        raise EdgeqError("--block-epochs must be >= 0 and --block-lr > 0")
    if config.block_epochs and not calibrated:
        raise EdgeqError(f"--block-epochs needs calibration data; {config.method} uses none")
    if not config.first_token_weight > 0:
        raise EdgeqError(f"--first-token-weight must be > 0, got {config.first_token_weight}")
    if config.propagate not in ("quantized", "float"):
        raise EdgeqError(f"--propagate must be quantized or float, got {config.propagate!r}")
    if config.propagate == "float" and config.trains_blocks:
        raise EdgeqError("--propagate float applies to the layer-wise solvers without --block-epochs (block "
                         "training already has the float targets)")
    if config.block_loss is not None and config.block_loss not in BLOCK_LOSSES:
        raise EdgeqError(f"--block-loss must be one of {', '.join(BLOCK_LOSSES)}, got {config.block_loss!r}")
    if config.block_loss is not None and not config.trains_blocks:
        learned_methods = ", ".join(name for name in method_names() if get_method(name).learned)
        raise EdgeqError(f"--block-loss applies to block training: a learned method ({learned_methods}) or "
                         "--block-epochs")
    if config.block_epochs and learned:
        raise EdgeqError(f"{config.method} already trains each block (--steps); --block-epochs does not apply")


def quantize(model: str | None, out, config: QuantConfig = QuantConfig(), calib: str | list[str] | None = None,
             progress: bool = True, on_block_done=None, calib_mix: list[float] | None = None) -> dict:
    """Quantize `model` (None = the bundled SmolLM2-135M) into a checkpoint folder `out`; return its meta.
    calib: calibration parts (files, folders, globs, builtin:NAME, or "self"; see calib/sources.py), None =
    the default mix; calib_mix: one weight per part."""
    from .solvers import get_method
    config.validate()
    calibrated = get_method(config.method).calibrated
    if calib is not None and not calibrated and not config.mixed:
        raise EdgeqError(f"{config.method} uses no calibration text: drop --calib (or choose a calibrated method)")
    check_output_folder(out)
    with exclusive_output(Path(out)):  # a second run into the same --out is refused, not interleaved
        return _quantize(model, Path(out), config, calib, progress, on_block_done, calib_mix)


def _quantize(model, out: Path, config: QuantConfig, calib, progress, on_block_done, calib_mix) -> dict:
    from . import checkpoint, models
    from .calib import data, pipeline
    from .calib.resume import ResumeState
    from .inputs import resolve_model
    from .solvers import get_method

    t0 = time.perf_counter()
    calibrated = get_method(config.method).calibrated
    check_output_folder(out)  # again under the lock: a run that held it may have just written `out`
    spec = config.spec
    source = resolve_model(model).refuse_unless("float", command="quantize").source
    models.load_config(source)  # refuses an unsupported architecture before any heavy work
    tokenizer = models.load_tokenizer(source)
    # the weights' fingerprint, not only the path: weights replaced at the same path start afresh
    model_key = f"{source.label}:{models.weights_fingerprint(source)}"
    windows, calib_record, calib_digest = None, None, None
    if calibrated or config.mixed:
        from .calib.selfgen import self_windows
        windows, calib_record = data.calibration_set(
            tokenizer, [calib] if isinstance(calib, str) else calib, calib_mix, config.samples, config.seq_len,
            config.seed, lambda n: self_windows(source, model_key, tokenizer, n, config.seq_len, config.seed,
                                                progress))
        calib_digest = calib_record["digest"]
    release_freed_memory()  # tokenizer scratch would otherwise stay in the heap for the whole run
    loaded, _ = models.load_model(source, stream_blocks=True)
    arch = models.arch_of(loaded.config)
    t_load = time.perf_counter() - t0

    mixed_meta, sensitivity_record, layer_specs = None, None, {}
    t_sensitivity = time.perf_counter()
    if config.mixed:
        layer_specs, mixed_meta, sensitivity_record = _mixed_plan(source, loaded, arch, windows, calib_digest,
                                                                  config, resume_folder(out), progress)
    t_sensitivity = time.perf_counter() - t_sensitivity
    layer_specs.update(_hand_set_specs(config, block_linear_shapes(loaded, arch)))
    recipe = pipeline.Recipe(config.method, spec, dict(config.solver_opts), config.batch_size,
                             config.block_epochs, config.block_lr, layer_specs, config.propagate, config.lm_head,
                             config.first_token_weight, config.trained_block_loss)
    resume = ResumeState(resume_folder(out), recipe.digest(model_key, str(calib_digest)))
    t1 = time.perf_counter()
    qweights, timings = pipeline.quantize_model(loaded, arch, recipe, windows, device=config.device,
                                                resume=resume, progress=progress, on_block_done=on_block_done)
    t_quant = time.perf_counter() - t1
    t_slices = time.perf_counter()
    slice_record = None
    if get_method(config.method).nested:
        unpacked = qweights.unpacked()
        slice_record = _slice_estimates(source, arch, windows, unpacked, config, progress)
        del unpacked
    t_slices = time.perf_counter() - t_slices
    meta = {
        "edgeq_version": __version__, "method": config.method, "bits": spec.bits,
        "group_size": spec.group_size, "sym": spec.sym, "solver_opts": config.solver_opts,
        "block_epochs": config.block_epochs, "block_lr": config.block_lr, "base_model": source.label,
        "calibration": calib_record if calibrated else None, "lm_head_bits": config.lm_head,
        "layer_errors": timings.layer_errors,
        "block_losses": timings.block_losses,
    }
    if calibrated and config.first_token_weight != 1.0:  # how the calibration was used, where not as GPTQ's
        meta["calibration"]["first_token_weight"] = config.first_token_weight
    if calibrated and config.trains_blocks:
        meta["calibration"]["block_loss"] = config.trained_block_loss
    if calibrated and config.propagate != "quantized":
        meta["calibration"]["propagate"] = config.propagate
    if config.layer_grids:
        meta["layer_grids"] = [list(g) for g in config.layer_grids]
    if config.mixed:
        meta.update(bits=None, group_size=None, mixed=mixed_meta, sensitivity=sensitivity_record)
    if slice_record:
        meta["slice_estimates"] = slice_record
    meta["stats"] = {
        "seconds_load": round(t_load, 2), "seconds_sensitivity": round(t_sensitivity, 2),
        "seconds_quantize": round(t_quant, 2), "seconds_slice_estimates": round(t_slices, 2),
        "seconds_forward": round(timings.forward, 2), "seconds_hessian": round(timings.hessian, 2),
        "seconds_solver": round(timings.solver, 2), "seconds_block_training": round(timings.block_training, 2),
        "resumed_from_block": timings.resumed_from_block,  # the times above cover this process only
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "fp32_parameter_mb": round(models.parameter_bytes_of_config(loaded.config) / 2 ** 20, 1),
    }
    checkpoint.save_checkpoint(out, loaded, tokenizer, qweights, meta)
    resume.discard()
    return checkpoint.read_meta(out)


def block_linear_shapes(model, arch) -> dict[str, tuple[int, int]]:
    """{qualified linear name: (out, in)} of every block linear (works on a streamed model's meta weights)."""
    from .models import get_module
    blocks = get_module(model, arch.blocks)
    return {f"{arch.blocks}.{i}.{name}": tuple(get_module(blocks[i], name).weight.shape)
            for i in range(len(blocks)) for name in arch.linears}


def _hand_set_specs(config: QuantConfig, shapes: dict) -> dict[str, grid.QuantSpec]:
    """The grids set by name (llama.cpp's --tensor-type): every linear whose name contains the pattern."""
    specs = {}
    for pattern, bits, group_size in config.layer_grids:
        hits = [name for name in shapes if pattern in name]
        if not hits:
            raise EdgeqError(f"--layer-grid {pattern!r} matches no linear; names look like {next(iter(shapes))}")
        specs.update({name: grid.QuantSpec(bits, group_size, config.sym) for name in hits})
    return specs


def _mixed_plan(source, loaded, arch, windows, calib_digest, config: QuantConfig, partial: Path, progress: bool):
    """(width per linear, the plan's meta, the sensitivity record): the budget checked first, the estimates
    reused from --sensitivity-from or from an interrupted run of the same job, else measured."""
    from . import mixed
    mp, shapes = config.mixed, block_linear_shapes(loaded, arch)
    specs = mp.specs(config.sym)
    mixed.check_budget(mp, shapes, specs)
    wanted = {"candidates": [mixed.label(s) for s in specs], "method": config.method,
              "solver_opts": config.solver_opts, "samples": mp.samples, "calibration_digest": calib_digest}
    cached = partial / "sensitivity.json"
    if mp.sensitivity_from:
        record = mixed.load_estimates(mp.sensitivity_from)
        if record["candidates"] != wanted["candidates"] or mp.estimator not in record["estimates"]:
            raise EdgeqError(f"{mp.sensitivity_from} has {', '.join(record['estimates'])} estimates for "
                             f"{record['candidates']}; this run needs {mp.estimator} for {wanted['candidates']}")
    elif _record_of_this_job(cached, wanted, mp.estimator):
        record = json.loads(cached.read_text())
    else:
        record = {**wanted, "estimates": _measure_sensitivity(source, loaded, arch, windows[:mp.samples], specs,
                                                                config, progress)}
        partial.mkdir(parents=True, exist_ok=True)
        cached.write_text(json.dumps(record))
    chosen, result = mixed.plan(mp, shapes, specs, record["estimates"][mp.estimator])
    return chosen, mixed.summary(mp, shapes, chosen, specs, record["estimates"][mp.estimator], result), record


def _record_of_this_job(path: Path, wanted: dict, estimator: str) -> bool:
    """Whether an interrupted run left estimates made exactly as this run would make them."""
    if not path.is_file():
        return False
    try:  # a record that cannot be read is measured again
        record = json.loads(path.read_text())
        return estimator in record["estimates"] and all(record.get(k) == v for k, v in wanted.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _measure_sensitivity(source, loaded, arch, windows, specs, config: QuantConfig, progress: bool) -> dict:
    """Both estimators when the Fisher is asked for (the Hessian one comes free with it), else the Hessian's.
    The Fisher needs gradients through the whole model, so it loads a full float copy for the pass."""
    from . import models
    from .calib import sensitivity
    from .solvers import get_method
    model, fisher = loaded, None
    if config.mixed.estimator == "fisher":
        model, _ = models.load_model(source)
        fisher = sensitivity.fisher_diagonal(model, arch, windows, progress)
    method, opts = config.method, config.solver_opts
    if get_method(method).learned:  # what a width costs is estimated from GPTQ's solution: no block training per candidate
        method, opts = "gptq", {}
    estimates = sensitivity.layer_estimates(model, arch, windows, specs, method, opts, config.batch_size, fisher,
                                            progress)
    del model, fisher
    release_freed_memory()
    return estimates


def _slice_estimates(source, arch, windows, qweights, config: QuantConfig, progress: bool) -> dict:
    """A nested checkpoint's per-linear cost of each width's slice (the Fisher of a full float copy on the
    first calibration windows), so that a device can pick a width per layer for a budget (mixnmatch.py)."""
    from . import models
    from .calib import sensitivity
    from .mixnmatch import SAMPLES
    from .solvers import get_method
    widths = sorted(get_method(config.method).resolve(config.solver_opts).widths, reverse=True)
    model, _ = models.load_model(source)
    fisher = sensitivity.fisher_diagonal(model, arch, windows[:SAMPLES], progress)
    layers = sensitivity.slice_estimates(model, fisher, qweights, widths)
    del model, fisher
    release_freed_memory()
    return {"estimator": "fisher", "samples": min(SAMPLES, len(windows)), "widths": widths, "layers": layers}


def evaluate(model: str | None, text: str | None = None, seq_len: int = 512, max_windows: int | None = None,
             progress: bool = True, bits: int | float | None = None) -> dict:
    """Perplexity of a model source, an edgeq checkpoint or an exported ONNX folder (run by onnxruntime)
    on held-out text (default: packaged Persuasion); the same windows whichever runs it. `bits` evaluates
    that slice of a checkpoint's (or an exported 8-bit folder's) codes."""
    return evaluate_texts(model, [text], seq_len, max_windows, progress, bits)[0]

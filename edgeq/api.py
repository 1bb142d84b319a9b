"""The quantize job end to end: validate every input first (so a refusal leaves nothing on disk), load,
calibrate block by block, write the checkpoint atomically, report where time and memory went."""
from __future__ import annotations

import json
import time
from pathlib import Path

from . import __version__
from .quant import grid
from .config import QuantConfig  # noqa: F401  (the API's: edgeq.QuantConfig)
from .errors import EdgeqError
from .evaluation.heldout import EVAL_SEQ_LEN, EVAL_WINDOWS, evaluate_texts
from .util.memory import peak_rss_mb, release_freed_memory
from .util.paths import check_output_folder, exclusive_output


def resume_folder(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def quantize(model: str | None, out, config: QuantConfig = QuantConfig(), calib: str | list[str] | None = None,
             progress: bool = True, on_block_done=None, calib_mix: list[float] | None = None) -> dict:
    """Quantize `model` (None = the bundled SmolLM2-135M) into a checkpoint folder `out`; return its meta.
    calib: calibration parts (files, folders, globs, builtin:NAME, or "self"; see texts.py), None =
    the default mix; calib_mix: one weight per part."""
    config.validate()
    check_run_transforms(config)
    calibrated = uses_calibration(config)
    if calib is not None and not calibrated and not config.mixed:
        raise EdgeqError(f"{config.method} uses no calibration text: drop --calib (or choose a calibrated method)")
    check_output_folder(out)
    with exclusive_output(Path(out)):  # a second run into the same --out is refused, not interleaved
        return _quantize(model, Path(out), config, calib, progress, on_block_done, calib_mix)


def _quantize(model, out: Path, config: QuantConfig, calib, progress, on_block_done, calib_mix) -> dict:
    from .io import checkpoint, models
    from .calib import data, pipeline
    from .calib.resume import ResumeState
    from .io.inputs import resolve_model
    from .solvers import get_method
    from .transforms.awq import summary as awq_summary

    t0 = time.perf_counter()
    calibrated = uses_calibration(config)
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
    loaded, transform_records = load_transformed(source, config, stream_blocks=True)
    arch = models.arch_of(loaded.config)
    t_load = time.perf_counter() - t0

    mixed_meta, sensitivity_record, layer_specs = None, None, {}
    t_sensitivity = time.perf_counter()
    if config.mixed:
        layer_specs, mixed_meta, sensitivity_record = _mixed_plan(source, loaded, arch, windows, calib_digest,
                                                                  config, resume_folder(out), progress)
    t_sensitivity = time.perf_counter() - t_sensitivity
    layer_specs.update(_hand_set_specs(config, block_linear_shapes(loaded, arch)))
    recipe = pipeline.Recipe(config, layer_specs)
    resume = ResumeState(resume_folder(out), recipe.digest(model_key, str(calib_digest)))
    t1 = time.perf_counter()
    qweights, timings = pipeline.quantize_model(loaded, arch, recipe, windows, device=config.device,
                                                resume=resume, progress=progress, on_block_done=on_block_done)
    t_quant = time.perf_counter() - t1
    t_e2e, e2e_record = time.perf_counter(), None
    if config.e2e_epochs:
        qweights, e2e_record = _train_end_to_end(source, loaded, arch, qweights, windows, config, progress)
    t_e2e = time.perf_counter() - t_e2e
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
        "transforms": transform_records + ([awq_summary(timings.awq)] if timings.awq else []),
        "layer_errors": timings.layer_errors,
        "block_losses": timings.block_losses,
    }
    if calibrated and config.first_token_weight != 1.0:  # how the calibration was used, where not as GPTQ's
        meta["calibration"]["first_token_weight"] = config.first_token_weight
    if calibrated and config.correct_upstream:
        meta["calibration"]["correct_upstream"] = config.correct_upstream
    if calibrated and config.true_sequential:
        meta["calibration"]["true_sequential"] = True
    if e2e_record:
        meta["e2e"] = e2e_record
    if calibrated and config.trains_blocks:
        meta["calibration"]["block_loss"] = config.trained_block_loss
    if calibrated and config.propagate != "quantized":
        meta["calibration"]["propagate"] = config.propagate
    if calibrated:
        meta["calibration"]["compute_dtype"] = str(recipe.calib_dtype).removeprefix("torch.")
    if config.layer_grids:
        meta["layer_grids"] = [list(g) for g in config.layer_grids]
    if config.mixed:
        meta.update(bits=None, group_size=None, mixed=mixed_meta, sensitivity=sensitivity_record)
    if slice_record:
        meta["slice_estimates"] = slice_record
    meta["stats"] = {
        "seconds_load": round(t_load, 2), "seconds_sensitivity": round(t_sensitivity, 2),
        "seconds_quantize": round(t_quant, 2), "seconds_e2e": round(t_e2e, 2),
        "seconds_slice_estimates": round(t_slices, 2),
        "seconds_forward": round(timings.forward, 2), "seconds_hessian": round(timings.hessian, 2),
        "seconds_solver": round(timings.solver, 2), "seconds_block_training": round(timings.block_training, 2),
        "resumed_from_block": timings.resumed_from_block,  # the times above cover this process only
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "fp32_parameter_mb": round(models.parameter_bytes_of_config(loaded.config) / 2 ** 20, 1),
    }
    checkpoint.save_checkpoint(out, loaded, tokenizer, qweights, meta)
    resume.discard()
    return checkpoint.read_meta(out)


def _train_end_to_end(source, loaded, arch, packed, windows, config: QuantConfig, progress: bool):
    """--e2e-epochs: the quantized model's scales trained against the float model (calib/e2e.py). Returns
    (the packed codes with the trained scales, the training's record). The quantized model gets its
    linears back in full for the training (a streamed run had dropped each finished block's) and keeps the
    trained weights; the float model is loaded beside it, untransformed (the transforms keep its logits)."""
    import torch

    from .calib import e2e
    from .io import models
    from .io.checkpoint import PackedCodes
    from .io.head import attach_head
    unpacked = packed.unpacked()
    for name, qw in unpacked.items():
        if name != arch.lm_head:  # the head is in place (a tied one is the embedding's own tensor)
            models.get_module(loaded, name).weight = torch.nn.Parameter(qw.dequantize(), requires_grad=False)
    teacher, _ = models.load_model(source)
    trained, record = e2e.train_scales(loaded.to(config.device), teacher.to(config.device), unpacked,
                                       windows[:config.e2e_samples].to(config.device), config.e2e_epochs,
                                       config.e2e_lr, config.batch_size, config.seed, progress)
    del teacher
    loaded.to("cpu")
    for name, qw in trained.items():
        if name == arch.lm_head:
            attach_head(loaded, arch, qw)
        else:
            models.get_module(loaded, name).weight.data = qw.dequantize()
    return PackedCodes.of(trained), record


def uses_calibration(config: QuantConfig) -> bool:
    """The method calibrates, or a block transform (awq) reads each block's inputs, RTN's included."""
    from .calib.pipeline import Recipe
    return Recipe(config).calibrated


def check_run_transforms(config: QuantConfig) -> None:
    from .solvers import get_method
    from .transforms import block_transforms, check_transforms
    check_transforms(config.transforms)
    if block_transforms(config.transforms) and get_method(config.method).nested:
        raise EdgeqError(f"--transform awq does not apply to {config.method}: its slice estimates re-read the "
                         "float model, which awq's folded scales change")


def load_transformed(source, config: QuantConfig, stream_blocks: bool = False):
    """(the float model with the run's pre-transforms applied, their records): every pass of a quantize run
    (calibration, Fisher estimates, slice estimates) sees the model its solvers quantize."""
    from .io import models
    from .transforms import apply_transforms
    model, config_ = models.load_model(source, stream_blocks=stream_blocks)
    return model, apply_transforms(model, models.arch_of(config_), config.transforms, config.seed)


def block_linear_shapes(model, arch) -> dict[str, tuple[int, int]]:
    """{qualified linear name: (out, in)} of every block linear (works on a streamed model's meta weights)."""
    from .io.models import get_module
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
    from .planning import mixed
    mp, shapes = config.mixed, block_linear_shapes(loaded, arch)
    specs = mp.specs(config.sym, shapes)
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
    from .io import models
    from .calib import sensitivity
    from .solvers import get_method
    model, fisher = loaded, None
    if config.mixed.estimator == "fisher":
        model, _ = load_transformed(source, config)
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
    from .io import models
    from .calib import sensitivity
    from .planning.mixnmatch import SAMPLES
    from .solvers import get_method
    widths = sorted(get_method(config.method).resolve(config.solver_opts).widths, reverse=True)
    model, _ = load_transformed(source, config)
    fisher = sensitivity.fisher_diagonal(model, arch, windows[:SAMPLES], progress)
    layers = sensitivity.slice_estimates(model, fisher, qweights, widths)
    del model, fisher
    release_freed_memory()
    return {"estimator": "fisher", "samples": min(SAMPLES, len(windows)), "widths": widths, "layers": layers}


def evaluate(model: str | None, text: str | None = None, seq_len: int = EVAL_SEQ_LEN,
             max_windows: int | None = EVAL_WINDOWS, progress: bool = True, bits: int | float | None = None) -> dict:
    """Perplexity of a model source, an edgeq checkpoint or an exported ONNX folder (run by onnxruntime)
    on held-out text (default: packaged Persuasion; the first EVAL_WINDOWS windows, None: all); the same windows whichever runs it. `bits` evaluates
    that slice of a checkpoint's (or an exported 8-bit folder's) codes."""
    return evaluate_texts(model, [text], seq_len, max_windows, progress, bits)[0]

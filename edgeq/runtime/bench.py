"""Latency of exported decoders on this device: model load, prefill of a prompt, per-token decode on a
growing KV cache, end-to-end tokens/s, memory and file size. Several models are measured in one process
with their runs interleaved (A B A B ...), so that drift on a noisy device hits every model alike and the
ratios between them stay honest. numpy + onnxruntime only."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import EdgeqError
from ..util.memory import rss_mb
from ..util.argtypes import parse_slice
from .session import MODEL_FILE, OrtDecoder, check_length, greedy_decode, open_session, use_shared_thread_pool
from .slicing import model_to_open

ORT_FILE = "model.ort"

PERCENTILES = (50, 90, 99)
ENGINES = ("ort", "genai")


def summary(values: list[float], scale: float = 1e3) -> dict:
    """p50/p90/p99 (linear interpolation, numpy's default), mean, std, min, max and count of values * scale
    (seconds -> milliseconds by default)."""
    x = np.asarray(values, dtype=np.float64) * scale
    out = {f"p{p}": float(np.percentile(x, p)) for p in PERCENTILES}
    out.update(mean=float(x.mean()), std=float(x.std()), min=float(x.min()), max=float(x.max()), n=int(x.size))
    return out


def model_mb(path: Path) -> float:
    """The file that runs, with its external-data files (model.onnx.data) if any."""
    return sum(f.stat().st_size for f in path.parent.glob(path.name + "*")) / 2 ** 20


@dataclass
class Settings:
    provider: str = "cpu"
    threads: int | None = None
    prompt: int = 128
    gen: int = 64
    runs: int = 20
    warmup: int = 3
    optimization: str = "all"
    ort_format: bool = False          # run model.ort (written by `edgeq export --ort-format`)
    save_optimized: str | None = None  # folder for each model's optimised graph, as onnxruntime rewrote it
    provider_options: dict = field(default_factory=dict)
    shared_pool: bool = True           # one intra-op pool for all models (see use_shared_thread_pool)
    engine: str = "ort"                # ort: our loop on an onnxruntime session; genai: onnxruntime-genai's generator

    def check(self) -> None:
        """Refuse what the genai engine cannot honour: it runs model.onnx on the CPU with its own sessions."""
        if self.engine not in ENGINES:
            raise EdgeqError(f"engine must be one of {ENGINES}, got {self.engine!r}")
        if self.engine == "genai":
            asked = [flag for flag, on in (("--provider", self.provider != "cpu"), ("--ort-format", self.ort_format),
                                           ("--save-optimized", self.save_optimized),
                                           ("--provider-option", self.provider_options),
                                           ("--optimization", self.optimization != "all")) if on]
            if asked:
                raise EdgeqError(f"--engine genai takes the provider and options from genai_config.json, "
                                 f"not {', '.join(asked)}")


@dataclass
class Model:
    folder: Path
    path: Path | None
    decoder: OrtDecoder
    load_s: float
    load_rss_mb: float | None    # resident memory the session added when it loaded (weights, arenas)
    prefill: list = field(default_factory=list)   # seconds per prompt
    decode: list = field(default_factory=list)    # seconds per generated token (all runs pooled)
    e2e: list = field(default_factory=list)       # seconds per run (prefill + all decode steps)


def model_file(folder, settings: Settings) -> Path:
    path = Path(folder) / (ORT_FILE if settings.ort_format else MODEL_FILE)
    if not path.is_file():
        hint = " (export with --ort-format)" if settings.ort_format else " (an edgeq export folder)"
        raise EdgeqError(f"{folder}: no {path.name}{hint}")
    return path


def split_width(spec: str) -> tuple[str, int | float | None]:
    """'FOLDER@4' -> (FOLDER, 4): that folder's 8-bit codes sliced to 4 bits at load (MatQuant);
    'FOLDER@3.5' -> (FOLDER, 3.5): a width per layer for 3.5 bits on average (Mix'n'Match)."""
    folder, sep, bits = str(spec).rpartition("@")
    if not sep or not bits.replace(".", "", 1).isdigit():
        return str(spec), None
    return folder, parse_slice(bits)


def load(spec, settings: Settings, clock=time.perf_counter) -> Model:
    """Open one model; 'FOLDER@BITS' slices it on load, and load_s then includes the slicing."""
    folder, bits = split_width(spec)
    path = model_file(folder, settings)
    if settings.engine == "genai":
        return load_genai(spec, folder, bits, path, settings, clock)
    if bits is not None and settings.ort_format:
        raise EdgeqError(f"{spec}: slicing needs model.onnx, not the ORT format")
    saved = None
    if settings.save_optimized:
        Path(settings.save_optimized).mkdir(parents=True, exist_ok=True)
        saved = Path(settings.save_optimized) / f"{Path(spec).name}.{'ort' if settings.ort_format else 'onnx'}"

    def open_decoder():
        session = open_session(model_to_open(path, bits), settings.provider, settings.threads, settings.optimization,
                               saved, "ORT" if settings.ort_format else "ONNX", settings.provider_options)
        return OrtDecoder(session, folder)
    return timed_load(spec, path, open_decoder, clock)


def load_genai(spec, folder, bits, path: Path, settings: Settings, clock) -> Model:
    from .genai import GenaiDecoder
    if bits is not None:
        raise EdgeqError(f"{spec}: genai runs the folder as exported; export that width with edgeq export --bits")
    return timed_load(spec, path, lambda: GenaiDecoder(folder, settings.threads), clock)


def timed_load(spec, path: Path, open_decoder, clock) -> Model:
    """The Model of open_decoder(), with the seconds it took and the resident memory it added."""
    before = rss_mb()
    start = clock()
    decoder = open_decoder()
    load_s = clock() - start
    after = rss_mb()
    return Model(Path(spec), path, decoder, load_s, after - before if None not in (before, after) else None)


def one_run(model: Model, prompt: np.ndarray, gen: int, clock=time.perf_counter) -> tuple[float, list[float]]:
    """(prefill seconds, [seconds per decoded token]): greedy decoding, the cache growing by one each step."""
    if hasattr(model.decoder, "timed_run"):  # genai's generator, which owns its loop
        return model.decoder.timed_run(prompt, gen, clock)
    _, prefill, steps = greedy_decode(model.decoder, prompt, gen, None, clock)
    return prefill, steps


def vocab_size(decoder) -> int:
    if not hasattr(decoder, "session"):
        return decoder.vocab_size
    size = decoder.session.get_outputs()[0].shape[-1]
    return size if isinstance(size, int) else 1000


def bench(folders, settings: Settings, clock=time.perf_counter, progress=None) -> list[Model]:
    """Load every model, then warmup + runs rounds; in each round every model does one run in turn."""
    settings.check()
    for spec in folders:  # refuse a bad folder before touching the thread pool
        folder = split_width(spec)[0]
        model_file(folder, settings)
        check_length(folder, settings.prompt + settings.gen + 1, f"--prompt {settings.prompt} and --gen {settings.gen}")
    if settings.shared_pool and settings.engine == "ort":
        use_shared_thread_pool(settings.threads)
    return measure([load(folder, settings, clock) for folder in folders], settings, clock, progress)


def measure(models: list[Model], settings: Settings, clock=time.perf_counter, progress=None) -> list[Model]:
    """warmup + runs rounds over loaded models; in each round every model does one run in turn, on the same
    random prompt (any decoder bench.one_run can drive: ours, genai's, another engine's)."""
    prompt = np.random.default_rng(0).integers(0, min(vocab_size(m.decoder) for m in models), (1, settings.prompt))
    for round_ in range(settings.warmup + settings.runs):
        for model in models:
            prefill, steps = one_run(model, prompt, settings.gen, clock)
            if round_ >= settings.warmup:
                model.prefill.append(prefill)
                model.decode.extend(steps)
                model.e2e.append(prefill + sum(steps))
        if progress:
            progress(round_ + 1, settings.warmup + settings.runs)
    return models


def result(model: Model, settings: Settings) -> dict:
    decode = summary(model.decode) if model.decode else None
    return {
        "model": str(model.folder), "name": model.folder.name, "file": model.path.name,
        "file_mb": round(model_mb(model.path), 2),
        "load_s": round(model.load_s, 3), "load_rss_mb": model.load_rss_mb,
        "prefill_ms": summary(model.prefill), "decode_ms_per_token": decode,
        "decode_tokens_per_s": 1e3 / decode["p50"] if decode else None,
        "e2e_tokens_per_s": summary([settings.gen / s for s in model.e2e], scale=1) if settings.gen else None,
        "samples_ms": {"prefill": [s * 1e3 for s in model.prefill], "decode": [s * 1e3 for s in model.decode]},
    }

"""Held-out text to token windows to perplexity (`edgeq eval`). Only a torch model's scorer imports torch:
an exported folder is evaluated on a device that has the runtime install alone (numpy, onnxruntime,
tokenizers), on the same windows with the same arithmetic as on the laptop. Calibration (calib/data.py)
builds its torch windows on the same functions.

A tokenizer here is either a transformers tokenizer (callable) or a `tokenizers.Tokenizer` (the exported
folder's tokenizer.json): the two give the same ids, one is called, the other has encode()."""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from ..texts import BUILTIN, DEFAULT_EVAL, builtin_part, packaged_file_text
from ..errors import EdgeqError
from ..util.paths import read_utf8
from ..util.progress import progress_bar

# The default windows of `edgeq eval` and `edgeq.evaluate()`. benchmarks/eval_windows.py: on the packaged
# Persuasion, the first 40 windows put RTN and GPTQ W4 g128 within 0.34% of their ratio to fp32 over all 226.
EVAL_SEQ_LEN = 512
EVAL_WINDOWS = 40


def read_text(path: str | None, default: str = DEFAULT_EVAL) -> tuple[str, str]:
    """(text, label) of a held-out text: a file, or builtin:NAME (see texts.py; chat excluded).
    path None -> the packaged default text."""
    if path is None:
        return packaged_file_text(default), f"edgeq default ({default.removesuffix('.txt.gz')})"
    if path.startswith(BUILTIN):
        part = builtin_part(path[len(BUILTIN):], tokenizer=None)
        if part is None:
            raise EdgeqError(f"{path} needs a model's chat template; evaluate on a file instead")
        return part.text, part.label
    p = Path(path).expanduser()
    if not p.is_file():
        raise EdgeqError(f"text file not found: {path}")
    text = read_utf8(p)
    if not text.strip():
        raise EdgeqError(f"text file is empty: {path}")
    return text, str(p)


def encode(tokenizer, text: str, special: bool) -> list[int]:
    if callable(tokenizer):  # transformers
        return tokenizer(text, add_special_tokens=special, return_attention_mask=False)["input_ids"]
    return tokenizer.encode(text, add_special_tokens=special).ids  # tokenizers.Tokenizer


def token_ids(tokenizer, text: str, chunk_chars: int = 20_000) -> np.ndarray:
    """Token ids of the whole text, encoded paragraph-aligned chunk by chunk: one encoding of a novel
    holds ~100 MB of offsets and strings at once, and that would set the run's peak memory."""
    pieces, start = [], 0
    while start < len(text):
        end = text.find("\n\n", start + chunk_chars)
        end = len(text) if end < 0 else end
        pieces.append(np.array(encode(tokenizer, text[start:end], special=False), dtype=np.int64))
        start = end
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)


def sequence_start(tokenizer) -> tuple[int, ...]:
    """The tokens the model's own tokenizer opens every text with (Gemma's BOS; none for SmolLM2). Each
    window starts with them, as the model saw text in training: Gemma-3-270M without its BOS measured
    perplexity 103.5 on six windows of Persuasion, 36.5 with it."""
    full, plain = encode(tokenizer, "a", special=True), encode(tokenizer, "a", special=False)
    return tuple(full[:len(full) - len(plain)]) if plain and full[len(full) - len(plain):] == plain else ()


def with_start(windows: np.ndarray, start: tuple[int, ...]) -> np.ndarray:
    if not start:
        return windows
    opening = np.broadcast_to(np.array(start, dtype=windows.dtype), (windows.shape[0], len(start)))
    return np.concatenate([opening, windows], axis=1)


def eval_windows(tokens: np.ndarray, seq_len: int, max_windows: int | None = None,
                 start: tuple[int, ...] = ()) -> np.ndarray:
    """Consecutive non-overlapping windows [W, seq_len] from the start of the text (the tail dropped), each
    the sequence start, then text."""
    body = seq_len - len(start)
    if body < 2:
        raise EdgeqError(f"--seq-len {seq_len} leaves {max(body, 0)} tokens of text per window (after "
                         f"{len(start)} start tokens); give at least {len(start) + 2}")
    count = tokens.size // body
    if count == 0:
        raise EdgeqError(f"evaluation text too short: {tokens.size} tokens for --seq-len {seq_len}")
    if max_windows:
        count = min(count, max_windows)
    return with_start(tokens[:count * body].reshape(count, body), start)


def perplexity_of(score, windows, batch_size: int = 1, progress: bool = True, desc: str = "perplexity") -> float:
    """exp(total NLL / predictions) with score(ids [B, L]) -> (NLL sum, count): torch or onnxruntime."""
    nll, count = 0.0, 0
    for start in progress_bar(range(0, windows.shape[0], batch_size), desc=desc, unit="batch", enabled=progress):
        s, c = score(windows[start:start + batch_size])
        nll, count = nll + s, count + c
    return math.exp(nll / count)


def perplexity(model, arch, windows, batch_size: int = 1, progress: bool = True) -> float:
    """Perplexity of a torch model on token windows [N, L] (a torch tensor)."""
    from .nll import window_nll
    return perplexity_of(lambda ids: window_nll(model, arch, ids), windows, batch_size, progress)


def evaluate_texts(model: str | None, texts: list[str | None], seq_len: int = EVAL_SEQ_LEN,
                   max_windows: int | None = EVAL_WINDOWS, progress: bool = True,
                   bits: int | float | None = None) -> list[dict]:
    """api.evaluate() on several held-out texts (None = the packaged one), the model loaded once. An exported
    folder is scored with numpy and onnxruntime alone, so this runs on a device's runtime install."""
    bodies = [read_text(text) for text in texts]  # a missing file fails before loading
    if model is not None and Path(model).is_dir():
        from ..runtime.session import check_length
        check_length(model, seq_len, f"--seq-len {seq_len}")
    label, tokenizer, score, runtime = scorer(model, bits)
    results, start = [], sequence_start(tokenizer)
    for body, text_label in bodies:
        windows = eval_windows(token_ids(tokenizer, body), seq_len, max_windows, start)
        t = time.perf_counter()
        ppl = perplexity_of(score, windows, progress=progress, desc=f"perplexity ({runtime})")
        results.append({"model": label, "text": text_label, "seq_len": seq_len, "windows": int(windows.shape[0]),
                        "tokens": int(windows.size), "perplexity": ppl,
                        "seconds": round(time.perf_counter() - t, 2), "runtime": runtime, "bits": bits})
    return results


def scorer(model: str | None, bits: int | float | None = None):
    """(label, tokenizer, score(ids: numpy [B, L]) -> (NLL sum, count), runtime name) for what `model` names."""
    from ..io.inputs import kind_of, resolve_model
    if bits is not None and kind_of(model) == "float":
        what = model or "the bundled model"
        raise EdgeqError(f"--bits slices a quantized checkpoint or an exported 8-bit folder; {what} is neither")
    given = resolve_model(model)
    if given.kind == "onnx":
        from ..runtime.session import OrtDecoder
        from ..runtime.tokenizer import load_tokenizer
        decoder = OrtDecoder.from_folder(given.path, bits=bits)
        return given.label, load_tokenizer(given.path)[0], decoder.window_nll, "onnxruntime"

    import torch

    from ..io import models
    from .nll import window_nll
    if given.kind in ("checkpoint", "quantized"):
        from transformers import AutoTokenizer

        from ..io.quantized_folder import load_quantized
        loaded, _, _ = load_quantized(given, bits)
        tokenizer = AutoTokenizer.from_pretrained(given.path)
    else:
        loaded, _ = models.load_model(given.source)
        tokenizer = models.load_tokenizer(given.source)
    arch = models.arch_of(loaded.config)
    return given.label, tokenizer, lambda ids: window_nll(loaded, arch, torch.from_numpy(ids)), "torch"

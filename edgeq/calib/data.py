"""Text -> token windows: calibration samples (random windows, seeded) and evaluation windows (consecutive)."""
from __future__ import annotations

import hashlib

import torch

from ..evaluation import heldout
from ..errors import EdgeqError
from ..evaluation.heldout import sequence_start
from ..config import DEFAULT_SAMPLES, DEFAULT_SEQ_LEN
from ..texts import read_part


def tokenize(tokenizer, text: str, chunk_chars: int = 20_000) -> torch.Tensor:
    return torch.from_numpy(heldout.token_ids(tokenizer, text, chunk_chars))


def with_start(windows: torch.Tensor, start: tuple[int, ...]) -> torch.Tensor:
    return torch.from_numpy(heldout.with_start(windows.numpy(), start))


def calibration_windows(tokens: torch.Tensor, samples: int, seq_len: int, seed: int = 0,
                        start: tuple[int, ...] = ()) -> torch.Tensor:
    """`samples` random windows of seq_len tokens [samples, seq_len] (GPTQ's sampling), seeded; each the
    sequence start, then text."""
    if samples < 1 or seq_len < 2 + len(start):
        raise EdgeqError("need at least 1 calibration sample of at least 2 tokens")
    body = seq_len - len(start)
    if tokens.numel() < body:
        raise EdgeqError(f"calibration text too short: {tokens.numel()} tokens, need at least "
                         f"--seq-len {seq_len}")
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, tokens.numel() - body + 1, (samples,), generator=gen)
    return with_start(torch.stack([tokens[s:s + body] for s in starts.tolist()]), start)


def window_counts(weights: list[float], samples: int) -> list[int]:
    """samples split in proportion to weights, by largest remainder (the counts sum to samples)."""
    if not weights or min(weights) < 0 or sum(weights) <= 0:
        raise EdgeqError(f"calibration mix weights must be >= 0 and not all 0, got {weights}")
    exact = [samples * w / sum(weights) for w in weights]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: (counts[i] - exact[i], i))
    for i in by_remainder[:samples - sum(counts)]:
        counts[i] += 1
    return counts


def mixed_windows(parts: list, weights: list[float], samples: int, seq_len: int,
                  seed: int = 0, start: tuple[int, ...] = ()) -> tuple[torch.Tensor, list[int]]:
    """(windows [samples, seq_len], windows per part). A part is a token stream (random windows of it,
    seeded per part) or a function n -> n windows (self-generated text). With several parts the windows
    are shuffled so that every batch sees the mix; one stream gives exactly calibration_windows(stream)."""
    counts = window_counts(weights, samples)
    chosen = [part(n) if callable(part) else calibration_windows(part, n, seq_len, seed + i, start)
              for i, (part, n) in enumerate(zip(parts, counts)) if n]
    windows = torch.cat(chosen)
    if len(chosen) > 1:
        windows = windows[torch.randperm(windows.shape[0], generator=torch.Generator().manual_seed(seed))]
    return windows, counts


def eval_windows(tokens: torch.Tensor, seq_len: int, max_windows: int | None = None,
                 start: tuple[int, ...] = ()) -> torch.Tensor:
    return torch.from_numpy(heldout.eval_windows(tokens.numpy(), seq_len, max_windows, start))


# The default calibration mix, (--calib argument, weight) pairs.
DEFAULT_MIX = (("builtin:novel", 1.0),)


def calibration_set(tokenizer, calib: list[str] | None = None, mix: list[float] | None = None, samples: int = DEFAULT_SAMPLES,
                    seq_len: int = DEFAULT_SEQ_LEN, seed: int = 0, self_windows=None) -> tuple[torch.Tensor, dict]:
    """(windows [samples, seq_len], the record quantization.json keeps: parts, weights, windows per part,
    tokens per part, the windows' digest). calib None = DEFAULT_MIX; mix: one weight per calib part;
    self_windows(n) -> n windows sampled from the model, for the part `self`."""
    from .selfgen import SELF
    if calib:
        specs, weights = list(calib), list(mix) if mix else [1.0] * len(calib)
    else:
        specs, weights = [spec for spec, _ in DEFAULT_MIX], list(mix) if mix else [w for _, w in DEFAULT_MIX]
    if len(weights) != len(specs):
        raise EdgeqError(f"--calib-mix needs one weight per --calib part ({len(specs)}), got {len(weights)}")
    parts, skipped, start = [], [], sequence_start(tokenizer)  # parts: (label, weight, tokens or window function)
    for spec, weight in zip(specs, weights):
        if spec == SELF:
            parts.append((SELF, weight, self_windows))
            continue
        part = read_part(spec, tokenizer)
        if part is None:  # a built-in text that does not apply to this model (chat without a template)
            skipped.append(spec)
            continue
        tokens = tokenize(tokenizer, part.text)
        if tokens.numel() < seq_len - len(start):
            raise EdgeqError(f"calibration text too short: {part.label} has {tokens.numel()} tokens, need at "
                             f"least --seq-len {seq_len}")
        parts.append((part.label, weight, tokens))
    if not parts:
        raise EdgeqError(f"no calibration text left: {', '.join(skipped)} do not apply to this model")
    windows, counts = mixed_windows([p for _, _, p in parts], [w for _, w, _ in parts], samples, seq_len, seed,
                                    start)
    record = {"text": " + ".join(label for label, _, _ in parts), "samples": samples, "seq_len": seq_len,
              "seed": seed, "digest": digest(windows),
              "parts": [{"label": label, "weight": w, "windows": n,
                         "tokens": n * seq_len if callable(p) else int(p.numel())}
                        for (label, w, p), n in zip(parts, counts)]}
    if skipped:
        record["skipped"] = skipped
    if start:
        record["sequence_start"] = list(start)
    return windows, record


def digest(windows: torch.Tensor) -> str:
    return "sha256:" + hashlib.sha256(windows.numpy().tobytes()).hexdigest()[:16]

"""Text -> token windows: calibration samples (random windows, seeded) and evaluation windows (consecutive)."""
from __future__ import annotations

import gzip
import hashlib
from importlib import resources
from pathlib import Path

import torch

from ..errors import EdgeqError

# Public-domain novels shipped in the package (Project Gutenberg texts): one for calibration, a different
# one for held-out evaluation, so that the defaults never evaluate on calibration text.
DEFAULT_CALIB = "pride_and_prejudice.txt.gz"
DEFAULT_EVAL = "persuasion.txt.gz"


def read_text(path: str | None, default: str) -> tuple[str, str]:
    """(text, label). path None -> the packaged default text."""
    if path is None:
        blob = resources.files("edgeq.data").joinpath(default).read_bytes()
        return gzip.decompress(blob).decode("utf-8"), f"edgeq default ({default.removesuffix('.txt.gz')})"
    p = Path(path).expanduser()
    if not p.is_file():
        raise EdgeqError(f"text file not found: {path}")
    text = p.read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        raise EdgeqError(f"text file is empty: {path}")
    return text, str(p)


def tokenize(tokenizer, text: str, chunk_chars: int = 20_000) -> torch.Tensor:
    """Token ids of the whole text, encoded paragraph-aligned chunk by chunk: one encoding of a novel
    holds ~100 MB of offsets and strings at once, and that would set the run's peak memory."""
    pieces, start = [], 0
    while start < len(text):
        end = text.find("\n\n", start + chunk_chars)
        end = len(text) if end < 0 else end
        ids = tokenizer(text[start:end], add_special_tokens=False, return_attention_mask=False)["input_ids"]
        pieces.append(torch.tensor(ids, dtype=torch.long))
        start = end
    return torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.long)


def calibration_windows(tokens: torch.Tensor, samples: int, seq_len: int, seed: int = 0) -> torch.Tensor:
    """`samples` random windows of seq_len tokens [samples, seq_len] (GPTQ's sampling), seeded."""
    if samples < 1 or seq_len < 2:
        raise EdgeqError("need at least 1 calibration sample of at least 2 tokens")
    if tokens.numel() < seq_len:
        raise EdgeqError(f"calibration text too short: {tokens.numel()} tokens, need at least "
                         f"--seq-len {seq_len}")
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, tokens.numel() - seq_len + 1, (samples,), generator=gen)
    return torch.stack([tokens[s:s + seq_len] for s in starts.tolist()])


def eval_windows(tokens: torch.Tensor, seq_len: int, max_windows: int | None = None) -> torch.Tensor:
    """Consecutive non-overlapping windows [W, seq_len] from the start of the text (the tail dropped)."""
    count = tokens.numel() // seq_len
    if count == 0:
        raise EdgeqError(f"evaluation text too short: {tokens.numel()} tokens for --seq-len {seq_len}")
    if max_windows:
        count = min(count, max_windows)
    return tokens[:count * seq_len].reshape(count, seq_len)


def digest(windows: torch.Tensor) -> str:
    return "sha256:" + hashlib.sha256(windows.numpy().tobytes()).hexdigest()[:16]

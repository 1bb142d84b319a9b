"""`--calib self`: calibration windows sampled from the float model itself, so that no data set is needed.

As in LLM-QAT's data-free calibration (Liu et al., 2023, section 2.1): each sequence starts from a random
vocabulary token, takes its next few tokens greedily (top-1, so it settles into fluent text), then samples
the rest from the model's full distribution (temperature 1). Generated once per (model, count, length,
seed) and cached under the edgeq cache, so later runs of the same job read the windows back.
"""
from __future__ import annotations

import hashlib
import inspect
from pathlib import Path

import torch

from ..io.checkpoint import load_tensor_file, save_tensor_file
from ..util.progress import progress_bar

SELF = "self"
GREEDY_TOKENS = 4  # LLM-QAT: "the first 3~5 tokens" are top-1


def cache_path(model_key: str, count: int, seq_len: int, seed: int) -> Path:
    from ..io.models import cache_root
    key = hashlib.sha256(f"{model_key}:{count}:{seq_len}:{seed}:{GREEDY_TOKENS}".encode()).hexdigest()[:16]
    return cache_root() / "calib" / f"self-{key}.safetensors"


@torch.no_grad()
def generate_windows(model, vocab_size: int, count: int, seq_len: int, seed: int = 0, batch_size: int = 16,
                     special_ids: set[int] = frozenset(), progress: bool = True) -> torch.Tensor:
    """[count, seq_len] token windows sampled from `model` (a float causal LM), deterministic for a seed."""
    gen = torch.Generator().manual_seed(seed)
    allowed = torch.tensor([t for t in range(vocab_size) if t not in special_ids])
    out = torch.empty(count, seq_len, dtype=torch.long)
    bar = progress_bar(total=count * seq_len, desc="generate calibration", unit="tok", enabled=progress)
    for start in range(0, count, batch_size):
        n = min(batch_size, count - start)
        ids = allowed[torch.randint(0, allowed.numel(), (n,), generator=gen)][:, None]
        out[start:start + n] = _sample(model, ids, seq_len, gen, bar)
    bar.close()
    return out


def _sample(model, ids: torch.Tensor, seq_len: int, gen: torch.Generator, bar) -> torch.Tensor:
    """Extend ids [n, 1] to [n, seq_len] with a KV cache: top-1 for the first tokens, then sampling."""
    # transformers 5.2x renamed past_key_values to cache (the old name warns); take whichever it has
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    past, seq, step_input = None, [ids], ids
    for position in range(1, seq_len):
        output = model(input_ids=step_input, use_cache=True, **{name: past})
        past = getattr(output, name)
        logits = output.logits[:, -1].float()
        if position <= GREEDY_TOKENS:
            step_input = logits.argmax(-1, keepdim=True)
        else:
            step_input = torch.multinomial(torch.softmax(logits, -1), 1, generator=gen)
        seq.append(step_input)
        bar.update(ids.shape[0])
    return torch.cat(seq, dim=1)


def self_windows(source, model_key: str, tokenizer, count: int, seq_len: int, seed: int,
                 progress: bool = True) -> torch.Tensor:
    """The cached windows of this job, or generated now with the float model (loaded whole, then freed).
    model_key: what identifies the weights (models.weights_fingerprint), so that new weights regenerate."""
    from ..io.models import load_model
    path = cache_path(model_key, count, seq_len, seed)
    if path.is_file():
        return load_tensor_file(path)
    model, config = load_model(source)
    windows = generate_windows(model, config.vocab_size, count, seq_len, seed,
                               special_ids=set(tokenizer.all_special_ids), progress=progress)
    del model
    path.parent.mkdir(parents=True, exist_ok=True)
    save_tensor_file(path, windows)
    return windows

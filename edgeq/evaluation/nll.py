"""A torch model's next-token NLL on a batch of windows, the scorer heldout.py runs for a float model or a
checkpoint (an exported folder is scored by runtime/session.py instead). Logits are formed in chunks of positions: a full [512, 49152] float32 logit matrix
per window would cost 100 MB for nothing."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..io.models import Arch, get_module, logits_scale


@torch.no_grad()
def window_nll(model, arch: Arch, ids: torch.Tensor, chunk: int = 128) -> tuple[float, int]:
    """(sum of NLL over predicted positions, count) for one batch of windows [B, L]."""
    hidden = get_module(model, arch.base)(input_ids=ids, use_cache=False).last_hidden_state
    head = get_module(model, arch.lm_head)
    scale = logits_scale(model.config) or 1.0
    targets = ids[:, 1:]
    hidden = hidden[:, :-1]
    total = 0.0
    for start in range(0, hidden.shape[1], chunk):
        logits = head(hidden[:, start:start + chunk]).float() * scale
        total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                       targets[:, start:start + chunk].reshape(-1), reduction="sum"))
    return total, targets.numel()

"""The exported folder's tokenizer through the `tokenizers` library alone (tokenizer.json), so generation
on a device needs no transformers."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import EdgeqError


def load_tokenizer(folder):
    """(tokenizers.Tokenizer, end-of-sequence id or None) of an exported folder."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise EdgeqError("generation needs the tokenizers package: pip install 'edgeq[runtime]'") from None
    path = Path(folder) / "tokenizer.json"
    if not path.is_file():
        raise EdgeqError(f"{folder}: no tokenizer.json (an edgeq export folder has one)")
    config = Path(folder) / "config.json"
    eos = json.loads(config.read_text()).get("eos_token_id") if config.is_file() else None
    return Tokenizer.from_file(str(path)), eos[0] if isinstance(eos, list) else eos

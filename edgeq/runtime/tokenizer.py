"""The exported folder's tokenizer through the `tokenizers` library alone (tokenizer.json), so generation
on a device needs no transformers."""
from __future__ import annotations

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
    return Tokenizer.from_file(str(path)), end_of_sequence(Path(folder))


def end_of_sequence(folder: Path) -> int | None:
    """genai_config.json's id (edgeq export resolves it from the model config, else the tokenizer, so that
    `edgeq generate` and onnxruntime-genai stop alike), else config.json's, else None."""
    from .session import GENAI_CONFIG, folder_setting
    value = folder_setting(folder, (GENAI_CONFIG, "model", "eos_token_id"), ("config.json", "eos_token_id"))
    return value[0] if isinstance(value, list) else value

"""Calibration text from many places, mixed by weight.

One `--calib` argument is one part of the mix: a text file, a `.jsonl` file (a `text` field per line, or
chat `messages` rendered with the model's own chat template), a folder or a glob (every text, markdown,
jsonl and Python file in it, in sorted order), or a text every Python installation has:

    builtin:novel        the packaged Pride and Prejudice (fiction)
    builtin:persuasion   the packaged Persuasion (edgeq's held-out text: never calibrate and evaluate on it)
    builtin:pydoc        Python's own documentation topics, pydoc_data.topics (technical prose)
    builtin:code         the standard library's own sources (code), a fixed list of modules
    builtin:chat         dialogue in the model's chat template: questions answered by pydoc topics and
                         requests to continue the novel; skipped for a model without a chat template

Why by hand: datasets would bring a hub download and a cache for what is a few files of text; the
windows must be identical on every machine with the same inputs (the digest in quantization.json).
"""
from __future__ import annotations

import glob
import gzip
import json
import sysconfig
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .errors import EdgeqError
from .util.paths import read_utf8

BUILTIN = "builtin:"
TEXT_SUFFIXES = (".txt", ".md", ".rst", ".jsonl", ".py")
PACKAGED = {"novel": "pride_and_prejudice.txt.gz", "persuasion": "persuasion.txt.gz"}
# Public-domain novels shipped in the package (Project Gutenberg texts): one for calibration, a different
# one for held-out evaluation, so that the defaults never evaluate on calibration text.
DEFAULT_CALIB = PACKAGED["novel"]
DEFAULT_EVAL = PACKAGED["persuasion"]
# Pure-Python modules present in every CPython 3.9+ standard library, so builtin:code means the same
# kind of code everywhere (its exact bytes follow the Python version; the digest records what was used).
CODE_MODULES = ("argparse.py", "dataclasses.py", "textwrap.py", "pathlib.py", "configparser.py", "difflib.py",
                "fractions.py", "heapq.py", "inspect.py", "statistics.py", "string.py", "shlex.py",
                "tarfile.py", "zipfile.py", "json/encoder.py", "json/decoder.py", "csv.py", "calendar.py")
CHAT_PAIRS = 400  # dialogues in builtin:chat; ~300k characters, the size of the other built-in parts


@dataclass(frozen=True)
class Part:
    """One calibration part: its label (what quantization.json records) and its text."""
    label: str
    text: str


def packaged_file_text(filename: str) -> str:
    """A text shipped in edgeq/data (gzipped)."""
    return gzip.decompress(resources.files("edgeq.data").joinpath(filename).read_bytes()).decode("utf-8")


def packaged_text(name: str) -> str:
    return packaged_file_text(PACKAGED[name])


def pydoc_topics() -> list[tuple[str, str]]:
    from pydoc_data.topics import topics
    return sorted(topics.items())


def stdlib_code() -> str:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [root / m for m in CODE_MODULES if (root / m).is_file()]
    return "\n\n".join(f.read_text(encoding="utf-8", errors="replace") for f in files)


def chat_dialogues() -> list[list[dict]]:
    """Conversations made of text every installation has: a question about a pydoc topic answered by the
    topic itself, and a request to continue the novel answered by the next paragraphs. Deterministic."""
    topics = pydoc_topics()
    paragraphs = [p.strip() for p in packaged_text("novel").split("\n\n") if len(p.strip()) > 200]
    out = []
    for i in range(CHAT_PAIRS):
        if i % 2 == 0:
            name, body = topics[(i // 2) % len(topics)]
            question = f"What does the Python documentation say about '{name}'?"
            out.append([{"role": "user", "content": question}, {"role": "assistant", "content": body[:1500]}])
        else:
            j = (i * 7) % (len(paragraphs) - 2)
            out.append([{"role": "user", "content": f"Continue this story:\n\n{paragraphs[j]}"},
                        {"role": "assistant", "content": paragraphs[j + 1] + "\n\n" + paragraphs[j + 2]}])
    return out


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_chat(tokenizer, messages: list[dict]) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False)


def builtin_part(name: str, tokenizer) -> Part | None:
    """A built-in text; None where it does not apply (builtin:chat for a model without a chat template)."""
    label = BUILTIN + name
    if name in PACKAGED:
        return Part(label, packaged_text(name))
    if name == "pydoc":
        return Part(label, "\n\n".join(body for _, body in pydoc_topics()))
    if name == "code":
        return Part(label, stdlib_code())
    if name == "chat":
        if not has_chat_template(tokenizer):
            return None
        return Part(label, "\n".join(render_chat(tokenizer, m) for m in chat_dialogues()))
    names = ", ".join(BUILTIN + n for n in (*PACKAGED, "pydoc", "code", "chat"))
    raise EdgeqError(f"unknown calibration text {label!r}; built-in texts are {names}")


def jsonl_text(path: Path, tokenizer) -> str:
    """The documents of a .jsonl file: a `text` string per line, or chat `messages` (rendered)."""
    docs = []
    for n, line in enumerate(read_utf8(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise EdgeqError(f"{path}:{n}: not a JSON line") from None
        if isinstance(record, dict) and isinstance(record.get("text"), str):
            docs.append(record["text"])
        elif isinstance(record, dict) and isinstance(record.get("messages"), list):
            if not all(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                       for m in record["messages"]):
                raise EdgeqError(f"{path}:{n}: each of 'messages' must be an object with 'role' and 'content' strings")
            if not has_chat_template(tokenizer):
                raise EdgeqError(f"{path}:{n}: chat messages, but the model's tokenizer has no chat template")
            docs.append(render_chat(tokenizer, record["messages"]))
        else:
            raise EdgeqError(f"{path}:{n}: expected an object with a 'text' string or a 'messages' list")
    return "\n\n".join(docs)


def file_text(path: Path, tokenizer) -> str:
    if path.suffix == ".jsonl":
        return jsonl_text(path, tokenizer)
    return read_utf8(path)


def files_of(spec: str) -> list[Path] | None:
    """The files a folder or a glob names, sorted; None when spec is neither."""
    p = Path(spec).expanduser()
    if p.is_dir():
        return sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in TEXT_SUFFIXES)
    if any(c in spec for c in "*?["):
        return sorted(Path(f) for f in glob.glob(str(p), recursive=True) if Path(f).is_file())
    return None


def read_part(spec: str, tokenizer) -> Part | None:
    """One --calib argument as a Part (None: a built-in text that does not apply to this model)."""
    if spec.startswith(BUILTIN):
        return builtin_part(spec[len(BUILTIN):], tokenizer)
    files = files_of(spec)
    if files is None:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise EdgeqError(f"calibration text file not found: {spec}")
        files = [path]
    elif not files:
        raise EdgeqError(f"no text files ({', '.join(TEXT_SUFFIXES)}) in {spec}")
    text = "\n\n".join(file_text(f, tokenizer) for f in files)
    if not text.strip():
        raise EdgeqError(f"calibration text file is empty: {spec}")
    return Part(spec if len(files) != 1 or files[0] != Path(spec).expanduser() else str(files[0]), text)

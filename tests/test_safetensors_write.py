"""Our chunked safetensors writer against safetensors' own reader; a mapped table hashed and written
without becoming resident whole."""
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from edgeq.io.safetensors_write import write_safetensors


def test_safetensors_reads_back_every_dtype_and_the_metadata(tmp_path):
    gen = torch.Generator().manual_seed(0)
    tensors = {"f32": torch.randn(3, 5, generator=gen), "f64": torch.randn(7, dtype=torch.float64, generator=gen),
               "f16": torch.randn(4, 2, generator=gen).half(), "bf16": torch.randn(9, generator=gen).bfloat16(),
               "i64": torch.arange(-3, 3), "i32": torch.arange(5, dtype=torch.int32), "u8": torch.arange(250, 255).to(torch.uint8),
               "i8": torch.tensor([-128, 0, 127], dtype=torch.int8), "bool": torch.tensor([True, False, True]),
               "scalar": torch.tensor(2.5), "empty": torch.zeros(0, 4), "strided": torch.randn(6, 4, generator=gen).T}
    write_safetensors(tmp_path / "t.safetensors", tensors, {"b": "2", "a": "1"})
    back = load_file(str(tmp_path / "t.safetensors"))
    assert back.keys() == tensors.keys()
    for name, t in tensors.items():
        assert back[name].dtype == t.dtype and torch.equal(back[name], t), name
    with safe_open(str(tmp_path / "t.safetensors"), "pt") as f:
        assert f.metadata() == {"a": "1", "b": "2"}


def test_the_same_tensors_give_the_same_bytes_in_any_order(tmp_path):
    a = {"x": torch.arange(10.0), "y": torch.arange(3, dtype=torch.uint8), "z": torch.ones(2, 2, dtype=torch.float16)}
    write_safetensors(tmp_path / "1", a, {"k": "v", "j": "w"})
    write_safetensors(tmp_path / "2", dict(reversed(list(a.items()))), {"j": "w", "k": "v"})
    assert (tmp_path / "1").read_bytes() == (tmp_path / "2").read_bytes()
    header_length = int.from_bytes((tmp_path / "1").read_bytes()[:8], "little")
    assert header_length % 8 == 0


def test_an_unstorable_dtype_is_refused(tmp_path):
    with pytest.raises(TypeError, match="complex"):
        write_safetensors(tmp_path / "c", {"c": torch.zeros(2, dtype=torch.complex64)})


MAPPED_TABLE = """
import sys, torch
from pathlib import Path
from edgeq.io.checkpoint import tensors_digest
from edgeq.io.safetensors_scan import map_float32
from edgeq.io.safetensors_write import write_safetensors
folder = Path(sys.argv[1])
write_safetensors(folder / "table.safetensors", {"table": torch.ones(32 << 20)})  # 128 MB
def rss_file_mb():
    line = next(l for l in open("/proc/self/status") if l.startswith("RssFile"))
    return int(line.split()[1]) / 1024
table = map_float32(folder / "table.safetensors", ["table"])["table"]
before = rss_file_mb()
tensors_digest({"table": table})
write_safetensors(folder / "copy.safetensors", {"table": table})
print(rss_file_mb() - before, float(table[::4096].sum()))
"""


def test_a_mapped_table_is_hashed_and_written_a_chunk_at_a_time(tmp_path):
    """RssFile growth over reading a 128 MB mapped table twice stays under two 64 MB chunks: each chunk's
    pages go back once read (before, the whole table stayed resident)."""
    done = subprocess.run([sys.executable, "-c", MAPPED_TABLE, str(tmp_path)], capture_output=True, text=True,
                          check=True)
    growth, total = map(float, done.stdout.split())
    assert total == (32 << 20) / 4096  # the table still reads back after its pages went
    assert growth < 100, growth
    assert load_file(str(tmp_path / "copy.safetensors"))["table"].eq(1).all()


SCATTERED_ROWS = """
import gc, sys, torch
from pathlib import Path
from edgeq.io import safetensors_scan
from edgeq.io.safetensors_scan import map_float32, release_mapped_tables
from edgeq.io.safetensors_write import write_safetensors
folder = Path(sys.argv[1])
write_safetensors(folder / "table.safetensors", {"table": torch.arange(16 << 20, dtype=torch.float32).view(-1, 1024)})
def rss_file_mb():
    line = next(l for l in open("/proc/self/status") if l.startswith("RssFile"))
    return int(line.split()[1]) / 1024
table = map_float32(folder / "table.safetensors", ["table"])["table"]
before = rss_file_mb()
rows = torch.nn.functional.embedding(torch.arange(0, 16384, 64), table)  # one 4 KB row in 64: 1 MB read
touched = rss_file_mb() - before
release_mapped_tables()
released = rss_file_mb() - before
again = torch.nn.functional.embedding(torch.arange(0, 16384, 64), table)
registered = len(safetensors_scan._MAPPED)
del table
gc.collect()
print(touched, released, bool(torch.equal(rows, again)), registered, len(safetensors_scan._MAPPED))
"""


def test_the_pages_around_rows_read_from_a_mapped_table_are_handed_back(tmp_path):
    """Reading one row in 64 of a 64 MB mapped table makes far more than those rows resident (the kernel's
    fault-around); release_mapped_tables hands them back, the rows still read the same afterwards, and a
    mapping no tensor holds leaves the registry."""
    done = subprocess.run([sys.executable, "-c", SCATTERED_ROWS, str(tmp_path)], capture_output=True, text=True,
                          check=True)
    touched, released, same, registered, left = done.stdout.split()
    assert float(touched) > 4 and float(released) < float(touched) / 8, (touched, released)
    assert same == "True" and (registered, left) == ("1", "0")

"""A checkpoint notices when its files were edited, swapped or corrupted: per-layer widths changed in
quantization.json (which otherwise unpack without error into wrong weights), a flipped byte in the tensors,
a missing layers table; each a one-line refusal."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from edgeq.io import checkpoint
from edgeq.quant import pack
from edgeq.errors import EdgeqError


@pytest.fixture
def copy(tiny_checkpoint, tmp_path):
    out = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, out)
    return out


def edit_meta(folder, change):
    path = folder / checkpoint.META_FILE
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


def test_an_untouched_checkpoint_verifies(copy):
    meta = json.loads((copy / checkpoint.META_FILE).read_text())
    assert len(meta["tensors_sha256"]) == 64
    checkpoint.load_checkpoint(copy)


@pytest.mark.parametrize("bits", [2, 3])
def test_widths_edited_in_quantization_json_are_refused(copy, bits):
    name = None

    def narrow(meta):
        nonlocal name
        name = sorted(meta["layers"])[0]
        meta["layers"][name]["bits"] = bits
    edit_meta(copy, narrow)
    with pytest.raises(EdgeqError, match=f"says {name} is .*'bits': {bits}.* saved as .*'bits': 4"):
        checkpoint.load_checkpoint(copy)


def test_a_wrong_width_is_refused_by_size_even_without_the_saved_layout():
    """The exact-size check alone: 4-bit codes read as 2-bit would unpack from half their bytes."""
    info = {"bits": 4, "group_size": 32, "shape": [8, 64]}
    q = torch.randint(0, 16, (8, 64), dtype=torch.uint8)
    zeros = torch.zeros(8, 2, dtype=torch.uint8).numpy()
    tensors = {"w.qweight": torch.from_numpy(pack.pack_blocks(q.numpy(), 4, 32)), "w.scales": torch.ones(8, 2),
               "w.qzeros": torch.from_numpy(pack.pack_codes(zeros, 4))}
    assert torch.equal(checkpoint.qweights_from_tensors(tensors, {"w": info})["w"].q, q)
    with pytest.raises(EdgeqError, match=r"qweight is \[8, 2, 16\], but 2-bit codes .* are \[8, 2, 8\]"):
        checkpoint.qweights_from_tensors(tensors, {"w": {**info, "bits": 2}})


def test_a_corrupted_tensor_byte_is_refused(copy):
    path = copy / checkpoint.WEIGHTS_FILE
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # inside the last tensor's bytes: the file still parses
    path.write_bytes(bytes(data))
    with pytest.raises(EdgeqError, match="does not match the digest"):
        checkpoint.load_checkpoint(copy)


def test_quantization_json_without_layers_is_refused(copy):
    edit_meta(copy, lambda meta: meta.pop("layers"))
    with pytest.raises(EdgeqError, match="has no 'layers' table"):
        checkpoint.load_checkpoint(copy)

"""edgeq export --format gguf: the blocks edgeq packs are what the gguf library de-quantizes for Q4_0, Q4_1 and
Q8_0, and a checkpoint of the bundled model written as GGUF loads in transformers' own GGUF reader (which undoes
llama.cpp's q/k row order) to the checkpoint's logits. Grids that do not map are refused before anything is
written."""
import numpy as np
import pytest
import torch

from edgeq.errors import EdgeqError
from edgeq.export import gguf as gguf_export
from edgeq.quant.qweight import QuantizedWeight
from tests.conftest import edgeq_cli


def random_qweight(bits: int, sym: bool, n: int = 6, k: int = 96) -> QuantizedWeight:
    g = torch.Generator().manual_seed(bits + sym)
    q = torch.randint(0, 2 ** bits, (n, k), generator=g, dtype=torch.uint8)
    zero = (torch.full((n, k // 32), 2 ** (bits - 1)) if sym else
            torch.randint(0, 2 ** bits, (n, k // 32), generator=g)).to(torch.uint8)
    scale = torch.rand(n, k // 32, generator=g) * 0.1 + 1e-3
    return QuantizedWeight(q, scale, zero, bits, 32)


@pytest.mark.parametrize("bits,sym,kind", [(4, True, "Q4_0"), (4, False, "Q4_1"), (8, True, "Q8_0")])
def test_packed_blocks_are_what_gguf_dequantizes(bits, sym, kind):
    import gguf
    from gguf.quants import dequantize
    qw = random_qweight(bits, sym)
    assert gguf_export.block_type("w", qw) == kind
    data = gguf_export.pack_blocks(qw, kind)
    back = dequantize(data, gguf.GGMLQuantizationType[kind]).reshape(qw.q.shape)
    exact = qw.dequantize().numpy()
    assert np.abs(back - exact).max() <= 2e-3 * np.abs(exact).max()  # float16 d (and m)


def test_grids_without_a_block_type_are_refused():
    with pytest.raises(EdgeqError, match="groups of 64"):
        gguf_export.block_type("blk.mlp", QuantizedWeight(*_codes(64), 4, 64))
    with pytest.raises(EdgeqError, match="8-bit asymmetric"):
        gguf_export.block_type("blk.mlp", random_qweight(8, False))


def _codes(group):
    return (torch.zeros(2, 128, dtype=torch.uint8), torch.ones(2, 128 // group), torch.zeros(2, 128 // group,
                                                                                              dtype=torch.uint8))


def test_a_bundled_checkpoint_as_gguf_loads_in_transformers_with_its_logits(tmp_path):
    from transformers import AutoModelForCausalLM

    from edgeq.io.checkpoint import load_checkpoint
    ckpt = tmp_path / "w4"
    edgeq_cli("quantize", "--method", "rtn", "--bits", "4", "--group-size", "32", "--sym", "--layer-grid",
              "down_proj=8:32", "--out", ckpt, "--quiet")
    with pytest.raises(AssertionError, match="--gguf-base"):  # a one-line refusal, nothing written
        edgeq_cli("export", ckpt, "--format", "gguf", "--out", tmp_path / "x.gguf", "--gguf-base", tmp_path / "no")
    printed = edgeq_cli("export", ckpt, "--format", "gguf", "--out", tmp_path / "w4.gguf")
    assert "180 Q4_0, 30 Q8_0 linears" in printed, printed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w4", "w4.gguf"]
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="w4.gguf", dtype=torch.float32)
    ours, _, _ = load_checkpoint(ckpt)
    ids = torch.randint(0, 49000, (1, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = ours(ids).logits, theirs(ids).logits
    assert float((a - b).abs().max() / a.abs().max()) < 5e-3  # float16 scales; a wrong q/k order gives ~1

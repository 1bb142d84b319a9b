"""Resident memory of a calibrated quantize does not grow block after block (the streaming promise).

Measured inside the block loop, not as the process's peak: the peak of a whole `edgeq quantize` is set before
the loop (model load, tokenizer, kernel compilation), so comparing the peaks of a 4- and a 16-block model
compared that phase's noise, and it failed CI by 1 MB (1520 - 1473 MB against a 46.75 MB bound). What
streaming must guarantee is that finished blocks leave nothing behind: the resident size after the last
block is that after the fourth, whatever the model's depth.
"""
import pytest

from conftest import save_tiny_model
from edgeq.util.memory import rss_mb

# Blocks fat enough that keeping them would show: 256 wide, MLP 2048, so 6.75 MiB of fp32 per block and
# 81 MiB over the 12 blocks between the 4th and the 16th, against a bound of one block plus 10 MiB.
WIDE = dict(hidden_size=256, intermediate_size=2048, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=128)
MARGIN_MB = 10


def block_mb(hidden: int, inter: int, kv_heads: int, heads: int) -> float:
    kv = hidden * kv_heads // heads
    return 4 * (2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * inter) / 2**20


@pytest.mark.skipif(rss_mb() is None, reason="no /proc/self/statm: resident memory unknown here")
def test_resident_memory_after_block_16_is_that_after_block_4(bundled_tokenizer, tmp_path):
    from edgeq import api
    model = save_tiny_model(tmp_path / "m16", bundled_tokenizer, num_hidden_layers=16, **WIDE)
    after_block = {}
    config = api.QuantConfig(method="gptq", samples=4, seq_len=64, solver_opts={"clip": "minmax"})
    api.quantize(str(model), tmp_path / "q", config, progress=False,
                 on_block_done=lambda i: after_block.__setitem__(i, rss_mb()))
    one_block = block_mb(WIDE["hidden_size"], WIDE["intermediate_size"], 2, 4)
    assert 12 * one_block > one_block + MARGIN_MB  # keeping the float blocks would break the bound
    assert after_block[15] - after_block[3] < one_block + MARGIN_MB, (after_block, one_block)

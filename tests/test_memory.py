"""Peak memory of a calibrated quantize grows with one block, not with the model (the streaming promise)."""
import json

from conftest import edgeq_cli, save_tiny_model

# Blocks fat enough that holding the model would show: 256 wide, MLP 2048, so 7.1 MB of fp32 per block and
# 85 MB between the 4- and the 16-block model, against a margin of one block plus 40 MB of allocator noise.
WIDE = dict(hidden_size=256, intermediate_size=2048, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=128)
MARGIN_MB = 40


def block_mb(hidden: int, inter: int, kv_heads: int, heads: int) -> float:
    kv = hidden * kv_heads // heads
    return 4 * (2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * inter) / 2**20


def peak_rss_of_quantize(model_dir, out) -> float:
    edgeq_cli("quantize", model_dir, "--out", out, "--method", "gptq", "--samples", "4", "--seq-len", "64", "--clip", "minmax", "--quiet")
    return json.loads((out / "quantization.json").read_text())["stats"]["peak_rss_mb"]


def test_peak_rss_of_16_blocks_is_that_of_4_plus_at_most_a_block(bundled_tokenizer, tmp_path):
    peaks = {}
    for blocks in (4, 16):
        model = save_tiny_model(tmp_path / f"m{blocks}", bundled_tokenizer, num_hidden_layers=blocks, **WIDE)
        peaks[blocks] = peak_rss_of_quantize(model, tmp_path / f"q{blocks}")
    one_block = block_mb(WIDE["hidden_size"], WIDE["intermediate_size"], 2, 4)
    assert 12 * one_block > one_block + MARGIN_MB  # the test could see 12 extra blocks held at once
    assert peaks[16] - peaks[4] < one_block + MARGIN_MB, (peaks, one_block)

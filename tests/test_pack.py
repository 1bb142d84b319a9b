"""Bit packing against a plain per-value reference, and the MatMulNBits byte layout."""
import numpy as np
import pytest

from edgeq.quant import pack


def naive_pack(values, bits):
    """One bit at a time into a little-endian stream: the definition, written the slow obvious way."""
    out = bytearray(-(-len(values) * bits // 8))
    for i, v in enumerate(values):
        for b in range(bits):
            pos = i * bits + b
            out[pos // 8] |= ((int(v) >> b) & 1) << (pos % 8)
    return np.frombuffer(bytes(out), dtype=np.uint8)


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("count", [1, 7, 16, 33, 576])
def test_pack_matches_naive_and_round_trips(bits, count):
    rng = np.random.default_rng(bits * 1000 + count)
    q = rng.integers(0, 2 ** bits, size=(3, count), dtype=np.uint8)
    packed = pack.pack_codes(q, bits)
    assert packed.shape == (3, pack.packed_length(count, bits))
    for row in range(3):
        np.testing.assert_array_equal(packed[row], naive_pack(q[row], bits))
    np.testing.assert_array_equal(pack.unpack_codes(packed, bits, count), q)


def test_four_bit_layout_is_low_nibble_first():
    # MatMulNBits: the first value of a byte sits in its low nibble
    assert pack.pack_codes(np.array([[0x3, 0xA]], dtype=np.uint8), 4).tolist() == [[0xA3]]
    assert pack.pack_codes(np.array([[1, 2, 3, 0]], dtype=np.uint8), 2).tolist() == [[0b00111001]]


@pytest.mark.parametrize("bits,block", [(2, 32), (4, 64), (4, 128), (8, 32), (3, 128)])
def test_blocks_pad_partial_last_block(bits, block):
    rng = np.random.default_rng(0)
    k = 576  # 4.5 blocks of 128: the last block is partial
    q = rng.integers(0, 2 ** bits, size=(5, k), dtype=np.uint8)
    b = pack.pack_blocks(q, bits, block)
    assert b.shape == (5, -(-k // block), block * bits // 8)
    np.testing.assert_array_equal(pack.unpack_blocks(b, bits, block, k), q)
    padding = pack.unpack_codes(b, bits, block).reshape(5, -1)[:, k:]
    assert not padding.any()


def test_refuses_codes_wider_than_bits():
    with pytest.raises(ValueError):
        pack.pack_codes(np.array([[4]], dtype=np.uint8), 2)

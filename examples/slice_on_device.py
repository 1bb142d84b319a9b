"""One int8 MatQuant export on the device, three widths: the app picks int8, int4 or int2 when it loads the
model, from the memory it can spend, and slices the codes in memory (nothing is written, no checkpoint).

    edgeq quantize --method matquant --out mq && edgeq export mq --out mq-onnx      # on the laptop
    python examples/slice_on_device.py mq-onnx --prompt "It is a truth"             # on the device
    python examples/slice_on_device.py mq-onnx --bits 2 --prompt "It is a truth"
    python examples/slice_on_device.py mq-onnx --bits 3.5    # Mix'n'Match: a width per layer, 3.5 bits on average

Needs only `pip install "edgeq[runtime]"` (numpy, onnxruntime, onnx, tokenizers; no torch). An app in
another language does the same three steps on the ONNX protobuf: read the sliceable node names from the
model's metadata, cut each node's codes to their top bits (edgeq/quant/nesting.py, five lines), create the
session from the bytes.
"""
import argparse
import os

import onnx

from edgeq.util.argtypes import parse_slice
from edgeq.runtime.session import MODEL_FILE, OrtDecoder, cpu_session
from edgeq.runtime.slicing import nested_widths, slice_model, sliceable_nodes
from edgeq.runtime.tokenizer import load_tokenizer


def weight_bytes(proto, bits: int) -> int:
    """Bytes of the initializers once the sliceable nodes hold `bits`-bit codes (3 bits live in 4)."""
    names = sliceable_nodes(proto)
    codes = {n.input[1] for n in proto.graph.node if n.name in names}
    container = 4 if bits == 3 else bits
    return sum(len(t.raw_data) * container // 8 if t.name in codes else len(t.raw_data)
               for t in proto.graph.initializer)


def available_bytes() -> int | None:
    """Memory the OS could give us now (Linux and Android; None elsewhere)."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def choose_width(proto, budget: int | None) -> int:
    """The widest width the codes were made for whose weights fit in half the budget."""
    widths = nested_widths(proto) or [8]
    for bits in widths:
        if budget is None or weight_bytes(proto, bits) <= budget // 2:
            return bits
    return widths[-1]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="an `edgeq export` folder of a matquant checkpoint (8-bit codes)")
    parser.add_argument("--bits", default="auto", help="8, 4, 2, an average such as 3.5 (a width per layer), "
                        "or auto (by available memory; default)")
    parser.add_argument("--prompt", default="It is a truth universally acknowledged")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    args = parser.parse_args()

    proto = onnx.load(os.path.join(args.folder, MODEL_FILE))
    bits = choose_width(proto, available_bytes()) if args.bits == "auto" else parse_slice(args.bits)
    for width in (8, 4, 2):
        print(f"int{width}: {weight_bytes(proto, width) / 2 ** 20:.1f} MB of weights")
    if bits != 8:
        widths = slice_model(proto, bits)
        print("widths: " + ", ".join(f"int{b} {list(widths.values()).count(b)} nodes" for b in sorted(set(widths.values()))))
    decoder = OrtDecoder(cpu_session(proto.SerializeToString()))
    tokenizer, eos = load_tokenizer(args.folder)
    ids = decoder.greedy(tokenizer.encode(args.prompt, add_special_tokens=False).ids, args.max_new_tokens, eos)
    print(f"running {bits} bits: {args.prompt}{tokenizer.decode(ids)}")


if __name__ == "__main__":
    main()

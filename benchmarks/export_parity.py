"""Does the exported graph compute what the checkpoint computes? Perplexity (torch vs onnxruntime, same
windows) and greedy generation (torch vs onnxruntime, same prompt), for one checkpoint and its exports.

    python benchmarks/export_parity.py CKPT ONNX_DIR [ONNX_DIR...] [--text F] [--max-windows 20] [--tokens 32]
"""
import argparse

import torch
from transformers import AutoTokenizer

from edgeq import api
from edgeq.io import checkpoint
from edgeq.runtime.session import OrtDecoder

PROMPT = "It is a truth universally acknowledged, that a single man in possession of a good fortune,"


def torch_greedy(model, prompt_ids, new_tokens):
    ids = torch.tensor([prompt_ids])
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=new_tokens, do_sample=False, eos_token_id=None,
                             pad_token_id=0)
    return out[0, len(prompt_ids):].tolist()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("exports", nargs="+")
    parser.add_argument("--text")
    parser.add_argument("--max-windows", type=int, default=20)
    parser.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args()

    ref = api.evaluate(args.checkpoint, args.text, 512, args.max_windows, progress=False)
    model, _, _ = checkpoint.load_checkpoint(args.checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(args.checkpoint)
    prompt = tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    torch_tokens = torch_greedy(model, prompt, args.tokens)
    print(f"torch: perplexity {ref['perplexity']:.4f} ({ref['windows']} windows x 512, {ref['text']})")
    print(f"torch greedy: {tokenizer.decode(torch_tokens)!r}")
    for folder in args.exports:
        ort = api.evaluate(folder, args.text, 512, args.max_windows, progress=False)
        ort_tokens = OrtDecoder.from_folder(folder).greedy(prompt, args.tokens)
        same = sum(a == b for a, b in zip(ort_tokens, torch_tokens))
        print(f"{folder}: perplexity {ort['perplexity']:.4f} ({(ort['perplexity'] / ref['perplexity'] - 1) * 100:+.3f}%"
              f" vs torch); greedy tokens identical to torch: {same}/{len(torch_tokens)}"
              f"{'' if same == len(torch_tokens) else ' -> ' + repr(tokenizer.decode(ort_tokens))}")


if __name__ == "__main__":
    main()

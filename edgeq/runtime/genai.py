"""An exported folder run through onnxruntime-genai, the runtime apps embed (its Python API here; the same
model and generator objects back its Java, Objective-C, C# and C APIs): greedy generation, the logits of
each step (for comparing with our own loop) and timed runs for `edgeq bench --engine genai`."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import EdgeqError
from ..util.paths import read_json_object
from .session import GENAI_CONFIG


def import_genai():
    try:
        import onnxruntime  # noqa: F401  genai 0.18 aborts the process if onnxruntime's library is not loaded first
        import onnxruntime_genai
    except ImportError:
        raise EdgeqError("this needs onnxruntime-genai: pip install 'edgeq[genai]'") from None
    return onnxruntime_genai


class GenaiDecoder:
    def __init__(self, folder, threads: int | None = None):
        og = import_genai()
        folder = Path(folder)
        if not (folder / GENAI_CONFIG).is_file():
            raise EdgeqError(f"{folder}: no {GENAI_CONFIG} (edgeq export writes one)")
        read_json_object(folder / GENAI_CONFIG)  # genai's own parser throws a C++ error on a damaged file
        config = og.Config(str(folder))
        if threads:
            options = {"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}
            config.overlay(json.dumps(options))
        self.og, self.model = og, og.Model(config)
        self.vocab_size = read_json_object(folder / GENAI_CONFIG)["model"]["vocab_size"]

    def generator(self, max_length: int, min_length: int = 0):
        params = self.og.GeneratorParams(self.model)
        params.set_search_options(max_length=max_length, min_length=min_length, do_sample=False)
        return self.og.Generator(self.model, params)

    def greedy(self, prompt: list[int], new_tokens: int) -> list[int]:
        """What genai's own search picks (it stops at the end-of-sequence id, as `edgeq generate` does)."""
        gen = self.generator(len(prompt) + new_tokens)
        gen.append_tokens(np.asarray(prompt, dtype=np.int32))
        while not gen.is_done():
            gen.generate_next_token()
        return [int(t) for t in gen.get_sequence(0)[len(prompt):]]

    def forced_logits(self, prompt: list[int], forced: list[int]) -> np.ndarray:
        """[1 + len(forced), V]: the last position's logits after the prompt, then after each forced token."""
        gen = self.generator(len(prompt) + len(forced) + 1)
        gen.append_tokens(np.asarray(prompt, dtype=np.int32))
        steps = [np.array(gen.get_logits()).reshape(-1)]
        for token in forced:
            gen.append_tokens(np.asarray([token], dtype=np.int32))
            steps.append(np.array(gen.get_logits()).reshape(-1))
        return np.stack(steps)

    def timed_run(self, prompt: np.ndarray, gen_tokens: int, clock) -> tuple[float, list[float]]:
        """(prefill seconds, [seconds per decoded token]), the same work as bench.one_run: the prompt's
        forward, then per token a greedy pick and one forward. genai's first generate_next_token only picks
        (the prompt's logits are computed), so it counts to prefill; each later call is pick + forward."""
        length = prompt.shape[1] + gen_tokens + 1
        gen = self.generator(length, min_length=length)  # an end-of-sequence pick must not end the run early
        start = clock()
        gen.append_tokens(prompt.astype(np.int32))
        gen.generate_next_token()
        prefill = clock() - start
        steps = []
        for _ in range(gen_tokens):
            start = clock()
            gen.generate_next_token()
            steps.append(clock() - start)
        return prefill, steps

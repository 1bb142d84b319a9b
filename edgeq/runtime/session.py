"""An onnxruntime decoder exported by edgeq (optimum's input/output names): forward with a KV cache,
next-token NLL for perplexity, greedy generation. numpy + onnxruntime only."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..errors import EdgeqError
from ..util.paths import read_json_object

MODEL_FILE = "model.onnx"
GENAI_CONFIG = "genai_config.json"  # onnxruntime-genai's config beside it (edgeq export writes one)


_SHARED_POOL: list[int] = []  # intra-op threads of the process-wide pool, once one is set up


def use_shared_thread_pool(threads: int | None) -> None:
    """From now on every session of this process runs on one intra-op pool. Sessions with pools of their
    own leave idle workers spinning after each run, which steal the cores of whichever session runs next:
    interleaving fp32 and W4 on 2 cores made each model's first ~8 tokens after a switch up to 2x slower
    (fp32 26 -> 14.5 ms). onnxruntime allows one such pool per process, and then only sessions that use it."""
    from onnxruntime.capi import _pybind_state

    size = threads or 0  # 0: onnxruntime's default, one thread per core
    if _SHARED_POOL and _SHARED_POOL[0] != size:
        raise EdgeqError(f"this process already shares a pool of {_SHARED_POOL[0] or 'default'} threads")
    if not _SHARED_POOL:
        _pybind_state.set_global_thread_pool_sizes(size, 1)
        _SHARED_POOL.append(size)


def open_session(path, provider: str = "cpu", threads: int | None = None, optimization: str = "all",
                 optimized_path=None, save_format: str = "ONNX", provider_options: dict | None = None):
    """An onnxruntime session on one provider (short name, see providers.py), with the options that matter
    on the edge: intra-op threads, the graph optimisation level, and saving the optimised model."""
    import onnxruntime as ort

    from .providers import resolve
    options = ort.SessionOptions()
    if _SHARED_POOL:
        use_shared_thread_pool(threads)  # refuses a different thread count
        options.use_per_session_threads = False
    elif threads:
        options.intra_op_num_threads = threads
    levels = ort.GraphOptimizationLevel
    options.graph_optimization_level = {"disable": levels.ORT_DISABLE_ALL, "basic": levels.ORT_ENABLE_BASIC,
                                        "extended": levels.ORT_ENABLE_EXTENDED, "all": levels.ORT_ENABLE_ALL}[optimization]
    if optimized_path:
        options.optimized_model_filepath = str(optimized_path)
        options.add_session_config_entry("session.save_model_format", save_format)
    model = path if isinstance(path, bytes) else str(path)  # bytes: a model built in memory (slicing.py)
    providers = [resolve(provider)]
    try:
        return ort.InferenceSession(model, options, providers=providers, provider_options=[provider_options or {}])
    except Exception as err:  # onnxruntime's InvalidProtobuf, InvalidArgument, Fail: a bad or truncated file
        where = "the sliced model" if isinstance(path, bytes) else path
        raise EdgeqError(f"onnxruntime cannot load {where}: {str(err).splitlines()[0]}") from None


def cpu_session(path, threads: int | None = None, optimized_path=None, save_format: str = "ONNX"):
    """CPU session; a saved optimised model stops at the extended level: "all" adds layout transforms for
    this machine's CPU (NCHWc), and the saved file must run on the device it is shipped to."""
    return open_session(path, "cpu", threads, "extended" if optimized_path else "all", optimized_path, save_format)


def folder_kv_dims(folder) -> tuple[int, int] | None:
    """(KV heads, head size) from a decoder folder's genai_config.json or config.json, for graphs whose KV
    inputs leave them symbolic (genai's model builder: 'kv_cache_dim')."""
    decoder = (GENAI_CONFIG, "model", "decoder")
    heads = folder_setting(folder, ("config.json", "num_attention_heads"))
    kv_heads = folder_setting(folder, (*decoder, "num_key_value_heads"), ("config.json", "num_key_value_heads")) or heads
    head_dim = folder_setting(folder, (*decoder, "head_size"), ("config.json", "head_dim"))
    hidden = folder_setting(folder, ("config.json", "hidden_size"))
    head_dim = head_dim or (hidden // heads if hidden and heads else None)
    return (int(kv_heads), int(head_dim)) if kv_heads and head_dim else None


def folder_setting(folder, *candidates: tuple[str, ...]):
    """The first value found at a path of keys, such as ("genai_config.json", "model", "context_length"),
    among the folder's JSON files; None if none has one."""
    for file, *keys in candidates:
        path = Path(folder) / file
        if not path.is_file():
            continue
        value = read_json_object(path)
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        if value is not None:
            return value
    return None


def folder_context_length(folder) -> int | None:
    """The most positions the folder's decoder was built for (its rotary table's length)."""
    return folder_setting(folder, (GENAI_CONFIG, "model", "context_length"),
                          ("config.json", "max_position_embeddings"))


def check_length(folder, tokens: int, what: str) -> None:
    """Refuse `tokens` positions past what the folder's model was built for (onnxruntime would fail deep in
    GroupQueryAttention with 'cos_cache dimension 0 shall not be less than total_sequence_length')."""
    limit = folder_context_length(folder)
    if limit is not None and tokens > limit:
        raise EdgeqError(f"{what} needs {tokens} positions, but the model has {limit}")


def folder_longrope_switch(folder) -> int | None:
    """A longrope model's original_max_position_embeddings (Phi-3), past which its graph rotates with the long
    factors: the cache written before with the short ones is then stale (see greedy_decode); None otherwise."""
    rope = folder_setting(folder, ("config.json", "rope_parameters"), ("config.json", "rope_scaling")) or {}
    if (rope.get("rope_type") or rope.get("type")) != "longrope":
        return None
    original = rope.get("original_max_position_embeddings") or \
        folder_setting(folder, ("config.json", "original_max_position_embeddings"))
    return int(original) if original else None


def present_name(past_name: str) -> str:
    return "present." + past_name.removeprefix("past_key_values.")


class OrtDecoder:
    """Any decoder graph with optimum's and genai's names: ours, genai's model builder's (symbolic head size,
    no position_ids), optimum's. What the graph lacks is refused by name."""

    def __init__(self, session, folder=None):
        self.session = session
        inputs = {i.name: i for i in session.get_inputs()}
        outputs = [o.name for o in session.get_outputs()]
        self.past_names = [n for n in inputs if n.startswith("past_key_values.")]
        missing = [n for n in ("input_ids", "attention_mask") if n not in inputs] + \
                  [n for n in ["logits", *map(present_name, self.past_names)] if n not in outputs]
        if missing or not self.past_names:
            raise EdgeqError(f"not a decoder graph with a KV cache: missing {', '.join(missing) or 'past_key_values.*'}")
        self.feeds_positions = "position_ids" in inputs
        _, kv_heads, _, head_dim = inputs[self.past_names[0]].shape
        if not (isinstance(kv_heads, int) and isinstance(head_dim, int)):
            dims = folder_kv_dims(folder) if folder is not None else None
            if dims is None:
                raise EdgeqError(f"the graph's KV shape {inputs[self.past_names[0]].shape} is symbolic and no "
                                 f"{GENAI_CONFIG} or config.json beside it gives the KV heads and head size")
            kv_heads, head_dim = dims
        self.kv_heads, self.head_dim = int(kv_heads), int(head_dim)
        self.output_names = ["logits", *map(present_name, self.past_names)]
        self.recompute_at = folder_longrope_switch(folder) if folder is not None else None

    @classmethod
    def from_folder(cls, folder, threads: int | None = None, bits: int | float | None = None) -> "OrtDecoder":
        """The exported decoder in `folder`; with `bits`, its 8-bit codes sliced to that width in memory."""
        from .slicing import model_to_open
        return cls(cpu_session(model_to_open(Path(folder) / MODEL_FILE, bits), threads), folder)

    def empty_past(self, batch: int = 1) -> dict[str, np.ndarray]:
        shape = (batch, self.kv_heads, 0, self.head_dim)
        return {name: np.zeros(shape, dtype=np.float32) for name in self.past_names}

    def forward(self, ids: np.ndarray, past: dict[str, np.ndarray]):
        """(logits [B, S, V], next past) for new tokens ids [B, S] after the cached ones."""
        batch, new = ids.shape
        past_len = next(iter(past.values())).shape[2]
        feeds = {"input_ids": ids.astype(np.int64),
                 "attention_mask": np.ones((batch, past_len + new), dtype=np.int64), **past}
        if self.feeds_positions:  # graphs without it derive positions from the mask (genai's builder)
            feeds["position_ids"] = np.arange(past_len, past_len + new, dtype=np.int64)[None].repeat(batch, 0)
        logits, *presents = self.session.run(self.output_names, feeds)
        return logits, dict(zip(self.past_names, presents))

    def window_nll(self, ids: np.ndarray) -> tuple[float, int]:
        """Sum of next-token NLL over one batch of windows [B, L], and the count of predictions."""
        logits, _ = self.forward(ids, self.empty_past(ids.shape[0]))
        logits = logits[:, :-1].astype(np.float64)
        targets = ids[:, 1:]
        top = logits.max(axis=-1, keepdims=True)
        log_z = np.log(np.exp(logits - top).sum(axis=-1)) + top[..., 0]
        picked = np.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
        return float((log_z - picked).sum()), int(targets.size)

    def greedy(self, prompt: list[int], new_tokens: int, eos: int | None = None) -> list[int]:
        return greedy_decode(self, np.array([prompt]), new_tokens, eos)[0]

    def forced_logits(self, prompt: list[int], forced: list[int]) -> np.ndarray:
        """[1 + len(forced), V]: the last position's logits after the prompt, then after each forced token on
        the cache (the same as GenaiDecoder.forced_logits, for comparing the two engines)."""
        logits, past = self.forward(np.array([prompt]), self.empty_past())
        steps = [logits[0, -1]]
        for token in forced:
            logits, past = self.forward(np.array([[token]]), past)
            steps.append(logits[0, -1])
        return np.stack(steps)


def greedy_decode(decoder, prompt: np.ndarray, new_tokens: int, eos: int | None = None, clock=time.perf_counter):
    """(tokens, prefill seconds, [seconds per decode step]): the prompt [1, P] prefilled, then greedy tokens,
    the cache growing by one each step, until `new_tokens` or eos. The one decode loop: `edgeq generate` and
    `edgeq bench` both run it (decoder: anything with forward(ids, past) and empty_past()).

    A longrope model (decoder.recompute_at) whose sequence first grows past original_max_position_embeddings
    has its whole cache recomputed with the long factors at that step, as transformers' generate() and
    onnxruntime-genai do for Phi-3 (keys cached with the short factors would otherwise stay)."""
    start = clock()
    logits, past = decoder.forward(prompt, decoder.empty_past())
    prefill = clock() - start
    tokens, steps = [], []
    switch = getattr(decoder, "recompute_at", None)
    for _ in range(new_tokens):
        token = int(logits[0, -1].argmax())
        tokens.append(token)
        if token == eos:
            break
        start = clock()
        if switch is not None and prompt.shape[1] + len(tokens) == switch + 1:
            whole = np.concatenate([prompt, np.array([tokens])], axis=1)
            logits, past = decoder.forward(whole, decoder.empty_past())
        else:
            logits, past = decoder.forward(np.array([[token]]), past)
        steps.append(clock() - start)
    return tokens, prefill, steps

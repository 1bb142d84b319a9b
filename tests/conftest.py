"""Shared fixtures: a tiny random-init Llama saved as a real Hugging Face folder (with the bundled model's
real tokenizer), the real bundled model, and real text files. The texts are the package's own (a user's
clone has no ../shared): Pride and Prejudice to calibrate on, Persuasion held out."""
from __future__ import annotations

import atexit
import contextlib
import functools
import io
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch


@functools.cache
def _text_folder() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="edgeq-test-texts-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)  # every run left one behind in /tmp
    return folder


@functools.cache
def _packaged_text_file(name: str) -> Path:
    from edgeq.texts import packaged_text
    path = _text_folder() / f"{name}.txt"
    path.write_text(packaged_text(name), encoding="utf-8")
    return path


def held_out_text() -> Path:
    return _packaged_text_file("persuasion")


def calibration_text() -> Path:
    return _packaged_text_file("novel")


def calibration_windows(tokenizer, samples: int, seq_len: int):
    """Token windows from the packaged calibration text's first 100,000 characters (the in-process tests')."""
    from edgeq.calib import data
    from edgeq.evaluation import heldout
    text, _ = heldout.read_text(str(calibration_text()))
    return data.calibration_windows(data.tokenize(tokenizer, text[:100_000]), samples, seq_len)


def quantize_in_memory(model_dir: Path, tokenizer, recipe, samples: int = 8, seq_len: int = 64):
    """The pipeline run in this process on the model folder: (the model, its weights now the quantized ones;
    {linear: QuantizedWeight}; the calibration windows)."""
    from edgeq.calib import pipeline
    from edgeq.io import models
    model, config = models.load_model(models.resolve_source(str(model_dir)))
    windows = calibration_windows(tokenizer, samples, seq_len)
    qweights, _ = pipeline.quantize_model(model, models.arch_of(config), recipe, windows, progress=False)
    return model, qweights.unpacked(), windows


def cli_in_process(*args) -> subprocess.CompletedProcess:
    """`edgeq ARGS` through the same main() the console script calls, in this process: its exit code, stdout
    and stderr, as a process's. A process of its own costs ~4 s of imports a call (torch, transformers), and
    the suite makes dozens; tests/test_cli.py keeps the real entry point's own checks in a process."""
    from edgeq.cli import main
    argv, out, err, environ = [str(a) for a in args], io.StringIO(), io.StringIO(), dict(os.environ)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
    except SystemExit as exit_:  # argparse's usage errors
        code = exit_.code if isinstance(exit_.code, int) else 2
    finally:  # --quiet sets the libraries' progress-bar switch for the process: not for the next test
        os.environ.clear()
        os.environ.update(environ)
    return subprocess.CompletedProcess(["edgeq", *argv], code, out.getvalue(), err.getvalue())


def edgeq_cli(*args) -> str:
    """`edgeq ARGS`, which must succeed; its stdout. A bench runs in a process of its own: it sets up the
    process-wide shared thread pool of onnxruntime, which would then bind every later session of the suite."""
    if str(args[0]) == "bench":
        done = subprocess.run([sys.executable, "-m", "edgeq.cli", *map(str, args)], capture_output=True, text=True)
    else:
        done = cli_in_process(*args)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="session")
def bundled_tokenizer():
    from edgeq.io import models
    return models.load_tokenizer(models.bundled_source())


def tiny_llama_config(vocab_size: int, **overrides):
    from transformers import LlamaConfig
    fields = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=160, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  tie_word_embeddings=True)
    fields.update(overrides)
    return LlamaConfig(**fields)


SMALL_VOCAB_IDS = dict(pad_token_id=None, bos_token_id=1, eos_token_id=2)  # defaults past a tiny vocabulary
FAMILIES = ["llama", "qwen2", "qwen3", "mistral", "gemma3_text", "phi3", "smollm3", "granite"]


def tiny_family_model(family: str, vocab_size: int = 300, **overrides):
    """A tiny random-init model of one supported family, with the feature that family adds to Llama."""
    from transformers import AutoConfig, AutoModelForCausalLM
    fields = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False)
    extra = {"llama": dict(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                         "high_freq_factor": 4.0, "original_max_position_embeddings": 16}),
             "qwen2": {}, "qwen3": dict(head_dim=32), "mistral": dict(sliding_window=5),
             # sliding then full layers (two rotary bases), a query scale that is not head_dim ** -0.5
             "gemma3_text": dict(head_dim=32, sliding_window=5, query_pre_attn_scalar=24,
                                 layer_types=["sliding_attention", "full_attention"]),
             # Phi-4-mini's partial rotary (0.75) and Phi-3's longrope, switching at 8 tokens: the tests'
             # 12-token sequences cross it; fused qkv_proj and gate_up_proj come with the family
             # (head_dim 64: GroupQueryAttention wants rotary_dim / 2 a multiple of 8, here 24)
             "phi3": dict(hidden_size=128, num_attention_heads=2, num_key_value_heads=1, partial_rotary_factor=0.75,
                          original_max_position_embeddings=8, **SMALL_VOCAB_IDS,
                          rope_scaling={"rope_type": "longrope", "short_factor": [1.0 + 0.1 * i for i in range(24)],
                                        "long_factor": [3.0 + 1.0 * i for i in range(24)]}),
             "smollm3": dict(no_rope_layers=[1, 0], **SMALL_VOCAB_IDS),  # the second layer without rotary (NoPE)
             "granite": dict(embedding_multiplier=6.0, residual_multiplier=0.3, attention_multiplier=0.05,
                             logits_scaling=4.0)}[family]
    torch.manual_seed(1)
    config = AutoConfig.for_model(family, **{**fields, **extra, **overrides})
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():  # norms away from their init (Gemma's are zeros, i.e. a gain of 1 + 0)
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.2 * torch.randn_like(p))
    return model


def save_tiny_model(folder: Path, tokenizer, poison_nan: bool = False, **overrides) -> Path:
    from transformers import AutoModelForCausalLM
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_llama_config(len(tokenizer), **overrides),
                                             dtype=torch.float32)
    if poison_nan:
        with torch.no_grad():
            model.model.layers[1].mlp.up_proj.weight[3, 5] = float("nan")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, bundled_tokenizer) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "llama", bundled_tokenizer)


@pytest.fixture(scope="session")
def real_model():
    """The bundled SmolLM2-135M at fp32 (converted from its GGUF once, then cached)."""
    from edgeq.io import models
    model, config = models.load_model(models.bundled_source())
    return model, models.arch_of(config)


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_model_dir, tmp_path_factory):
    """GPTQ W4 g32 of the tiny Llama."""
    from edgeq import api
    out = tmp_path_factory.mktemp("ckpt") / "w4"
    api.quantize(str(tiny_model_dir), out, api.QuantConfig(bits=4, group_size=32, samples=4, seq_len=64),
                 calib=str(calibration_text()), progress=False)
    return out

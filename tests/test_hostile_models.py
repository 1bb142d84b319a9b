"""Broken and hostile model sources (issue 44's cases 1-8, 16, 18 and their class): each is refused by the one
validation pass (edgeq/io/validate.py) in one line, exit 2, before any work, with nothing left on disk."""
from __future__ import annotations

import json
import shutil

import pytest
from safetensors.torch import load_file, save_file

from tests.test_cli import run_cli


def variant(tiny, root, name, config_edit=None, tensors_edit=None):
    folder = root / name
    shutil.copytree(tiny, folder)
    if config_edit:
        config = json.loads((folder / "config.json").read_text())
        config_edit(config)
        (folder / "config.json").write_text(json.dumps(config))
    if tensors_edit:
        tensors = load_file(folder / "model.safetensors")
        tensors_edit(tensors)
        save_file(tensors, folder / "model.safetensors")
    return folder


def pickle_only(tiny, root, name, payload):
    folder = variant(tiny, root, name)
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(payload)
    return folder


class CallsSystem:
    def __reduce__(self):
        import os
        return os.system, ("touch PWNED",)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, tiny_model_dir, bundled_tokenizer):
    import pickle

    import torch

    from edgeq.io import models
    root, tiny = tmp_path_factory.mktemp("hostile"), tiny_model_dir
    bundled = models.bundled_source()
    gguf = (bundled.folder / bundled.gguf_file).read_bytes()
    (root / "cut.gguf").write_bytes(gguf[: len(gguf) // 3])
    (root / "text.gguf").write_text("this is a text file, not a model\n")
    up = "model.layers.1.mlp.up_proj.weight"
    return {
        "no layer count": (variant(tiny, root, "layers", lambda c: c.pop("num_hidden_layers")),
                           "num_hidden_layers must be a positive integer"),
        "heads do not divide hidden": (variant(tiny, root, "heads", lambda c: c.update(num_attention_heads=5,
                                                                                      num_key_value_heads=5)),
                                       "not a multiple of"),
        "vocab 0": (variant(tiny, root, "vocab", lambda c: c.update(vocab_size=0)),
                    "vocab_size must be a positive integer, got 0"),
        "hostile pickle": (pickle_only(tiny, root, "evil", pickle.dumps(CallsSystem())), "only pickled weights"),
        "harmless pickle": (pickle_only(tiny, root, "bin", pickle.dumps({"x": 1})), "only pickled weights"),
        "a linear missing": (variant(tiny, root, "missing", tensors_edit=lambda t: t.pop(up)),
                             f"no tensor for {up}"),
        "GGUF cut to a third": (root / "cut.gguf", "truncated"),
        "text named .gguf": (root / "text.gguf", "is not a GGUF file"),
        "int8 weights": (variant(tiny, root, "int8", tensors_edit=lambda t: t.update({up: t[up].to(torch.int8)})),
                         f"{up} is stored as I8, not floating point"),
        "a layer the config lacks": (variant(tiny, root, "extra", tensors_edit=lambda t: t.update(
            {"model.layers.7.mlp.up_proj.weight": t[up].clone()})), "model.layers.7.mlp.up_proj.weight is not a parameter"),
        "wrong shape": (variant(tiny, root, "shape", tensors_edit=lambda t: t.update({up: t[up][:, :32].clone()})),
                        f"{up} has shape (160, 32), config.json implies (160, 64)"),
    }


CASES = ["no layer count", "heads do not divide hidden", "vocab 0", "hostile pickle", "harmless pickle",
         "a linear missing", "GGUF cut to a third", "text named .gguf", "int8 weights", "a layer the config lacks",
         "wrong shape"]


@pytest.mark.parametrize("case", CASES)
def test_a_broken_model_is_one_line_before_any_work(case, hostile, tmp_path):
    model, message = hostile[case]
    cache = tmp_path / "cache"
    done = run_cli("quantize", model, "--method", "rtn", "--out", tmp_path / "out", cwd=tmp_path,
                   env_extra={"EDGEQ_CACHE": str(cache)})
    assert done.returncode == 2 and message in done.stderr and len(done.stderr.strip().splitlines()) == 1, \
        done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no OUT, no OUT.partial, no cache, no PWNED


def test_eval_and_export_take_the_same_door(hostile, tmp_path):
    model, message = hostile["int8 weights"]
    for args in (["eval", model, "--seq-len", 64], ["export", "--fp32", model, "--out", tmp_path / "x"]):
        done = run_cli(*args, cwd=tmp_path)
        assert done.returncode == 2 and message in done.stderr, done.stderr
    assert list(tmp_path.iterdir()) == []

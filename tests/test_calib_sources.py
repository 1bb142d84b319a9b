"""Calibration parts and mixes (texts.py, calib/data.calibration_set) and self-generated windows."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from edgeq import texts as sources
from edgeq.calib import data, selfgen
from edgeq.errors import EdgeqError


@pytest.fixture(scope="module")
def no_template_tokenizer(bundled_tokenizer):
    tok = copy.deepcopy(bundled_tokenizer)
    tok.chat_template = None
    return tok


def write_corpus(folder):
    folder.mkdir()
    (folder / "a.txt").write_text("The first document, about rivers and hills. " * 200)
    (folder / "b.md").write_text("# Notes\n\nSecond document on engines and gears. " * 200)
    (folder / "skip.bin").write_bytes(b"\x00\x01")
    return folder


def test_window_counts_follow_the_weights_and_sum_to_samples():
    assert data.window_counts([1, 1], 5) == [3, 2]
    assert data.window_counts([2, 1, 1, 1], 8) == [3, 2, 2, 1]
    assert data.window_counts([1, 0], 4) == [4, 0]
    for weights in ([1, 2, 3], [0.1, 0.7, 0.2], [5]):
        assert sum(data.window_counts(weights, 37)) == 37
    with pytest.raises(EdgeqError):
        data.window_counts([0, 0], 4)


def test_one_part_gives_the_windows_of_the_single_text_sampler(bundled_tokenizer):
    """The default set is one part: its windows (and so existing digests and resume keys) are unchanged."""
    windows, record = data.calibration_set(bundled_tokenizer, None, None, 4, 64, seed=3)
    tokens = data.tokenize(bundled_tokenizer, sources.packaged_text("novel"))
    assert torch.equal(windows, data.calibration_windows(tokens, 4, 64, 3))
    assert record["parts"] == [{"label": "builtin:novel", "weight": 1.0, "windows": 4, "tokens": tokens.numel()}]


class OpensWithBos:
    """A tokenizer that opens every text with token 7, as Gemma's opens with its BOS."""
    def __call__(self, text, add_special_tokens=True, **_):
        return {"input_ids": ([7] if add_special_tokens else []) + [100 + ord(c) % 50 for c in text]}


def test_windows_start_as_the_model_s_own_sequences_do(bundled_tokenizer, tmp_path):
    assert data.sequence_start(bundled_tokenizer) == ()  # SmolLM2: windows unchanged (the digest test above)
    tok = OpensWithBos()
    assert data.sequence_start(tok) == (7,)
    (tmp_path / "t.txt").write_text("rivers and hills " * 100)
    windows, record = data.calibration_set(tok, [str(tmp_path / "t.txt")], None, 5, 16, seed=0)
    assert windows.shape == (5, 16) and (windows[:, 0] == 7).all() and (windows[:, 1:] != 7).all()
    assert record["sequence_start"] == [7]
    tokens = data.tokenize(tok, "rivers and hills " * 10)
    held_out = data.eval_windows(tokens, 16, start=(7,))
    assert held_out.shape == (tokens.numel() // 15, 16) and (held_out[:, 0] == 7).all()
    assert torch.equal(held_out[:, 1:].reshape(-1), tokens[:held_out.shape[0] * 15])  # consecutive text


def test_the_mix_is_deterministic_and_recorded(bundled_tokenizer):
    parts = ["builtin:novel", "builtin:pydoc", "builtin:code", "builtin:chat"]
    a, rec_a = data.calibration_set(bundled_tokenizer, parts, [2, 1, 1, 1], 10, 64, 0)
    b, rec_b = data.calibration_set(bundled_tokenizer, parts, [2, 1, 1, 1], 10, 64, 0)
    c, rec_c = data.calibration_set(bundled_tokenizer, parts, [2, 1, 1, 1], 10, 64, 1)
    assert torch.equal(a, b) and rec_a["digest"] == rec_b["digest"] and rec_a["digest"] != rec_c["digest"]
    assert [p["windows"] for p in rec_a["parts"]] == [4, 2, 2, 2]
    assert [p["label"] for p in rec_a["parts"]] == parts and a.shape == (10, 64)


def test_chat_is_rendered_with_the_tokenizer_template(bundled_tokenizer, tmp_path):
    messages = [{"role": "user", "content": "Name a river."}, {"role": "assistant", "content": "The Thames."}]
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"messages": messages}) + "\n\n" + json.dumps({"text": "plain line"}) + "\n")
    part = sources.read_part(str(path), bundled_tokenizer)
    rendered = bundled_tokenizer.apply_chat_template(messages, tokenize=False)
    assert part.text == rendered + "\n\n" + "plain line"
    assert "<|im_start|>assistant" in rendered  # the template's own markers, not a generic format
    builtin = sources.builtin_part("chat", bundled_tokenizer).text
    first = sources.chat_dialogues()[0]
    assert builtin.startswith(bundled_tokenizer.apply_chat_template(first, tokenize=False))


def test_a_model_without_a_chat_template_is_calibrated_on_the_rest(no_template_tokenizer, tmp_path):
    windows, record = data.calibration_set(no_template_tokenizer, ["builtin:novel", "builtin:chat"], [1, 1],
                                           6, 64, 0)
    assert record["skipped"] == ["builtin:chat"] and [p["windows"] for p in record["parts"]] == [6]
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    with pytest.raises(EdgeqError, match="no chat template"):  # asked for by name: refused, not dropped
        sources.read_part(str(path), no_template_tokenizer)
    with pytest.raises(EdgeqError, match="no calibration text left"):
        data.calibration_set(no_template_tokenizer, ["builtin:chat"], None, 2, 64, 0)


def test_a_folder_and_a_glob_load_their_text_files_in_order(bundled_tokenizer, tmp_path):
    folder = write_corpus(tmp_path / "corpus")
    part = sources.read_part(str(folder), bundled_tokenizer)
    assert part.text.index("first document") < part.text.index("Second document") and "\x00" not in part.text
    assert sources.read_part(str(folder / "*.txt"), bundled_tokenizer).text == (folder / "a.txt").read_text()
    _, record = data.calibration_set(bundled_tokenizer, [str(folder), "builtin:pydoc"], [1, 3], 8, 64, 0)
    assert [p["windows"] for p in record["parts"]] == [2, 6]


@pytest.mark.parametrize("content, match", [("{not json\n", "not a JSON line"), ('{"other": 1}\n', "'text' string")])
def test_bad_jsonl_lines_are_refused_with_their_line(bundled_tokenizer, tmp_path, content, match):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"text": "fine"}) + "\n" + content)
    with pytest.raises(EdgeqError, match=f"bad.jsonl:2: .*{match}"):
        sources.read_part(str(path), bundled_tokenizer)


def test_bad_parts_are_one_clear_error(bundled_tokenizer, tmp_path):
    (tmp_path / "empty").mkdir()
    for spec, match in [("builtin:nope", "unknown calibration text"), (str(tmp_path / "missing.txt"), "not found"),
                        (str(tmp_path / "empty"), "no text files"), (str(tmp_path / "none*.txt"), "no text files")]:
        with pytest.raises(EdgeqError, match=match):
            sources.read_part(spec, bundled_tokenizer)
    with pytest.raises(EdgeqError, match="one weight per --calib part"):
        data.calibration_set(bundled_tokenizer, ["builtin:novel"], [1, 2], 4, 64, 0)


def test_self_generated_windows_are_deterministic_and_cached(tiny_model_dir, bundled_tokenizer, tmp_path,
                                                              monkeypatch):
    from edgeq.io import models
    monkeypatch.setenv("EDGEQ_CACHE", str(tmp_path / "cache"))
    source = models.resolve_source(str(tiny_model_dir))
    key = f"{source.label}:{models.weights_fingerprint(source)}"
    a = selfgen.self_windows(source, key, bundled_tokenizer, 3, 24, seed=0, progress=False)
    assert a.shape == (3, 24) and a.dtype == torch.long
    assert not set(a[:, 0].tolist()) & set(bundled_tokenizer.all_special_ids)
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("the cached windows were not used"))
    assert torch.equal(selfgen.self_windows(source, key, bundled_tokenizer, 3, 24, seed=0, progress=False), a)


def test_self_generation_follows_the_model(tiny_model_dir):
    """Greedy first tokens are the model's argmax; the same seed gives the same windows."""
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    a = selfgen.generate_windows(model, model.config.vocab_size, 2, 12, seed=5, progress=False)
    b = selfgen.generate_windows(model, model.config.vocab_size, 2, 12, seed=5, progress=False)
    assert torch.equal(a, b)
    with torch.no_grad():
        logits = model(input_ids=a[:, :1]).logits[:, -1]
    assert torch.equal(a[:, 1], logits.argmax(-1))

"""Issue 44's hostile inputs other than models (those are test_hostile_models.py): each is one line, exit 2,
nothing written; a second run into one --out is refused while the first holds it; a damaged resume state
starts the run over instead of blocking it."""
from __future__ import annotations

import json
import shutil

import pytest

from edgeq.errors import EdgeqError
from tests.conftest import calibration_text, held_out_text
from tests.test_cli import run_cli


def one_line(done, message):
    assert done.returncode == 2 and message in done.stderr and len(done.stderr.strip().splitlines()) == 1, \
        done.stderr


def test_a_checkpoint_without_its_digest_is_refused(tiny_checkpoint, tmp_path):
    copy = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, copy)
    meta = json.loads((copy / "quantization.json").read_text())
    del meta["tensors_sha256"]
    (copy / "quantization.json").write_text(json.dumps(meta))
    for args in (["eval", copy, "--seq-len", 64, "--text", held_out_text()], ["export", copy, "--out", tmp_path / "x"]):
        one_line(run_cli(*args), "has no tensors_sha256")
    assert not (tmp_path / "x").exists()


def test_text_that_is_not_utf8_is_named_with_its_byte(tmp_path, tiny_model_dir):
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("Les élèves étaient à l'école.\n".encode("latin-1") * 200)
    one_line(run_cli("eval", tiny_model_dir, "--seq-len", 64, "--text", latin), "latin1.txt is not UTF-8 text (byte 0xe9")
    one_line(run_cli("quantize", tiny_model_dir, "--calib", latin, "--out", tmp_path / "q"), "is not UTF-8 text")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latin1.txt"]


@pytest.mark.parametrize("args, message", [
    (["--calib-mix", "nan,1"], "expected non-negative weights"),
    (["--budget", "inf"], "--budget must be a positive finite number"),
    (["--first-token-weight", "inf"], "expected a finite number, got 'inf'"),
    (["--damp", "nan"], "expected a finite number, got 'nan'"),
])
def test_numbers_that_are_not_finite_are_refused_before_work(args, message, tmp_path, tiny_model_dir):
    one_line(run_cli("quantize", tiny_model_dir, *args, "--out", tmp_path / "q"), message)
    assert list(tmp_path.iterdir()) == []


def test_an_empty_out_is_refused(tmp_path, tiny_model_dir):
    one_line(run_cli("quantize", tiny_model_dir, "--method", "rtn", "--out", "", cwd=tmp_path), "--out is empty")


def test_chat_messages_that_are_not_objects_are_refused(tmp_path, tiny_model_dir):
    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps({"messages": ["hello", "there"]}) + "\n")
    one_line(run_cli("quantize", tiny_model_dir, "--calib", chat, "--out", tmp_path / "q"),
             "chat.jsonl:1: each of 'messages' must be an object with 'role' and 'content' strings")


def test_reports_and_configs_that_are_damaged_are_one_line(tmp_path, tiny_checkpoint):
    number = tmp_path / "number.json"
    number.write_text("42")
    one_line(run_cli("bench", "compare", number, number), "holds a JSON int, not an object")
    folder = tmp_path / "onnx"
    assert run_cli("export", tiny_checkpoint, "--out", folder).returncode == 0
    config = (folder / "genai_config.json").read_text()
    (folder / "genai_config.json").write_text(config[: len(config) // 2])
    for args in (["generate", folder, "--prompt", "Hello"], ["bench", folder, "--runs", 1, "--gen", 2],
                 ["bench", folder, "--engine", "genai", "--runs", 1, "--gen", 2]):
        one_line(run_cli(*args), "cannot read JSON file")


def test_a_second_run_into_the_same_out_is_refused_while_the_first_holds_it(tmp_path):
    from edgeq.util.paths import exclusive_output
    out = tmp_path / "q"
    with exclusive_output(out):
        with pytest.raises(EdgeqError, match="another edgeq run is writing"):
            with exclusive_output(out):
                pass
    with exclusive_output(out):  # released: the next run goes ahead
        pass
    assert list(tmp_path.iterdir()) == []


def test_a_damaged_resume_state_starts_over(tmp_path, tiny_model_dir):
    from edgeq import api
    out = tmp_path / "q"
    partial = api.resume_folder(out)
    partial.mkdir()
    (partial / "state.json").write_text("{not json")
    (partial / "hidden.safetensors").write_bytes(b"garbage")
    api.quantize(str(tiny_model_dir), out, api.QuantConfig(bits=4, group_size=32, samples=4, seq_len=64),
                 calib=str(calibration_text()), progress=False)
    assert (out / "quantization.json").is_file() and not partial.exists()

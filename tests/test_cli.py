"""The command line: --help teaches, and every bad input is one clear line, exit code 2, no files left."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from edgeq import cli
from edgeq.evaluation import heldout
from tests.conftest import calibration_text, cli_in_process, save_tiny_model


def run_cli(*args, cwd=None, env_extra=None):
    """The console entry point in a process of its own (`python -m edgeq.cli`): exit code, stdout, stderr."""
    env = {**os.environ, "EDGEQ_CACHE": os.environ.get("EDGEQ_CACHE", ""), **(env_extra or {})}
    env = {k: v for k, v in env.items() if v}
    return subprocess.run([sys.executable, "-m", "edgeq.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


def test_help_lists_commands_and_examples():
    top = run_cli("--help")
    assert top.returncode == 0 and "quantize" in top.stdout and "eval" in top.stdout
    sub = run_cli("quantize", "--help")
    assert "examples:" in sub.stdout and "--group-size" in sub.stdout and "Q4_1" in sub.stdout


@pytest.fixture(scope="module")
def bad_models(tmp_path_factory, bundled_tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel
    root = tmp_path_factory.mktemp("bad")
    gpt2 = root / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100)).save_pretrained(gpt2)
    nan = save_tiny_model(root / "nan", bundled_tokenizer, poison_nan=True)
    empty = root / "empty.txt"
    empty.write_text("   \n")
    short = root / "short.txt"
    short.write_text("Only a few words here.")
    escaping = root / "escaping"  # a sharded index whose entry points outside the model folder
    escaping.mkdir()
    tiny = save_tiny_model(root / "tiny", bundled_tokenizer)
    for f in tiny.iterdir():
        if f.name != "model.safetensors":
            (escaping / f.name).write_bytes(f.read_bytes())
    (escaping / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"model.embed_tokens.weight": "../tiny/model.safetensors"}}))
    truncated = root / "truncated"  # model.safetensors cut in half
    shutil.copytree(tiny, truncated)
    weights = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    return {"gpt2": gpt2, "nan": nan, "empty": empty, "short": short, "escaping": escaping, "truncated": truncated}


def _cases(tiny, bad, tmp):
    quick = ["--samples", "2", "--seq-len", "32"]
    return {
        "missing model": ([tmp / "no-such-model", *quick], "model not found"),
        "unsupported architecture": ([bad["gpt2"], *quick], "unsupported architecture 'gpt2'"),
        "bits too high": ([tiny, "--bits", "9"], "bits must be an integer from 2 to 8"),
        "bits too low": ([tiny, "--bits", "1"], "bits must be an integer from 2 to 8"),
        "group not power of two": ([tiny, "--group-size", "48", *quick], "power of two"),
        "group too small": ([tiny, "--group-size", "8", *quick], "power of two"),
        "NaN weights": ([bad["nan"], *quick], "NaN or infinite weights in model.layers.1.mlp.up_proj"),
        "empty calibration": ([tiny, "--calib", bad["empty"], *quick], "text file is empty"),
        "short calibration": ([tiny, "--calib", bad["short"], "--seq-len", "512"], "calibration text too short"),
        "missing calibration": ([tiny, "--calib", tmp / "nope.txt", *quick], "text file not found"),
        "flag of another method": ([tiny, "--method", "rtn", "--iters", "3"], "--iters does not apply to rtn; it applies to decoupleq"),
        "unused calibration": ([tiny, "--method", "rtn", "--calib", bad["short"]], "rtn uses no calibration text"),
        "unknown built-in text": ([tiny, "--calib", "builtin:nope", *quick], "unknown calibration text"),
        "mix of another length": ([tiny, "--calib", "builtin:novel", "--calib-mix", "1,2", *quick],
                                  "one weight per --calib part"),
        "index outside the folder": ([bad["escaping"], *quick], "points outside the model folder"),
        "truncated weights": ([bad["truncated"], *quick], "model.safetensors is corrupted or not a safetensors file"),
    }


CASES = ["missing model", "unsupported architecture", "bits too high", "bits too low", "group not power of two",
         "group too small", "NaN weights", "empty calibration", "short calibration", "missing calibration",
         "flag of another method", "unused calibration", "unknown built-in text", "mix of another length",
         "index outside the folder", "truncated weights"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_gives_one_clear_line_and_leaves_nothing(case, tiny_model_dir, bad_models, tmp_path):
    args, message = _cases(tiny_model_dir, bad_models, tmp_path)[case]
    out = tmp_path / "out"
    before = set(tmp_path.iterdir())
    result = cli_in_process("quantize", *args, "--out", out)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len([line for line in result.stderr.splitlines() if "error" in line]) == 1
    assert set(tmp_path.iterdir()) == before  # no output, no .partial, no temporary folder


def test_existing_non_empty_output_folder_is_refused_and_kept(tiny_model_dir, tmp_path):
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("mine")
    result = run_cli("quantize", tiny_model_dir, "--out", occupied)
    assert result.returncode == 2 and "exists and is not empty" in result.stderr
    assert [p.name for p in occupied.iterdir()] == ["keep.txt"]


def test_output_path_that_is_a_file_is_refused_as_such(tiny_model_dir, tmp_path):
    target = tmp_path / "a-file"
    target.write_text("mine")
    result = run_cli("quantize", tiny_model_dir, "--method", "rtn", "--out", target)
    assert result.returncode == 2 and "is a file, not a folder" in result.stderr and target.read_text() == "mine"


def test_eval_of_a_missing_checkpoint_or_text_is_a_clear_error(tmp_path):
    result = run_cli("eval", tmp_path / "nothing-here")
    assert result.returncode == 2 and "model not found" in result.stderr
    result = run_cli("eval", "--text", tmp_path / "none.txt")
    assert result.returncode == 2 and "text file not found" in result.stderr


def test_quantize_then_eval_through_the_cli(tiny_model_dir, tmp_path):
    out = tmp_path / "w4"
    q = run_cli("quantize", tiny_model_dir, "--bits", "4", "--group-size", "32", "--samples", "4", "--seq-len",
                "64", "--calib", calibration_text(), "--out", out, "--quiet")
    assert q.returncode == 0, q.stderr
    assert "wrote" in q.stdout and "peak RSS" in q.stdout
    e = run_cli("eval", out, "--text", calibration_text(), "--seq-len", "64", "--max-windows", "2", "--quiet",
                "--json", tmp_path / "ppl.json")
    assert e.returncode == 0, e.stderr
    assert "perplexity" in e.stdout and (tmp_path / "ppl.json").exists()


def test_cuda_without_gpu_is_refused(tiny_model_dir, tmp_path):
    import torch
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    result = run_cli("quantize", tiny_model_dir, "--device", "cuda", "--out", tmp_path / "x")
    assert result.returncode == 2 and "no CUDA GPU" in result.stderr


def test_an_unwritable_output_place_is_refused_before_loading(tiny_model_dir, capsys):
    from edgeq.cli import main
    assert main(["quantize", str(tiny_model_dir), "--method", "rtn", "--out", "/sys/edgeq-test/out"]) == 2
    err = capsys.readouterr().err
    assert "cannot write under /sys" in err and len(err.strip().splitlines()) == 1


def test_disk_full_while_saving_is_one_line_and_leaves_nothing(tiny_model_dir, tmp_path, monkeypatch, capsys):
    import errno

    import edgeq.calib.resume  # noqa: F401  bound to the real save_tensors first: only the checkpoint's save fails
    from edgeq.io import checkpoint
    from edgeq.cli import main

    def full(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    monkeypatch.setattr(checkpoint, "save_tensors", full)
    out = tmp_path / "out"
    assert main(["quantize", str(tiny_model_dir), "--method", "rtn", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and len(err.strip().splitlines()) == 1
    # no output and no temporary folder; the finished blocks stay in out.partial, so a rerun resumes
    assert [p.name for p in tmp_path.iterdir()] == ["out.partial"]


@pytest.mark.parametrize("argv", [["quantize", "--bits"], ["eval", "--max-windows", "x"], [], ["frob"]])
def test_usage_errors_are_one_line_with_a_pointer_to_help(argv, capsys):
    from edgeq.cli import main
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1 and "--help)" in err


def test_eval_scores_40_windows_unless_told_a_count_or_all():
    parser = cli.build_parser()
    assert parser.parse_args(["eval"]).max_windows == heldout.EVAL_WINDOWS == 40
    assert parser.parse_args(["eval", "--max-windows", "all"]).max_windows is None
    assert parser.parse_args(["eval", "--max-windows", "7"]).max_windows == 7

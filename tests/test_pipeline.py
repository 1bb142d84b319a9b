"""Block-by-block calibration on a tiny random-init Llama: results, streaming, resume, checkpoint round trip."""
import json

import pytest
import torch

from edgeq import api
from edgeq.io import checkpoint, models
from edgeq.quant import grid
from edgeq.calib import data, pipeline
from edgeq.errors import EdgeqError
from edgeq.evaluation.heldout import perplexity
from tests.conftest import calibration_text, calibration_windows, held_out_text, save_tiny_model

CONFIG = api.QuantConfig(method="gptq", bits=3, group_size=32, samples=6, seq_len=64, batch_size=4)


def quantize_tiny(folder, out, config=CONFIG, **kwargs):
    return api.quantize(str(folder), out, config, calib=str(calibration_text()), progress=False, **kwargs)


def assert_refused(folder, tmp_path, message: str, **fields) -> None:
    """quantize refuses a QuantConfig of these fields with `message`, and nothing is written."""
    with pytest.raises(EdgeqError, match=message):
        quantize_tiny(folder, tmp_path / "bad", api.QuantConfig(samples=4, seq_len=32, **fields))
    assert not (tmp_path / "bad").exists()


def test_every_linear_quantized_and_checkpoint_reloads_to_the_same_model(tiny_model_dir, tmp_path):
    meta = quantize_tiny(tiny_model_dir, tmp_path / "ckpt")
    model, _ = models.load_model(models.resolve_source(str(tiny_model_dir)))
    arch = models.arch_of(model.config)
    expected = {f"{arch.blocks}.{i}.{name}" for i in range(3) for name in arch.linears}
    assert set(meta["layers"]) == expected
    assert meta["calibration"]["digest"].startswith("sha256:")
    assert all(v >= 0 for v in meta["layer_errors"].values())

    loaded, qweights, _ = checkpoint.load_checkpoint(tmp_path / "ckpt")
    for name, qw in qweights.items():
        assert qw.bits == 3 and qw.group_size == 32
        assert torch.equal(models.get_module(loaded, name).weight.data, qw.dequantize())
    # unquantized tensors (embedding, norms) come back bit for bit, the tied head stays tied
    assert torch.equal(loaded.model.embed_tokens.weight, model.model.embed_tokens.weight)
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()


def test_eval_after_reload_equals_eval_in_process(tiny_model_dir, tmp_path, bundled_tokenizer):
    """The quantized model in memory and the reloaded checkpoint give the same perplexity."""
    model, config = models.load_model(models.resolve_source(str(tiny_model_dir)))
    arch = models.arch_of(config)
    windows = calibration_windows(bundled_tokenizer, 6, 64)
    recipe = pipeline.Recipe.of("gptq", grid.QuantSpec(4, 32), {}, batch_size=4)
    qweights, _ = pipeline.quantize_model(model, arch, recipe, windows, progress=False)
    checkpoint.save_checkpoint(tmp_path / "ckpt", model, bundled_tokenizer, qweights, {"method": "gptq"})
    held = data.eval_windows(data.tokenize(bundled_tokenizer, held_out_text().read_text()[:50_000]), 64, 4)
    in_process = perplexity(model, arch, held, progress=False)
    reloaded = api.evaluate(str(tmp_path / "ckpt"), str(held_out_text()), 64, 4, progress=False)
    assert reloaded["perplexity"] == pytest.approx(in_process, rel=1e-6)


def test_streamed_and_fully_loaded_runs_agree(tiny_model_dir, bundled_tokenizer):
    source = models.resolve_source(str(tiny_model_dir))
    windows = calibration_windows(bundled_tokenizer, 6, 64)
    recipe = pipeline.Recipe.of("gptq", grid.QuantSpec(4, 32), {}, batch_size=4)
    results = []
    for stream in (False, True):
        model, config = models.load_model(source, stream_blocks=stream)
        assert models.is_streamed(model) == stream
        results.append(pipeline.quantize_model(model, models.arch_of(config), recipe, windows, progress=False)[0])
    assert results[0].layout == results[1].layout and results[0].tensors.keys() == results[1].tensors.keys()
    for name, tensor in results[0].tensors.items():  # packed codes, scales and zero points
        assert torch.equal(tensor, results[1].tensors[name]), name


def test_a_run_through_a_resume_folder_writes_the_same_checkpoint_as_one_in_memory(tiny_model_dir, bundled_tokenizer,
                                                                                    tmp_path):
    """With a resume folder the codes reach the checkpoint as that folder stores them (packed, never unpacked
    whole); the file is byte for byte the one written from the codes held in memory, head included."""
    from edgeq.calib.resume import ResumeState
    source = models.resolve_source(str(tiny_model_dir))
    windows = calibration_windows(bundled_tokenizer, 6, 64)
    recipe = pipeline.Recipe.of("gptq", grid.QuantSpec(3, 32), {}, batch_size=4, lm_head=8)
    written = []
    for resume in (None, ResumeState(tmp_path / "resume", "run")):
        model, config = models.load_model(source, stream_blocks=True)
        qweights, _ = pipeline.quantize_model(model, models.arch_of(config), recipe, windows, resume=resume,
                                              progress=False)
        out = tmp_path / f"ckpt{len(written)}"
        checkpoint.save_checkpoint(out, model, bundled_tokenizer, qweights, {"method": "gptq"})
        written.append((out / checkpoint.WEIGHTS_FILE).read_bytes())
    assert written[0] == written[1]
    assert "lm_head" in checkpoint.read_meta(tmp_path / "ckpt1")["layers"]


class Interrupt(Exception):
    pass


def test_interrupted_run_resumes_from_last_block_with_the_same_result(tiny_model_dir, tmp_path):
    quantize_tiny(tiny_model_dir, tmp_path / "ref")
    _, reference, _ = checkpoint.load_checkpoint(tmp_path / "ref")

    def stop_after_block_1(i):
        if i == 1:
            raise Interrupt
    with pytest.raises(Interrupt):
        quantize_tiny(tiny_model_dir, tmp_path / "run", on_block_done=stop_after_block_1)
    partial = tmp_path / "run.partial"
    assert json.loads((partial / "state.json").read_text())["next_block"] == 2
    assert not (tmp_path / "run").exists()

    resumed_blocks = []
    quantize_tiny(tiny_model_dir, tmp_path / "run", on_block_done=resumed_blocks.append)
    assert resumed_blocks == [2]  # blocks 0 and 1 came from the resume folder
    assert not partial.exists()
    assert json.loads((tmp_path / "run" / "quantization.json").read_text())["stats"]["resumed_from_block"] == 2
    assert json.loads((tmp_path / "ref" / "quantization.json").read_text())["stats"]["resumed_from_block"] == 0
    _, resumed, _ = checkpoint.load_checkpoint(tmp_path / "run")
    for name, qw in reference.items():
        assert torch.equal(qw.q, resumed[name].q), name
        assert torch.equal(qw.scale, resumed[name].scale), name


def test_a_hostile_or_damaged_resume_file_is_refused_not_run(tiny_model_dir, tmp_path):
    """The next block's inputs are safetensors: a pickle planted there (code on load) or a damaged file is
    a one-line refusal, never unpickled."""
    import pickle

    def stop_after_block_0(i):
        if i == 0:
            raise Interrupt
    with pytest.raises(Interrupt):
        quantize_tiny(tiny_model_dir, tmp_path / "run", on_block_done=stop_after_block_0)
    hidden = tmp_path / "run.partial" / "hidden.safetensors"
    assert hidden.exists() and not list((tmp_path / "run.partial").glob("*.pt"))
    hidden.write_bytes(pickle.dumps({"payload": "os.system"}))
    with pytest.raises(EdgeqError, match="hidden.safetensors is corrupted or not a safetensors file"):
        quantize_tiny(tiny_model_dir, tmp_path / "run")


def test_resume_folder_of_another_recipe_is_not_used(tiny_model_dir, tmp_path):
    def stop(i):
        raise Interrupt
    with pytest.raises(Interrupt):
        quantize_tiny(tiny_model_dir, tmp_path / "run", on_block_done=stop)
    other = api.QuantConfig(method="gptq", bits=4, group_size=32, samples=6, seq_len=64, batch_size=4)
    seen = []
    quantize_tiny(tiny_model_dir, tmp_path / "run", other, on_block_done=seen.append)
    assert seen == [0, 1, 2]
    assert checkpoint.read_meta(tmp_path / "run")["bits"] == 4


def test_resume_folder_of_other_weights_at_the_same_path_is_not_used(bundled_tokenizer, tmp_path):
    """Replacing the model's weights at the same path must not resume the old model's blocks."""
    folder = save_tiny_model(tmp_path / "model", bundled_tokenizer)

    def stop(i):
        raise Interrupt
    with pytest.raises(Interrupt):
        quantize_tiny(folder, tmp_path / "run", on_block_done=stop)
    save_tiny_model(tmp_path / "other", bundled_tokenizer, initializer_range=0.05)
    (folder / "model.safetensors").write_bytes((tmp_path / "other" / "model.safetensors").read_bytes())
    seen = []
    quantize_tiny(folder, tmp_path / "run", on_block_done=seen.append)
    assert seen == [0, 1, 2]
    quantize_tiny(folder, tmp_path / "fresh")
    _, resumed, _ = checkpoint.load_checkpoint(tmp_path / "run")
    _, fresh, _ = checkpoint.load_checkpoint(tmp_path / "fresh")
    assert all(torch.equal(fresh[name].q, qw.q) for name, qw in resumed.items())


def test_rtn_needs_no_calibration_text(tiny_model_dir, tmp_path):
    meta = api.quantize(str(tiny_model_dir), tmp_path / "rtn", api.QuantConfig(method="rtn", bits=4, group_size=32),
                        progress=False)
    assert meta["calibration"] is None and len(meta["layers"]) == 21


def test_chunked_tokenization_equals_whole_text(bundled_tokenizer):
    text = held_out_text().read_text()[:120_000]
    whole = bundled_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert data.tokenize(bundled_tokenizer, text, chunk_chars=5_000).tolist() == whole


@pytest.mark.parametrize("method", ["rtn", "gptq"])
def test_identical_runs_write_byte_identical_weights_and_exports(method, tiny_model_dir, tmp_path):
    """safetensors wrote its metadata in hash order; the same run twice must give the same bytes, for the
    checkpoint's tensors and for the exported graph."""
    import hashlib

    from edgeq.export.onnx import export
    config = api.QuantConfig(method=method, bits=4, group_size=32, samples=4, seq_len=64)
    digests = set()
    for run in ("a", "b"):
        api.quantize(str(tiny_model_dir), tmp_path / run, config, progress=False,
                     calib=str(calibration_text()) if method == "gptq" else None)
        export(str(tmp_path / run), tmp_path / f"{run}-onnx")
        digests.add(tuple(hashlib.sha256(path.read_bytes()).hexdigest()
                          for path in (tmp_path / run / "model.safetensors", tmp_path / f"{run}-onnx" / "model.onnx")))
    assert len(digests) == 1


def test_metadata_is_written_in_sorted_order(tmp_path):
    metadata = {f"key{i}": str(i) for i in range(20)}
    checkpoint.save_tensors(tmp_path / "t.safetensors", {"w": torch.arange(6.0)}, metadata)
    from safetensors import safe_open
    with safe_open(str(tmp_path / "t.safetensors"), "pt") as f:
        assert f.metadata() == metadata and torch.equal(f.get_tensor("w"), torch.arange(6.0))
    raw = (tmp_path / "t.safetensors").read_bytes()
    assert raw.index(b'"key0"') < raw.index(b'"key1"') < raw.index(b'"key9"')


def test_saving_clears_stale_temporary_folders_and_uses_the_umask(tmp_path):
    """A run killed while saving leaves .OUT.tmp-*; the next save of OUT removes it."""
    import os
    stale = tmp_path / ".out.tmp-abc123"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    other = tmp_path / ".other.tmp-xyz"
    other.mkdir()
    with checkpoint.atomic_folder(tmp_path / "out") as tmp:
        (tmp / "f").write_text("done")
    assert not stale.exists() and other.exists() and (tmp_path / "out" / "f").read_text() == "done"
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o777 & ~umask


def test_a_group_wider_than_the_row_is_stored_per_channel(tiny_model_dir, tmp_path):
    """--group-size 256 on rows of K = 64 and 160: one group per row, stored as per-channel (no padding)."""
    api.quantize(str(tiny_model_dir), tmp_path / "wide", api.QuantConfig(method="rtn", bits=4, group_size=256),
                 progress=False)
    _, qweights, meta = checkpoint.load_checkpoint(tmp_path / "wide")
    for name, qw in qweights.items():
        k = qw.shape[1]
        assert qw.group_size == k and qw.scale.shape == (qw.shape[0], 1), name
        assert meta["layers"][name]["group_size"] == k


def test_first_token_weight_counts_each_window_s_first_position_that_many_times():
    from edgeq.calib.capture import HessianAccumulator
    x = torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(0))
    weighted = HessianAccumulator(4, "cpu", first_token_weight=3.0)
    weighted.add(x)
    repeated = torch.cat([x[:, :1], x[:, :1], x], dim=1).reshape(-1, 4)  # the first rows twice more
    torch.testing.assert_close(weighted.sum, repeated.T @ repeated)
    assert weighted.count == 15


def test_a_taken_hessian_is_the_hessian_divided_in_place():
    from edgeq.calib.capture import HessianAccumulator
    acc = HessianAccumulator(4, "cpu")
    acc.add(torch.randn(6, 4, generator=torch.Generator().manual_seed(0)))
    expected, buffer = acc.hessian(), acc.sum.data_ptr()
    taken = acc.take_hessian()
    assert torch.equal(taken, expected) and taken.data_ptr() == buffer and acc.sum is None


def test_first_token_weight_is_recorded_and_a_bad_one_refused(tiny_model_dir, tmp_path):
    meta = quantize_tiny(tiny_model_dir, tmp_path / "w", api.QuantConfig(
        method="gptq", bits=4, group_size=32, samples=4, seq_len=32, first_token_weight=4.0))
    assert meta["calibration"]["first_token_weight"] == 4.0
    plain = quantize_tiny(tiny_model_dir, tmp_path / "p", api.QuantConfig(method="gptq", bits=4, group_size=32,
                                                                         samples=4, seq_len=32))
    assert "first_token_weight" not in plain["calibration"] and plain["layer_errors"] != meta["layer_errors"]
    with pytest.raises(EdgeqError, match="first-token-weight"):
        quantize_tiny(tiny_model_dir, tmp_path / "bad", api.QuantConfig(method="gptq", first_token_weight=0))

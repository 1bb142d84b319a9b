"""The output head quantized with the model (`--lm-head` at quantize time): solved on the Hessian of the
final norm's outputs, stored once with a tied embedding, exported as the lookup's shared codes."""
import onnx
import pytest
import torch

from edgeq import api
from edgeq.io import checkpoint, models
from edgeq.quant import grid
from edgeq.calib.batches import Batches
from edgeq.calib.pipeline import Recipe, Timings, quantize_head
from edgeq.cli import main
from edgeq.errors import EdgeqError
from edgeq.export.onnx import export
from edgeq.io.head import head_spec
from edgeq.solvers import get_solver, weighted_error
from tests.conftest import calibration_text


@pytest.fixture(scope="module")
def head_checkpoint(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("head") / "w4-head4"
    api.quantize(str(tiny_model_dir), out, api.QuantConfig(bits=4, group_size=32, samples=4, seq_len=64, lm_head=4),
                 calib=str(calibration_text()), progress=False)
    return out


def test_head_is_solved_on_the_final_norm_outputs(tiny_model_dir):
    """The recorded head error is the objective on H = N(x)^T N(x) / n of the normed last states exactly,
    and GPTQ's head beats round-to-nearest on it."""
    model, config = models.load_model(models.resolve_source(str(tiny_model_dir)))
    arch = models.arch_of(config)
    torch.manual_seed(0)
    hidden = torch.randn(4, 16, config.hidden_size) * 3
    W = model.lm_head.weight.data.clone()
    with torch.no_grad():
        normed = model.model.norm(hidden).reshape(-1, config.hidden_size)
    H = normed.T @ normed / normed.shape[0]
    timings = Timings()
    qw = quantize_head(model, arch, Recipe.of("gptq", grid.QuantSpec(4, 32), lm_head=4),
                       Batches(hidden.clone(), [{models.SINGLE_KIND: {}}] * 2, 2, "cpu"), timings)
    assert timings.layer_errors["lm_head"] == pytest.approx(weighted_error(W, qw.dequantize(), H), rel=1e-4)
    rtn = get_solver("rtn")(W, None, head_spec(W.shape[1], 4))
    assert timings.layer_errors["lm_head"] < 0.9 * weighted_error(W, rtn.dequantize(), H)
    assert torch.equal(model.lm_head.weight.data, qw.dequantize())  # written into the model for what follows


def test_a_tied_head_is_stored_once_and_the_embedding_reads_its_codes(head_checkpoint):
    meta = checkpoint.read_meta(head_checkpoint)
    assert meta["layers"]["lm_head"]["bits"] == 4 and meta["lm_head_bits"] == 4 and "lm_head" in meta["layer_errors"]
    tensors = checkpoint.load_tensors(head_checkpoint / checkpoint.WEIGHTS_FILE)
    assert "model.embed_tokens.weight" not in tensors and "lm_head.weight" not in tensors
    model, qweights, _ = checkpoint.load_checkpoint(head_checkpoint)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert torch.equal(model.model.embed_tokens.weight, qweights["lm_head"].dequantize())


def test_export_shares_the_calibrated_codes_with_the_lookup(head_checkpoint, tmp_path):
    report = export(str(head_checkpoint), tmp_path / "onnx", accuracy_level=0)
    assert report["lm_head"] == "4, calibrated" and report["embedding"].startswith("4-bit")
    assert report["parity_relative_logit_error"] < 1e-5
    graph = onnx.load(str(tmp_path / "onnx" / "model.onnx")).graph
    lookup = next(n for n in graph.node if n.op_type == "GatherBlockQuantized")
    head = next(n for n in graph.node if n.name == "lm_head_MatMulNBits")
    assert lookup.input[0] == head.input[1]
    for head in ("8", "fp"):  # a calibrated head can be neither replaced nor un-quantized
        with pytest.raises(EdgeqError, match="head was quantized with the model"):
            export(str(head_checkpoint), tmp_path / "again", lm_head=head)
    assert not (tmp_path / "again").exists()


def test_rtn_head_at_quantize_time_is_the_exporters_rtn_head(tiny_model_dir, tmp_path):
    api.quantize(str(tiny_model_dir), tmp_path / "rtn", api.QuantConfig(method="rtn", bits=4, group_size=32,
                 lm_head=8), progress=False)
    _, qweights, _ = checkpoint.load_checkpoint(tmp_path / "rtn")
    model, _ = models.load_model(models.resolve_source(str(tiny_model_dir)))
    W = model.lm_head.weight.data
    assert torch.equal(qweights["lm_head"].q, get_solver("rtn")(W, None, head_spec(W.shape[1], 8)).q)


def test_slicing_a_nested_checkpoint_leaves_its_head_alone(tiny_model_dir, tmp_path):
    api.quantize(str(tiny_model_dir), tmp_path / "mq", api.QuantConfig(method="matquant", bits=8, group_size=32,
                 samples=4, seq_len=64, lm_head=8), calib=str(calibration_text()), progress=False)
    _, q2, _ = checkpoint.load_checkpoint(tmp_path / "mq", 2)
    _, q35, _ = checkpoint.load_checkpoint(tmp_path / "mq", 3.5)
    assert q2["lm_head"].bits == q35["lm_head"].bits == 8
    assert {qw.bits for name, qw in q2.items() if name != "lm_head"} == {2}


def test_cli_refuses_other_head_widths(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["quantize", "--out", str(tmp_path / "x"), "--lm-head", "2"])
    assert "invalid choice: '2'" in capsys.readouterr().err
    with pytest.raises(EdgeqError, match="head is quantized at 8 or 4 bits"):
        api.QuantConfig(lm_head=3).validate()

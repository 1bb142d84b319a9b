"""Learned rounding (SignRound, FlexRound, LRQ) and the block reconstruction engine they share."""
import json

import pytest
import torch

from edgeq import api, cli
from edgeq.io import checkpoint
from edgeq.quant import grid
from edgeq.calib.batches import Batches
from edgeq.calib.pipeline import Recipe
from edgeq.calib.reconstruct import Schedule, _shuffled_batches, make_optimizer, reconstruct_block, token_errors
from edgeq.errors import EdgeqError
from edgeq.io.models import SINGLE_KIND
from edgeq.export.onnx import export
from edgeq.solvers import get_method, get_solver, method_names
from edgeq.solvers.method import DEFAULT_BLOCK_LOSS
from tests.conftest import calibration_text

SPECS = [grid.QuantSpec(3, 32), grid.QuantSpec(4, -1), grid.QuantSpec(2, 16, sym=True)]
SINGLE_WIDTH = sorted(m for m in method_names() if get_method(m).learned and not get_method(m).nested)  # matround (nested int8 codes): tests/test_matround.py
LEARNED_CONFIG = dict(bits=3, group_size=32, samples=6, seq_len=64, batch_size=2)


def weights(n=24, k=80, seed=0):
    return torch.randn(n, k, generator=torch.Generator().manual_seed(seed))


def perturb(rounding, seed=1):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in rounding.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=generator))
    rounding.project()


@pytest.mark.parametrize("method", SINGLE_WIDTH)
@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_the_trained_weight_is_exactly_what_the_quantized_weight_stores(method, spec):
    """What the block trains with is bit for bit what the checkpoint and the exporter get."""
    rounding = get_method(method).rounding(weights(), spec)
    for moved in (False, True):
        if moved:
            perturb(rounding)
        qw = rounding.result()
        assert qw.bits == spec.bits and qw.zero.dtype == torch.uint8
        assert torch.equal(qw.dequantize(), rounding.weight().detach())
        if spec.sym:
            assert torch.all(qw.zero == 2 ** (spec.bits - 1))


@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_untrained_roundings_are_round_to_nearest(spec):
    """Same codes and zero points as RTN; FlexRound's scale comes back as exp(log s1), within an ulp."""
    W = weights()
    rtn = {clip: get_solver("rtn")(W, None, spec, clip=clip) for clip in ("minmax", "mse")}
    for method, clip in (("signround", "minmax"), ("flexround", "minmax"), ("lrq", "mse")):  # LRQ: L = 0
        qw = get_method(method).rounding(W, spec).result()
        assert torch.equal(qw.q, rtn[clip].q) and torch.equal(qw.zero, rtn[clip].zero), method
        assert torch.allclose(qw.scale, rtn[clip].scale, rtol=1e-6, atol=0), method


def test_division_moves_large_weights_more_than_addition_does():
    """d W_hat / d log S2 = -s1 W / (s1 S2 s3) = -W at the start: proportional to the weight (FlexRound's
    point); the additive offset's gradient is s1 for every weight of a group."""
    W = weights()
    spec = grid.QuantSpec(4, 32)
    division = get_method("flexround").rounding(W, spec)
    division.weight().sum().backward()
    inside = (division.result().q > 0) & (division.result().q < spec.maxq)  # not clamped
    assert torch.allclose(division.log_weights.grad[inside], -W[inside], rtol=1e-6)
    addition = get_method("flexround").rounding(W, spec, rule="addition")
    addition.weight().sum().backward()
    s1 = grid.expand_groups(addition.log_grid.exp(), 32, W.shape[1]).detach()
    inside = (addition.result().q > 0) & (addition.result().q < spec.maxq)
    assert torch.allclose(addition.offset.grad[inside], s1[inside])


def test_lrq_trains_far_fewer_numbers_than_flexround():
    W = weights(256, 512)
    count = {m: sum(p.numel() for p in get_method(m).rounding(W, grid.QuantSpec(3, 128)).parameters())
             for m in ("flexround", "lrq")}
    assert count["flexround"] > W.numel() and count["lrq"] < 0.8 * W.numel()  # rank 64: (256 + 512) x 64


def test_signround_stays_in_its_box():
    rounding = get_method("signround").rounding(weights(), grid.QuantSpec(3, 32))
    with torch.no_grad():
        rounding.offset.fill_(3.0)
        rounding.min_scale.fill_(-2.0)
        rounding.max_scale.fill_(7.0)
    rounding.project()
    assert rounding.offset.max() == 0.5 and rounding.min_scale.min() == 0.0 and rounding.max_scale.max() == 1.0


def test_signed_descent_moves_every_parameter_by_the_learning_rate():
    p = torch.tensor([0.3, -2.0, 5.0], requires_grad=True)
    optimizer, decay = make_optimizer([p], Schedule(steps=4, lr=0.1, optimizer="sign"))
    (p * torch.tensor([1e-6, -3.0, 40.0])).sum().backward()
    p.grad.sign_()
    optimizer.step()
    assert torch.allclose(p.detach(), torch.tensor([0.2, -1.9, 4.9]))
    decay.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.075)  # linear decay to 0 over 4 steps


class Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(8, 4, bias=False)

    def forward(self, x):
        return self.lin(x)


class Free:
    """A rounding with no grid at all: the weight itself is the parameter."""
    optimizer = "adam"

    def __init__(self, W):
        self.w = W.clone().requires_grad_()

    def parameters(self):
        return [self.w]

    def weight(self):
        return self.w

    def project(self):
        pass


def whole_set_loss(x, w, target) -> float:
    return float(torch.nn.functional.mse_loss(x @ w.detach().T, target))


def test_the_engine_keeps_the_candidate_lowest_on_the_whole_set():
    torch.manual_seed(0)
    block, x = Toy(), torch.randn(1, 16, 8)
    target = block(x).detach() + 0.3 * torch.randn(1, 16, 4)
    rounding = Free(torch.randn(4, 8))
    record = reconstruct_block(block, {"lin": rounding}, Batches(x, [{SINGLE_KIND: {}}], 1), target, Schedule(30, 0.5, "adam"))
    whole = record["whole_set"]  # one batch: the batch losses are whole-set losses
    assert whole["start"] == pytest.approx(record["first"], rel=1e-5)
    assert whole["best_batch"] == pytest.approx(record["best"], rel=1e-5) and record["best"] < record["first"]
    assert whole_set_loss(x, rounding.w, target) == pytest.approx(min(whole.values()), rel=1e-5)
    assert record["kept"] == min(whole, key=whole.get)
    assert all(p.requires_grad for p in block.parameters())  # the block is unfrozen afterwards


def test_an_easy_batch_early_does_not_throw_the_training_away():
    """As in a real run (256 batches, 150 steps), every batch is drawn once; the one drawn at step 2 has inputs
    1000x smaller, so its loss is the lowest whatever the weights. Its step has the lowest batch loss, but
    the last step is better on all the windows, and is kept."""
    torch.manual_seed(0)
    block, x = Toy(), torch.randn(40, 16, 8)
    x[_shuffled_batches(40, 40, 0)[2]] *= 0.001
    target = x @ torch.randn(4, 8).T
    rounding = Free(torch.zeros(4, 8))
    record = reconstruct_block(block, {"lin": rounding}, Batches(x, [{SINGLE_KIND: {}}] * 40, 1), target,
                               Schedule(40, 0.05, "adam"))
    assert record["best_step"] == 2
    whole = record["whole_set"]
    assert record["kept"] == "last" and whole["last"] < whole["best_batch"] < whole["start"]
    assert whole_set_loss(x, rounding.w, target) == pytest.approx(whole["last"], rel=1e-5)


def test_a_block_that_training_makes_worse_keeps_its_start():
    torch.manual_seed(0)
    block, x = Toy(), torch.randn(2, 16, 8)
    start = torch.randn(4, 8)
    target = x @ start.T  # the start is exact: every step can only make it worse
    rounding = Free(start)
    record = reconstruct_block(block, {"lin": rounding}, Batches(x, [{SINGLE_KIND: {}}] * 2, 1), target,
                               Schedule(10, 1.0, "sign"))
    assert record["kept"] == "start" and torch.equal(rounding.w.detach(), start)


def test_mse_block_loss_is_torch_mse_and_relative_is_per_token_scale_free():
    torch.manual_seed(0)
    target = torch.randn(2, 5, 16)
    out = target + 0.1 * torch.randn(2, 5, 16)
    assert token_errors(out, target, "mse").mean() == pytest.approx(float(torch.nn.functional.mse_loss(out, target)))
    assert torch.allclose(token_errors(target * 1.01, target, "relative"), torch.full((2, 5), 1e-4))
    sink = torch.ones(2, 5, 1)
    sink[:, 0] = 1000.0  # each window's first token 1000x larger, as the attention sink's state
    relative = token_errors(out, target, "relative")
    assert torch.allclose(token_errors(out * sink, target * sink, "relative"), relative)
    mse = token_errors(out * sink, target * sink, "mse")
    assert mse[:, 0].sum() > 0.99 * mse.sum()  # under mse the sink is nearly all of the loss
    with pytest.raises(ValueError, match="block loss must be one of"):
        token_errors(out, target, "l1")


@pytest.mark.parametrize("loss", ["mse", "relative"])
def test_the_kept_candidate_is_the_lowest_under_either_block_loss(loss):
    torch.manual_seed(0)
    block, x = Toy(), torch.randn(3, 16, 8)
    x[:, 0] *= 100.0  # a sink-like first token
    target = block(x).detach() + 0.3 * torch.randn(3, 16, 4)
    rounding = Free(torch.randn(4, 8))
    record = reconstruct_block(block, {"lin": rounding}, Batches(x, [{SINGLE_KIND: {}}] * 3, 1), target,
                               Schedule(12, 0.1, "adam"), loss=loss)
    kept = float(token_errors(x @ rounding.w.detach().T, target, loss).mean())
    assert kept == pytest.approx(record["whole_set"][record["kept"]], rel=1e-5)
    assert record["kept"] == min(record["whole_set"], key=record["whole_set"].get)


@pytest.mark.parametrize("method, epochs, chosen, trained", [
    ("flexround", 0, None, DEFAULT_BLOCK_LOSS["learned"]), ("gptq", 2, None, DEFAULT_BLOCK_LOSS["layer"]),
    ("flexround", 0, "mse", "mse"), ("gptq", 2, "relative", "relative")])
def test_the_block_loss_defaults_by_kind_of_training(method, epochs, chosen, trained):
    config = api.QuantConfig(method=method, block_epochs=epochs, block_loss=chosen)
    config.validate()
    assert config.trained_block_loss == trained


def test_the_block_loss_is_part_of_the_resume_identity():
    spec = grid.QuantSpec(3, 32)
    # The recipe is built from QuantConfig, so an unset loss is the learned methods' default (relative).
    assert (Recipe.of("flexround", spec).digest("m", "c")
            == Recipe.of("flexround", spec, block_loss="relative").digest("m", "c")
            != Recipe.of("flexround", spec, block_loss="mse").digest("m", "c"))


@pytest.mark.parametrize("method, extra", [("flexround", {"solver_opts": {"steps": 6}}), ("gptq", {"block_epochs": 1})])
def test_relative_block_loss_trains_and_is_recorded(method, extra, tiny_model_dir, tmp_path):
    config = api.QuantConfig(method=method, block_loss="relative", **extra, **LEARNED_CONFIG)
    meta = api.quantize(str(tiny_model_dir), tmp_path / "ckpt", config, calib=str(calibration_text()),
                        progress=False)
    assert meta["calibration"]["block_loss"] == "relative"
    for r in meta["block_losses"].values():
        if method == "flexround":  # the pipeline's own pass measures the same loss the engine kept
            assert r["after"] == pytest.approx(r["whole_set"][r["kept"]], rel=1e-4), r
        else:  # [epoch means..., after]: relative errors of a 3-bit block, well below 1
            assert len(r) == 2 and all(0 < v < 1 for v in r), r


@pytest.mark.parametrize("method", SINGLE_WIDTH)
def test_each_block_learns_and_the_export_reproduces_the_trained_model(method, tiny_model_dir, tmp_path):
    config = api.QuantConfig(method=method, solver_opts={"steps": 12}, **LEARNED_CONFIG)
    meta = api.quantize(str(tiny_model_dir), tmp_path / "ckpt", config, calib=str(calibration_text()),
                        progress=False)
    losses = meta["block_losses"]
    assert sorted(losses) == ["0", "1", "2"]
    assert all(r["best"] < r["first"] and r["steps"] == 12 for r in losses.values()), losses
    for r in losses.values():  # the weights exported are the candidate kept: the pipeline's own pass agrees
        assert r["after"] == pytest.approx(r["whole_set"][r["kept"]], rel=1e-4), r
    assert meta["stats"]["seconds_block_training"] > 0 and meta["stats"]["seconds_hessian"] == 0
    report = export(str(tmp_path / "ckpt"), tmp_path / "onnx", accuracy_level=0)
    assert report["parity_relative_logit_error"] < 1e-5


def test_interrupted_learned_run_resumes_with_the_same_result(tiny_model_dir, tmp_path):
    """The float model's states travel in the resume folder too: the resumed blocks train on the same targets."""
    config = api.QuantConfig(method="signround", solver_opts={"steps": 6}, **LEARNED_CONFIG)

    def run(out, **kwargs):
        return api.quantize(str(tiny_model_dir), out, config, calib=str(calibration_text()), progress=False,
                            **kwargs)

    class Interrupt(Exception):
        pass

    def stop_after_block_0(i):
        if i == 0:
            raise Interrupt
    run(tmp_path / "ref")
    with pytest.raises(Interrupt):
        run(tmp_path / "run", on_block_done=stop_after_block_0)
    assert (tmp_path / "run.partial" / "fp_hidden.safetensors").exists()
    run(tmp_path / "run")
    _, reference, _ = checkpoint.load_checkpoint(tmp_path / "ref")
    _, resumed, _ = checkpoint.load_checkpoint(tmp_path / "run")
    for name, qw in reference.items():
        assert torch.equal(qw.q, resumed[name].q) and torch.equal(qw.scale, resumed[name].scale), name


def test_block_epochs_are_refused_for_learned_methods(tiny_model_dir, tmp_path):
    config = api.QuantConfig(method="flexround", block_epochs=1, **LEARNED_CONFIG)
    with pytest.raises(EdgeqError, match="already trains"):
        api.quantize(str(tiny_model_dir), tmp_path / "x", config, calib=str(calibration_text()), progress=False)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("argv, message", [
    (["--method", "gptq", "--steps", "10"], "--steps does not apply to gptq; it applies to signround, flexround, lrq, matround"),
    (["--method", "flexround", "--rank", "8"], "--rank does not apply to flexround; it applies to lrq"),
    (["--method", "lrq", "--rounding-rule", "addition"], "--rounding-rule does not apply to lrq; it applies to flexround"),
    (["--method", "signround", "--clip", "mse"], "--clip does not apply to signround"),
    (["--method", "signround", "--lr", "0"], "--lr must be > 0"),
    (["--method", "gptq", "--block-loss", "relative"], "--block-loss applies to block training: a learned method"),
    (["--method", "gptq", "--block-loss", "mse"], "--block-loss applies to block training: a learned method"),
])
def test_cli_refuses_flags_the_method_would_ignore(argv, message, tmp_path, capsys):
    assert cli.main(["quantize", "--out", str(tmp_path / "x"), *argv]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_cli_passes_learned_options_into_the_checkpoint(tiny_model_dir, tmp_path):
    assert cli.main(["quantize", str(tiny_model_dir), "--out", str(tmp_path / "ck"), "--method", "lrq", "--steps",
                     "3", "--rank", "4", "--lr", "0.01", "--bits", "3", "--group-size", "32", "--samples", "4",
                     "--seq-len", "64", "--calib", str(calibration_text()), "--quiet"]) == 0
    meta = json.loads((tmp_path / "ck" / "quantization.json").read_text())
    assert meta["method"] == "lrq" and meta["solver_opts"] == {"steps": 3, "lr": 0.01, "rank": 4}
    assert meta["calibration"]["block_loss"] == DEFAULT_BLOCK_LOSS["learned"]  # the default, recorded

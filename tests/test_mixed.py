"""Mixed precision: the exact knapsack against brute force, the size model against real MatMulNBits
tensors, the Fisher diagonal against per-window gradients, and the whole job on the tiny Llama (plan
within budget, checkpoint widths, export, reuse of the estimates, refusals that leave nothing)."""
import itertools
import json

import numpy as np
import onnx
import pytest
import torch

from edgeq.planning import allocate, mixed
from edgeq import api
from edgeq.quant import grid
from edgeq.evaluation import heldout
from edgeq.io import models
from edgeq.calib import capture, data, sensitivity
from edgeq.cli import main
from edgeq.errors import EdgeqError
from edgeq.quant.layout import initializer_bytes, layout_for, node_layout, node_tensors
from edgeq.solvers import get_solver, weighted_error
from tests.conftest import calibration_text
from tests.test_export import random_qweight


def brute_force(costs, values, budget):
    best = None
    for choice in itertools.product(*[range(len(row)) for row in costs]):
        if sum(costs[i][j] for i, j in enumerate(choice)) <= budget:
            value = sum(values[i][j] for i, j in enumerate(choice))
            best = value if best is None else min(best, value)
    return best


@pytest.mark.parametrize("seed", range(12))
def test_allocation_is_the_brute_force_optimum_and_within_budget(seed):
    rng = np.random.default_rng(seed)
    layers, choices = int(rng.integers(2, 7)), int(rng.integers(2, 4))
    costs = [sorted(rng.integers(1, 60, choices).tolist()) for _ in range(layers)]
    values = [sorted(rng.uniform(0, 10, choices).tolist(), reverse=True) for _ in range(layers)]
    if seed % 3 == 0:  # values not ordered by cost: the solver must not assume it
        values = [rng.permutation(v).tolist() for v in values]
    budget = int(rng.integers(sum(map(min, costs)), sum(map(max, costs)) + 1))
    result = allocate.allocate(costs, values, budget)
    assert result.exact and result.cost <= budget
    assert result.cost == sum(costs[i][j] for i, j in enumerate(result.choice))
    assert result.value == pytest.approx(brute_force(costs, values, budget), abs=1e-9)


def test_a_coarsened_table_still_respects_the_budget(monkeypatch):
    monkeypatch.setattr(allocate, "MAX_STATES", 7)
    rng = np.random.default_rng(0)
    costs = [sorted(rng.integers(1, 1000, 3).tolist()) for _ in range(6)]
    values = [[3.0, 2.0, 1.0]] * 6
    budget = sum(map(min, costs)) + 1500
    result = allocate.allocate(costs, values, budget)
    assert not result.exact and result.cost <= budget


def test_a_budget_below_the_cheapest_choice_is_refused():
    with pytest.raises(EdgeqError, match="below the smallest"):
        allocate.allocate([[4, 8], [4, 8]], [[1, 0], [1, 0]], 7)


@pytest.mark.parametrize("n,k,bits,group", [(48, 200, 2, 64), (8, 576, 4, 128), (5, 96, 8, 32), (7, 300, 3, 64),
                                            (6, 100, 4, -1), (3, 40, 2, 16)])
def test_the_size_model_is_the_bytes_the_exporter_writes(n, k, bits, group):
    qw = random_qweight(n, k, bits, k if group == -1 else group)
    written = sum(t.nbytes for t in node_tensors(qw, node_layout("w", qw)))
    assert initializer_bytes(n, layout_for("w", k, bits, group)) == written


def test_budget_parsing():
    assert mixed.parse_budget("3.0") == (3.0, "bits") and mixed.parse_budget("25MB") == (25.0, "mb")
    assert mixed.parse_budget("3.3bpw") == (3.3, "bpw")
    with pytest.raises(EdgeqError, match="--budget"):
        mixed.parse_budget("three")


@pytest.fixture(scope="module")
def tiny(tiny_model_dir, bundled_tokenizer):
    model, config = models.load_model(models.resolve_source(str(tiny_model_dir)))
    text, _ = heldout.read_text(str(calibration_text()))
    windows = data.calibration_windows(data.tokenize(bundled_tokenizer, text), 3, 32, 0)
    return model, models.arch_of(config), windows


def test_fisher_diagonal_is_the_mean_squared_gradient_of_each_window(tiny):
    model, arch, windows = tiny
    fisher = sensitivity.fisher_diagonal(model, arch, windows, progress=False)
    name = f"{arch.blocks}.1.mlp.down_proj"
    weight = models.get_module(model, name).weight.requires_grad_(True)
    squares = []
    for w in range(windows.shape[0]):
        ids = windows[w:w + 1]
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        (grad,) = torch.autograd.grad(loss, weight)
        squares.append(grad ** 2)
    weight.requires_grad_(False)
    torch.testing.assert_close(fisher[name], torch.stack(squares).mean(0), rtol=1e-4, atol=1e-12)
    assert set(fisher) == {f"{arch.blocks}.{i}.{n}" for i in range(3) for n in arch.linears}
    assert not any(p.requires_grad for p in model.parameters())


def test_estimates_are_the_solvers_errors_on_float_inputs(tiny):
    """Block 0's estimates, recomputed by hand: the Hessian of its captured inputs, GPTQ's result per grid."""
    model, arch, windows = tiny
    specs = [grid.QuantSpec(2, 32), grid.QuantSpec(4, 32)]
    fisher = {n: torch.rand_like(models.get_module(model, n).weight)
              for n in [f"{arch.blocks}.{i}.{m}" for i in range(3) for m in arch.linears]}
    before = {n: models.get_module(model, n).weight.clone() for n in fisher}
    opts = {"clip": "minmax"}
    est = sensitivity.layer_estimates(model, arch, windows, specs, "gptq", opts, 2, fisher, progress=False)
    assert all(torch.equal(models.get_module(model, n).weight, w) for n, w in before.items())
    hidden, _ = capture.capture_block_inputs(model, arch, windows, 2)
    with torch.no_grad():
        x = models.get_module(model, arch.blocks)[0].input_layernorm(hidden).reshape(-1, hidden.shape[-1])
    H = x.T @ x / x.shape[0]
    name = f"{arch.blocks}.0.self_attn.k_proj"
    W = models.get_module(model, name).weight.data
    for j, spec in enumerate(specs):
        W_hat = get_solver("gptq")(W, H, spec, **opts).dequantize()
        assert est["hessian"][name][j] == pytest.approx(weighted_error(W, W_hat, H), rel=1e-3)
        assert est["fisher"][name][j] == pytest.approx(0.5 * float((fisher[name] * (W - W_hat) ** 2).sum()), rel=1e-3)
    assert all(e[0] > e[1] for e in est["hessian"].values())  # 2 bits cost more than 4, layer by layer


CANDIDATES = ((2, 32), (4, 32), (8, 32))


def mixed_config(budget, unit="bits", **kwargs):
    return api.QuantConfig(samples=4, seq_len=64, batch_size=2, solver_opts={"clip": "minmax"},
                           mixed=mixed.MixedPrecision(budget, unit, CANDIDATES, samples=3, **kwargs))


def quantize(folder, out, config, **kwargs):
    return api.quantize(str(folder), out, config, calib=str(calibration_text()), progress=False, **kwargs)


@pytest.fixture(scope="module")
def mixed_checkpoint(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("mixed") / "b3"
    return out, quantize(tiny_model_dir, out, mixed_config(3.0))


def test_the_plan_meets_the_budget_and_the_checkpoint_holds_its_widths(mixed_checkpoint):
    out, meta = mixed_checkpoint
    plan = meta["mixed"]
    assert plan["bits_per_weight"] <= 3.0 and plan["exact"]
    assert {r["width"] for r in plan["layers"].values()} > {"2g32"}  # a real mix, not one width
    for name, row in plan["layers"].items():
        layer = meta["layers"][name]
        assert f"{layer['bits']}g{layer['group_size']}" == row["width"]
    weights = sum(n * k for n, k in (v["shape"] for v in meta["layers"].values()))
    code_bits = sum(v["bits"] * v["shape"][0] * v["shape"][1] for v in meta["layers"].values())
    assert code_bits / weights == pytest.approx(plan["bits_per_weight"], abs=1e-4)
    assert set(meta["sensitivity"]["estimates"]) == {"fisher", "hessian"}


def test_the_mixed_checkpoint_exports_one_width_per_node(mixed_checkpoint, tmp_path):
    from edgeq.export.onnx import export
    out, meta = mixed_checkpoint
    report = export(str(out), tmp_path / "onnx")
    assert report["parity_relative_logit_error_level_0"] < 1e-4
    proto = onnx.load(str(tmp_path / "onnx" / "model.onnx"), load_external_data=False)
    bits = sorted(next(a.i for a in n.attribute if a.name == "bits") for n in proto.graph.node
                  if n.op_type == "MatMulNBits")
    widths = sorted(int(r["width"].split("g")[0]) for r in meta["mixed"]["layers"].values())
    assert set(bits) == set(widths)  # fused q/k/v or gate/up nodes share one width, so compare the sets


def test_a_size_budget_in_mb_and_reused_estimates(mixed_checkpoint, tiny_model_dir, tmp_path, monkeypatch):
    out, meta = mixed_checkpoint
    monkeypatch.setattr(api, "_measure_sensitivity", lambda *a, **k: pytest.fail("estimates measured again"))
    budget = 0.8 * meta["mixed"]["matmulnbits_mb"]
    small = quantize(tiny_model_dir, tmp_path / "mb", mixed_config(budget, "mb", sensitivity_from=str(out)))
    assert small["mixed"]["matmulnbits_mb"] <= budget
    assert small["mixed"]["bits_per_weight"] < meta["mixed"]["bits_per_weight"]
    hessian = quantize(tiny_model_dir, tmp_path / "h", mixed_config(3.0, estimator="hessian", sensitivity_from=str(out)))
    assert hessian["mixed"]["estimator"] == "hessian" and hessian["mixed"]["bits_per_weight"] <= 3.0


def test_a_budget_in_stored_bits_per_weight_counts_scales_and_zero_points(mixed_checkpoint, tiny_model_dir,
                                                                           tmp_path):
    out, meta = mixed_checkpoint
    budget = meta["mixed"]["stored_bits_per_weight"] - 0.25  # below what the 3.0 code-bit plan stores
    small = quantize(tiny_model_dir, tmp_path / "bpw", mixed_config(budget, "bpw", sensitivity_from=str(out)))
    layers = small["layers"]
    weights = sum(n * k for n, k in (v["shape"] for v in layers.values()))
    stored = sum(8 * initializer_bytes(v["shape"][0], layout_for(name, v["shape"][1], v["bits"], v["group_size"]))
                 for name, v in layers.items())
    assert stored / weights <= budget and stored / weights == pytest.approx(small["mixed"]["stored_bits_per_weight"],
                                                                            abs=1e-3)
    assert small["mixed"]["bits_per_weight"] < meta["mixed"]["bits_per_weight"]


def test_block_training_keeps_each_linears_own_width(mixed_checkpoint, tiny_model_dir, tmp_path):
    out, meta = mixed_checkpoint
    config = mixed_config(3.0, sensitivity_from=str(out))
    trained = quantize(tiny_model_dir, tmp_path / "bt", api.QuantConfig(**{**vars(config), "block_epochs": 1}))
    assert trained["layers"] == meta["layers"]
    assert all(len(losses) == 2 for losses in trained["block_losses"].values())


def test_an_interrupted_run_keeps_its_estimates(tiny_model_dir, tmp_path, monkeypatch):
    def stop(i):
        if i == 1:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        quantize(tiny_model_dir, tmp_path / "r", mixed_config(4.0), on_block_done=stop)
    monkeypatch.setattr(api, "_measure_sensitivity", lambda *a, **k: pytest.fail("estimates measured again"))
    meta = quantize(tiny_model_dir, tmp_path / "r", mixed_config(4.0))
    assert meta["mixed"]["bits_per_weight"] <= 4.0 and not (tmp_path / "r.partial").exists()


@pytest.mark.parametrize("argv,message", [
    (["--mixed"], "--mixed needs --budget"),
    (["--budget", "1.5"], "below the smallest"),
    (["--budget", "9"], "above the largest"),
    (["--budget", "3", "--bits", "4"], "drop --bits"),
    (["--budget", "3", "--layer-grid", "down_proj=4"], "use one of the two"),
    (["--candidates", "2:64,4"], "add --budget"),
    (["--layer-grid", "nothing_like_this=4"], "matches no linear"),
])
def test_bad_mixed_requests_are_refused_and_leave_nothing(argv, message, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["quantize", str(tiny_model_dir), "--out", str(out), "--quiet", *argv]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "out.partial").exists()


def test_layer_grids_set_widths_by_name(tiny_model_dir, tmp_path, capsys):
    argv = ["quantize", str(tiny_model_dir), "--out", str(tmp_path / "h"), "--quiet", "--bits", "2",
            "--group-size", "32", "--layer-grid", "mlp=4:32", "--layer-grid", "down_proj=8:64", "--samples", "4",
            "--seq-len", "64", "--calib", str(calibration_text())]
    assert main(argv) == 0
    layers = json.loads((tmp_path / "h" / "quantization.json").read_text())["layers"]
    expected = {"down_proj": (8, 64), "gate_proj": (4, 32), "up_proj": (4, 32), "q_proj": (2, 32)}
    for name, info in layers.items():
        if name.rsplit(".", 1)[-1] in expected:
            assert (info["bits"], info["group_size"]) == expected[name.rsplit(".", 1)[-1]]


def test_the_default_candidates_avoid_groups_onnxruntime_would_pad():
    """4:128 on K = 576 is stored as 640 inputs (five groups): more bytes than 4:64's nine groups and worse
    codes, so where some K is not a multiple of 128 the default's groups are 64; explicit candidates stay."""
    even, smollm2 = {"a": (64, 1536), "b": (64, 256)}, {"a": (64, 1536), "b": (64, 576)}
    assert mixed.default_candidates(even) == mixed.DEFAULT_CANDIDATES
    assert mixed.default_candidates(smollm2) == ((2, 64), (4, 64), (8, 64))
    padded = mixed.cost("b", smollm2["b"], grid.QuantSpec(4, 128, False), "bpw")
    assert mixed.cost("b", smollm2["b"], grid.QuantSpec(4, 64, False), "bpw") < padded  # why
    assert [s.group_size for s in mixed.MixedPrecision(3.0).specs(False, smollm2)] == [64, 64, 64]
    assert [s.group_size for s in mixed.MixedPrecision(3.0, candidates=((2, 64), (4, 128))).specs(False, smollm2)] \
        == [64, 128]

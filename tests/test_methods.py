"""The method records (solvers/method.py): one declaration per method, from which the CLI, the API's validation
and the pipeline read everything. A method added here, in a test, runs end to end with nothing else touched."""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch

from edgeq import api, cli
from edgeq.quant import grid
from edgeq.cli.quantize_flags import option_flags, option_help
from edgeq.errors import EdgeqError
from edgeq.quant.qweight import QuantizedWeight
from edgeq.solvers import Method, get_method, method_names, register
from edgeq.solvers.method import unregister
from edgeq.solvers.options import Flag, option

ROOT = Path(__file__).resolve().parents[1]


# ---- a whole method: its solve and its record (what adding a method takes) ----

SHRINK = Flag("--shrink", "the min-max range times this", type=float)


@dataclasses.dataclass(frozen=True)
class NearestOptions:
    shrink: float = option(1.0, SHRINK)  # its default and its flag, declared once


def nearest(W, H, spec, *, shrink):
    k = W.shape[1]
    gs = spec.columns_per_group(k)
    scale, zero = grid.fit_params(W.float() * shrink, spec, "minmax")
    return QuantizedWeight.from_float_params(grid.quantize_groups(W.float(), scale, zero, gs, spec.maxq), scale,
                                             zero, spec.bits, gs)


NEAREST = Method("nearest", "layer", NearestOptions, nearest, needs_hessian=False,
                 summary="round to nearest on a shrunk min-max range (a test method)")


@pytest.fixture
def nearest_method():
    register(NEAREST)
    yield NEAREST
    unregister("nearest")


def test_a_registered_method_runs_from_the_cli_and_equals_its_reference(nearest_method, tiny_model_dir, tmp_path):
    assert cli.main(["quantize", str(tiny_model_dir), "--out", str(tmp_path / "n"), "--method", "nearest",
                     "--group-size", "32", "--quiet"]) == 0
    meta = json.loads((tmp_path / "n" / "quantization.json").read_text())
    assert meta["method"] == "nearest" and meta["calibration"] is None
    from edgeq.io import checkpoint
    _, qweights, _ = checkpoint.load_checkpoint(tmp_path / "n")
    _, rtn, _ = checkpoint.load_checkpoint(_quantize(tiny_model_dir, tmp_path / "r", "rtn"))
    for name, qw in qweights.items():  # shrink 1.0 is min-max rounding: exactly RTN's codes
        assert torch.equal(qw.q, rtn[name].q) and torch.equal(qw.scale, rtn[name].scale)


def test_a_registered_methods_option_is_a_cli_flag_with_its_help(nearest_method, tiny_model_dir, tmp_path):
    help_text = " ".join(cli.build_parser("quantize")._subparsers._group_actions[0].choices["quantize"].format_help().split())
    assert "--shrink SHRINK" in help_text and "nearest: the min-max range times this (default: 1)" in help_text
    assert cli.main(["quantize", str(tiny_model_dir), "--out", str(tmp_path / "n"), "--method", "nearest",
                     "--group-size", "32", "--shrink", "0.5", "--quiet"]) == 0
    assert json.loads((tmp_path / "n" / "quantization.json").read_text())["solver_opts"] == {"shrink": 0.5}
    assert cli.main(["quantize", str(tiny_model_dir), "--out", str(tmp_path / "g"), "--shrink", "0.5"]) == 2


def test_every_module_of_the_solvers_package_is_one_method_registered_by_itself():
    """Adding a method is its file: the package imports every module, each registers its own record."""
    import pkgutil

    import edgeq.solvers as solvers
    modules = {m.name for m in pkgutil.iter_modules(solvers.__path__)} - {"method", "options"}
    owners = {get_method(name).implementation().__module__.rsplit(".", 1)[1] for name in method_names()}
    assert modules == owners


def test_a_registered_method_takes_its_options_through_the_api(nearest_method, tiny_model_dir, tmp_path):
    out = _quantize(tiny_model_dir, tmp_path / "n", "nearest", {"shrink": 0.5})
    assert json.loads((out / "quantization.json").read_text())["solver_opts"] == {"shrink": 0.5}
    with pytest.raises(EdgeqError, match="nearest has no option 'clip'; its options: shrink"):
        _quantize(tiny_model_dir, tmp_path / "bad", "nearest", {"clip": "mse"})


def _quantize(model, out, method, opts=None):
    api.quantize(str(model), out, api.QuantConfig(method=method, group_size=32, solver_opts=opts or {}),
                 progress=False)
    return out


# ---- unknown options and bad values: refused before anything is read ----

@pytest.mark.parametrize("method, opts, message", [
    ("rtn", {"iters": 3}, "rtn has no option 'iters'; its options: clip"),
    ("gptq", {"steps": 3, "rank": 2}, "gptq has no option 'rank', 'steps'"),
    ("signround", {"clip": "mse"}, "signround has no option 'clip'"),
    ("gptq", {"clip": "max"}, "clip must be one of minmax, mse"),
    ("gptq", {"damp": 0}, "damp must be > 0"),
    ("flexround", {"rule": "multiply"}, "rounding rule must be one of division, addition"),
    ("lrq", {"lr": -1}, "lr must be > 0"),
    ("matquant", {"widths": [8, 8]}, "widths must be distinct"),
])
def test_bad_options_are_refused_before_the_model_is_read(method, opts, message, tmp_path):
    config = api.QuantConfig(method=method, solver_opts=opts, bits=8 if method == "matquant" else 4)
    with pytest.raises(EdgeqError, match=re.escape(message)):
        api.quantize(str(tmp_path / "no-such-model"), tmp_path / "out", config, progress=False)
    assert not (tmp_path / "out").exists()


def test_every_declared_default_is_a_valid_option_set():
    for name in method_names():
        method = get_method(name)
        assert method.resolve() == method.options()  # the defaults pass their own checks
        assert not method.learned or {"steps", "lr", "seed"} <= set(method.option_names)


# ---- the CLI reads the records ----

def test_cli_flags_map_to_options_that_methods_declare():
    declared = {option for name in method_names() for option in get_method(name).option_names}
    flags = option_flags()
    assert set(flags) <= declared and {"clip", "damp", "widths", "steps", "lr", "rank"} <= set(flags)
    assert flags["act_order"].flag == "--no-act-order" and flags["rule"].flag == "--rounding-rule"


def test_cli_method_choices_and_readme_list_are_the_registered_methods():
    parser = cli.build_parser()
    quantize = next(a for a in parser._subparsers._group_actions[0].choices["quantize"]._actions
                    if "--method" in a.option_strings)
    assert tuple(quantize.choices) == method_names()


def test_cli_help_lists_each_option_with_its_methods_and_defaults():
    text = option_help("damp", "damping")
    assert text.startswith("gptq, decoupleq, matquant") and text.endswith(": damping (default: 0.01)")
    clip = option_help("clip", "range")  # defaults that differ are given per method
    assert "signround" not in clip and "(default: rtn minmax, gptq mse," in clip and "flexround minmax" in clip

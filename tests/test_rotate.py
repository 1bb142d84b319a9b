"""--transform rotate: the rotations are orthogonal, the rotated float model gives the same logits in every
family it supports (tied heads included), and a rotated checkpoint exports (ONNX, GPTQ) to the same logits."""
import json

import pytest
import torch

from edgeq.errors import EdgeqError
from edgeq.io.models import arch_of
from edgeq.transforms import apply_transforms, check_transforms
from edgeq.transforms.hadamard import hadamard, random_rotation
from tests.conftest import FAMILIES, edgeq_cli, tiny_family_model


@pytest.mark.parametrize("n", [12, 36, 64, 96, 160, 576, 1536, 2560])
def test_hadamard_orders(n):
    h, _ = hadamard(n)
    h = h.astype("float64")  # +-1 entries, integer sums below 2 ** 53: exact, and BLAS (int64 took 17 s at 2560)
    assert (h @ h.T == n * torch.eye(n, dtype=torch.float64).numpy()).all()


def test_no_hadamard_falls_back_to_a_random_orthogonal():
    assert hadamard(100) is None
    q, kind = random_rotation(100, 0)
    assert kind == "random orthogonal" and torch.allclose(q @ q.T, torch.eye(100, dtype=torch.float64), atol=1e-12)


CASES = [(f, tied) for f in FAMILIES if f != "gemma3_text" for tied in (False, True) if not (f == "phi3" and tied)]


@pytest.mark.parametrize("family,tied", CASES)
def test_rotated_float_model_gives_the_same_logits(family, tied):
    model = tiny_family_model(family, tie_word_embeddings=tied)
    ids = torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(ids).logits
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    apply_transforms(model, arch_of(model.config), ["rotate"], 0)
    with torch.no_grad():
        out = model(ids).logits
    assert float((out - ref).abs().max() / ref.abs().max()) < 1e-4
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, weights[n])]
    assert any("q_proj" in n or "qkv" in n for n in changed)  # not a no-op


def test_gemma3_and_unknown_transforms_are_refused():
    model = tiny_family_model("gemma3_text")
    with pytest.raises(EdgeqError, match="Gemma 3"):
        apply_transforms(model, arch_of(model.config), ["rotate"], 0)
    with pytest.raises(EdgeqError, match="unknown --transform 'spin'"):
        check_transforms(["spin"])


def test_rotated_checkpoint_exports_to_onnx_and_gptq(tiny_model_dir, tmp_path):
    out = tmp_path / "rot"
    edgeq_cli("quantize", tiny_model_dir, "--method", "gptq", "--group-size", "32", "--samples", "8", "--seq-len",
              "32", "--transform", "rotate", "--out", out, "--quiet")
    meta = json.loads((out / "quantization.json").read_text())
    assert meta["transforms"][0]["name"] == "rotate"
    printed = edgeq_cli("export", out, "--out", tmp_path / "onnx", "--accuracy-level", "0")
    level0 = float(printed.split("relative error ")[1].split()[0])
    assert level0 < 2e-3, printed  # the tied head's final mix is in the graph
    edgeq_cli("export", out, "--format", "gptq", "--out", tmp_path / "gptq")
    from edgeq.io.checkpoint import load_checkpoint
    ours, _, _ = load_checkpoint(out)
    from edgeq.io.quantized_folder import load_quantized_folder
    theirs = load_quantized_folder(tmp_path / "gptq")[0]
    ids = torch.randint(0, 100, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = ours(ids).logits, theirs(ids).logits
    assert float((a - b).abs().max() / a.abs().max()) < 1e-2

"""Every supported family end to end on a tiny random-init model with the real config's features (conftest's
tiny_family_model): edgeq's block-by-block loading gives transformers' own logits, GPTQ calibrates it, the
checkpoint exports at accuracy level 0 to 1e-4 of torch, and greedy decoding of the export (what `edgeq
generate` runs) gives transformers' greedy tokens. genai: test_genai.py; the graph alone: test_export.py."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from edgeq import api
from edgeq.io import models
from edgeq.evaluation.nll import window_nll
from edgeq.export.onnx import export
from edgeq.runtime.session import OrtDecoder
from tests.conftest import FAMILIES, calibration_text, tiny_family_model

PROMPT = [11, 402, 7, 3000, 18, 95, 256]


@pytest.fixture(scope="module")
def family_folders(tmp_path_factory, bundled_tokenizer):
    def make(family):
        folder = tmp_path_factory.mktemp(family) / "hf"
        model = tiny_family_model(family, vocab_size=len(bundled_tokenizer))
        model.save_pretrained(folder)
        bundled_tokenizer.save_pretrained(folder)
        return model, folder
    return make


@pytest.mark.parametrize("family", FAMILIES)
def test_streamed_loading_and_eval_give_transformers_logits(family, family_folders):
    model, folder = family_folders(family)
    streamed, config = models.load_model(models.resolve_source(str(folder)), stream_blocks=True)
    arch = models.arch_of(config)
    for i in range(config.num_hidden_layers):
        models.load_block(streamed, arch, i)
    ids = torch.randint(0, 3000, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(input_ids=ids).logits
        torch.testing.assert_close(streamed(input_ids=ids).logits, ref, rtol=1e-5, atol=1e-5)
        nll, count = window_nll(streamed, arch, ids)  # eval's own head pass (Granite scales its logits)
        expected = torch.nn.functional.cross_entropy(ref[:, :-1].reshape(-1, ref.shape[-1]), ids[:, 1:].reshape(-1),
                                                     reduction="sum")
    assert count == ids[:, 1:].numel() and nll == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_gptq_checkpoint_exports_and_decodes_like_transformers(family, family_folders, tmp_path):
    model, folder = family_folders(family)
    checkpoint = tmp_path / "w4"
    meta = api.quantize(str(folder), checkpoint, api.QuantConfig(bits=4, group_size=32, samples=4, seq_len=32),
                        calib=str(calibration_text()), progress=False)
    assert set(meta["layers"]) == {f"model.layers.{i}.{name}" for i in range(2)
                                   for name in models.arch_of(model.config).linears}
    report = export(str(checkpoint), tmp_path / "onnx", accuracy_level=0)
    assert report["parity_relative_logit_error_level_0"] < 1e-4
    fp32 = export(str(folder), tmp_path / "fp32", fp32=True, accuracy_level=0)
    assert fp32["parity_relative_logit_error_level_0"] < 1e-4
    ours = OrtDecoder.from_folder(tmp_path / "fp32").greedy(PROMPT, 16, eos=None)
    with torch.no_grad():
        theirs = model.generate(torch.tensor([PROMPT]), max_new_tokens=16, do_sample=False, min_new_tokens=16,
                                pad_token_id=0)[0, len(PROMPT):].tolist()
    assert ours == theirs
    assert np.unique(ours).size > 1  # not a degenerate repeat that any graph would give

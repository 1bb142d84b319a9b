"""Gemma 3 in calibration: sliding and full layers get their own mask and rotary table, and a model built
block by block (streamed) keeps its scaled embedding. The export side is in test_export/test_genai."""
import torch

from edgeq.io import models
from edgeq.calib.batches import Batches
from edgeq.calib.capture import capture_block_inputs
from tests.conftest import tiny_family_model

SEQ = 12  # longer than the tiny model's sliding window (5): the two kinds of layer see different masks


def test_each_block_gets_the_inputs_of_its_kind():
    """Blocks run on the captured inputs, each with its kind's kwargs, reproduce the model's own states."""
    model = tiny_family_model("gemma3_text")
    arch, kinds = models.arch_of(model.config), models.layer_kinds(model.config)
    assert kinds == ["sliding_attention", "full_attention"]
    ids = torch.randint(0, 300, (3, SEQ), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        states = model(input_ids=ids, output_hidden_states=True).hidden_states
    hidden, kwargs = capture_block_inputs(model, arch, ids, batch_size=2)
    assert len(kwargs) == 2 and set(kwargs[0]) == set(kinds)
    batches = Batches(hidden, kwargs, 2)
    torch.testing.assert_close(batches.hidden, states[0])
    batches.for_kind(kinds[0]).run(models.get_module(model, arch.blocks)[0])
    torch.testing.assert_close(batches.hidden, states[1])
    wrong = Batches(states[1].clone(), kwargs, 2).for_kind(kinds[0])  # the full layer fed the sliding mask
    wrong.run(models.get_module(model, arch.blocks)[1])
    batches.for_kind(kinds[1]).run(models.get_module(model, arch.blocks)[1])
    final_norm = models.get_module(model, arch.final_norm)
    with torch.no_grad():
        torch.testing.assert_close(final_norm(batches.hidden), states[2])
        assert not torch.allclose(final_norm(wrong.hidden), states[2], atol=1e-3)


def test_a_streamed_gemma_computes_what_the_whole_model_does(tmp_path, bundled_tokenizer):
    model = tiny_family_model("gemma3_text")
    model.save_pretrained(tmp_path / "gemma")
    source = models.resolve_source(str(tmp_path / "gemma"))
    streamed, config = models.load_model(source, stream_blocks=True)
    arch = models.arch_of(config)
    for i in range(config.num_hidden_layers):
        models.load_block(streamed, arch, i)
    ids = torch.randint(0, 300, (2, SEQ), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(streamed(input_ids=ids).logits, model(input_ids=ids).logits)

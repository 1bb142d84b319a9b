"""ONNX export: MatMulNBits nodes against a numpy dequantize reference; the tiny Llama exported, run with
its KV cache and compared with torch; refusals leave nothing behind."""
import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from tests.conftest import FAMILIES, tiny_family_model
from edgeq import api
from edgeq.io import checkpoint
from edgeq.errors import EdgeqError
from edgeq.quant.layout import MS_DOMAIN, node_layout, node_tensors
from edgeq.export.onnx import export
from edgeq.quant.qweight import QuantizedWeight
from edgeq.runtime.session import OrtDecoder, cpu_session
from tests.conftest import calibration_text


def numpy_dequantize(q, scale, zero, group_size):
    """The definition, in numpy, column by column."""
    out = np.empty(q.shape, dtype=np.float64)
    for col in range(q.shape[1]):
        g = col // group_size
        out[:, col] = scale[:, g] * (q[:, col].astype(np.float64) - zero[:, g])
    return out


def random_qweight(n, k, bits, group_size, seed=0):
    rng = np.random.default_rng(seed)
    groups = -(-k // group_size)
    maxq = 2 ** bits - 1
    return QuantizedWeight(torch.from_numpy(rng.integers(0, maxq + 1, (n, k), dtype=np.uint8)),
                           torch.from_numpy(rng.uniform(0.01, 0.1, (n, groups)).astype(np.float32)),
                           torch.from_numpy(rng.integers(0, maxq + 1, (n, groups), dtype=np.uint8)), bits, group_size)


def single_node_model(qw, accuracy_level, path):
    layout = node_layout("w", qw)
    b, scales, zeros = node_tensors(qw, layout)
    n, k = qw.shape
    node = helper.make_node("MatMulNBits", ["A", "B", "scales", "zp"], ["Y"], domain=MS_DOMAIN, K=k, N=n,
                            bits=layout.bits, block_size=layout.block, accuracy_level=accuracy_level)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("A", TensorProto.FLOAT, [None, k])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, n])],
                              [onnx.numpy_helper.from_array(b, "B"), onnx.numpy_helper.from_array(scales, "scales"),
                               onnx.numpy_helper.from_array(zeros, "zp")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS_DOMAIN, 1)])
    onnx.save(model, str(path))
    return cpu_session(path)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_matmulnbits_node_equals_numpy_dequantize(bits, group_size, tmp_path):
    n, k = 48, 576  # K = 4.5 x 128: a partial last block
    qw = random_qweight(n, k, bits, group_size, seed=bits * group_size)
    session = single_node_model(qw, 0, tmp_path / "m.onnx")
    A = np.random.default_rng(1).standard_normal((5, k)).astype(np.float32)
    W = numpy_dequantize(qw.q.numpy(), qw.scale.numpy(), qw.zero.numpy(), group_size)
    expected = A.astype(np.float64) @ W.T
    got = session.run(None, {"A": A})[0]
    assert np.linalg.norm(got - expected) / np.linalg.norm(expected) <= 1e-5


@pytest.mark.parametrize("k, bits, group, block", [
    (576, 4, 576, 64),    # one group per row: 9 blocks of 64 repeat its scale (padded to 1024 before)
    (576, 2, 576, 64),    # ... which gives 2-bit per-channel a block the fast kernel takes
    (1536, 2, 1536, 128),
    (1536, 4, 1536, 512),
    (576, 4, 128, 128),   # g128 on K = 4.5 x 128 pads 11%: kept (faster than blocks of 64, 2% larger)
    (576, 2, 256, 64),    # 2-bit needs blocks <= 128 whatever the padding
    (600, 4, 600, 1024),  # no power of two >= 16 tiles K: the one padded block
])
def test_blocks_tile_k_with_repeated_scales_where_they_can(k, bits, group, block, tmp_path):
    qw = random_qweight(16, k, bits, group)
    layout = node_layout("w", qw)
    assert layout.block == block and layout.blocks == -(-k // block)
    session = single_node_model(qw, 0, tmp_path / "m.onnx")
    A = np.random.default_rng(2).standard_normal((3, k)).astype(np.float32)
    expected = A @ numpy_dequantize(qw.q.numpy(), qw.scale.numpy(), qw.zero.numpy(), group).T
    np.testing.assert_allclose(session.run(None, {"A": A})[0], expected, rtol=1e-4, atol=1e-4)


def test_a_2bit_per_channel_export_tiles_its_blocks_and_matches_torch(tiny_model_dir, tmp_path):
    """Rows of K = 160 would pad one block to 256 (and 2-bit has no kernel past 128): blocks of 32 repeat
    each row's scale; rows of K = 64 fit one block. The export's own parity check at level 0 holds."""
    api.quantize(str(tiny_model_dir), tmp_path / "ck", api.QuantConfig(method="rtn", bits=2, group_size=-1),
                 progress=False)
    report = export(str(tmp_path / "ck"), tmp_path / "onnx", accuracy_level=0)
    assert {v["block_size"] for name, v in report["layers"].items() if "down_proj" in name} == {32}
    assert {v["block_size"] for name, v in report["layers"].items() if "down_proj" not in name} == {64}
    assert report["parity_relative_logit_error"] < 1e-5


@pytest.mark.parametrize("bits,group,message", [(5, 32, "cannot run"), (2, 600, "no fast MatMulNBits kernel")])
def test_layouts_onnxruntime_cannot_run_fast_are_refused(bits, group, message):
    with pytest.raises(EdgeqError, match=message):
        node_layout("w", random_qweight(4, 600, bits, group))


def test_tiny_export_holds_every_linear_once_and_matches_torch(tiny_checkpoint, tmp_path):
    report = export(str(tiny_checkpoint), tmp_path / "onnx", accuracy_level=0, lm_head="fp")
    proto = onnx.load(str(tmp_path / "onnx" / "model.onnx"))
    layers = checkpoint.read_meta(tiny_checkpoint)["layers"]
    nbits = [node for node in proto.graph.node if node.op_type == "MatMulNBits"]
    # q/k/v and gate/up share their input and are one node each: 4 nodes per block for 7 linears
    assert len(nbits) == 4 * 3 and len(layers) == 21 and set(report["layers"]) == set(layers)
    assert sum(a.i for n in nbits for a in n.attribute if a.name == "N") == sum(l["shape"][0] for l in layers.values())
    ops = [node.op_type for node in proto.graph.node]
    assert ops.count("GroupQueryAttention") == 3 and len(ops) < 20 * 3
    assert report["tied_head_shares_embedding"] and ops.count("FusedMatMul") == 1
    assert report["parity_relative_logit_error"] < 1e-5
    assert json.loads((tmp_path / "onnx" / "export.json").read_text())["matmulnbits_nodes"] == 12


def test_level_4_export_checks_its_weights_at_level_0(tiny_checkpoint, tmp_path):
    report = export(str(tiny_checkpoint), tmp_path / "onnx")
    assert report["accuracy_level"] == 4 and report["parity_relative_logit_error_level_0"] < 1e-5
    assert 1e-5 < report["parity_relative_logit_error"] < 0.5  # int8 activations: close, not exact
    assert sorted(f.name for f in (tmp_path / "onnx").iterdir() if f.suffix == ".onnx") == ["model.onnx"]


def test_kv_cache_decoding_equals_full_recomputation(tiny_checkpoint, tmp_path):
    export(str(tiny_checkpoint), tmp_path / "onnx", accuracy_level=0)
    decoder = OrtDecoder.from_folder(tmp_path / "onnx")
    prompt = [5, 17, 300, 42]
    generated = decoder.greedy(prompt, 6)
    sequence = prompt + generated
    full, _ = decoder.forward(np.array([sequence]), decoder.empty_past())
    assert [int(t) for t in full[0, len(prompt) - 1:-1].argmax(-1)] == generated
    model, _, _ = checkpoint.load_checkpoint(tiny_checkpoint)
    with torch.no_grad():
        ref = model(input_ids=torch.tensor([sequence])).logits[0].numpy()
    np.testing.assert_allclose(full[0], ref, rtol=1e-3, atol=1e-4)


def test_onnx_perplexity_equals_torch_at_level_0(tiny_checkpoint, tmp_path):
    export(str(tiny_checkpoint), tmp_path / "onnx", accuracy_level=0)
    text = str(calibration_text())
    ort_ppl = api.evaluate(str(tmp_path / "onnx"), text, 64, 3, progress=False)["perplexity"]
    torch_ppl = api.evaluate(str(tiny_checkpoint), text, 64, 3, progress=False)["perplexity"]
    assert ort_ppl == pytest.approx(torch_ppl, rel=1e-4)


def test_fp32_export_8bit_head_and_ort_format(tiny_model_dir, tiny_checkpoint, tmp_path):
    fp = export(str(tiny_model_dir), tmp_path / "fp32", fp32=True)
    assert fp["matmulnbits_nodes"] == 0 and fp["tied_head_shares_embedding"]
    q8 = export(str(tiny_checkpoint), tmp_path / "q8", lm_head="8", ort_format=True, accuracy_level=0)
    assert q8["matmulnbits_nodes"] == 13 and (tmp_path / "q8" / "model.ort").stat().st_size > 0
    assert q8["layers"]["lm_head"]["bits"] == 8 and q8["embedding"].startswith("8-bit")
    q8_graph = onnx.load(str(tmp_path / "q8" / "model.onnx")).graph
    lookup = next(n for n in q8_graph.node if n.op_type == "GatherBlockQuantized")
    head = next(n for n in q8_graph.node if n.name == "lm_head_MatMulNBits")
    assert lookup.input[0] == head.input[1]  # one copy of the table's codes serves both
    reshaped = {n.output[0]: n.input[0] for n in q8_graph.node if n.op_type == "Reshape"}
    assert [reshaped.get(x) for x in lookup.input[2:4]] == head.input[2:4]  # and of its scales and zero points
    assert q8["parity_relative_logit_error"] < 1e-5  # torch holds the same 8-bit table in both places
    assert all(init.data_type != TensorProto.FLOAT or np.prod(init.dims) < 49152 * 64
               for init in q8_graph.initializer)  # no float copy of the table is left
    graph = onnx.load(str(tmp_path / "fp32" / "model.onnx")).graph
    weights = {init.name for init in graph.initializer}
    assert sum(n.op_type == "MatMul" and n.input[1] in weights for n in graph.node) == 12  # float linears


def test_the_default_head_is_the_checkpoints(tiny_checkpoint, tmp_path):
    report = export(str(tiny_checkpoint), tmp_path / "q")
    assert report["lm_head"] == "fp" and "lm_head" not in report["layers"] and report["embedding"] == "float32"


def test_a_4bit_head_shares_its_packed_codes_with_the_embedding_lookup(tiny_checkpoint, tmp_path):
    """Two 4-bit codes a byte: GatherBlockQuantized reads MatMulNBits' B as it is; parity at level 0 holds."""
    q4 = export(str(tiny_checkpoint), tmp_path / "q4", lm_head="4", accuracy_level=0)
    assert q4["layers"]["lm_head"]["bits"] == 4 and q4["embedding"].startswith("4-bit")
    graph = onnx.load(str(tmp_path / "q4" / "model.onnx")).graph
    lookup = next(n for n in graph.node if n.op_type == "GatherBlockQuantized")
    head = next(n for n in graph.node if n.name == "lm_head_MatMulNBits")
    assert lookup.input[0] == head.input[1] and next(a.i for a in lookup.attribute if a.name == "bits") == 4
    reshaped = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Reshape"}
    assert reshaped.get(lookup.input[2]) == head.input[2]  # the scales once (4-bit zero points pack differently)
    codes = next(init for init in graph.initializer if init.name == head.input[1])
    assert np.prod(codes.dims) == 49152 * 64 // 2  # half a byte per weight, stored once
    assert q4["parity_relative_logit_error"] < 1e-5


def test_bad_exports_are_refused_and_leave_nothing(tiny_model_dir, tiny_checkpoint, tmp_path):
    with pytest.raises(EdgeqError, match="not an edgeq checkpoint"):
        export(str(tmp_path / "missing"), tmp_path / "a")
    broken = tmp_path / "broken"
    shutil.copytree(tiny_checkpoint, broken)
    (broken / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(EdgeqError, match="corrupted"):
        export(str(broken), tmp_path / "b")
    five_bit = tmp_path / "w5"
    api.quantize(str(tiny_model_dir), five_bit, api.QuantConfig(method="rtn", bits=5, group_size=32), progress=False)
    with pytest.raises(EdgeqError, match="cannot run in onnxruntime"):
        export(str(five_bit), tmp_path / "c")
    assert {p.name for p in tmp_path.iterdir()} == {"broken", "w5"}  # no output, no temporary folder


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_decodes_like_torch(family, tmp_path):
    """Rope scaling (llama3), q/k/v biases (qwen2), per-head q/k norms (qwen3), a sliding window shorter
    than the sequence (mistral), Gemma 3's (1 + w) sandwich norms, GeGLU, scaled embedding, query scale
    and sliding-then-full layers with two rotary bases, Phi-3's fused linears, partial rotary and longrope
    switching tables mid-sequence, SmolLM3's layers without rotary and Granite's multipliers: the fused
    graph's logits, prompt then cached steps, equal torch's run the same way (longrope keeps the keys it
    cached with the short factors, in transformers as in the graph)."""
    from edgeq.export.decoder import build_decoder
    model = tiny_family_model(family)
    proto, _ = build_decoder(model, {}, 0)
    onnx.save(proto, str(tmp_path / "m.onnx"))
    onnx.checker.check_model(str(tmp_path / "m.onnx"))
    decoder = OrtDecoder(cpu_session(tmp_path / "m.onnx"))
    sequence = [int(t) for t in np.random.default_rng(2).integers(0, 300, 12)]
    ref = torch_cached_logits(model, sequence, prompt=7)
    logits, past = decoder.forward(np.array([sequence[:7]]), decoder.empty_past())
    steps = [logits[0]]
    for token in sequence[7:]:
        logits, past = decoder.forward(np.array([[token]]), past)
        steps.append(logits[0])
    np.testing.assert_allclose(np.concatenate(steps), ref, rtol=1e-4, atol=1e-4)
    whole, _ = decoder.forward(np.array([sequence]), decoder.empty_past())  # longrope: long factors throughout
    np.testing.assert_allclose(whole[0], torch_cached_logits(model, sequence, prompt=len(sequence)), rtol=1e-4,
                               atol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_rotary_tables_are_computed_in_the_graph_as_transformers_computes_them(family, tmp_path):
    """GroupQueryAttention's cos/sin caches ship as Range x inv_freq, Cos, Sin nodes (32 floats, not
    2 x positions x rotary_dim / 2) wherever they give the model's own tables; onnxruntime's values equal
    transformers' to 1e-6 at every position. Phi-3's longrope pair stays stored (an If picks one per call)."""
    from edgeq.export import decoder as d
    model = tiny_family_model(family)
    proto, _ = d.build_decoder(model, {}, 0)
    stored = {i.name for i in proto.graph.initializer if i.name.startswith(("cos_cache", "sin_cache"))}
    assert not stored if family != "phi3" else not any("inv_freq" in i.name for i in proto.graph.initializer)
    assert_graph_tables_match(model, tmp_path)


def test_yarns_attention_factor_scales_the_computed_tables(tmp_path):
    from edgeq.export import decoder as d
    model = tiny_family_model("qwen2", rope_scaling={"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0,
                                                     "original_max_position_embeddings": 64, "attention_factor": 1.5})
    proto, _ = d.build_decoder(model, {}, 0)
    assert [i.name for i in proto.graph.initializer if i.name.startswith("rotary_scaling")] == ["rotary_scaling"]
    assert_graph_tables_match(model, tmp_path)


def assert_graph_tables_match(model, tmp_path):
    """Each kind of layer's graph-computed tables, run by onnxruntime, against transformers' own (1e-6)."""
    from edgeq.export import decoder as d
    from edgeq.io.models import arch_of, get_module
    arch, dims = arch_of(model.config), d.Dims.of(model.config)
    for kind in dict.fromkeys(d.layer_kinds(model.config)):
        tables = d.rotary_caches(model, arch, dims, kind)
        g = d.Graph()
        names = d.rotary_tables(g, "", get_module(model, arch.rotary), kind, tables)
        graph = helper.make_graph(g.nodes, "t", [], [helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
                                                     for n in names], g.initializers)
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", d.OPSET)])
        proto.ir_version = 10  # as build_decoder writes it
        onnx.save(proto, str(tmp_path / f"{kind}.onnx"))
        for got, want in zip(cpu_session(tmp_path / f"{kind}.onnx").run(None, {}), tables):
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def torch_cached_logits(model, sequence: list[int], prompt: int) -> np.ndarray:
    """transformers' logits for the prompt, then for each further token on its own KV cache."""
    with torch.no_grad():
        out = model(input_ids=torch.tensor([sequence[:prompt]]), use_cache=True)
        steps, cache = [out.logits[0]], out.past_key_values
        for token in sequence[prompt:]:
            out = model(input_ids=torch.tensor([[token]]), past_key_values=cache, use_cache=True)
            steps.append(out.logits[0])
            cache = out.past_key_values
    return torch.cat(steps).numpy()


def test_linears_of_different_widths_get_a_node_each_and_still_match_torch(tmp_path):
    """Mixed precision: q 8-bit, k 4-bit, v float, gate 2-bit, up/down 4-bit. Fusing needs one layout, so
    these fall back to one node per linear (and GQA takes q, k, v apart)."""
    from edgeq.quant import grid
    from edgeq.export.decoder import build_decoder
    from edgeq.solvers import get_solver
    model = tiny_family_model("llama")
    widths = {"q_proj": 8, "k_proj": 4, "gate_proj": 2, "up_proj": 4, "down_proj": 4, "o_proj": 4}
    qweights = {}
    for name, module in model.named_modules():
        bits = widths.get(name.rsplit(".", 1)[-1])
        if bits and "layers" in name:
            qweights[name] = get_solver("rtn")(module.weight.data, None, grid.QuantSpec(bits, 32))
            module.weight.data.copy_(qweights[name].dequantize())
    proto, layouts = build_decoder(model, qweights, 0)
    ops = [node.op_type for node in proto.graph.node]
    # per block: q, k, o, gate, up, down as MatMulNBits, v as a float MatMul
    assert ops.count("MatMulNBits") == 2 * 6 and ops.count("MatMul") == 2 + 1 and set(layouts) == set(qweights)
    onnx.save(proto, str(tmp_path / "m.onnx"))
    decoder = OrtDecoder(cpu_session(tmp_path / "m.onnx"))
    ids = np.random.default_rng(3).integers(0, 300, (1, 9))
    with torch.no_grad():
        ref = model(input_ids=torch.from_numpy(ids)).logits[0].numpy()
    got, _ = decoder.forward(ids, decoder.empty_past())
    np.testing.assert_allclose(got[0], ref, rtol=1e-4, atol=1e-4)


def test_weights_beyond_the_inline_limit_go_to_one_data_file(tiny_checkpoint, tmp_path, monkeypatch):
    """Models over 2 GB cannot be one protobuf: their weights go to model.onnx.data (forced here with a
    zero limit); the checks, the level-0 parity copy and a fresh session all read it."""
    import edgeq.export.onnx as onnx_export
    save = onnx_export.save_model
    monkeypatch.setattr(onnx_export, "save_model", lambda proto, path: save(proto, path, inline_limit=0))
    report = export(str(tiny_checkpoint), tmp_path / "ext")
    files = {f.name: f.stat().st_size for f in (tmp_path / "ext").iterdir()}
    assert files["model.onnx.data"] > 10 * files["model.onnx"] and "parity_level0.onnx" not in files
    modes = {name: (tmp_path / "ext" / name).stat().st_mode & 0o777 for name in ("model.onnx", "model.onnx.data")}
    assert modes["model.onnx.data"] == modes["model.onnx"]  # readable by whoever may read the graph
    assert report["parity_relative_logit_error_level_0"] < 1e-5
    monkeypatch.undo()
    export(str(tiny_checkpoint), tmp_path / "inline")
    assert not (tmp_path / "inline" / "model.onnx.data").exists()
    ids = np.array([[5, 17, 300, 42]])
    external, inline = (OrtDecoder.from_folder(tmp_path / name) for name in ("ext", "inline"))
    np.testing.assert_array_equal(external.forward(ids, external.empty_past())[0],
                                  inline.forward(ids, inline.empty_past())[0])


def test_fp32_with_bits_is_refused_before_the_model_is_looked_at(tmp_path):
    with pytest.raises(EdgeqError, match="--bits slices a quantized checkpoint"):
        export(str(tmp_path / "no-such-model"), tmp_path / "out", fp32=True, bits=4)  # not "model not found"

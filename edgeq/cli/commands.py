"""What each `edgeq` command does with its parsed flags: build the API's call, print its report."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from ..errors import EdgeqError
from ..io.hub import with_revision
from ..util.paths import check_writable_file


def cmd_quantize(args) -> None:
    from ..api import quantize
    from .quantize_flags import config_from
    config = config_from(args)
    meta = quantize(with_revision(args.model, args.revision), args.out, config, calib=args.calib,
                    progress=not args.quiet, calib_mix=args.calib_mix)
    s = meta["stats"]
    if meta.get("mixed"):
        from ..planning.mixed import table
        print(table(meta["mixed"]))
    grid_text = "mixed" if meta.get("mixed") else f"W{meta['bits']} g{meta['group_size']}" + \
        "".join(f", {p}: W{b} g{g}" for p, b, g in meta.get("layer_grids", []))
    print(f"wrote {args.out}: {meta['method']} {grid_text} {'sym' if meta['sym'] else 'asym'}, "
          f"{len(meta['layers'])} linears")
    sensitivity = f", sensitivity {s['seconds_sensitivity']:.1f}" if meta.get("mixed") else ""
    print(f"time {s['seconds_load'] + s['seconds_sensitivity'] + s['seconds_quantize']:.1f}s (load "
          f"{s['seconds_load']:.1f}{sensitivity}, forward "
          f"{s['seconds_forward']:.1f}, hessian {s['seconds_hessian']:.1f}, solver {s['seconds_solver']:.1f}"
          f"{', block training %.1f' % s['seconds_block_training'] if s['seconds_block_training'] else ''}); "
          f"peak RSS {s['peak_rss_mb']:.0f} MB ({s['peak_rss_mb'] / s['fp32_parameter_mb']:.2f}x the fp32 "
          f"parameters)")

def cmd_eval(args) -> None:
    from ..evaluation.heldout import evaluate_texts
    if args.json_out:
        check_writable_file(args.json_out, "--json")
    results = evaluate_texts(with_revision(args.model, args.revision), args.text or [None], args.seq_len, args.max_windows,
                             progress=not args.quiet, bits=args.bits)
    for result in results:
        print(f"perplexity {result['perplexity']:.3f}  ({result['model']}; {result['text']}; "
              f"{result['windows']} windows x {result['seq_len']} tokens)")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(results[0] if len(results) == 1 else results, f, indent=2)

def cmd_export(args) -> None:
    if args.format == "gguf":
        return cmd_export_gguf(args)
    if args.gguf_base is not None:
        raise EdgeqError("--gguf-base applies to --format gguf")
    if args.format == "gptq":
        return cmd_export_gptq(args)
    from ..export.onnx import export
    level = 4 if args.accuracy_level is None else args.accuracy_level
    r = export(with_revision(args.model, args.revision), args.out, fp32=args.fp32, accuracy_level=level, lm_head=args.lm_head,
               ort_format=args.ort_format, bits=args.bits)
    size = sum(r["bytes"].values()) / 2 ** 20
    print(f"wrote {args.out}: {r['matmulnbits_nodes']} MatMulNBits nodes, {size:.1f} MB, accuracy level "
          f"{r['accuracy_level']}, logits vs torch: relative error {r['parity_relative_logit_error']:.1e} "
          f"(weights checked at level 0: {r['parity_relative_logit_error_level_0']:.1e})")
    three = sorted({v["stored_bits"] for v in r["layers"].values() if v["stored_bits"] == 3})
    if three:
        print("note: 3-bit codes are stored in the 4-bit MatMulNBits container (onnxruntime has no 3-bit kernel)")

def cmd_export_gguf(args) -> None:
    from ..export.gguf import export_gguf
    refused = [flag for flag, given in (("--fp32", args.fp32), ("--ort-format", args.ort_format), ("--bits", args.bits),
                                        ("--lm-head", args.lm_head), ("--accuracy-level", args.accuracy_level))
               if given is not None and given is not False]
    if refused:
        raise EdgeqError(f"{', '.join(refused)} applies to --format onnx, not gguf")
    r = export_gguf(with_revision(args.model, args.revision), args.out, gguf_base=args.gguf_base)
    types = ", ".join(f"{count} {kind}" for kind, count in r["types"].items())
    print(f"wrote {args.out}: {types} linears, {r['bytes'] / 2 ** 20:.1f} MB; read back through gguf's "
          f"de-quantizer within {r['readback_relative_error']:.1e} of the checkpoint (float16 scales)")


def cmd_export_gptq(args) -> None:
    from ..export.gptq import export_gptq
    onnx_only = [flag for flag, given in (("--fp32", args.fp32), ("--ort-format", args.ort_format),
                                          ("--accuracy-level", args.accuracy_level is not None)) if given]
    if onnx_only:
        raise EdgeqError(f"{', '.join(onnx_only)} applies to --format onnx, not gptq")
    r = export_gptq(with_revision(args.model, args.revision), args.out, lm_head=args.lm_head, bits=args.bits)
    q = r["quantization_config"]
    print(f"wrote {args.out}: GPTQ {q['bits']}-bit, group {q['group_size']}, {r['linears']} linears "
          f"({len(q.get('dynamic', {}))} in `dynamic`), {r['bytes'] / 2 ** 20:.1f} MB; float16 scales change a "
          f"scale by at most {r['scale_float16_relative_error']:.1e}")

def provider_options(pairs: list[str]) -> dict:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise EdgeqError(f"--provider-option takes KEY=VALUE, got {pair!r}")
        options[key] = value
    return options

def cmd_bench(args) -> None:
    from dataclasses import asdict

    from ..util.memory import peak_rss_mb
    from ..runtime import bench, report
    if args.models[0] == "compare":
        return cmd_bench_compare(args.models[1:], args.plot)
    settings = bench.Settings(provider=args.provider, threads=args.threads, prompt=args.prompt, gen=args.gen,
                              runs=args.runs, warmup=args.warmup, optimization=args.optimization,
                              ort_format=args.ort_format, save_optimized=args.save_optimized,
                              provider_options=provider_options(args.provider_option),
                              shared_pool=not args.per_session_pools, engine=args.engine)
    if args.warmup < 0:
        raise EdgeqError("--warmup must be >= 0")
    for path, flag in ((args.json_out, "--json"), (args.plot, "--plot")):
        if path:
            check_writable_file(path, flag)
    progress = None if args.quiet else \
        (lambda done, total: print(f"\rround {done}/{total}", end="" if done < total else "\n", file=sys.stderr))
    models = bench.bench(args.models, settings, progress=progress)
    rep = report.report([bench.result(m, settings) for m in models], asdict(settings), peak_rss_mb())
    here = [(rep["machine"]["cpu"], rep)]
    print(report.table(here))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rep, indent=1) + "\n")
    if args.plot:
        report.plot(here, args.plot)

def cmd_bench_compare(paths: list[str], plot_path: str | None) -> None:
    from ..runtime import report
    if not paths:
        raise EdgeqError("compare needs at least one report: edgeq bench compare a.json b.json")
    reports = [(Path(p).stem, report.load_report(p)) for p in paths]
    for label, rep in reports:
        print(f"{label}: {rep['machine']['cpu']}, {rep['machine']['cores']} cores, onnxruntime "
              f"{rep['machine']['onnxruntime']}, provider {rep['settings']['provider']}, "
              f"threads {rep['settings']['threads']}")
    print(report.table(reports))
    if plot_path:
        report.plot(reports, plot_path)

def cmd_generate(args) -> None:
    from ..runtime.session import OrtDecoder, check_length
    from ..runtime.tokenizer import load_tokenizer
    tokenizer, eos = load_tokenizer(args.model)
    prompt = tokenizer.encode(args.prompt, add_special_tokens=False).ids
    if not prompt:
        raise EdgeqError("the prompt is empty: generation continues a prompt of at least one token")
    check_length(args.model, len(prompt) + args.max_new_tokens,
                 f"a {len(prompt)}-token prompt and {args.max_new_tokens} new tokens")
    decoder = OrtDecoder.from_folder(args.model, args.threads, args.bits)
    ids = decoder.greedy(prompt, args.max_new_tokens, eos)
    print(args.prompt + tokenizer.decode(ids))

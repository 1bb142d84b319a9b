"""The method table's targets, judged from the results file: each is one row's perplexity against another
row's, on every held-out text of the protocol. Met when the ratio is below the limit on every text;
pending while either row is unmeasured. The verdicts are computed, never typed.

    python benchmarks/quality_targets.py                  # print the verdicts (markdown list)
    python benchmarks/generated_docs.py                 # write them into docs/results/quality.md
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

from quality import PROTOCOLS, RESULTS, latest, read_results, table_spec


@dataclass(frozen=True)
class Target:
    claim: str
    row: str        # the label of the row judged (as quality.py --list prints it)
    reference: str  # the label of the row it is compared with
    limit: float    # met when row / reference perplexity < limit on every held-out text


# The targets the decoupleQ, learned-rounding, MatQuant and mixed-precision issues set (issue 20 lists them).
TARGETS = [
    Target("decoupleQ W2 g64 at most 0.7 x GPTQ's perplexity", "decoupleq W2 g64", "gptq W2 g64", 0.7),
    Target("decoupleQ --block-epochs 2 W2 g64 at most 0.7 x GPTQ's perplexity",
           "decoupleq W2 g64 --block-epochs 2", "gptq W2 g64", 0.7),
    *[Target(f"{m} below GPTQ at {spec}", f"{m} {spec}", f"gptq {spec}", 1.0)
      for spec in ("W3 g128", "W4 per-channel") for m in ("signround", "flexround", "lrq")],
    # "far better": an order of magnitude lower perplexity than slicing plain int8 codes to 2 bits
    Target("MatQuant int2 slice far better (< 0.1 x) than the naive slice of int8 GPTQ codes",
           "matquant W8 g64 @2", "gptq W8 g64 @2 --sym", 0.1),
    Target("MatQuant int4 slice within 10% of GPTQ trained for 4 bits", "matquant W8 g64 @4", "gptq W4 g64", 1.1),
    Target("mixed precision at 3.0 bits below uniform W3 g128", "gptq mixed 3.0 bits --budget 3.0",
           "gptq W3 g128", 1.0),
    # the default candidates have no 3-bit grid, so the knapsack above can only mix 2 and 4 bits
    Target("mixed precision at 3.0 bits with a 3-bit candidate below uniform W3 g128",
           "gptq mixed 3.0 bits --budget 3.0 --candidates 2:64,3:128,4:128,8:128", "gptq W3 g128", 1.0),
]


def verdict(target: Target, rows: dict[str, dict], texts: list[str]) -> str:
    """One markdown line: MET / MISSED / pending, with each text's ratio and the two perplexities."""
    row, ref = rows.get(target.row), rows.get(target.reference)
    if row is None or ref is None:
        missing = " and ".join(f"`{label}`" for label in (target.row, target.reference) if label not in rows)
        return f"- {target.claim}: pending ({missing} not measured yet)"
    parts, met = [], True
    for text in texts:
        a, b = row["eval"][text]["perplexity"], ref["eval"][text]["perplexity"]
        met = met and a / b < target.limit
        parts.append(f"{text} {a / b:.3f} x ({a:.2f} vs {b:.2f})")
    return f"- {target.claim}: **{'MET' if met else 'MISSED'}**: " + ", ".join(parts)


def uniform_rows(rows: dict[str, dict]) -> dict[str, dict[str, dict]]:
    """{method and flags: {spec as the table ranks it: row}} of the rows scored whole (no slice, no --budget);
    rows with hand-kept layers rank under a spec of their own (quality.table_spec), so only equal sizes meet."""
    out: dict[str, dict[str, dict]] = {}
    for r in rows.values():
        if r["method"] == "fp32" or r.get("slice_bits") or "--budget" in r["flags"]:
            continue
        out.setdefault(" ".join([r["method"], *r["flags"]]), {})[table_spec(r)] = r
    return out


def beats(a: dict, b: dict, texts: list[str]) -> bool:
    """a is at least as good as b on every text and took less time to quantize."""
    return (all(a["eval"][t]["perplexity"] <= b["eval"][t]["perplexity"] for t in texts)
            and a["quantize_seconds"] < b["quantize_seconds"])


def outclassed(rows: dict[str, dict], texts: list[str]) -> list[str]:
    """One markdown line per method (with its flags) that a cheaper one beats at every spec it was measured
    at (the issue: say so rather than hide it), naming the cheapest such rival. Rivals are other methods:
    a method's own flags are ablations, judged in the table itself."""
    variants, lines = uniform_rows(rows), []
    for name, specs in variants.items():
        rivals = [(sum(r[s]["quantize_seconds"] for s in specs), other) for other, r in variants.items()
                  if other.split()[0] != name.split()[0] and set(specs) <= set(r)
                  and all(beats(r[s], specs[s], texts) for s in specs)]
        if not rivals:
            continue
        cheapest = min(rivals)[1]
        rival = variants[cheapest]
        figures = "; ".join(
            f"{s}: " + " / ".join(f"{specs[s]['eval'][t]['perplexity']:.2f}" for t in texts) + " vs "
            + " / ".join(f"{rival[s]['eval'][t]['perplexity']:.2f}" for t in texts)
            + f" in {specs[s]['quantize_seconds'] / 60:.1f} vs {rival[s]['quantize_seconds'] / 60:.1f} min"
            for s in specs)
        lines.append(f"- `{name}` loses to `{cheapest}` at every spec it was measured at ({figures})")
    return lines


def render_targets(records: list[dict], protocol) -> str:
    rows = latest(records, protocol.name)
    texts = [label for label, _ in protocol.texts]
    head = (f"Targets on protocol `{protocol.name}` (row / reference perplexity; met when below the limit on "
            f"every text). Generated by `python benchmarks/generated_docs.py`.")
    losers = outclassed(rows, texts)
    tail = ("Methods that a cheaper one beats on every text at every spec both were measured at "
            f"({' / '.join(texts)} perplexity, quantize minutes):\n\n" + "\n".join(losers or ["- none"]))
    return head + "\n\n" + "\n".join(verdict(t, rows, texts) for t in TARGETS) + "\n\n" + tail


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocol", default="standard-512x128", choices=list(PROTOCOLS))
    parser.add_argument("--results", default=RESULTS)
    args = parser.parse_args(argv)
    protocol = PROTOCOLS[args.protocol]
    print(render_targets(read_results(args.results), protocol))


if __name__ == "__main__":
    main()

"""Collect the subjectivity runs of `recipes/compare.py` over seeds into results.json and a Markdown table.

    python docs/results/subjectivity/summarize.py runs/ms --out docs/results/subjectivity

Reads ROOT/subj_k<k>/seed_<s>/<trainer>/metrics.json (the layout of `compare.py --output_dir
ROOT/subj_k<k>/seed_<s>`): the first run of each comparison holds the baselines (zero_shot, few_shot, and untuned
where it was evaluated), every run its trainer's row.  Writes OUT/results.json (per-seed values) and prints the
table of mean ± sd (sample standard deviation over seeds) of the majority-vote test accuracy.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

METHODS = ("zero_shot", "few_shot", "untuned", "sft", "gfn", "gfn_m_step")  # the tables' order; any other after


def methods(results: dict) -> list[str]:
    """Every method of `results`: METHODS' first, then the others (e.g. ppo, ppo_m_step), none left out."""
    found = {m for k in results.values() for m in k}
    return [m for m in METHODS if m in found] + sorted(found - set(METHODS))


METRICS = ("accuracy", "accuracy/per_sample")


def collect(root: Path) -> dict:
    out: dict = {}
    for path in sorted(root.glob("subj_k*/seed_*/*/metrics.json")):
        k = int(re.fullmatch(r"subj_k(\d+)", path.parents[2].name).group(1))
        seed = int(re.fullmatch(r"seed_(\d+)", path.parents[1].name).group(1))
        for method, m in json.loads(path.read_text())["metrics"].items():
            row = out.setdefault(str(k), {}).setdefault(method, {})
            row[str(seed)] = {name: m[name] for name in METRICS if name in m}
            if "demonstrations" in m:
                row[str(seed)]["demonstrations"] = m["demonstrations"]
    return out


def mean_sd(values: list[float]) -> str:
    if not values:
        return "—"
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{100 * statistics.mean(values):.1f} ± {100 * sd:.1f}"


def table(results: dict, metric: str = "accuracy") -> str:
    ks = sorted(results, key=int)
    lines = ["| method | " + " | ".join(f"k = {k}" for k in ks) + " |", "| --- |" + " --- |" * len(ks)]
    for method in methods(results):
        cells = []
        for k in ks:
            per_seed = results[k].get(method, {})
            vals = [per_seed[s][metric] for s in sorted(per_seed, key=int) if metric in per_seed[s]]
            cells.append(f"{mean_sd(vals)} (n={len(vals)})" if vals else "—")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def per_seed_table(results: dict, metric: str = "accuracy") -> str:
    ks = sorted(results, key=int)
    seeds = sorted({s for k in ks for m in results[k].values() for s in m}, key=int)
    lines = ["| method | k | " + " | ".join(f"seed {s}" for s in seeds) + " |", "| --- | --- |" + " --- |" * len(seeds)]
    for method in methods(results):
        for k in ks:
            if method not in results[k]:
                continue
            row = results[k][method]
            cells = [f"{100 * row[s][metric]:.1f}" if s in row and metric in row[s] else "—" for s in seeds]
            lines.append(f"| {method} | {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", type=Path, help="the folder holding subj_k<k>/seed_<s>/<trainer>/metrics.json")
    p.add_argument("--out", type=Path, default=None, help="write results.json here")
    a = p.parse_args(argv)
    results = collect(a.root)
    if a.out is not None:
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "results.json").write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    for metric in METRICS:
        print(f"\n{metric} (%, mean ± sd over seeds)\n\n{table(results, metric)}\n\nper seed\n\n"
              f"{per_seed_table(results, metric)}")


if __name__ == "__main__":
    main()

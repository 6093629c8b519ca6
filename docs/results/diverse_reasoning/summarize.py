"""Table and plot of the diverse-reasoning runs (recipes/diverse_reasoning.py), mean ± standard deviation over seeds.

    python docs/results/diverse_reasoning/summarize.py RUN_DIR [RUN_DIR ...] --out docs/results/diverse_reasoning

Each RUN_DIR is a recipe's --output_dir (its metrics.json holds the untuned policy, `prompting`, and the trained
method, with its `seed`).  The untuned policy of a seed is taken once (the GFlowNet and GRPO runs of one seed evaluate
it identically).  Writes results.json (every seed's values), results.md (the table) and accuracy_vs_diversity.png
(majority-vote accuracy against distinct right rationales per problem: one small point per seed, a large one with
error bars for the mean).
"""

import argparse
import json
import statistics
from pathlib import Path

METRICS = ("test/accuracy", "test/pass@k", "test/sample_accuracy", "test/distinct_correct", "test/distinct",
           "test/log_likelihood/mean")
LABELS = {"prompting": "untuned policy", "gfn": "GFlowNet (SubTB)", "grpo": "GRPO (TRL)"}
COLORS = {"prompting": "tab:gray", "gfn": "tab:blue", "grpo": "tab:red"}


def ordered(results: dict) -> list[str]:
    return [m for m in LABELS if m in results] + [m for m in results if m not in LABELS]


def collect(run_dirs: list[Path]) -> dict[str, dict[int, dict[str, float]]]:
    """{method: {seed: metrics}} from the runs' metrics.json."""
    out: dict[str, dict[int, dict[str, float]]] = {}
    for d in run_dirs:
        record = json.loads((d / "metrics.json").read_text())
        seed = int(record["train_args"]["seed"])
        for method, metrics in record["metrics"].items():
            out.setdefault(method, {}).setdefault(seed, metrics)
    return out


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def table(results: dict[str, dict[int, dict[str, float]]]) -> str:
    head = "| method | seeds | " + " | ".join(m.removeprefix("test/") for m in METRICS) + " |"
    lines = [head, "| " + " | ".join(["---"] * (len(METRICS) + 2)) + " |"]
    for method in ordered(results):
        by_seed = results[method]
        cells = []
        for key in METRICS:
            mean, sd = mean_sd([by_seed[s][key] for s in sorted(by_seed)])
            cells.append(f"{mean:.2f} ± {sd:.2f}" if "log_likelihood" in key else f"{mean:.3f} ± {sd:.3f}")
        lines.append(f"| {LABELS.get(method, method)} | {len(by_seed)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for method in ordered(results):
        by_seed, color = results[method], COLORS.get(method, "tab:green")
        xs = [by_seed[s]["test/distinct_correct"] for s in sorted(by_seed)]
        ys = [by_seed[s]["test/accuracy"] for s in sorted(by_seed)]
        ax.scatter(xs, ys, s=14, color=color, alpha=0.5)
        (mx, sx), (my, sy) = mean_sd(xs), mean_sd(ys)
        ax.errorbar(mx, my, xerr=sx, yerr=sy, fmt="o", ms=8, color=color, capsize=3,
                    label=f"{LABELS.get(method, method)} ({len(xs)} seeds)")
    ax.set_xlabel("distinct right rationales per problem (of k samples)")
    ax.set_ylabel("majority-vote accuracy")
    ax.set_title("Diverse correct reasoning, SmolLM2-135M, held-out problems", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dirs", nargs="+", type=Path)
    p.add_argument("--out", type=Path, default=Path(__file__).parent)
    a = p.parse_args()
    results = collect(a.run_dirs)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "results.json").write_text(json.dumps(
        {m: {str(s): v for s, v in sorted(by_seed.items())} for m, by_seed in results.items()}, indent=2) + "\n")
    (a.out / "results.md").write_text(table(results) + "\n")
    plot(results, a.out / "accuracy_vs_diversity.png")
    print(table(results))


if __name__ == "__main__":
    main()

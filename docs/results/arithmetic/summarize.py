"""Table and plot of the arithmetic comparison (recipes/compare.py --task arithmetic), mean ± standard deviation over
seeds.

    python docs/results/arithmetic/summarize.py runs/ms/arithmetic --out docs/results/arithmetic

The folder holds one `seed_<s>/` per seed (compare.py's `--output_dir OUT/seed_<s>`), each with one
`<trainer>/metrics.json` per trainer.  The untuned baselines (`prompting`: the rationale LM zero-shot, `3-shot`: with
the demonstrations) are those of the seed's first run, as compare.py collects them.  Writes results.json (every
seed's values), results.md (the table) and accuracy.png (majority-vote accuracy per split: one small point per seed,
a bar for the mean with the standard deviation).
"""

import argparse
import json
import statistics
from pathlib import Path

SPLITS = ("test3", "test4", "ood5")
METRICS = tuple(f"{s}/accuracy" for s in SPLITS) + tuple(f"{s}/log_likelihood/mean" for s in SPLITS)
LABELS = {"prompting": "prompting (zero-shot)", "3-shot": "prompting (3-shot)", "ppo": "PPO", "sft": "SFT",
          "gfn": "GFlowNet (SubTB)"}
BASELINES = ("prompting", "3-shot")


def ordered(results: dict) -> list[str]:
    return [m for m in LABELS if m in results] + [m for m in results if m not in LABELS]


def collect(root: Path) -> dict[str, dict[int, dict[str, float]]]:
    """{method: {seed: metrics}}: each trainer's own row, and the baselines of the first run of the seed that has
    them."""
    out: dict[str, dict[int, dict[str, float]]] = {}
    for seed_dir in sorted(root.glob("seed_*")):
        seed = int(seed_dir.name.removeprefix("seed_"))
        for path in sorted(seed_dir.glob("*/metrics.json")):
            record = json.loads(path.read_text())
            assert int(record["train_args"]["seed"]) == seed, f"{path} was run with another seed"
            trainer = path.parent.name
            for method, metrics in record["metrics"].items():
                if method == trainer or (method in BASELINES and seed not in out.get(method, {})):
                    out.setdefault(method, {})[seed] = metrics
    return out


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def table(results: dict[str, dict[int, dict[str, float]]]) -> str:
    head = "| method | seeds | " + " | ".join(METRICS) + " |"
    lines = [head, "| " + " | ".join(["---"] * (len(METRICS) + 2)) + " |"]
    for method in ordered(results):
        by_seed = results[method]
        cells = []
        for key in METRICS:
            mean, sd = mean_sd([by_seed[s][key] for s in sorted(by_seed)])
            cells.append(f"{mean:.2f} ± {sd:.2f}" if "log_likelihood" in key else f"{mean:.3f} ± {sd:.3f}")
        lines.append(f"| {LABELS.get(method, method)} | {len(by_seed)} | " + " | ".join(cells) + " |")
    seeds = "\n".join(f"| {LABELS.get(m, m)} | " + "; ".join(
        f"seed {s}: " + " / ".join(f"{results[m][s][f'{x}/accuracy']:.2f}" for x in SPLITS) for s in sorted(results[m]))
        + " |" for m in ordered(results))
    per_seed = "| method | accuracy per seed, " + " / ".join(SPLITS) + " |\n| --- | --- |\n"
    return "\n".join(lines) + "\n\n" + per_seed + seeds


def plot(results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = ordered(results)
    fig, ax = plt.subplots(figsize=(7, 3.8))
    width = 0.8 / len(methods)
    for j, method in enumerate(methods):
        by_seed = results[method]
        for i, split in enumerate(SPLITS):
            values = [by_seed[s][f"{split}/accuracy"] for s in sorted(by_seed)]
            mean, sd = mean_sd(values)
            x = i + (j - (len(methods) - 1) / 2) * width
            ax.bar(x, mean, width, yerr=sd, capsize=2, color=f"C{j}", label=LABELS.get(method, method) if i == 0
                   else None)
            ax.scatter([x] * len(values), values, s=8, color="k", zorder=3)
    ax.set_xticks(range(len(SPLITS)), ["3 operands", "4 operands", "5 operands (OOD)"])
    ax.set_ylabel("majority-vote accuracy")
    ax.set_title("Arithmetic, SmolLM2-135M + rationale LM, mean ± sd over seeds", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", type=Path)
    p.add_argument("--out", type=Path, default=Path(__file__).parent)
    a = p.parse_args()
    results = collect(a.root)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "results.json").write_text(json.dumps(
        {m: {str(s): v for s, v in sorted(by_seed.items())} for m, by_seed in results.items()}, indent=2) + "\n")
    (a.out / "results.md").write_text(table(results) + "\n")
    plot(results, a.out / "accuracy.png")
    print(table(results))


if __name__ == "__main__":
    main()

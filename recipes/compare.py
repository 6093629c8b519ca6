"""Run (or collect) several trainers on one task and write one comparison: a Markdown table and PNG plots.

    python recipes/compare.py --task continuation --trainers gfn ppo grpo rloo --decoding greedy beam diverse_beam
    python recipes/compare.py --task infill --trainers gfn ppo sft -- --max_steps 100 --num_eval 32
    python recipes/compare.py --task infill --trainers gfn ppo sft --collect      # only re-read the runs' metrics

Each trainer runs as its own process, `<launcher> recipes/<task>.py --trainer T --output_dir OUT/T <recipe args>`
(the launcher defaults to this Python; pass `--launcher "accelerate launch --config_file ..."` to shard).  Every
run samples its evaluation latents from the same constrained latent space and scores them with the same base-LM
likelihood and the same metric code (gfn_trl.evaluation, gfn_trl.metrics), so the rows are comparable.  The
untuned baselines (the prompt / LM / zero-shot rows, and `--decoding` for continuation) are evaluated by the first
run only.  Everything after `--` goes to every run unchanged.  Before the first run starts, every run's arguments
are parsed and checked by its recipe (files, model path, packages), so that a later run does not fail after the
earlier ones have spent their time.

Writes OUT/comparison.md, OUT/comparison.json and OUT/comparison.png (for continuation, the paper's figure: the
max log-likelihood of each prompt's samples against their diversity; for the other tasks, one bar chart per metric).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from gfn_trl.runner import TRAINERS
from gfn_trl.tasks import TASKS

ROOT = Path(__file__).resolve().parent


def recipe_argv(trainer: str, out: Path, extra: list[str], first: bool, decoding: list[str]) -> list[str]:
    """The recipe's command-line arguments for one trainer's run."""
    argv = ["--trainer", trainer, "--output_dir", str(out / trainer), *extra]
    if not first:
        argv += ["--skip_baseline", "true"]
    elif decoding:
        argv += ["--decoding", *decoding]
    return argv


def check_runs(task: str, trainers: list[str], out: Path, launcher: list[str], extra: list[str],
               decoding: list[str]) -> None:
    """Before the first run starts: the launcher exists, matplotlib (for the plot) is installed, and every run's
    arguments parse and pass its recipe's `check` (data files, model path, packages, trainer choice), so that no run
    fails after the ones before it have spent their minutes."""
    import importlib.util
    import shutil

    if shutil.which(launcher[0]) is None:
        raise SystemExit(f"--launcher {shlex.join(launcher)}: {launcher[0]} is not an executable on PATH.")
    if importlib.util.find_spec("matplotlib") is None:
        raise SystemExit("compare.py plots with matplotlib, which is not installed: pip install matplotlib")
    spec = importlib.util.spec_from_file_location(f"recipe_{task}", ROOT / f"{task}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for i, trainer in enumerate(trainers):
        argv = recipe_argv(trainer, out, extra, i == 0, decoding)
        try:
            parsed = module.make_parser(argv).parse_args_and_config(args=argv)
        except (SystemExit, ValueError) as e:
            why = "" if isinstance(e, SystemExit) else f" ({e})"
            raise SystemExit(f"The {trainer} run's arguments are refused{why}: {shlex.join(argv)}") from e
        try:
            module.check(*parsed)
        except (ValueError, FileNotFoundError, ModuleNotFoundError) as e:
            raise SystemExit(f"The {trainer} run would fail: {e}") from e


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def run_header(i: int, trainers: list[str], elapsed: float) -> str:
    """The progress line printed before run i: which run of how many, the time so far and, from the second run on,
    an estimate of the time left (the mean time of the runs so far, per run left)."""
    line = f"== compare: run {i + 1}/{len(trainers)} ({trainers[i]}); {_duration(elapsed)} so far"
    if i:
        line += f", about {_duration(elapsed / i * (len(trainers) - i))} left"
    return line + " =="


def run_one(task: str, trainer: str, out: Path, launcher: list[str], extra: list[str], first: bool,
            decoding: list[str]) -> None:
    cmd = [*launcher, str(ROOT / f"{task}.py"), *recipe_argv(trainer, out, extra, first, decoding)]
    print("$", shlex.join(cmd), flush=True)
    done = subprocess.run(cmd, env={**os.environ, "HF_HUB_DISABLE_TELEMETRY": "1"})
    if done.returncode != 0:
        raise SystemExit(f"{trainer} failed (exit {done.returncode}); its command is above. Fix it, or leave it out "
                         "of --trainers and collect the others with --collect.")


def collect(out: Path, trainers: list[str]) -> dict[str, dict[str, float]]:
    """Every method's metrics, in order: the baselines of the first run, then each trainer."""
    methods: dict[str, dict[str, float]] = {}
    for i, trainer in enumerate(trainers):
        path = out / trainer / "metrics.json"
        if not path.exists():
            raise SystemExit(f"{path} is missing: run `{trainer}` first (without --collect).")
        metrics = json.loads(path.read_text())["metrics"]
        if trainer not in metrics:
            raise SystemExit(f"{path} holds no `{trainer}` results (methods: {sorted(metrics)}).")
        for method, values in metrics.items():
            if method == trainer or (i == 0 and method not in TRAINERS):
                methods[method] = values
    return methods


def markdown_table(task: str, methods: dict[str, dict[str, float]]) -> str:
    keys = sorted({k for v in methods.values() for k in v})
    lines = [f"| method | {' | '.join(keys)} |", "| --- |" + " --- |" * len(keys)]
    for method, values in methods.items():
        cells = [f"{values[k]:.4f}" if k in values and not math.isnan(values[k]) else "—" for k in keys]
        lines.append(f"| {method} | {' | '.join(cells)} |")
    return f"### {task}\n\n" + "\n".join(lines) + "\n"


def plot(task: str, methods: dict[str, dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if task == "continuation":
        fig, ax = plt.subplots(figsize=(5, 4))
        for method, v in methods.items():
            if "diversity" in v and "log_likelihood/max" in v:
                ax.scatter(v["diversity"], v["log_likelihood/max"], s=40)
                ax.annotate(method, (v["diversity"], v["log_likelihood/max"]), textcoords="offset points",
                            xytext=(4, 4), fontsize=8)
        ax.set_xlabel("diversity (1 - mean pairwise cosine)")
        ax.set_ylabel("max log-likelihood of the samples")
        ax.set_title("sentence continuation")
    else:
        keys = sorted({k for v in methods.values() for k in v})
        cols = min(3, len(keys))
        rows = math.ceil(len(keys) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
        names = list(methods)
        for ax, key in zip(axes.flat, keys):
            ax.bar(range(len(names)), [methods[m].get(key, float("nan")) for m in names])
            ax.set_xticks(range(len(names)), names, rotation=30, fontsize=8)
            ax.set_title(key, fontsize=9)
        for ax in list(axes.flat)[len(keys):]:
            ax.axis("off")
        fig.suptitle(task)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    argv = sys.argv[1:] if argv is None else argv
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=TASKS, required=True)
    p.add_argument("--trainers", nargs="+", choices=TRAINERS, default=["gfn", "ppo"])
    p.add_argument("--decoding", nargs="*", default=[], help="decoding baselines (continuation only)")
    p.add_argument("--output_dir", help="default: runs/compare/<task>")
    p.add_argument("--launcher", default=sys.executable, help='e.g. "accelerate launch --config_file ..."')
    p.add_argument("--collect", action="store_true", help="do not run; read the runs' metrics.json")
    a = p.parse_args(argv)
    if a.decoding and a.task != "continuation":
        p.error("--decoding applies to --task continuation only")
    out = Path(a.output_dir or f"runs/compare/{a.task}")
    if not a.collect:
        check_runs(a.task, a.trainers, out, shlex.split(a.launcher), extra, a.decoding)
        start = time.monotonic()
        for i, trainer in enumerate(a.trainers):
            print(run_header(i, a.trainers, time.monotonic() - start), flush=True)
            run_one(a.task, trainer, out, shlex.split(a.launcher), extra, first=i == 0, decoding=a.decoding)
        print(f"== compare: {len(a.trainers)} runs done in {_duration(time.monotonic() - start)} ==", flush=True)
    methods = collect(out, a.trainers)
    table = markdown_table(a.task, methods)
    out.mkdir(parents=True, exist_ok=True)
    (out / "comparison.md").write_text(table)
    (out / "comparison.json").write_text(json.dumps(methods, indent=2))
    plot(a.task, methods, out / "comparison.png")
    print("\n" + table)
    print(f"Wrote {out / 'comparison.md'}, {out / 'comparison.json'} and {out / 'comparison.png'}")
    return methods


if __name__ == "__main__":
    main()

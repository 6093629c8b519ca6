"""Run (or collect) several trainers on one task and write one comparison: a Markdown table and PNG plots.

    python recipes/compare.py --task continuation --trainers gfn ppo grpo rloo --decoding greedy beam diverse_beam
    python recipes/compare.py --task infill --trainers gfn ppo sft -- --max_steps 100 --num_eval 32
    python recipes/compare.py --task infill --trainers gfn ppo sft --collect      # only re-read the runs' metrics

Each trainer runs as its own process, `<launcher> recipes/<task>.py --trainer T --output_dir OUT/T <recipe args>`
(the launcher defaults to this Python; pass `--launcher "accelerate launch --config_file ..."` to shard).  Every
run samples its evaluation latents from the same constrained latent space and scores them with the same base-LM
likelihood and the same metric code (gfn_trl.evaluation, gfn_trl.metrics), so the rows are comparable.  The
untuned baselines (the prompt / LM / zero-shot rows, and `--decoding` for continuation) are evaluated by the first
run only.  Everything after `--` goes to every run unchanged, except `--trainer`, `--output_dir` and `--decoding`,
which compare.py sets per run (refused there: give them before `--`).  Before the first run starts, every run's
arguments are parsed and checked by its recipe (files, model path, packages), so that a later run does not fail
after the earlier ones have spent their time.

Writes OUT/comparison.md, OUT/comparison.json and OUT/comparison.png (for continuation, the paper's figure: the
max log-likelihood of each prompt's samples against their diversity; for the other tasks, one bar chart per metric).

Over seeds:

    python recipes/compare.py --task infill --trainers gfn sft --seeds 0 1 2

runs the whole comparison once per seed (`--seed S` is added to every run's arguments, so the seed changes the
LoRA initialisation, the data order, every sampler seed and the untuned baselines' samples alike) into OUT/seed_S/,
writes each seed's own table there, and writes OUT/comparison.md with every metric as mean ± sample standard deviation
over the seeds (n - 1 in the denominator), followed by the per-seed values; OUT/comparison.json holds
{"seeds", "mean", "sd", "per_seed"}; the plot shows the means with the standard deviations as error bars.  `--collect`
re-reads finished seeds without running them; `--resume` runs only the runs whose directory lacks a finished run
with the same arguments (to finish an interrupted comparison, or to add trainers or seeds to one).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
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


def run_header(i: int, labels: list[str], elapsed: float, ran: int | None = None, left: int | None = None) -> str:
    """The progress line printed before run i (`labels`: every run's trainer, and seed with --seeds): which run of
    how many, the time so far and, once a run has finished, an estimate of the time left (the mean time of the `ran`
    runs actually made so far, by default all i before this one, per run still to make from this one on, `left`, by
    default all len(labels) - i; runs --resume skips cost nothing, before or after this one)."""
    ran = i if ran is None else ran
    left = len(labels) - i if left is None else left
    line = f"== compare: run {i + 1}/{len(labels)} ({labels[i]}); {_duration(elapsed)} so far"
    if ran and left:
        line += f", about {_duration(elapsed / ran * left)} left"
    return line + " =="


RUN_RECORD = "command.json"  # each run's command and wall time, next to its outputs


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def finished_run(out: Path, trainer: str, argv: list[str], task: str) -> bool:
    """Whether OUT/<trainer> holds a finished run (metrics.json) of the `task` recipe made by compare.py with exactly
    these recipe arguments (command.json; the launcher and the checkout's path may be spelt otherwise): what --resume
    skips.  The metrics.json must be the one that run wrote (its sha256 in command.json; in a record without one, from
    before compare.py kept it: not newer than the record), not one a later run into the same directory, made without
    compare.py or killed before its record, left there.  An unreadable record vouches for nothing (said, not raised):
    the run is made again."""
    try:
        record = run_record(out, trainer)
    except ValueError as e:
        print(f"== compare: --resume: {e}; the run is made again ==", flush=True)
        return False
    metrics = out / trainer / "metrics.json"
    if record is None or not metrics.exists() or recipe_of(record["command"]) != f"{task}.py":
        return False
    if "metrics_sha256" in record:
        if record["metrics_sha256"] != _sha256(metrics):
            return False
    elif metrics.stat().st_mtime > (out / trainer / RUN_RECORD).stat().st_mtime:
        return False
    return recipe_args(record["command"]) == argv


def check_task(out: Path, trainer: str, task: str, action: str) -> None:
    """Refuse OUT/<trainer> when its command.json names another task's recipe: the recipe arguments compared by
    --resume and across seeds do not name the task, so a run of another task with the same arguments in the same
    --output_dir was skipped by --resume and its metrics collected into this task's table.  `action`: what would
    happen to it (for the message).  An unreadable record is left to the caller."""
    try:
        record = run_record(out, trainer)
    except ValueError:
        return
    recipe = None if record is None else recipe_of(record["command"])
    if recipe is not None and recipe != f"{task}.py":
        raise SystemExit(f"{out / trainer} holds a run of {recipe}, not of {task}.py (--task {task}): {action}. "
                         f"Pass another --output_dir (the default, runs/compare/{task}, is the task's own), or move "
                         "that run away.")


def run_one(task: str, trainer: str, out: Path, launcher: list[str], extra: list[str], first: bool,
            decoding: list[str], resume: bool = False) -> bool:
    """Run one trainer's recipe (or, with `resume`, skip a finished identical run); whether it ran."""
    argv = recipe_argv(trainer, out, extra, first, decoding)
    if resume and finished_run(out, trainer, argv, task):
        _say_skipped(out, trainer)
        return False
    cmd = [*launcher, str(ROOT / f"{task}.py"), *argv]
    print("$", shlex.join(cmd), flush=True)
    # an earlier run's record goes first: if this run fails or is killed after writing its metrics.json, no record
    # may vouch for them (--resume would skip the run, --collect cite the other command)
    (out / trainer / RUN_RECORD).unlink(missing_ok=True)
    start = time.monotonic()
    done = subprocess.run(cmd, env={**os.environ, "HF_HUB_DISABLE_TELEMETRY": "1"})
    if done.returncode != 0:
        raise SystemExit(f"{trainer} failed (exit {done.returncode}); its command is above. Fix it, or leave it out "
                         "of --trainers and collect the others with --collect.")
    # the command and its wall time, next to the run's outputs (the comparison's tables cite them), and the digest of
    # the metrics.json it wrote (what --resume checks)
    metrics = out / trainer / "metrics.json"
    record = out / trainer / RUN_RECORD
    partial = record.with_name(RUN_RECORD + ".partial")  # written whole, then renamed: a kill leaves no broken record
    partial.write_text(json.dumps(
        {"command": shlex.join(cmd), "wall_seconds": round(time.monotonic() - start, 1),
         "metrics_sha256": _sha256(metrics) if metrics.exists() else None}, indent=2))
    os.replace(partial, record)
    return True


def _say_skipped(out: Path, trainer: str) -> None:
    print(f"== compare: --resume: {out / trainer} already holds this run's metrics.json; not run again ==", flush=True)


def run_record(out: Path, trainer: str) -> dict | None:
    """OUT/<trainer>/command.json ({"command", "wall_seconds", "metrics_sha256"}, written by `run_one`), or None for a
    run not made by compare.py.

    Raises:
        ValueError: the file is not such a record (truncated, not JSON, no command or wall time), naming it."""
    path = out / trainer / RUN_RECORD
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
        if not isinstance(record, dict) or not isinstance(record.get("command"), str) \
                or not isinstance(record.get("wall_seconds"), (int, float)):
            raise ValueError("not a record of a command and its wall time")
        shlex.split(record["command"])
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError and shlex's unclosed quotation are ValueErrors
        raise ValueError(f"{path} cannot be read ({e}): truncated, or edited by hand") from e
    return record


def _read_record(out: Path, trainer: str) -> dict | None:
    """`run_record`, an unreadable record refused with the fix."""
    try:
        return run_record(out, trainer)
    except ValueError as e:
        raise SystemExit(f"{e}. Make that run again (compare.py --resume makes it, and its record, anew), or delete "
                         "the file to collect the run without it.") from e


def run_times(out: Path, trainers: list[str]) -> str:
    """One line: each run's command wall time, from OUT/<trainer>/command.json (absent for runs not made by
    compare.py)."""
    records = {trainer: _read_record(out, trainer) for trainer in trainers}
    times = [f"{t} {_duration(r['wall_seconds'])}" for t, r in records.items() if r is not None]
    return f"\nWall time per run: {', '.join(times)}.\n" if times else ""


def collect(out: Path, trainers: list[str], task: str | None = None) -> dict[str, dict[str, float]]:
    """Every method's metrics, in order: the baselines of the first run, then each trainer with the methods its run
    derives from the trained policy (`<trainer>_...`, e.g. subjectivity's `gfn_m_step`).  With `task`, a run whose
    command.json names another task's recipe (`check_task`), or whose metrics.json names another task, is refused.
    A missing or unreadable metrics.json (a run killed while saving it), or one of a run whose derived method (e.g.
    subjectivity's M-step) failed after training, is refused, naming the file."""
    methods: dict[str, dict[str, float]] = {}
    for i, trainer in enumerate(trainers):
        if task is not None:
            check_task(out, trainer, task, "its metrics are not this comparison's")
        path = out / trainer / "metrics.json"
        if not path.exists():
            raise SystemExit(f"{path} is missing: run `{trainer}` first (without --collect).")
        try:
            record = json.loads(path.read_text())
            metrics = record["metrics"]
            if not isinstance(metrics, dict) or not all(isinstance(v, dict) for v in metrics.values()):
                raise TypeError("its metrics are not {method: {metric: value}}")
        except (ValueError, KeyError, TypeError) as e:
            raise SystemExit(f"{path} cannot be read ({type(e).__name__}: {e}): the {trainer} run did not finish "
                             "writing it (killed while saving?) or it is not a recipe's metrics.json. Make that run "
                             "again: rerun it (compare.py --resume makes it anew).") from e
        if record.get("failed"):  # the recipe saved what it had when a method derived after training failed
            raise SystemExit(f"{path} holds the results of a {trainer} run whose {record['failed']} failed after "
                             f"training (the rows before it were saved with the trained policy), so the table would "
                             f"lack its row. Make that run again (compare.py --resume makes it anew).")
        if task is not None and record.get("task", task) != task:  # a run made without compare.py: no command.json
            raise SystemExit(f"{path} holds a {record['task']} run's metrics, not {task}'s (--task {task}): its "
                             "metrics are not this comparison's. Pass another --output_dir (the default, "
                             f"runs/compare/{task}, is the task's own), or move that run away.")
        if trainer not in metrics:
            raise SystemExit(f"{path} holds no `{trainer}` results (methods: {sorted(metrics)}).")
        for method, values in metrics.items():
            derived = any(method == t or method.startswith(f"{t}_") for t in TRAINERS)
            if method == trainer or method.startswith(f"{trainer}_") or (i == 0 and not derived):
                methods[method] = values
    return methods


def markdown_table(task: str, methods: dict[str, dict[str, float]]) -> str:
    keys = sorted({k for v in methods.values() for k in v})
    lines = [f"| method | {' | '.join(keys)} |", "| --- |" + " --- |" * len(keys)]
    for method, values in methods.items():
        cells = [f"{values[k]:.4f}" if k in values and not math.isnan(values[k]) else "—" for k in keys]
        lines.append(f"| {method} | {' | '.join(cells)} |")
    return f"### {task}\n\n" + "\n".join(lines) + "\n"


def aggregate(per_seed: dict[int, dict[str, dict[str, float]]]) -> tuple[dict, dict]:
    """(mean, sd) over seeds of every method's metrics: {method: {metric: value}}.  The sd is the sample standard
    deviation (n - 1 in the denominator; NaN with one seed).  A method or metric that a seed lacks, or that is NaN in
    any seed, is refused: a mean over fewer seeds than the table claims would mislead."""
    seeds = list(per_seed)
    if not seeds:
        raise ValueError("No seeds to aggregate.")
    first = per_seed[seeds[0]]
    mean: dict[str, dict[str, float]] = {}
    sd: dict[str, dict[str, float]] = {}
    for method, values in first.items():
        mean[method], sd[method] = {}, {}
        for key in values:
            xs = []
            for s in seeds:
                x = per_seed[s].get(method, {}).get(key)
                if x is None or math.isnan(x):
                    raise ValueError(f"Seed {s} has no value of {key} for {method}: the seeds' runs differ "
                                     "(different --trainers or arguments?). Rerun that seed.")
                xs.append(float(x))
            mean[method][key] = statistics.fmean(xs)
            sd[method][key] = statistics.stdev(xs) if len(xs) > 1 else float("nan")
    for s in seeds[1:]:
        if set(per_seed[s]) != set(first):
            raise ValueError(f"Seed {s} has methods {sorted(per_seed[s])}, seed {seeds[0]} {sorted(first)}.")
        for method, values in per_seed[s].items():
            if set(values) != set(first[method]):
                raise ValueError(f"Seed {s} has metrics {sorted(values)} for {method}, seed {seeds[0]} "
                                 f"{sorted(first[method])}: the seeds' runs differ (different arguments?). Rerun "
                                 "that seed.")
    return mean, sd


def recipe_args(command: str) -> list[str]:
    """A recorded command's recipe arguments (`recipe_argv`: from its first --trainer on), whatever the launcher
    (even one with a .py of its own, e.g. "python wrap.py") and the checkout's path; a command without --trainer:
    after its first .py."""
    words = shlex.split(command)
    if "--trainer" in words:
        return words[words.index("--trainer"):]
    script = next((i for i, word in enumerate(words) if word.endswith(".py")), -1)
    return words[script + 1:]


def recipe_of(command: str) -> str | None:
    """The file name of the recipe a recorded command ran (the last .py before its --trainer, e.g. "infill.py"),
    whatever the launcher and the checkout's path; None if it names none."""
    words = shlex.split(command)
    words = words[:words.index("--trainer")] if "--trainer" in words else words
    return next((Path(word).name for word in reversed(words) if word.endswith(".py")), None)


def _normalised_command(command: str) -> list[str]:
    """A run's recipe arguments (`recipe_args`: the launcher and the checkout's path may be spelt otherwise) with
    their --output_dir and --seed values blanked: what must be equal across seeds."""
    words = recipe_args(command)
    for i, word in enumerate(words[:-1]):
        if word in ("--output_dir", "--seed"):
            words[i + 1] = "<" + word[2:] + ">"
    return words


def check_same_commands(runs: list[tuple[int, Path]], trainers: list[str]) -> None:
    """Refuse seeds whose runs (OUT/seed_S/<trainer>/command.json, written by compare.py) had other recipe
    arguments than the first seed's apart from --seed and --output_dir: a mean over different settings would mislead.
    Runs without command.json (not made by compare.py) are not compared."""
    for trainer in trainers:
        first = None
        for seed, out in runs:
            record = _read_record(out, trainer)
            if record is None:
                continue
            command = record["command"]
            if first is None:
                first = (seed, command)
            elif _normalised_command(command) != _normalised_command(first[1]):
                raise SystemExit(f"The {trainer} runs of seeds {first[0]} and {seed} had different commands (apart "
                                 "from --seed and --output_dir), so their mean would mix settings:\n"
                                 f"  seed {first[0]}: "
                                 f"{first[1]}\n  seed {seed}: {command}\nRerun one of them with the other's arguments.")


def seeds_table(task: str, per_seed: dict[int, dict[str, dict[str, float]]], mean: dict, sd: dict) -> str:
    """Mean ± sd over seeds, then one row per (method, seed)."""
    keys = sorted({k for v in mean.values() for k in v})
    n = len(per_seed)
    lines = [f"### {task}: mean ± sd over {n} seeds ({', '.join(map(str, per_seed))})", "",
             f"| method | {' | '.join(keys)} |", "| --- |" + " --- |" * len(keys)]
    for method, values in mean.items():
        lines.append(f"| {method} | " + " | ".join(f"{values[k]:.4f} ± {sd[method][k]:.4f}" for k in keys) + " |")
    lines += ["", "Per seed:", "", f"| method | seed | {' | '.join(keys)} |", "| --- | --- |" + " --- |" * len(keys)]
    for method in mean:
        for s, methods in per_seed.items():
            lines.append(f"| {method} | {s} | " + " | ".join(f"{methods[method][k]:.4f}" for k in keys) + " |")
    return "\n".join(lines) + "\n"


def plot(task: str, methods: dict[str, dict[str, float]], path: Path, sd: dict | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if task == "continuation":
        fig, ax = plt.subplots(figsize=(5, 4))
        for method, v in methods.items():
            if "diversity" in v and "log_likelihood/max" in v:
                if sd is not None:
                    ax.errorbar(v["diversity"], v["log_likelihood/max"], xerr=sd[method]["diversity"],
                                yerr=sd[method]["log_likelihood/max"], fmt="none", ecolor="gray", capsize=3)
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
            err = None if sd is None else [sd[m].get(key, float("nan")) for m in names]
            ax.bar(range(len(names)), [methods[m].get(key, float("nan")) for m in names], yerr=err, capsize=3)
            ax.set_xticks(range(len(names)), names, rotation=30, fontsize=8)
            ax.set_title(key, fontsize=9)
        for ax in list(axes.flat)[len(keys):]:
            ax.axis("off")
        fig.suptitle(task)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
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
    p.add_argument("--resume", action="store_true",
                   help="skip every run whose output directory already holds its metrics.json from a compare.py run "
                        "with the same recipe arguments (e.g. to finish an interrupted --seeds comparison, or to add "
                        "trainers to one)")
    p.add_argument("--seeds", nargs="+", type=int, metavar="S",
                   help="run the comparison once per seed (--seed S added to every run) into OUTPUT_DIR/seed_S, "
                        "and report mean ± sd over the seeds")
    a = p.parse_args(argv)
    if a.decoding and a.task != "continuation":
        p.error("--decoding applies to --task continuation only")
    for flag, instead in (("--trainer", "--trainers"), ("--output_dir", "--output_dir"), ("--decoding", "--decoding")):
        if any(x == flag or x.startswith(f"{flag}=") for x in extra):  # the recipe takes the last: every run's own
            p.error(f"{flag} after --: compare.py sets each run's --trainer, --output_dir (OUTPUT_DIR/<trainer>) and "
                    f"--decoding (the first run's) itself, and the recipe would take yours for every run; give "
                    f"{instead} before -- instead")
    if len(set(a.trainers)) != len(a.trainers):
        p.error(f"--trainers {' '.join(a.trainers)} repeats a trainer: each runs into OUTPUT_DIR/<trainer>, so the "
                "second run would overwrite the first (the first's baselines with it); name each trainer once")
    if a.resume and a.collect:
        p.error("--resume runs the runs that are missing or stale, --collect runs none (it reads the finished ones): "
                "pass one of them")
    if a.seeds is not None:
        if any(x == "--seed" or x.startswith("--seed=") for x in extra):
            p.error("--seeds sets every run's --seed: leave --seed out of the arguments after --")
        if len(set(a.seeds)) != len(a.seeds):
            p.error(f"--seeds {' '.join(map(str, a.seeds))} repeats a seed")
        if len(a.seeds) < 2:
            p.error(f"--seeds {a.seeds[0]}: one seed has no spread (its sd would be NaN); give two or more seeds, or "
                    f"run one seed (e.g. one a --collect found missing) without --seeds: --output_dir "
                    f"OUTPUT_DIR/seed_{a.seeds[0]} -- ... --seed {a.seeds[0]}")
        if any(not 0 <= s < 2**32 for s in a.seeds):
            p.error(f"--seeds {' '.join(map(str, a.seeds))}: every seed must be in 0 .. 2**32 - 1 (what the runs' "
                    "set_seed accepts)")
    out = Path(a.output_dir or f"runs/compare/{a.task}")
    launcher = shlex.split(a.launcher)
    runs = [(None, out, extra)] if a.seeds is None else [
        (s, out / f"seed_{s}", [*extra, "--seed", str(s)]) for s in a.seeds]
    if not a.collect:
        for _, run_out, run_extra in runs:  # every seed's every run is checked before the first starts
            check_runs(a.task, a.trainers, run_out, launcher, run_extra, a.decoding)
            for trainer in a.trainers:
                check_task(run_out, trainer, a.task, "--resume would overwrite it" if a.resume else "it would be "
                           "overwritten")
        start = time.monotonic()
        labels = [t if seed is None else f"{t}, seed {seed}" for seed, _, _ in runs for t in a.trainers]
        ran = 0
        todo = [not (a.resume and finished_run(run_out, trainer, recipe_argv(trainer, run_out, run_extra, i == 0,
                                                                              a.decoding), a.task))
                for _, run_out, run_extra in runs for i, trainer in enumerate(a.trainers)]  # what --resume leaves
        for k, (_, run_out, run_extra) in enumerate(runs):
            for i, trainer in enumerate(a.trainers):
                n = k * len(a.trainers) + i
                print(run_header(n, labels, time.monotonic() - start, ran, sum(todo[n:])), flush=True)
                if not todo[n]:  # finished_run was asked once, above
                    _say_skipped(run_out, trainer)
                    continue
                ran += run_one(a.task, trainer, run_out, launcher, run_extra, first=i == 0, decoding=a.decoding)
        print(f"== compare: {len(labels)} runs done in {_duration(time.monotonic() - start)} ==", flush=True)
    if a.seeds is not None:
        check_same_commands([(seed, run_out) for seed, run_out, _ in runs], a.trainers)
    per_seed = {}
    for seed, run_out, _ in runs:
        methods = collect(run_out, a.trainers, a.task)
        write_outputs(a.task, methods, run_out, markdown_table(a.task, methods) + run_times(run_out, a.trainers))
        per_seed[seed] = methods
    if a.seeds is None:
        return per_seed[None]
    try:
        mean, sd = aggregate(per_seed)
    except ValueError as e:
        raise SystemExit(str(e)) from e
    write_outputs(a.task, mean, out, seeds_table(a.task, per_seed, mean, sd), sd,
                  {"seeds": a.seeds, "mean": mean, "sd": sd, "per_seed": {str(s): m for s, m in per_seed.items()}})
    return {"mean": mean, "sd": sd, "per_seed": per_seed}


def write_outputs(task: str, methods: dict, out: Path, table: str, sd: dict | None = None,
                  record: dict | None = None) -> None:
    """OUT/comparison.md (the table), OUT/comparison.json (`record`, by default the methods' metrics) and
    OUT/comparison.png."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "comparison.md").write_text(table)
    (out / "comparison.json").write_text(json.dumps(methods if record is None else record, indent=2))
    plot(task, methods, out / "comparison.png", sd)
    print("\n" + table)
    print(f"Wrote {out / 'comparison.md'}, {out / 'comparison.json'} and {out / 'comparison.png'}")


if __name__ == "__main__":
    main()

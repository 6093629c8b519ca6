"""Asynchronous against synchronous GFlowNet training on the exact-posterior toy, side by side in one run: the total
variation to the exact posterior after a fixed number of steps, and the wall-clock they take.

    python benchmarks/async_training.py                       # 400 steps: sync, then k = 0, 1, 4
    python benchmarks/async_training.py --steps 100 --staleness 1 --threads 1
    python benchmarks/async_training.py --shapes step_vs_grpo --steps 30 --staleness 0 1   # timing only

Every run trains the toy of `benchmarks/exact_posterior.py` (SubTB, fixed-suffix reward, 16 latents per step, the
default behaviour mix) for `--steps` optimizer steps, i.e. the same number of latents.  `sync` is
`GFlowNetTrainer` in one process; `k=K` is `AsyncGFlowNetTrainer` with `max_staleness=K`, one learner process and
one sampler process (2 processes, each with `--threads` torch threads); `--sync-2threads` adds the synchronous
trainer with both cores' threads.  Reported per run: TV and KL(p || q) at the end, the wall-clock of `train()` (start-up
of the sampler process included) and of the steps alone (from the first step's end to the last's), and the ratio
of the latter to the synchronous run's.  Machine load is printed: on a shared machine the ratios are what counts.

The toy's latents are 1-3 tokens of a 32-wide GPT-2, so sampling and scoring are a small share of its step.
`--shapes step_vs_grpo` times the shapes of `benchmarks/step_vs_grpo.py` instead (GPT-2 256/4/4, vocabulary 2,002,
LoRA r=16, one prompt of 40 tokens x 16 latents of exactly 20 tokens, a 12-token suffix: sampling and the
per-prefix reward are about 3/4 of the synchronous step there); no exact posterior, so no TV.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from gfn_trl import GFlowNetTrainer  # noqa: E402
from gfn_trl.trainers.async_sampling import AsyncGFlowNetTrainer  # noqa: E402

if __package__:  # `python -m benchmarks.<name>`, or imported as `benchmarks.<name>`
    from .exact_posterior import run
else:  # `python benchmarks/<name>.py`: this folder is sys.path[0]
    from exact_posterior import run


class _Clock(TrainerCallback):
    """Wall-clock of train() and of each step's end."""

    def __init__(self):
        self.begin, self.ends = None, []

    def on_train_begin(self, args, state, control, **kw):
        self.begin = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        self.ends.append(time.perf_counter())


def one(name, steps, threads, reward, **kw):
    torch.set_num_threads(threads)
    clock = _Clock()
    t0 = time.perf_counter()
    history, trainer = run(reward, steps, verbose=False, every=max(1, steps // 4), rows=steps, callbacks=[clock], **kw)
    total = time.perf_counter() - t0
    gaps = [b - a for a, b in zip(clock.ends, clock.ends[1:])]
    staleness = [h["async/staleness"] for h in trainer.state.log_history if "async/staleness" in h]
    waits = [h["async/wait_seconds"] for h in trainer.state.log_history if "async/wait_seconds" in h]
    row = {"name": name, "tv": history[-1][1], "kl": history[-1][2], "total": total,
           "steps_s": clock.ends[-1] - clock.ends[0], "median_step": statistics.median(gaps),
           "staleness": statistics.mean(staleness) if staleness else 0.0,
           "wait": statistics.mean(waits) if waits else float("nan")}
    print(f"{name:16s} TV {row['tv']:.4f}  KL {row['kl']:.4f}  train() {total:6.1f} s  steps {row['steps_s']:6.1f} s  "
          f"median step {row['median_step'] * 1e3:6.1f} ms  mean staleness {row['staleness']:.2f}  "
          f"learner's mean wait {row['wait'] * 1e3:.1f} ms  load {os.getloadavg()[0]:.1f}", flush=True)
    return row


def step_vs_grpo_run(name, steps, threads, trainer_cls, **config):
    """`--shapes step_vs_grpo`: wall-clock of `steps` steps at the shapes of benchmarks/step_vs_grpo.py."""
    from datasets import Dataset
    from peft import LoraConfig

    from gfn_trl.testing import tiny_tokenizer

    if __package__:
        from .step_vs_grpo import PROMPT_LEN, SUFFIX_LEN, WORDS, build
    else:
        from step_vs_grpo import PROMPT_LEN, SUFFIX_LEN, WORDS, build
    torch.set_num_threads(threads)
    tok = tiny_tokenizer(WORDS)
    prompt = " ".join(WORDS[i] for i in range(3, 3 + PROMPT_LEN))
    suffix = " ".join(WORDS[i] for i in range(50, 50 + SUFFIX_LEN))
    args = trainer_cls._config_class(
        output_dir=tempfile.mkdtemp(), max_steps=steps, per_device_train_batch_size=1, num_generations=16,
        max_completion_length=20, min_completion_length=20, learning_rate=1e-4, warmup_steps=0, logging_steps=1,
        save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True, seed=0, **config)
    trainer = trainer_cls(build("small", len(tok)), args, processing_class=tok,
                          peft_config=LoraConfig(r=16, lora_alpha=16, target_modules=["c_attn", "c_proj"],
                                                 fan_in_fan_out=True),
                          train_dataset=Dataset.from_dict({"prompt": [prompt] * steps, "suffix": [suffix] * steps}))
    clock = _Clock()
    trainer.add_callback(clock)
    t0 = time.perf_counter()
    trainer.train()
    total = time.perf_counter() - t0
    gaps = [b - a for a, b in zip(clock.ends, clock.ends[1:])]
    waits = [h["async/wait_seconds"] for h in trainer.state.log_history if "async/wait_seconds" in h]
    row = {"name": name, "tv": float("nan"), "kl": float("nan"), "total": total,
           "steps_s": clock.ends[-1] - clock.ends[0], "median_step": statistics.median(gaps)}
    print(f"{name:16s} train() {total:6.1f} s  steps {row['steps_s']:6.1f} s  median step "
          f"{row['median_step'] * 1e3:6.1f} ms  learner's mean wait "
          f"{(statistics.mean(waits) if waits else float('nan')) * 1e3:.1f} ms  load {os.getloadavg()[0]:.1f}",
          flush=True)
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--staleness", type=int, nargs="+", default=[0, 1, 4])
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--reward", choices=["suffix", "stop"], default="suffix")
    p.add_argument("--sync-2threads", action="store_true", help="also the synchronous run with 2 threads (on a "
                   "loaded machine two OpenMP threads can stall each other for a descheduled peer)")
    p.add_argument("--shapes", choices=["toy", "step_vs_grpo"], default="toy")
    a = p.parse_args(argv)
    if a.shapes == "toy":
        print(f"exact-posterior toy, {a.reward} reward, SubTB, {a.steps} steps of 16 latents; {os.cpu_count()} "
              f"cores, load average {os.getloadavg()[0]:.1f}", flush=True)

        def go(name, threads, **kw):
            return one(name, a.steps, threads, a.reward, **kw)
    else:
        print(f"step_vs_grpo shapes, {a.steps} steps of 16 latents of 20 tokens; {os.cpu_count()} cores, load "
              f"average {os.getloadavg()[0]:.1f}", flush=True)

        def go(name, threads, **kw):
            return step_vs_grpo_run(name, a.steps, threads, **kw)
    rows = [go("sync", a.threads, trainer_cls=GFlowNetTrainer)]
    if a.sync_2threads:
        rows.append(go("sync, 2 threads", 2, trainer_cls=GFlowNetTrainer))
    for k in a.staleness:
        rows.append(go(f"k={k}", a.threads, trainer_cls=AsyncGFlowNetTrainer, max_staleness=k,
                       sampler_num_threads=a.threads))
    base = rows[0]
    print()
    print(f"{'run':16s} {'TV':>7s} {'KL':>7s} {'train() s':>9s} {'steps s':>8s} {'steps: sync / run':>18s}")
    for r in rows:
        print(f"{r['name']:16s} {r['tv']:7.4f} {r['kl']:7.4f} {r['total']:9.1f} {r['steps_s']:8.1f} "
              f"{base['steps_s'] / r['steps_s']:18.2f}")
    return rows


if __name__ == "__main__":
    main()

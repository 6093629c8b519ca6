"""One GFlowNet training step against one TRL GRPO step: same model, LoRA, batch and lengths.

    python benchmarks/step_vs_grpo.py [--preset small|gpt2|tiny] [--samples 16] [--length 20] [--steps 6] [--rounds 5]
                                      [--gfn-cache static] [--gfn-compile]

Both trainers sample `--samples` completions of exactly `--length` tokens for one prompt per step and take one
optimizer step:

* GFlowNet: min = max completion length, so our decode loop (`gfn_trl.sampling.sample_latents`; its static-cache
  and compiled variants with `--gfn-cache static` / `--gfn-compile`) runs length + 1 decoding steps (the last one is
  the forced stop action, which the GFlowNet needs); log R for every prefix, in one packed pass with a fixed
  12-token suffix; one teacher-forced pass of the policy with gradients; SubTB loss.
* GRPO: `min_new_tokens = max_completion_length`, so `generate` runs length decoding steps; its reward function is
  the same task's reward of the finished latent, log p(Z Y | X), in one base-LM pass over prompt + completion +
  suffix with logits only where they are read (`--grpo-reward latent` drops Y: log p(Z | X)); a separate frozen
  copy of the base LM, which costs the same as the GFlowNet's adapter-disabled base; one teacher-forced pass of
  the policy with gradients (TRL's fused, chunked LM head, plus the entropy it always computes); beta = 0 (TRL's
  default: no reference pass), num_iterations = 1 (no old-log-prob pass), dapo loss.

Equal settings: same random-init GPT-2 shape, LoRA r=16 on c_attn/c_proj, fp32, sampling at temperature 1 with
no top-k/top-p, KV cache, dropout off in both (GRPO's default keeps GPT-2's 0.1 dropout on, also during
generation, which would add work to the GRPO side only), no activation checkpointing, learning rate 1e-4.

The two trainers run in ONE process, interleaved: `--rounds` rounds, each calling `train()` for `--steps` steps on
each trainer (the order alternates between rounds), the first step of every `train()` call excluded. Reported: the
median step of each trainer per round, the ratio GFlowNet / GRPO per round, its median and spread over rounds, the
time of each phase of a step (generate, reward, policy forward, backward, rest), policy tokens/s, and the peak
resident memory of a step (psutil RSS sampled every 2 ms, above the RSS at the start of the step).

Run it on an otherwise idle machine: on a shared CPU two torch threads can stall for a descheduled peer and slow a
step 20-30x; `--threads 1` is less sensitive to that (but not to other jobs' use of caches and memory bandwidth).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections import defaultdict

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from peft import LoraConfig  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel, TrainerCallback  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from gfn_trl import GFlowNetConfig, GFlowNetTrainer  # noqa: E402
from gfn_trl.testing import tiny_tokenizer  # noqa: E402

if __package__:  # `python -m benchmarks.<name>`, or imported as `benchmarks.<name>`
    from ._rss import RssPeak
else:  # `python benchmarks/<name>.py`: this folder is sys.path[0]
    from _rss import RssPeak

PRESETS = {"tiny": (64, 2, 2), "small": (256, 4, 4), "gpt2": (768, 12, 12)}
WORDS = [f"w{i}" for i in range(2000)]
PROMPT_LEN, SUFFIX_LEN = 40, 12
PHASES = ("generate", "reward", "policy_fwd", "backward")


class StepProbe(TrainerCallback):
    """Per-step wall time, phase times (filled by `timed` wrappers) and peak RSS."""

    def __init__(self):
        self.rows, self.phase, self._t, self.rss = [], defaultdict(float), None, RssPeak()

    def on_step_begin(self, args, state, control, **kw):
        self.phase.clear()
        self.rss.start()
        self._t, self._c = time.perf_counter(), time.process_time()

    def on_step_end(self, args, state, control, **kw):
        wall, cpu = time.perf_counter() - self._t, time.process_time() - self._c
        extra, peak = self.rss.stop()
        self.rows.append({"step": state.global_step, "wall": wall, "cpu": cpu, "rss_extra": extra, "rss_peak": peak,
                          **self.phase})

    def timed(self, name, fn):
        def wrapper(*a, **kw):
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.phase[name] += time.perf_counter() - t

        return wrapper


def build(preset, vocab, seed=0):
    d, layers, heads = PRESETS[preset]
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=vocab, n_embd=d, n_layer=layers, n_head=heads, n_positions=256,
                     bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return GPT2LMHeadModel(cfg)


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def make_trainers(a, tok):
    prompt = " ".join(WORDS[i] for i in range(3, 3 + PROMPT_LEN))
    suffix = " ".join(WORDS[i] for i in range(50, 50 + SUFFIX_LEN))
    lora = LoraConfig(r=16, lora_alpha=16, target_modules=["c_attn", "c_proj"], fan_in_fan_out=True)
    common = dict(max_steps=a.steps, learning_rate=1e-4, logging_steps=10_000, save_strategy="no", report_to="none",
                  use_cpu=True, bf16=False, disable_tqdm=True, seed=0, max_completion_length=a.length,
                  warmup_steps=0, disable_dropout=True, activation_checkpointing=False)

    gfn_args = GFlowNetConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=1, num_generations=a.samples,
                              min_completion_length=a.length, on_policy_prob=1.0, tempered_prob=0.0,
                              replay_prob=0.0, cache_implementation=a.gfn_cache, sampler_compile=a.gfn_compile,
                              **common)  # every step samples and scores (no replay shortcut)
    gfn = GFlowNetTrainer(build(a.preset, len(tok)), gfn_args, processing_class=tok, peft_config=lora,
                          train_dataset=Dataset.from_dict({"prompt": [prompt] * 64, "suffix": [suffix] * 64}))

    reward_lm = build(a.preset, len(tok)).eval()
    prompt_ids = tok(prompt)["input_ids"]
    suffix_ids = tok(suffix)["input_ids"] if a.grpo_reward == "terminal" else []
    assert len(prompt_ids) == PROMPT_LEN

    def base_log_likelihood(prompts, completions, completion_ids, **kwargs):
        """log p(Z Y | X) (terminal: the GFlowNet's reward at the final state) or log p(Z | X) (latent), one pass."""
        ids = torch.tensor([prompt_ids + list(c) + suffix_ids for c in completion_ids])
        with torch.no_grad():
            logits = reward_lm(input_ids=ids, logits_to_keep=ids.shape[1] - PROMPT_LEN + 1).logits[:, :-1]
            lp = torch.log_softmax(logits.float(), -1).gather(-1, ids[:, PROMPT_LEN:, None]).squeeze(-1)
        return lp.sum(1).tolist()

    grpo_args = GRPOConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=a.samples,
                           num_generations=a.samples, generation_kwargs={"min_new_tokens": a.length}, **common)
    assert grpo_args.beta == 0.0 and grpo_args.num_iterations == 1 and grpo_args.top_k == 0 and grpo_args.top_p == 1.0
    grpo = GRPOTrainer(build(a.preset, len(tok)), reward_funcs=base_log_likelihood, args=grpo_args,
                       processing_class=tok, peft_config=lora,
                       train_dataset=Dataset.from_dict({"prompt": [prompt] * 64}))

    probes = {"gfn": StepProbe(), "grpo": StepProbe()}
    # the same phases, measured at the same kind of call site in both trainers
    g, r = probes["gfn"], probes["grpo"]
    gfn.sample = g.timed("generate", gfn.sample)  # our decode loop (the GFlowNet does not call `generate`)
    gfn.score_latents = g.timed("reward", gfn.score_latents)
    loss_globals = type(gfn).compute_loss.__globals__  # the module whose policy_log_probs compute_loss calls
    loss_globals["policy_log_probs"] = g.timed("policy_fwd", loss_globals["policy_log_probs"])
    gfn.accelerator.backward = g.timed("backward", gfn.accelerator.backward)
    grpo.model.generate = r.timed("generate", grpo.model.generate)
    grpo.reward_funcs[0] = r.timed("reward", grpo.reward_funcs[0])
    grpo._get_per_token_logps_and_entropies = r.timed("policy_fwd", grpo._get_per_token_logps_and_entropies)
    grpo.accelerator.backward = r.timed("backward", grpo.accelerator.backward)
    gfn.add_callback(g)
    grpo.add_callback(r)
    return {"gfn": gfn, "grpo": grpo}, probes


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=list(PRESETS), default="small")
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--length", type=int, default=20)
    p.add_argument("--steps", type=int, default=6, help="optimizer steps per train() call (the first is excluded)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved train() calls per trainer")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--grpo-reward", choices=["terminal", "latent"], default="terminal",
                   help="GRPO's reward: log p(Z Y | X), the GFlowNet's reward of the finished latent (default), or "
                   "log p(Z | X) without the suffix (cheaper; the figure before this option existed)")
    p.add_argument("--json", default=None, help="write the per-step records here")
    p.add_argument("--gfn-cache", choices=["dynamic", "static"], default=None,
                   help="the GFlowNet sampler's cache_implementation (default: dynamic)")
    p.add_argument("--gfn-compile", action="store_true", help="compile the GFlowNet sampler's decode step")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    tok = tiny_tokenizer(WORDS)
    trainers, probes = make_trainers(a, tok)
    load_before = os.getloadavg()

    per_round = []
    for rnd in range(a.rounds):
        order = ("gfn", "grpo") if rnd % 2 == 0 else ("grpo", "gfn")
        med = {}
        for name in order:
            start = len(probes[name].rows)
            trainers[name].train()
            rows = probes[name].rows[start:]
            for row in rows:
                row["round"] = rnd
            med[name] = statistics.median(r["wall"] for r in rows[1:])
            med[name + "_cpu"] = statistics.median(r["cpu"] for r in rows[1:])
        per_round.append(med)
        print(f"round {rnd}: GFlowNet {med['gfn']:.3f} s, GRPO {med['grpo']:.3f} s, "
              f"ratio {med['gfn'] / med['grpo']:.2f} "
              f"(CPU time ratio {med['gfn_cpu'] / med['grpo_cpu']:.2f}), load {os.getloadavg()[0]:.2f}", flush=True)
    load_after = os.getloadavg()

    ratios = [m["gfn"] / m["grpo"] for m in per_round]
    cpu_ratios = [m["gfn_cpu"] / m["grpo_cpu"] for m in per_round]
    d, layers, heads = PRESETS[a.preset]
    tokens = a.samples * (PROMPT_LEN + a.length)
    print()
    print(f"machine: {cpu_name()} ({os.cpu_count()} cores), torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}")
    print(f"load average (1/5/15 min) before {load_before[0]:.2f}/{load_before[1]:.2f}/{load_before[2]:.2f}, "
          f"after {load_after[0]:.2f}/{load_after[1]:.2f}/{load_after[2]:.2f}")
    print(f"model: GPT-2 shape d={d} layers={layers} heads={heads} vocab={len(tok)}, LoRA r=16 on c_attn,c_proj, fp32")
    print(f"batch: 1 prompt x {a.samples} samples, prompt {PROMPT_LEN}, completion {a.length}, suffix {SUFFIX_LEN}; "
          f"{a.rounds} rounds x {a.steps} steps (first of each excluded); GRPO reward: {a.grpo_reward}")
    print()
    header = (f"{'':10s} {'step s':>7s} {'CPU s':>6s} " + " ".join(f"{ph:>10s}" for ph in PHASES)
              + f" {'rest':>7s} {'tok/s':>6s} {'peak RSS +MiB':>13s}")
    print(header)
    summary = {}
    for name, label in (("gfn", "GFlowNet"), ("grpo", "GRPO")):
        rows = [r for r in probes[name].rows if r["step"] != 1]  # first step of each train() call excluded
        wall = statistics.median(r["wall"] for r in rows)
        cpu = statistics.median(r["cpu"] for r in rows)
        phase = {ph: statistics.median(r.get(ph, 0.0) for r in rows) for ph in PHASES}
        rest = statistics.median(r["wall"] - sum(r.get(ph, 0.0) for ph in PHASES) for r in rows)
        extra = statistics.median(r["rss_extra"] for r in rows) / 2**20
        summary[name] = {"step_s": wall, "cpu_s": cpu, **phase, "rest": rest, "tokens_per_s": tokens / wall,
                         "rss_extra_mib": extra,
                         "rss_peak_mib": max(r["rss_peak"] for r in rows) / 2**20}
        print(f"{label:10s} {wall:7.3f} {cpu:6.3f} " + " ".join(f"{phase[ph]:10.3f}" for ph in PHASES)
              + f" {rest:7.3f} {tokens / wall:6.0f} {extra:13.0f}")
    print()
    print(f"ratio GFlowNet / GRPO per round: {' '.join(f'{x:.2f}' for x in ratios)}")
    print(f"CPU-time ratio per round:        {' '.join(f'{x:.2f}' for x in cpu_ratios)} "
          f"(median {statistics.median(cpu_ratios):.2f})")
    print(f"median ratio {statistics.median(ratios):.2f} (min {min(ratios):.2f}, max {max(ratios):.2f}); "
          f"ratio of the pooled medians {summary['gfn']['step_s'] / summary['grpo']['step_s']:.2f}")
    print(f"process peak RSS {max(s['rss_peak_mib'] for s in summary.values()):.0f} MiB (both trainers' models loaded)")
    result = {"ratios": ratios, "median_ratio": statistics.median(ratios), "cpu_ratios": cpu_ratios, "summary": summary,
              "load_before": load_before, "load_after": load_after}
    if a.json:
        with open(a.json, "w") as f:
            json.dump({**result, "rows": {k: v.rows for k, v in probes.items()}}, f, indent=1)
    return result


if __name__ == "__main__":
    main()

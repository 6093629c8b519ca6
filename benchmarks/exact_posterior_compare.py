"""GFlowNet against reward maximisers and SFT on the exact-posterior toy: one Markdown table, every number exact.

    python benchmarks/exact_posterior_compare.py [--steps 400] [--methods gfn,ppo,grpo,rloo,sft] [--reward suffix|stop]
                                                 [--seed 0] [--samples 256]

The toy (gfn_trl.testing.exact_posterior_toy): a tiny GPT-2 with sharp random conditionals, prompt "x y x", latents
of 1-3 tokens over {a, b, c, d} (84 latents), reward log R(Z) = log p(Z Y | X) (suffix "y x y") or log p(Z ⊤ | X).
The target is the true posterior p(Z) ∝ R(Z), enumerated.  `--seed` sets the toy LM's random weights (so another
seed is another posterior) and every trainer's seed.

Every method starts from the same weights (dropout off), trains the same LoRA (r=16, alpha=32, targets resolved as
the GFlowNet trainer resolves them) with the same optimiser settings (AdamW, lr 2e-3, 10 warm-up steps, linear decay)
for `--steps` optimizer steps, and sees the same number of latents: 16 per step.

* gfn:  GFlowNetTrainer, modified SubTB, 16 samples per step (on-policy / tempered / replay, the defaults).
* grpo: TRL's GRPOTrainer, 16 completions per step, rewarded with the same log R(Z) (`LatentLogReward`), sampling the
        same constrained latent space (`build_grpo_trainer`); TRL's defaults otherwise (dapo loss, no KL).
* rloo: TRL's RLOOTrainer, the same, with RLOO's default KL to the base (beta 0.05).
* sft:  TRL's SFTTrainer on 16 copies per step of one gold latent: the mode of the true posterior (the single most
        likely latent, argmax_Z R(Z)), i.e. what a supervised baseline is given when there is one right answer.

Each trained policy is then evaluated with the same code: its exact constrained q(Z ⊤) over all 84 latents
(`gfn_trl.evaluation.exact`) against the exact posterior p: total variation, KL(p || q), the entropy of q,
the mass of q's most likely latent, and the expected fraction of distinct latents among N i.i.d. samples from q,
E[#distinct] / N = Σ_Z (1 - (1 - q(Z))^N) / N (exact, no sampling noise).  The rows "posterior p" and "start"
(the untuned LM as the policy) give the reference values.

Adding a method: write `train_<name>(toy, steps, seed) -> model` (the trained policy, a PEFT model) and decorate it
with `@register("<name>")`; `toy` is `fresh_toy(...)` (a fresh copy of the start).  `ppo` goes in the marked place
below.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from collections.abc import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from peft import LoraConfig  # noqa: E402
from torch import nn  # noqa: E402

from gfn_trl import GFlowNetConfig, GFlowNetTrainer  # noqa: E402
from gfn_trl.baselines import build_grpo_trainer, build_rloo_trainer, build_sft_trainer, latent_constraints  # noqa: E402
from gfn_trl.evaluation.exact import exact_log_rewards, exact_policy_log_probs, tv_and_kl  # noqa: E402
from gfn_trl.testing import exact_posterior_toy  # noqa: E402

SAMPLES_PER_STEP = 16
LEARNING_RATE = 2e-3


def lora() -> LoraConfig:
    return LoraConfig(r=16, lora_alpha=32)


def common_args(steps: int, seed: int) -> dict:
    """Training arguments every method shares (TrainingArguments fields)."""
    return {
        "output_dir": tempfile.mkdtemp(prefix="gfn_compare_"),
        "max_steps": steps,
        "learning_rate": LEARNING_RATE,
        "warmup_steps": 10,
        "lr_scheduler_type": "linear",
        "logging_steps": max(1, steps // 10),
        "save_strategy": "no",
        "report_to": "none",
        "use_cpu": True,
        "bf16": False,  # TRL's configs default to bf16 autocast; every method trains and is evaluated in float32
        "seed": seed,
        "disable_tqdm": True,
    }


def rollout_args(toy: dict) -> dict:
    """The latent space and batch of gfn_trl's own trainers (GFlowNet, PPO): one prompt x 16 latents per step."""
    return {
        "per_device_train_batch_size": 1,
        "num_generations": SAMPLES_PER_STEP,
        "max_completion_length": toy["max_length"],
        "min_completion_length": toy["min_length"],
    }


def fresh_toy(reward: str, seed: int) -> dict:
    """The toy, rebuilt (the same weights every time: each method trains its own copy of the start), dropout off.

    Adds `constraints` (the latent space) and `log_rewards`: (N,) untempered log R(Z) of every latent under the
    frozen LM, i.e. the unnormalised true posterior, computed before anything trains."""
    toy = exact_posterior_toy(reward, seed=seed)
    model, tok = toy["model"], toy["tokenizer"]
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    toy["constraints"] = latent_constraints(tok, toy["max_length"], toy["min_length"], vocab_mask=toy["vocab_mask"])
    row = toy["dataset"][0]
    suffix = tok(row["suffix"], add_special_tokens=False)["input_ids"] if "suffix" in row else None
    toy["prompt_ids"] = tok(row["prompt"])["input_ids"]
    with torch.no_grad():
        toy["log_rewards"] = exact_log_rewards(
            model.eval(), toy["prompt_ids"], toy["latents"], toy["constraints"].stop_token_id, tok.pad_token_id, suffix
        )
    return toy


# ---------------------------------------------------------------------------------------------------------------------
# The methods: name -> train(toy, steps, seed) -> trained policy

TRAINERS: dict[str, Callable[[dict, int, int], nn.Module]] = {}


def register(name: str):
    def add(fn):
        TRAINERS[name] = fn
        return fn

    return add


def train_with_gfn_signature(trainer_cls, args, toy) -> nn.Module:
    """Any trainer with GFlowNetTrainer's __init__ signature (GFlowNetTrainer, gfn_trl.PPOTrainer) on the toy."""
    trainer = trainer_cls(
        toy["model"],
        args,
        train_dataset=toy["dataset"],
        processing_class=toy["tokenizer"],
        peft_config=lora(),
        vocab_mask=toy["vocab_mask"],
    )
    trainer.train()
    return trainer.accelerator.unwrap_model(trainer.model)


@register("gfn")
def train_gfn(toy: dict, steps: int, seed: int) -> nn.Module:
    args = GFlowNetConfig(
        reward_temperature_start=1.0,
        reward_temperature_end=1.0,
        **rollout_args(toy),
        **common_args(steps, seed),
    )
    return train_with_gfn_signature(GFlowNetTrainer, args, toy)


def _online_rl(builder, config_cls, toy, steps, seed, **extra) -> nn.Module:
    args = config_cls(
        per_device_train_batch_size=SAMPLES_PER_STEP,  # one prompt x 16 completions per optimizer step
        num_generations=SAMPLES_PER_STEP,
        activation_checkpointing=False,
        disable_dropout=True,
        **extra,
        **common_args(steps, seed),
    )
    trainer = builder(
        toy["model"], args, toy["dataset"], toy["constraints"], processing_class=toy["tokenizer"], peft_config=lora()
    )
    trainer.train()
    return trainer.accelerator.unwrap_model(trainer.model)


@register("grpo")
def train_grpo(toy: dict, steps: int, seed: int) -> nn.Module:
    from trl import GRPOConfig

    return _online_rl(build_grpo_trainer, GRPOConfig, toy, steps, seed)


@register("rloo")
def train_rloo(toy: dict, steps: int, seed: int) -> nn.Module:
    from trl import RLOOConfig

    return _online_rl(build_rloo_trainer, RLOOConfig, toy, steps, seed)


def posterior_mode(toy: dict) -> list[int]:
    """The single most likely latent under the true posterior, argmax_Z R(Z): SFT's gold latent on the toy."""
    return toy["latents"][int(toy["log_rewards"].argmax())]


@register("sft")
def train_sft(toy: dict, steps: int, seed: int) -> nn.Module:
    from trl import SFTConfig

    gold = posterior_mode(toy)
    prompt = toy["dataset"][0]["prompt"]
    data = Dataset.from_dict({"prompt": [prompt] * SAMPLES_PER_STEP, "completion": [gold] * SAMPLES_PER_STEP})
    args = SFTConfig(per_device_train_batch_size=SAMPLES_PER_STEP, **common_args(steps, seed))
    trainer = build_sft_trainer(
        toy["model"],
        args,
        data,
        toy["constraints"].stop_token_id,
        processing_class=toy["tokenizer"],
        peft_config=lora(),
    )
    trainer.train()
    return trainer.accelerator.unwrap_model(trainer.model)


@register("ppo")
def train_ppo(toy: dict, steps: int, seed: int) -> nn.Module:
    from gfn_trl import PPOConfig, PPOTrainer

    args = PPOConfig(**rollout_args(toy), **common_args(steps, seed))
    return train_with_gfn_signature(PPOTrainer, args, toy)


# ---------------------------------------------------------------------------------------------------------------------
# Exact evaluation, the same code for every method


@torch.no_grad()
def policy_log_probs(model: nn.Module, toy: dict) -> torch.Tensor:
    """(N,) exact log q(Z ⊤) of every latent under the constrained policy at temperature 1."""
    was = model.training
    model.eval()
    pad = toy["tokenizer"].pad_token_id
    log_q = exact_policy_log_probs(model, toy["prompt_ids"], toy["latents"], toy["constraints"], pad)
    model.train(was)
    return log_q


def distribution_metrics(log_p: torch.Tensor, log_q: torch.Tensor, n_samples: int) -> dict[str, float]:
    """TV, KL(p || q), H(q), max_Z q(Z) and E[#distinct among n_samples draws from q] / n_samples, all exact."""
    tv, kl = tv_and_kl(log_p, log_q)
    log_q = torch.log_softmax(log_q.double(), 0)
    q = log_q.exp()
    entropy = -(q * log_q.clamp_min(-1e300)).nan_to_num(0.0).sum().item()
    # P(Z never drawn in N draws) = (1 - q)^N, computed as exp(N log1p(-q)) to keep tiny q exact
    distinct = (1 - torch.exp(n_samples * torch.log1p(-q.clamp(max=1 - 1e-16)))).sum().item() / n_samples
    return {"tv": tv, "kl": kl, "entropy": entropy, "top_mass": q.max().item(), "distinct": distinct}


def run(
    steps: int = 400,
    methods: list[str] | None = None,
    reward: str = "suffix",
    seed: int = 0,
    n_samples: int = 256,
    verbose: bool = True,
) -> tuple[list[dict], str]:
    """Train every method in `methods` from the same start and measure it; returns (rows, Markdown table)."""
    methods = list(TRAINERS) if methods is None else methods
    unknown = [m for m in methods if m not in TRAINERS]
    if unknown:
        raise ValueError(f"Unknown methods {unknown}; registered: {sorted(TRAINERS)}.")
    reference = fresh_toy(reward, seed)
    log_p = reference["log_rewards"]
    start = policy_log_probs(reference["model"], reference)
    rows = [
        {"method": "posterior p (target)", **distribution_metrics(log_p, log_p, n_samples), "seconds": 0.0},
        {"method": "start (untuned LM)", **distribution_metrics(log_p, start, n_samples), "seconds": 0.0},
    ]
    for name in methods:
        toy = fresh_toy(reward, seed)
        t0 = time.perf_counter()
        model = TRAINERS[name](toy, steps, seed)
        seconds = time.perf_counter() - t0
        metrics = distribution_metrics(log_p, policy_log_probs(model, reference), n_samples)
        rows.append({"method": name, **metrics, "seconds": seconds})
        if verbose:
            m = metrics
            print(f"{name}: TV {m['tv']:.4f}  KL {m['kl']:.4f}  H {m['entropy']:.3f}  ({seconds:.0f} s)", flush=True)
    return rows, markdown_table(rows, steps, n_samples, reward)


def _fmt(x: float, digits: int = 3) -> str:
    return "inf" if math.isinf(x) else f"{max(x, 0.0):.{digits}f}"  # (no "-0.000" from rounding)


def markdown_table(rows: list[dict], steps: int, n_samples: int, reward: str) -> str:
    lines = [
        f"Exact-posterior toy ({reward} reward, 84 latents), {steps} steps x {SAMPLES_PER_STEP} latents, LoRA r=16:",
        "",
        f"| method | TV(p, q) ↓ | KL(p ‖ q) ↓ | H(q) (nats) | max q(Z) | distinct Z / {n_samples} samples | train s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        seconds = "—" if r["seconds"] == 0 else f"{r['seconds']:.1f}"
        lines.append(
            f"| {r['method']} | {_fmt(r['tv'])} | {_fmt(r['kl'], 4)} | {_fmt(r['entropy'])} | {_fmt(r['top_mass'])} "
            f"| {_fmt(r['distinct'])} | {seconds} |"
        )
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--methods", default=",".join(TRAINERS), help=f"comma-separated, from {sorted(TRAINERS)}")
    p.add_argument("--reward", choices=["suffix", "stop"], default="suffix")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--samples", type=int, default=256, help="N for the expected fraction of distinct latents")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    _, table = run(a.steps, [m for m in a.methods.split(",") if m], a.reward, a.seed, a.samples)
    print()
    print(table)


if __name__ == "__main__":
    main()

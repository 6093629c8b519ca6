"""Train GFlowNetTrainer on the exact-posterior toy and print TV and KL to the true posterior over steps.

    python benchmarks/exact_posterior.py [--reward suffix|stop] [--steps 400] [--loss subtb|tb|db]
                                         [--log_z batch|learned] [--tool]

The toy (gfn_trl.testing.exact_posterior_toy): a tiny GPT-2 with sharp random conditionals, prompt "x y x",
latents of 1-3 tokens over {a, b, c, d} (84 latents), reward log p(Z Y | X) (suffix "y x y") or log p(Z ⊤ | X).
"""

from __future__ import annotations

import argparse
import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from peft import LoraConfig  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from gfn_trl import GFlowNetConfig, GFlowNetTrainer  # noqa: E402
from gfn_trl.exact import tv_and_kl  # noqa: E402
from gfn_trl.testing import exact_posterior_toy, exact_target_and_policy  # noqa: E402


class _Track(TrainerCallback):
    def __init__(self, toy, every, verbose):
        self.toy, self.every, self.verbose, self.trainer, self.history = toy, every, verbose, None, []

    def _measure(self, step):
        log_r, log_q = exact_target_and_policy(self.trainer, self.toy)
        tv, kl = tv_and_kl(log_r, log_q)
        mass = log_q.exp().sum().item()
        self.history.append((step, tv, kl, mass))
        if self.verbose:
            print(f"step {step:4d}  TV {tv:.4f}  KL(p||q) {kl:.4f}  Σq {mass:.6f}", flush=True)

    def on_train_begin(self, args, state, control, **kw):
        self._measure(0)

    def on_step_end(self, args, state, control, **kw):
        if state.global_step % self.every == 0:
            self._measure(state.global_step)


def run(reward="suffix", steps=400, loss="subtb", seed=0, lr=2e-3, every=50, verbose=True, lora=True, log_z="batch",
        scheduler="linear", log_z_lr=1e-2, min_length=1, output_dir=None, tool=False):
    """Train on the toy; returns [(step, TV, KL, Σq)] and the trainer.  `tool`: the toy's tool appends a forced
    token after every "c" (gfn_trl.testing.toy_tool); the posterior is then over the latents it admits."""
    toy = exact_posterior_toy(reward, seed=seed, min_length=min_length, tool=tool)
    args = GFlowNetConfig(
        output_dir=output_dir or tempfile.mkdtemp(prefix="gfn_exact_"),
        max_steps=steps,
        learning_rate=lr,
        warmup_steps=10,
        lr_scheduler_type=scheduler,
        per_device_train_batch_size=1,
        num_generations=16,
        max_completion_length=toy["max_length"],
        min_completion_length=toy["min_length"],
        reward_temperature_start=1.0,
        reward_temperature_end=1.0,
        loss_type=loss,
        log_z=log_z,
        log_z_learning_rate=log_z_lr,
        logging_steps=max(1, steps // 10),
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=seed,
        disable_tqdm=True,
    )
    trainer = GFlowNetTrainer(
        toy["model"],
        args,
        train_dataset=toy["dataset"],
        processing_class=toy["tokenizer"],
        peft_config=LoraConfig(r=16, lora_alpha=32) if lora else None,
        vocab_mask=toy["vocab_mask"],
        tool=toy["tool"],
    )
    track = _Track(toy, every, verbose)
    track.trainer = trainer
    trainer.add_callback(track)
    trainer.train()
    if track.history[-1][0] != trainer.state.global_step:
        track._measure(trainer.state.global_step)
    return track.history, trainer


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reward", choices=["suffix", "stop"], default="suffix")
    p.add_argument("--loss", choices=["subtb", "tb", "db"], default="subtb")
    p.add_argument("--log_z", choices=["batch", "learned"], default="batch")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--scheduler", default="linear", help="LR schedule (the paper: constant_with_warmup)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min_length", type=int, default=1, help="minimum latent length (0..3)")
    p.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA")
    p.add_argument("--tool", action="store_true", help='a tool appends a forced token after every "c"')
    a = p.parse_args()
    history, _ = run(a.reward, a.steps, a.loss, a.seed, a.lr, lora=not a.full, log_z=a.log_z, scheduler=a.scheduler,
                     min_length=a.min_length, tool=a.tool)
    step, tv, kl, _ = history[-1]
    print(f"final: reward={a.reward} loss={a.loss} steps={step} TV={tv:.4f} KL={kl:.4f}")

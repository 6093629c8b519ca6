"""Train GFlowNetTrainer on the exact-posterior toy and print TV and KL to the true posterior over steps.

    python benchmarks/exact_posterior.py [--reward suffix|stop] [--steps 400] [--loss subtb|tb|db]
                                         [--log_z batch|learned] [--tool]
                                         [--reward_func tokens [--lm_weight 1] [--func_weight 1] [--prefixes]]

The toy (gfn_trl.testing.exact_posterior_toy): a tiny GPT-2 with sharp random conditionals, prompt "x y x",
latents of 1-3 tokens over {a, b, c, d} (84 latents), reward log p(Z Y | X) (suffix "y x y") or log p(Z ⊤ | X).

`--reward_func tokens` adds a programmatic reward function of the latent's tokens (`token_reward`, in TRL's
signature): the target is then the tilted posterior log R(Z) = α · log p_LM(Z [Y] | X) + w · r(Z) with
α = `--lm_weight` (0: no LM prior) and w = `--func_weight`.  Without `--prefixes` the function scores finished
latents only (use `--loss tb`); with it, it declares `scores_prefixes` and is called on every prefix (any loss).
"""

from __future__ import annotations

import argparse
import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from peft import LoraConfig  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from gfn_trl import GFlowNetTrainer  # noqa: E402
from gfn_trl.exact import tv_and_kl  # noqa: E402
from gfn_trl.testing import exact_posterior_toy, exact_target_and_policy  # noqa: E402


def token_reward(tokenizer):
    """A programmatic reward of the latent's tokens, in TRL's reward-function signature: r(Z) = 1.5 · #b - #d +
    [Z starts with a], from the token ids (not the text)."""
    a, b, d = tokenizer.convert_tokens_to_ids(["a", "b", "d"])

    def token_reward(prompts, completions, completion_ids, **kwargs):
        return [1.5 * ids.count(b) - ids.count(d) + float(ids[:1] == [a]) for ids in completion_ids]

    return token_reward


def tilted_target(trainer, toy, func=None, lm_weight=1.0, func_weight=1.0):
    """(N,) the exact unnormalised log-target α · log p_LM(Z [Y] | X) + w · r(Z) over the toy's latents (r called
    directly on each latent, not through the trainer), and (N,) the policy's exact log q(Z ⊤)."""
    if trainer.reward is None:  # no LM prior and no adapter: only q is needed
        from gfn_trl.evaluation.exact import exact_policy_log_probs

        tok = toy["tokenizer"]
        policy = trainer.accelerator.unwrap_model(trainer.model)
        log_q = exact_policy_log_probs(policy.eval(), tok(toy["dataset"][0]["prompt"])["input_ids"], toy["latents"],
                                       trainer.constraints, tok.pad_token_id)
        policy.train()
        log_lm = torch.zeros(len(toy["latents"]))
    else:
        log_lm, log_q = exact_target_and_policy(trainer, toy)
    if func is None:
        return log_lm, log_q
    r = torch.tensor(func(prompts=[None] * len(toy["latents"]), completions=[None] * len(toy["latents"]),
                          completion_ids=[list(z) for z in toy["latents"]]), dtype=torch.float64)
    return lm_weight * log_lm.double() + func_weight * r, log_q


class _Track(TrainerCallback):
    def __init__(self, toy, every, verbose, target=tilted_target):
        self.toy, self.every, self.verbose, self.trainer, self.history = toy, every, verbose, None, []
        self.target = target

    def _measure(self, step):
        log_r, log_q = self.target(self.trainer, self.toy)
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
        scheduler="linear", log_z_lr=1e-2, min_length=1, output_dir=None, tool=False, reward_func=None, lm_weight=1.0,
        func_weight=1.0, prefixes=False, trainer_cls=GFlowNetTrainer, rows=1, callbacks=(), **config):
    """Train on the toy; returns [(step, TV, KL, Σq)] and the trainer.  `tool`: the toy's tool appends a forced
    token after every "c" (gfn_trl.testing.toy_tool); the posterior is then over the latents it admits.
    `reward_func="tokens"`: add `token_reward` with weight `func_weight` to `lm_weight` times the LM reward (the
    tilted posterior), scored on every prefix with `prefixes`, else on finished latents only.
    `trainer_cls` (a GFlowNetTrainer subclass) is built with its own config class, `config` adding fields to it; the
    dataset holds the toy's prompt `rows` times (one epoch of `rows` steps: an asynchronous trainer plans ahead
    within an epoch); `callbacks` are added before training."""
    toy = exact_posterior_toy(reward, seed=seed, min_length=min_length, tool=tool)
    func = None
    if reward_func == "tokens":
        func = token_reward(toy["tokenizer"])
        func.scores_prefixes = prefixes
    elif reward_func is not None:
        raise ValueError(f"reward_func is None or 'tokens', got {reward_func!r}")
    args = trainer_cls._config_class(
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
        lm_reward_weight=lm_weight,
        reward_weights=None if func is None else [func_weight],
        **config,
    )
    trainer = trainer_cls(
        toy["model"],
        args,
        train_dataset=Dataset.from_dict({k: v * rows for k, v in toy["dataset"].to_dict().items()}),
        processing_class=toy["tokenizer"],
        peft_config=LoraConfig(r=16, lora_alpha=32) if lora else None,
        vocab_mask=toy["vocab_mask"],
        tool=toy["tool"],
        reward_funcs=func,
    )
    track = _Track(toy, every, verbose, lambda t, toy: tilted_target(t, toy, func, lm_weight, func_weight))
    track.trainer = trainer
    trainer.add_callback(track)
    for callback in callbacks:
        trainer.add_callback(callback)
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
    p.add_argument("--reward_func", choices=["tokens"], default=None,
                   help="add the programmatic reward token_reward (1.5 #b - #d + [starts with a]) to log R")
    p.add_argument("--lm_weight", type=float, default=1.0, help="alpha, the LM prior's weight (0: no prior)")
    p.add_argument("--func_weight", type=float, default=1.0, help="w, the reward function's weight")
    p.add_argument("--prefixes", action="store_true", help="the function declares scores_prefixes (every prefix)")
    p.add_argument("--every", type=int, default=50, help="measure TV every this many steps")
    a = p.parse_args()
    history, _ = run(a.reward, a.steps, a.loss, a.seed, a.lr, every=a.every, lora=not a.full, log_z=a.log_z,
                     scheduler=a.scheduler, min_length=a.min_length, tool=a.tool, reward_func=a.reward_func,
                     lm_weight=a.lm_weight, func_weight=a.func_weight, prefixes=a.prefixes)
    step, tv, kl, _ = history[-1]
    extra = f" reward_func={a.reward_func} ({'prefixes' if a.prefixes else 'terminal'}) lm_weight={a.lm_weight:g} " \
            f"func_weight={a.func_weight:g}" if a.reward_func else ""
    print(f"final: reward={a.reward} loss={a.loss}{extra} steps={step} TV={tv:.4f} KL={kl:.4f}")

"""PPOTrainer: the paper's reward-maximising baseline, on the same rollout and reward path as GFlowNetTrainer.

TRL 1.16 removed its PPOTrainer; this one is built on the same `RolloutTrainer` base as the GFlowNet trainer, so
both sample from the same constrained policy (`LatentConstraints`), score with the same frozen LM
(`LikelihoodReward`), read the same data contract and checkpoint the same way.  Only the objective differs.

One optimizer step, end to end (`_prepare_inputs` then `compute_loss`):

1. every `num_ppo_epochs` steps, fresh latents are sampled on-policy (counter-based seeds, KV cache) and scored:
   the episode's reward is the final-state log R(Z) / `reward_temperature` (the paper's comparison), plus a
   per-token penalty -β (log q - log q_ref) to the reference policy (the adapter-disabled base with PEFT, else a
   frozen copy of the initial model);
2. the rollout's log-probs, values (a linear head on the policy's detached hidden states) and the GAE advantages
   and returns are computed once, without gradients, and reused for `num_ppo_epochs` optimizer steps;
3. the loss is the clipped surrogate plus `vf_coef` times the clipped value loss (`gfn_trl.ppo_losses`).
"""

from __future__ import annotations

import copy
import textwrap

import torch

from ..ppo_losses import (
    action_log_probs,
    action_mask,
    adaptive_kl_coef,
    clipped_surrogate_loss,
    clipped_value_loss,
    gae_advantages,
    kl_penalised_rewards,
    masked_mean,
    masked_whiten,
)
from ..sampling import policy_log_probs
from .batch import PPOBatch
from .diagnostics import sequence_log_prob
from .heads import ValueHead
from .ppo_config import PPOConfig
from .rollout_trainer import RolloutTrainer, logger


class PPOTrainer(RolloutTrainer):
    """PPO on latents Z ~ q(Z | prompt) with reward log R(Z), the frozen LM's likelihood (a baseline to GFlowNets).

    Takes the same arguments as [`GFlowNetTrainer`] (model, args, train_dataset, eval_dataset, processing_class,
    peft_config, reward_model, vocab_mask, callbacks, optimizers, tool, compute_metrics, reward_funcs,
    reward_processing_classes) with a [`PPOConfig`]; with `reward_funcs` the reward is the GFlowNet's tilted
    log R(Z) = α · log p_LM + Σ_i w_i r_i(Z), over `reward_temperature`.
    Besides its losses it logs `entropy`, `completions/clipped_ratio` and `completions/distinct_per_prompt` once per
    rollout sampled at temperature 1 (the default `sampling_temperature`).
    """

    _tag_names = ["trl", "ppo", "gfn_trl"]
    _name = "PPO"
    _config_class = PPOConfig
    _paper = {
        "title": "Proximal Policy Optimization Algorithms",
        "id": "1707.06347",
        # docstyle-ignore
        "citation": textwrap.dedent("""\
            @article{schulman2017proximal,
                title   = {{Proximal Policy Optimization Algorithms}},
                author  = {John Schulman and Filip Wolski and Prafulla Dhariwal and Alec Radford and Oleg Klimov},
                year    = 2017,
                journal = {arXiv preprint arXiv:1707.06347},
            }"""),
    }

    def __init__(self, model, args: PPOConfig | None = None, train_dataset=None, eval_dataset=None,
                 processing_class=None, peft_config=None, reward_model=None, vocab_mask=None, callbacks=None,
                 optimizers=(None, None), tool=None, compute_metrics=None, reward_funcs=None,
                 reward_processing_classes=None):
        super().__init__(model, args, train_dataset, eval_dataset, processing_class, peft_config, reward_model,
                         vocab_mask, callbacks, optimizers, tool, compute_metrics=compute_metrics,
                         reward_funcs=reward_funcs, reward_processing_classes=reward_processing_classes)
        hidden = self.model.config.get_text_config().hidden_size
        self.value_head = self.register_head("value", ValueHead(hidden), self.args.value_learning_rate)
        self.kl_coef = self.args.kl_coef
        # Reference policy of the KL penalty: the adapter-disabled base with PEFT, else the initial weights
        self.ref_model = None
        if not self.is_peft:
            self.ref_model = self._frozen_initial
            if self.ref_model is None:  # a separate reward LM was given: keep a frozen copy of the initial policy
                self.ref_model = copy.deepcopy(self.accelerator.unwrap_model(self.model)).eval().requires_grad_(False)
        self._rollouts: dict[int, PPOBatch] = {}  # micro-batch index -> the rollout reused for num_ppo_epochs steps

    # ------------------------------------------------------------------ rollout
    def _policy_pass(self, model, inputs: PPOBatch, return_hidden: bool):
        return policy_log_probs(
            model, inputs.prompt_ids, inputs.prompt_mask, inputs.z, inputs.lengths, self.constraints, return_hidden,
        )

    @torch.no_grad()
    def _reference_log_probs(self, inputs: PPOBatch) -> torch.Tensor:
        if self.ref_model is not None:
            model, ctx = self.ref_model, torch.no_grad()
        else:
            model = self.accelerator.unwrap_model(self.model)
            ctx = model.disable_adapter()
        with ctx, self.accelerator.autocast():
            log_pf, log_pterm = self._policy_pass(model, inputs, False)
        return action_log_probs(log_pf.float(), log_pterm.float(), inputs.lengths)

    @torch.no_grad()
    def _rollout(self, rows: list[dict], step: int, evaluation: bool = False) -> PPOBatch:
        """Sample, score and evaluate a rollout.  `evaluation`: on-policy at temperature 1 with the evaluation's
        seeds (`eval_seeds`), the adaptive KL coefficient left alone, the latents not kept for the training table."""
        a = self.args
        temperature = 1.0 if evaluation else a.sampling_temperature
        expanded, group = self.expand(rows)
        prompt_ids, prompt_mask = self.prompt_batch(expanded)
        z, lengths = self.sample(expanded, prompt_ids, prompt_mask, temperature, step=step,
                                 seeds=self.eval_seeds(expanded) if evaluation else None)
        final = self.score_latents(expanded, z, lengths, final_only=True).float()  # untempered log R(Z⊤) only
        log_r = torch.zeros(z.shape[0], z.shape[1] + 1, device=final.device).scatter(
            1, lengths[:, None], final[:, None]
        )
        inputs = PPOBatch(prompt_ids=prompt_ids, prompt_mask=prompt_mask, z=z, lengths=lengths, rows=expanded,
                          group=group, log_r=log_r, step=step, temperature=temperature,
                          behaviour="on_policy" if temperature == 1.0 else "tempered")
        self._check_finite(log_r, inputs)

        unwrapped = self.accelerator.unwrap_model(self.model)
        with self.accelerator.autocast():
            log_pf, log_pterm, hidden = self._policy_pass(unwrapped, inputs, True)
        old = action_log_probs(log_pf.float(), log_pterm.float(), lengths)
        # entropy (at temperature 1), clipped ratio, distinct latents: once per rollout
        self.record_generation_metrics(inputs, sequence_log_prob(log_pf.float(), log_pterm.float(), lengths))
        if not evaluation:
            self.record_completions(inputs)  # (an evaluation's are kept by `prediction_step`)
        ref = self._reference_log_probs(inputs)
        rewards, kl = kl_penalised_rewards(final / a.reward_temperature, old, ref, lengths, self.kl_coef)
        mask = action_mask(lengths, old.shape[1])
        if not bool(self.value_head.initialized):  # start the critic at the mean return, not at 0
            start = self.accelerator.reduce((final / a.reward_temperature).mean(), "mean")
            self.value_head.linear.bias.data.fill_(float(start))
            self.value_head.initialized.fill_(True)
        values = self.value_head(hidden.float()) * mask
        advantages, returns = gae_advantages(rewards, values, mask, a.gamma, a.lam)
        if a.whiten_advantages:
            advantages = masked_whiten(advantages, mask)

        mean_kl = float(self.accelerator.reduce(kl.mean(), "mean"))
        metrics = {
            "log_reward/mean": final.mean(),
            "log_reward/max": final.max(),
            "completion_length/mean": lengths.float().mean(),
            "kl": torch.tensor(mean_kl),
            "kl_coef": torch.tensor(self.kl_coef),
        }
        if a.adaptive_kl and not evaluation:
            n = len(expanded) * self.accelerator.num_processes
            self.kl_coef = adaptive_kl_coef(self.kl_coef, mean_kl, a.kl_target, a.kl_horizon, n)
        inputs.old_log_probs, inputs.values, inputs.advantages, inputs.returns = old, values, advantages, returns
        inputs.mask, inputs.metrics = mask, metrics
        return inputs

    def eval_inputs(self, rows: list[dict]) -> PPOBatch:
        """An evaluation rollout (`_rollout(evaluation=True)`): its loss is the clipped objective at the sampling
        policy (ratio 1), i.e. minus the mean advantage plus `vf_coef` times the critic's error."""
        return self._rollout(rows, self.state.global_step, evaluation=True)

    def _prepare_inputs(self, rows: list[dict]) -> PPOBatch:
        self._next_micro_batch()
        epochs = self.args.num_ppo_epochs
        step = self.state.global_step - self.state.global_step % epochs  # the step that sampled this rollout
        cached = self._rollouts.get(self._micro_index)
        if cached is None or cached.step != step:
            cached = self._rollouts[self._micro_index] = self._rollout(rows, step)
        return cached

    # ------------------------------------------------------------------ loss
    def compute_loss(self, model, inputs: PPOBatch, return_outputs=False, num_items_in_batch=None):
        if return_outputs:
            raise ValueError("PPOTrainer does not return model outputs from compute_loss.")
        a = self.args
        log_pf, log_pterm, hidden = self._policy_pass(model, inputs, True)
        log_q = action_log_probs(log_pf.float(), log_pterm.float(), inputs.lengths)
        mask = inputs.mask
        pg_loss, clipfrac = clipped_surrogate_loss(
            log_q, inputs.old_log_probs, inputs.advantages, mask, a.cliprange
        )
        values = self.value_head(hidden.detach().float())
        vf_loss = clipped_value_loss(values, inputs.values, inputs.returns, mask, a.cliprange_value)
        loss = pg_loss + a.vf_coef * vf_loss
        self.flag_nonfinite("log q(a | s), the policy's log-probability of an action", log_q, mask.bool())
        self.flag_nonfinite("the rollout's advantages", inputs.advantages, mask.bool())
        self.flag_nonfinite("the value head's predictions", values, mask.bool())
        self.flag_nonfinite("the clipped surrogate (policy) loss", pg_loss)
        self.flag_nonfinite("the value loss", vf_loss)
        self.flag_nonfinite("the loss", loss)
        with torch.no_grad():
            self.record_metrics({
                **inputs.metrics,  # of the rollout being reused
                "ppo/policy_loss": pg_loss,
                "ppo/value_loss": vf_loss,
                "ppo/clipfrac": clipfrac,
                "ppo/approx_kl": masked_mean(inputs.old_log_probs - log_q, mask),
                "ppo/returns_mean": masked_mean(inputs.returns, mask),
            })
        return loss

    # ------------------------------------------------------------------ checkpoints
    def extra_state_dict(self) -> dict:
        """The KL coefficient and the rollouts still being reused, so that a resumed run continues exactly."""
        # saved as plain dicts (a checkpoint is loaded with weights_only=True)
        return {"kl_coef": self.kl_coef, "rollouts": {i: r.to_dict() for i, r in self._rollouts.items()}}

    def load_extra_state_dict(self, state: dict) -> None:
        """The rollouts being reused and, with `adaptive_kl`, the controller's β.  A fixed β is a setting: the
        current config's `kl_coef` applies (a change is logged)."""
        if self.args.adaptive_kl:
            self.kl_coef = state["kl_coef"]
        elif state["kl_coef"] != self.args.kl_coef:
            logger.warning(f"Resuming with kl_coef {self.args.kl_coef} (the checkpoint's was {state['kl_coef']}): "
                           "the new value applies.")
        device = self.accelerator.device
        self._rollouts = {
            i: PPOBatch(**{k: v.to(device) if torch.is_tensor(v) else v for k, v in r.items()})
            for i, r in state["rollouts"].items()
        }

"""GFlowNetTrainer: GFlowNet fine-tuning of a causal LM on TRL's trainer base.

One batch, end to end (`_prepare_inputs` then `compute_loss`):

1. the dataloader yields `per_device_train_batch_size` prompts; each is repeated `num_generations` times;
2. the behaviour source is drawn for the micro-batch: on-policy, tempered, or replay;
3. fresh latents are sampled without gradients (KV cache) from the constrained policy;
4. the frozen reward LM scores log R(s_k ⊤) for every prefix k (one pass; packed for a fixed suffix) and the
   untempered values go into the replay buffer;
5. one teacher-forced pass of the policy, with gradients, gives log q(z_k|·) and log q(⊤|·) at temperature 1
   under the same constraints;
6. the loss (`loss_type`, an objective of `gfn_trl.losses.OBJECTIVES`: modified SubTB by default) is computed on
   log R / T_R, with T_R on a linear schedule in optimizer steps.
"""

from __future__ import annotations

import dataclasses
import random
import textwrap

import torch
from accelerate.utils import gather_object

from ..losses import batch_log_z, get_objective, group_mean, penalize_short_states, trajectory_log_ratio
from ..replay import ReplayBuffer
from ..rewards.functions import check_objective, reads_prefix_rewards
from ..sampling import policy_log_probs, right_pad
from . import diagnostics
from .batch import RolloutBatch
from .gflownet_config import GFlowNetConfig
from .heads import LogZHead
from .rollout_trainer import RolloutTrainer, logger


class GFlowNetTrainer(RolloutTrainer):
    """Trains a policy q(Z | prompt) so that q(Z) ∝ R(Z), R being a frozen LM's likelihood of the latent.

    Takes the arguments of [`RolloutTrainer`] (model, args, train_dataset, eval_dataset, processing_class,
    peft_config, reward_model, vocab_mask, callbacks, optimizers, tool, compute_metrics, reward_funcs,
    reward_processing_classes) with a [`GFlowNetConfig`].  With `reward_funcs` the target is the tilted posterior
    q(Z) ∝ p_LM(Z [Y] | X)^α · exp(Σ_i w_i r_i(Z)) (all over T_R); a function that declares `scores_prefixes` is
    scored on every prefix, the others only on finished latents, which needs `loss_type="tb"` (README, "Reward
    functions").

    Besides the loss it logs `entropy`, `completions/clipped_ratio`, `completions/distinct_per_prompt` (on-policy
    batches), `subtb_residual/len_<bin>`, `loss/<behaviour>` and the replay buffer's `fill`, `insert_rate` and
    `duplicate_rate` (`gfn_trl.trainers.diagnostics`; the README says what a healthy run looks like in them).
    """

    _tag_names = ["trl", "gflownet", "gfn_trl"]
    _name = "GFlowNet"
    _paper = {
        "title": "Amortizing Intractable Inference in Large Language Models",
        "id": "2310.04363",
        # docstyle-ignore
        "citation": textwrap.dedent("""\
            @inproceedings{hu2024amortizing,
                title     = {{Amortizing Intractable Inference in Large Language Models}},
                author    = {Edward J. Hu and Moksh Jain and Eric Elmoznino and Younesse Kaddar and Guillaume Lajoie and Yoshua Bengio and Nikolay Malkin},
                year      = 2024,
                booktitle = {The Twelfth International Conference on Learning Representations, {ICLR} 2024},
            }"""),  # noqa: E501 (the BibTeX author line)
    }
    _config_class = GFlowNetConfig

    def __init__(self, model, args: GFlowNetConfig | None = None, train_dataset=None, eval_dataset=None,
                 processing_class=None, peft_config=None, reward_model=None, vocab_mask=None, callbacks=None,
                 optimizers=(None, None), tool=None, compute_metrics=None, reward_funcs=None,
                 reward_processing_classes=None):
        super().__init__(model, args, train_dataset, eval_dataset, processing_class, peft_config, reward_model,
                         vocab_mask, callbacks, optimizers, tool, compute_metrics=compute_metrics,
                         reward_funcs=reward_funcs, reward_processing_classes=reward_processing_classes)
        args = self.args
        # State carried across steps (saved in checkpoints)
        self.replay_buffer = ReplayBuffer(args.replay_buffer_size, args.replay_prioritized, args.replay_sim_tolerance)
        self._replay_stats_seen = dict(self.replay_buffer.stats)  # the counters at the last logged step
        self.objective = get_objective(args.loss_type)  # the loss and what it needs (`gfn_trl.losses.OBJECTIVES`)
        self.needs_log_z = self.objective.needs_log_z(args.loss_min_length())
        # reward functions: a terminal-only one needs an objective that reads the finished latent's reward only
        check_objective(self.reward_functions, self.objective)
        if reads_prefix_rewards(self.objective):
            # the first state the loss reads the functions' log R at: under "penalize" with a log-reward of its own
            # for the short states, the first state not given that value (no function need score the empty latent)
            self._score_prefixes_from = args.loss_min_length()
            if args.min_length_mode == "penalize" and args.min_length_log_reward is not None:
                self._score_prefixes_from = args.min_completion_length
        self.log_z_head = None
        if self.needs_log_z and args.log_z == "learned":
            hidden = self.model.config.get_text_config().hidden_size
            self.log_z_head = self.register_head("log_z", LogZHead(hidden), args.log_z_learning_rate)

    # ------------------------------------------------------------------ rollout and reward
    # The replay buffer is shared: every rank adds the latents sampled on every rank (gathered), so each holds the
    # same buffer as a single process would, and the replay-or-explore decision is taken for the global batch.
    def _everywhere(self, flag: bool) -> bool:
        """True iff `flag` holds on every rank."""
        if self.accelerator.num_processes == 1:
            return flag
        t = torch.tensor([float(flag)], device=self.accelerator.device)
        return bool(self.accelerator.gather(t).min() > 0)

    def _draw_behaviour(self) -> tuple[str, float]:
        a = self.args
        rng = random.Random(self._key("behaviour"))
        u = rng.random() * (a.on_policy_prob + a.tempered_prob + a.replay_prob)
        if u < a.on_policy_prob:
            return "on_policy", 1.0
        if u < a.on_policy_prob + a.tempered_prob:
            return "tempered", rng.uniform(a.sampling_temperature_min, a.sampling_temperature_max)
        return "replay", rng.uniform(a.sampling_temperature_min, a.sampling_temperature_max)  # fallback temperature

    @torch.no_grad()
    def _prepare_inputs(self, rows: list[dict]) -> RolloutBatch:
        device = self.accelerator.device
        k = self.args.num_generations
        stop = self.constraints.stop_token_id
        self._next_micro_batch()
        mode, temperature = self._draw_behaviour()
        expanded, group = self.expand(rows)
        prompt_ids, prompt_mask = self.prompt_batch(expanded)

        replayed = None
        if mode == "replay":
            replayed = [
                self.replay_buffer.sample(r["gfn_key"], k, random.Random(self._key(r["gfn_key"]))) for r in rows
            ]
            if not self._everywhere(all(replayed)):  # a prompt with an empty buffer: explore instead, as the paper does
                mode, replayed = "tempered", None
            else:
                temperature = 1.0
        if replayed is not None:
            entries = [e for per_prompt in replayed for e in per_prompt]
            z, lengths = right_pad([list(e.tokens) for e in entries], stop, device=device)
            log_r = torch.nn.utils.rnn.pad_sequence(
                [torch.tensor(e.log_rewards) for e in entries], batch_first=True
            ).to(device)
        else:
            z, lengths = self.sample(expanded, prompt_ids, prompt_mask, temperature)
            log_r = self.score_latents(expanded, z, lengths)
            fresh = [
                (r["gfn_key"], z[b, : int(lengths[b])].tolist(), log_r[b, : int(lengths[b]) + 1].tolist())
                for b, r in enumerate(expanded)
            ]
            if self.accelerator.num_processes > 1:
                fresh = gather_object(fresh)  # one shared buffer: every rank holds what any rank sampled
            for key, tokens, log_rewards in fresh:
                self.replay_buffer.add(key, tokens, log_rewards)
        return RolloutBatch(prompt_ids=prompt_ids, prompt_mask=prompt_mask, z=z, lengths=lengths,
                            log_r=log_r.float(),  # untempered
                            group=group, rows=expanded, behaviour=mode, temperature=temperature)

    # ------------------------------------------------------------------ loss
    def loss_constraints(self):
        """The policy's rules in the loss: the sampler's (`self.constraints`) under `min_length_mode="ban_stop"`;
        under `"penalize"` the same without the minimum length (the authors keep the unconstrained stop probability
        below it; the forced stop at the maximum, the vocabulary mask and a tool's forced tokens stay)."""
        if self.args.min_length_mode == "penalize" and self.constraints.min_length:
            return dataclasses.replace(self.constraints, min_length=0)
        return self.constraints

    def compute_loss(self, model, inputs: RolloutBatch, return_outputs=False, num_items_in_batch=None):
        if return_outputs:
            raise ValueError("GFlowNetTrainer does not return model outputs from compute_loss.")
        args = self.args
        want_hidden = self.log_z_head is not None
        out = policy_log_probs(
            model, inputs.prompt_ids, inputs.prompt_mask, inputs.z, inputs.lengths, self.loss_constraints(),
            want_hidden,
        )
        log_pf, log_pterm = out[0], out[1]
        t_r = args.reward_temperature(self.state.global_step)
        self._check_finite(inputs.log_r, inputs)
        log_r = inputs.log_r  # (B, S) untempered
        if args.min_length_mode == "penalize":  # the authors' log-reward below the minimum length (-99)
            log_r = penalize_short_states(log_r, args.min_completion_length, args.min_length_log_reward)
        log_r = log_r / t_r  # (B, S) tempered
        lengths, group = inputs.lengths, inputs.group
        min_length = args.loss_min_length()  # 0 under "penalize": every state of the loss's policy may stop
        # The states where the loss's policy may stop (not below min_length, not while a tool is writing)
        terminable = log_pterm.detach() > float("-inf")

        log_z = None
        if self.needs_log_z:
            def estimate():  # the per-prompt batch estimate, on the loss's own windows
                return batch_log_z(log_pf, log_pterm, log_r, lengths, group, min_length,
                                   self.objective.log_z_windows, args.subtb_lambda, terminable)

            if self.log_z_head is None:
                log_z = estimate()
            else:
                if not bool(self.log_z_head.initialized):  # start from the data, not from 0
                    self.log_z_head.linear.bias.data.fill_(float(self.accelerator.reduce(estimate().mean(), "mean")))
                    self.log_z_head.initialized.fill_(True)
                log_z = self.log_z_head(out[2][:, 0].detach().float())  # (B,): at s_0

        self._flag_nonfinite_terms(inputs, log_pf, log_pterm, log_r, log_z, t_r)
        loss = self.objective.loss(log_pf, log_pterm, log_r, lengths, log_z=log_z, min_length=min_length,
                                   subtb_lambda=args.subtb_lambda, terminable=terminable)

        self.flag_nonfinite("the loss", loss, detail=f" (reward temperature T_R = {t_r:g}; log R / T_R spans "
                            f"[{float(log_r.min()):.3g}, {float(log_r.max()):.3g}])")
        self._record_metrics(inputs, log_pf, log_pterm, log_r, log_z, t_r, loss)
        return loss

    @torch.no_grad()
    def _flag_nonfinite_terms(self, inputs, log_pf, log_pterm, log_r, log_z, t_r) -> None:
        """The loss's inputs where they are used: log q of each latent token, log q(stop) (-inf where the stop is
        banned), the tempered log-reward and log Z."""
        lengths = inputs.lengths
        S = log_pterm.shape[1]
        states = torch.arange(S, device=lengths.device)[None, :] <= lengths[:, None]  # s_0 .. s_n
        tokens = torch.arange(log_pf.shape[1], device=lengths.device)[None, :] < lengths[:, None]  # z_1 .. z_n
        self.flag_nonfinite("log q(z_k | s_k-1), the policy's log-probability of a latent token", log_pf, tokens)
        self.flag_nonfinite("log q(stop | s_k), the policy's stop log-probability", log_pterm, states,
                            allow_neg_inf=True)
        self.flag_nonfinite(f"log R / T_R, the tempered log-reward (T_R = {t_r:g})", log_r,
                            states & (torch.arange(S, device=lengths.device) >= self.args.loss_min_length()))
        if log_z is not None:
            self.flag_nonfinite("log Z", log_z)

    @torch.no_grad()
    def _record_metrics(self, inputs, log_pf, log_pterm, log_r, log_z, t_r, loss=None) -> None:
        """The step's metrics and diagnostics (`gfn_trl.trainers.diagnostics`; what they mean in a healthy run: the
        README's "What a healthy run looks like").  `log_pf`, `log_pterm`: the loss's policy; `log_r` tempered."""
        lengths, group = inputs.lengths, inputs.group
        training = self._mode == "train"
        final = inputs.log_r.gather(1, lengths[:, None]).squeeze(1)  # untempered log R(Z⊤)
        ratio = trajectory_log_ratio(log_pf.detach(), log_pterm.detach(), log_r, lengths)  # log R/T_R - log q
        centred = ratio - group_mean(ratio, group)
        values = {
            "log_reward/mean": final.mean(),
            "log_reward/max": final.max(),
            "completion_length/mean": lengths.float().mean(),
            "log_ratio/within_prompt_var": centred.pow(2).mean(),  # 0 when q ∝ R exactly
            "reward_temperature": torch.tensor(t_r),
        }
        if training:
            values.update(self._replay_metrics(inputs))
            if loss is not None:  # the loss by behaviour: logged only when that behaviour occurred in the window
                values[f"loss/{inputs.behaviour}"] = loss.detach()
        if log_z is not None:
            values["log_z/mean"] = log_z.detach().mean()
        funcs = self.reward_functions
        if funcs is None or all(funcs.scores_prefixes):  # (a terminal-only function leaves the prefixes' log R
            values.update(self._residual_metrics(log_pf, log_pterm, log_r, lengths, log_z))  # without its term)
        self.record_metrics(values)
        # entropy, clipped ratio, distinct latents: of the policy that was sampled (with the stop banned below the
        # minimum length even where the loss keeps it, `min_length_mode="penalize"`)
        sampled_pf, sampled_pterm = log_pf.detach(), log_pterm.detach()
        if self.loss_constraints().min_length < self.constraints.min_length:
            sampled_pf, sampled_pterm = diagnostics.stop_banned_below(sampled_pf, sampled_pterm,
                                                                      self.constraints.min_length)
        self.record_generation_metrics(inputs, diagnostics.sequence_log_prob(sampled_pf, sampled_pterm, lengths))
        if training:
            self.record_completions(inputs)

    def _replay_metrics(self, inputs: RolloutBatch) -> dict[str, torch.Tensor]:
        """The behaviour drawn, the replay buffer's size and fill, and the rates of the latents offered to it since
        the last call (the same on every rank: the buffer is shared)."""
        buf = self.replay_buffer
        values = {
            "sampling_temperature": torch.tensor(inputs.temperature),
            "behaviour/replay": torch.tensor(float(inputs.behaviour == "replay")),
            "behaviour/tempered": torch.tensor(float(inputs.behaviour == "tempered")),
            "replay_buffer/size": torch.tensor(float(len(buf))),
            "replay_buffer/fill": torch.tensor(buf.fill()),
        }
        seen, now = self._replay_stats_seen, dict(buf.stats)
        offered = now["offered"] - seen["offered"]
        if offered > 0:  # (none for a replayed batch)
            values["replay_buffer/insert_rate"] = torch.tensor((now["inserted"] - seen["inserted"]) / offered)
            values["replay_buffer/duplicate_rate"] = torch.tensor((now["duplicates"] - seen["duplicates"]) / offered)
        self._replay_stats_seen = now
        return values

    def _residual_metrics(self, log_pf, log_pterm, log_r, lengths, log_z) -> dict[str, torch.Tensor]:
        """`subtb_residual/len_<bin>`: the mean squared SubTB residual of the loss's windows by window length
        (`diagnostics.window_bins`), over every rank's windows; a bin without windows in this batch is left out."""
        bins = diagnostics.window_bins(self.args.max_completion_length)
        sums, counts = diagnostics.subtb_residual_sums(
            log_pf.detach(), log_pterm.detach(), log_r, lengths, bins, self.loss_constraints().min_length,
            None if log_z is None else log_z.detach(), log_pterm.detach() > float("-inf"),
        )
        both = torch.cat([sums, counts]).float().to(self.accelerator.device)
        if self.accelerator.num_processes > 1:
            both = self.accelerator.reduce(both, reduction="sum")
        sums, counts = both[: len(bins)], both[len(bins):]
        return {f"subtb_residual/len_{name}": sums[k] / counts[k] for k, (_, _, name) in enumerate(bins)
                if counts[k] > 0}

    # ------------------------------------------------------------------ replay seeding
    @torch.no_grad()
    def seed_replay_buffer(self, latents, chunk: int = 16) -> int:
        """Put known latents (e.g. gold ones) into the replay buffer with their untempered per-prefix rewards, as
        the paper does for infilling (gold sentence 4) and arithmetic (gold rationales).

        `latents[i]` is a latent (token ids, no stop) for row i of the training set, or None to skip the row.
        Latents the constrained policy cannot write (length, vocabulary, a tool's outputs:
        `LatentConstraints.admits`) are skipped.  Returns how many entries were added."""
        latents = list(latents)
        if len(latents) != len(self.train_dataset):
            raise ValueError(
                f"seed_replay_buffer got {len(latents)} latents for a training set of {len(self.train_dataset)} rows: "
                "give one per row, in the dataset's order (None for a row without one)."
            )
        keep = [(row, list(ids)) for row, ids in zip(self.train_dataset, latents)
                if ids is not None and self.constraints.admits(list(ids))]
        added = 0
        for start in range(0, len(keep), chunk):
            rows, ids = zip(*keep[start : start + chunk])
            z, lengths = right_pad(list(ids), self.constraints.stop_token_id, device=self.accelerator.device)
            log_r = self.score_latents(list(rows), z, lengths, log_metrics=False)
            added += sum(self.replay_buffer.add(row["gfn_key"], toks, log_r[b, : len(toks) + 1].tolist())
                         for b, (row, toks) in enumerate(zip(rows, ids)))
        self._replay_stats_seen = dict(self.replay_buffer.stats)  # seeding is not the training's replay traffic
        return added

    # ------------------------------------------------------------------ checkpoints
    def extra_state_dict(self) -> dict:
        """The replay buffer (the log Z head is saved with the other heads)."""
        return {"replay_buffer": self.replay_buffer.state_dict()}

    def load_extra_state_dict(self, state: dict) -> None:
        """The saved buffer, under the current config's replay settings (a changed size, prioritisation or
        tolerance applies: the buffer is rebuilt from the saved entries, and the change is logged)."""
        self.replay_buffer.load_state_dict(state["replay_buffer"])
        self._replay_stats_seen = dict(self.replay_buffer.stats)
        a = self.args
        changes = self.replay_buffer.reconfigure(a.replay_buffer_size, a.replay_prioritized, a.replay_sim_tolerance)
        if changes:
            logger.warning(f"Resuming with changed replay settings ({'; '.join(changes)}): the new values apply.")

    def fingerprint_extra(self) -> dict:
        a = self.args
        # the authors' construction below the minimum length trains another loss ("ban_stop" checkpoints keep the key
        # set they always had)
        mode = {}
        if a.loss_min_length() != a.min_completion_length:
            mode = {"min_length_mode": a.min_length_mode, "min_length_log_reward": a.min_length_log_reward}
        return {"loss": a.loss_type, "log_z": a.log_z if self.needs_log_z else "unused", **mode}

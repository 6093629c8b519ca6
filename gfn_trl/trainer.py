"""GFlowNetTrainer: GFlowNet fine-tuning of a causal LM on TRL's trainer base.

One batch, end to end (`_prepare_inputs` then `compute_loss`):

1. the dataloader yields `per_device_train_batch_size` prompts; each is repeated `num_generations` times;
2. the behaviour source is drawn for the micro-batch: on-policy, tempered, or replay;
3. fresh latents are sampled without gradients (KV cache) from the constrained policy;
4. the frozen reward LM scores log R(s_k ⊤) for every prefix k (one pass; packed for a fixed suffix) and the
   untempered values go into the replay buffer;
5. one teacher-forced pass of the policy, with gradients, gives log q(z_k|·) and log q(⊤|·) at temperature 1
   under the same constraints;
6. the loss (modified SubTB by default) is computed on log R / T_R, with T_R on a linear schedule in optimizer steps.
"""

from __future__ import annotations

import copy
import os
import random
import zlib
import textwrap
from collections import defaultdict
from pathlib import Path
from typing import Callable

import torch
from datasets import Dataset
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl.trainer.base_trainer import _BaseTrainer

from .checkpoints import is_complete_checkpoint, last_complete_checkpoint
from .config import GFlowNetConfig
from .data import tokenize_dataset
from .losses import batch_log_z, group_mean, modified_db_loss, modified_subtb_loss, tb_loss, trajectory_log_ratio
from .models import (
    check_lora_targets,
    load_causal_lm,
    load_quantized_reward_model,
    load_tokenizer,
    lora_target_modules,
)
from .replay import ReplayBuffer
from .rewards import LikelihoodReward
from .sampling import LatentConstraints, left_pad, policy_log_probs, right_pad, sample_latents

try:
    from peft import PeftConfig, PeftModel, get_peft_model
except ImportError:  # peft is a dependency, but keep the import error readable
    PeftConfig = PeftModel = get_peft_model = None


def _identity(rows):
    return rows


class LogZHead(nn.Module):
    """Prompt-conditioned log Z: a linear map of the (normalised, detached) hidden state at the last prompt token.

    The features are layer-normalised and scaled by 1/sqrt(H) so that one Adam step moves log Z by about the
    learning rate whatever the width; the bias starts at the first batch's per-prompt estimate (`initialized`).
    """

    def __init__(self, hidden_size: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size, elementwise_affine=False)
        self.linear = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        self.register_buffer("initialized", torch.tensor(False))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # (B, H) -> (B,)
        return self.linear(self.norm(hidden) / hidden.shape[-1] ** 0.5).squeeze(-1)


class GFlowNetTrainer(_BaseTrainer):
    """Trains a policy q(Z | prompt) so that q(Z) ∝ R(Z), R being a frozen LM's likelihood of the latent.

    Args:
        model (`str` or `PreTrainedModel` or `PeftModel`): the policy's starting point.  A string is a hub id, a local
            directory or a `.gguf` file.
        args (`GFlowNetConfig`, *optional*): the settings.
        train_dataset (`datasets.Dataset`): rows with a `prompt` column (the text the policy conditions on), and
            optionally `reward_prompt` (the text the reward LM conditions on; default `prompt`) and `suffix`
            (a fixed Y scored after the latent: log R = log p(Z Y | reward_prompt); without it the reward is
            log p(Z ⊤ | reward_prompt) with ⊤ the stop token).
        processing_class (`PreTrainedTokenizerBase`, *optional*): the tokenizer (loaded from `model` by default).
        peft_config (`peft.PeftConfig`, *optional*): LoRA settings; target modules are found automatically when unset.
        reward_model (`PreTrainedModel`, *optional*): a separate frozen reward LM sharing the tokenizer.  By default
            the reward is the policy's base with the adapter disabled (PEFT), or a frozen copy of the initial model.
        vocab_mask (`torch.Tensor` or callable, *optional*): (V,) bool mask of the tokens a latent may use, or a
            function tokenizer -> mask.  Applied identically when sampling and in the loss.
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
            }"""),
    }
    # `compute_loss` returns a per-micro-batch mean; the HF Trainer divides it by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        model: str | PreTrainedModel,
        args: GFlowNetConfig | None = None,
        train_dataset: Dataset | None = None,
        eval_dataset: Dataset | None = None,
        processing_class: PreTrainedTokenizerBase | None = None,
        peft_config: "PeftConfig | None" = None,
        reward_model: PreTrainedModel | None = None,
        vocab_mask: torch.Tensor | Callable | None = None,
        callbacks=None,
        optimizers=(None, None),
    ):
        # Args
        if args is None:
            name = model if isinstance(model, str) else model.config._name_or_path
            args = GFlowNetConfig(f"{str(name).split('/')[-1] or 'model'}-GFlowNet")
        if train_dataset is None:
            raise ValueError("GFlowNetTrainer needs a train_dataset with a 'prompt' column.")

        # Model
        init_kwargs = dict(args.model_init_kwargs or {})
        if isinstance(model, str):
            name_or_path = model
            model = load_causal_lm(name_or_path, **init_kwargs)
        else:
            name_or_path = model.config._name_or_path

        # Processing class
        if processing_class is None:
            processing_class = load_tokenizer(name_or_path, init_kwargs.get("gguf_file"))
        tokenizer = processing_class
        if tokenizer.pad_token_id is None:
            if tokenizer.eos_token_id is None:
                raise ValueError(
                    "The tokenizer has neither a pad token nor an EOS token. Set one, e.g. "
                    "tokenizer.add_special_tokens({'pad_token': '<pad>'}) and resize the model's embeddings."
                )
            tokenizer.pad_token = tokenizer.eos_token  # padding is always masked out, so any id will do

        # Stop token
        if args.stop_token is None:
            if tokenizer.eos_token_id is None:
                raise ValueError("The tokenizer has no EOS token: set `stop_token` to the token that ends a latent.")
            stop_id = tokenizer.eos_token_id
        else:
            ids = tokenizer.encode(args.stop_token, add_special_tokens=False)
            if len(ids) != 1:
                raise ValueError(
                    f"stop_token {args.stop_token!r} encodes to {len(ids)} tokens {ids}; it must be exactly one token. "
                    "Pick a token from the vocabulary (e.g. '.' or the EOS token)."
                )
            stop_id = ids[0]

        # PEFT
        if peft_config is not None:
            if get_peft_model is None:
                raise ImportError("peft_config needs the `peft` package: pip install peft")
            if PeftModel is not None and isinstance(model, PeftModel):
                raise ValueError("model is already a PeftModel; do not pass peft_config as well.")
            peft_config = copy.deepcopy(peft_config)
            if getattr(peft_config, "target_modules", None) is None:
                peft_config.target_modules = lora_target_modules(model)
            else:
                check_lora_targets(model, peft_config.target_modules)
            if model.config.model_type == "gpt2":
                peft_config.fan_in_fan_out = True  # GPT-2's Conv1D stores weights transposed
            model = get_peft_model(model, peft_config)
        is_peft = PeftModel is not None and isinstance(model, PeftModel)
        if is_peft and args.activation_checkpointing:
            model.enable_input_require_grads()  # frozen embeddings would otherwise cut the checkpointed graph

        if args.disable_dropout:
            for module in model.modules():
                if isinstance(module, nn.Dropout):
                    module.p = 0.0

        # Reward model: the adapter-disabled base by default (no second copy of the weights)
        if reward_model is None and args.reward_model_name_or_path is not None:
            if args.reward_model_quantization:
                reward_model = load_quantized_reward_model(
                    args.reward_model_name_or_path, args.reward_model_quantization, args.device
                )
            else:
                reward_model = load_causal_lm(args.reward_model_name_or_path, dtype=init_kwargs.get("dtype"))
        if reward_model is None and not is_peft:
            # Full fine-tuning: the reward must stay the *initial* LM, so keep a frozen copy.
            reward_model = copy.deepcopy(model)
        if reward_model is not None:
            reward_model.eval()
            reward_model.requires_grad_(False)
            if reward_model.get_output_embeddings().weight.shape[0] < len(tokenizer):
                raise ValueError("The reward model's vocabulary is smaller than the tokenizer's: they must share a tokenizer.")
        self.reward_model = reward_model

        # Constraints of the policy, shared by the sampler and the loss
        allowed = vocab_mask(tokenizer) if callable(vocab_mask) else vocab_mask
        if allowed is not None:
            allowed = torch.as_tensor(allowed, dtype=torch.bool)
            if allowed.ndim != 1:
                raise ValueError(f"vocab_mask must be a 1-D bool tensor over the vocabulary, got shape {tuple(allowed.shape)}.")
            if int(allowed.sum()) == 0:
                raise ValueError("vocab_mask allows no token; a latent could only be empty.")
        self.constraints = LatentConstraints(stop_id, args.max_completion_length, args.min_completion_length, allowed)

        # Data: tokenise once, here, not on the hot path
        train_dataset = tokenize_dataset(train_dataset, tokenizer, model.config, args.max_completion_length, "train")
        if eval_dataset is not None:
            eval_dataset = tokenize_dataset(eval_dataset, tokenizer, model.config, args.max_completion_length, "eval")

        super().__init__(
            model=model,
            args=args,
            data_collator=_identity,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            callbacks=callbacks,
            optimizers=optimizers,
        )

        # State carried across steps (saved in checkpoints)
        self.replay_buffer = ReplayBuffer(args.replay_buffer_size, args.replay_prioritized, args.replay_sim_tolerance)
        self._micro_step, self._micro_index = -1, 0
        self.needs_log_z = args.loss_type == "tb" or args.min_completion_length > 0
        self.log_z_head = None
        if self.needs_log_z and args.log_z == "learned":
            hidden = model.config.get_text_config().hidden_size
            self.log_z_head = LogZHead(hidden).to(self.accelerator.device)
        if self.reward_model is not None and not getattr(self.reward_model, "is_quantized", False):
            self.reward_model.to(self.accelerator.device)  # (a quantized model was placed when loaded)
        self.reward = LikelihoodReward(
            self.accelerator.unwrap_model(self.model), self.reward_model, stop_id, tokenizer.pad_token_id,
            args.reward_chunk_size, self.accelerator.autocast, args.contrast_penalty,
        )
        self._metrics: dict[str, list[float]] = defaultdict(list)

    # ------------------------------------------------------------------ rollout and reward
    # All randomness of a rollout is counter-based: a pure function of (seed, optimizer step, micro-batch index,
    # prompt, sample index).  Runs therefore reproduce across resumes, world sizes and batch layouts, and every
    # process draws the same behaviour for a micro-batch, as a single process would.
    def _key(self, *parts) -> int:
        text = ":".join(str(p) for p in (self.args.seed, self.state.global_step, self._micro_index, *parts))
        return zlib.crc32(text.encode("utf-8"))

    def _draw_behaviour(self) -> tuple[str, float]:
        a = self.args
        rng = random.Random(self._key("behaviour"))
        u = rng.random() * (a.on_policy_prob + a.tempered_prob + a.replay_prob)
        if u < a.on_policy_prob:
            return "on_policy", 1.0
        if u < a.on_policy_prob + a.tempered_prob:
            return "tempered", rng.uniform(a.sampling_temperature_min, a.sampling_temperature_max)
        return "replay", rng.uniform(a.sampling_temperature_min, a.sampling_temperature_max)  # fallback temperature

    def score_latents(self, rows: list[dict], z: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, S) untempered log R(s_k ⊤) for the latents `z` of tokenized `rows` (one row per latent)."""
        return self.reward(rows, z, lengths)

    @torch.no_grad()
    def _prepare_inputs(self, rows: list[dict]) -> dict:
        device = self.accelerator.device
        k = self.args.num_generations
        pad = self.processing_class.pad_token_id
        stop = self.constraints.stop_token_id
        if self.state.global_step != self._micro_step:  # first micro-batch of a new optimizer step
            self._micro_step, self._micro_index = self.state.global_step, 0
        mode, temperature = self._draw_behaviour()
        self._micro_index += 1
        expanded = [r for r in rows for _ in range(k)]
        group = torch.arange(len(rows), device=device).repeat_interleave(k)
        prompt_ids, prompt_mask = left_pad([r["prompt_ids"] for r in expanded], pad, device)

        replayed = None
        if mode == "replay":
            replayed = [self.replay_buffer.sample(r["gfn_key"], k, random.Random(self._key(r["gfn_key"]))) for r in rows]
            if not all(replayed):  # a prompt with an empty buffer: explore instead, as the paper does
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
            unwrapped = self.accelerator.unwrap_model(self.model)
            was_training = unwrapped.training
            unwrapped.eval()  # no dropout, and a KV cache even with activation checkpointing
            with self.accelerator.autocast():
                seeds = [self._key(r["gfn_key"], j % k) for j, r in enumerate(expanded)]
                z, lengths = sample_latents(unwrapped, prompt_ids, prompt_mask, self.constraints, temperature, pad, seeds)
            unwrapped.train(was_training)
            log_r = self.score_latents(expanded, z, lengths)
            for b, r in enumerate(expanded):
                n = int(lengths[b])
                self.replay_buffer.add(r["gfn_key"], z[b, :n].tolist(), log_r[b, : n + 1].tolist())
        return {
            "prompt_ids": prompt_ids,
            "prompt_mask": prompt_mask,
            "z": z,
            "lengths": lengths,
            "log_r": log_r.float(),  # untempered
            "group": group,
            "behaviour": mode,
            "temperature": temperature,
            "rows": expanded,
        }

    # ------------------------------------------------------------------ loss
    def _check_finite(self, log_r: torch.Tensor, inputs: dict) -> None:
        """A terminal log-reward that is -inf or NaN would make the loss meaningless: name the sample."""
        lengths = inputs["lengths"]
        S = log_r.shape[1]
        idx = torch.arange(S, device=log_r.device)
        used = (idx[None, :] <= lengths[:, None]) & (idx[None, :] >= self.args.min_completion_length)
        bad = (~torch.isfinite(log_r) & used).any(1)
        if bad.any():
            b = int(bad.nonzero()[0])
            row = inputs["rows"][b]
            text = self.processing_class.decode(inputs["z"][b, : int(lengths[b])])
            raise FloatingPointError(
                f"Non-finite log-reward for prompt {row['prompt']!r} and latent {text!r} (tokens "
                f"{inputs['z'][b, : int(lengths[b])].tolist()}). The reward LM gives it probability 0 (a banned token, "
                "or underflow in low precision): check the vocabulary mask and run the reward pass in float32."
            )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if return_outputs:
            raise ValueError("GFlowNetTrainer does not return model outputs from compute_loss.")
        args = self.args
        want_hidden = self.log_z_head is not None
        out = policy_log_probs(
            model, inputs["prompt_ids"], inputs["prompt_mask"], inputs["z"], inputs["lengths"], self.constraints, want_hidden
        )
        log_pf, log_pterm = out[0], out[1]
        t_r = args.reward_temperature(self.state.global_step)
        self._check_finite(inputs["log_r"], inputs)
        log_r = inputs["log_r"] / t_r  # (B, S) tempered
        lengths, group = inputs["lengths"], inputs["group"]

        log_z = None
        if self.needs_log_z:
            windows = args.loss_type  # which windows reach s_0: "tb", "subtb" or "db"
            if self.log_z_head is None:
                log_z = batch_log_z(
                    log_pf, log_pterm, log_r, lengths, group, args.min_completion_length, windows, args.subtb_lambda
                )
            else:
                if not bool(self.log_z_head.initialized):  # start from the data, not from 0
                    estimate = batch_log_z(
                        log_pf, log_pterm, log_r, lengths, group, args.min_completion_length, windows, args.subtb_lambda
                    )
                    self.log_z_head.linear.bias.data.fill_(float(self.accelerator.reduce(estimate.mean(), "mean")))
                    self.log_z_head.initialized.fill_(True)
                log_z = self.log_z_head(out[2].detach().float())  # (B,)

        if args.loss_type == "subtb":
            loss = modified_subtb_loss(log_pf, log_pterm, log_r, lengths, args.subtb_lambda, args.min_completion_length, log_z)
        elif args.loss_type == "db":
            loss = modified_db_loss(log_pf, log_pterm, log_r, lengths, args.min_completion_length, log_z)
        else:
            loss = tb_loss(log_pf, log_pterm, log_r, lengths, log_z)

        self._record_metrics(inputs, log_pf, log_pterm, log_r, log_z, t_r)
        return loss

    @torch.no_grad()
    def _record_metrics(self, inputs, log_pf, log_pterm, log_r, log_z, t_r) -> None:
        lengths, group = inputs["lengths"], inputs["group"]
        final = inputs["log_r"].gather(1, lengths[:, None]).squeeze(1)  # untempered log R(Z⊤)
        ratio = trajectory_log_ratio(log_pf.detach(), log_pterm.detach(), log_r, lengths)  # log R/T_R - log q
        centred = ratio - group_mean(ratio, group)
        values = {
            "log_reward/mean": final.mean(),
            "log_reward/max": final.max(),
            "completion_length/mean": lengths.float().mean(),
            "log_ratio/within_prompt_var": centred.pow(2).mean(),  # 0 when q ∝ R exactly
            "reward_temperature": torch.tensor(t_r),
            "sampling_temperature": torch.tensor(inputs["temperature"]),
            "behaviour/replay": torch.tensor(float(inputs["behaviour"] == "replay")),
            "behaviour/tempered": torch.tensor(float(inputs["behaviour"] == "tempered")),
            "replay_buffer/size": torch.tensor(float(len(self.replay_buffer))),
        }
        if log_z is not None:
            values["log_z/mean"] = log_z.detach().mean()
        names = list(values)
        stacked = torch.stack([v.float().to(self.accelerator.device) for v in values.values()])
        stacked = self.accelerator.reduce(stacked, reduction="mean")
        for name, v in zip(names, stacked.tolist()):
            self._metrics[name].append(v)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self._metrics:
            prefix = "eval_" if next(iter(logs), "").startswith("eval_") else ""
            logs = {**logs, **{prefix + k: sum(v) / len(v) for k, v in self._metrics.items()}}
            self._metrics.clear()
        super().log(logs, start_time)

    # ------------------------------------------------------------------ optimizer and checkpoints
    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        if self.log_z_head is not None and not any(
            p is self.log_z_head.linear.weight for g in optimizer.param_groups for p in g["params"]
        ):
            optimizer.add_param_group(
                {"params": list(self.log_z_head.parameters()), "lr": self.args.log_z_learning_rate, "weight_decay": 0.0}
            )
        return optimizer

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.log_z_head is not None and self.accelerator.num_processes > 1:
            for p in self.log_z_head.parameters():  # the head lives outside the DDP-wrapped model
                if p.grad is not None:
                    p.grad = self.accelerator.reduce(p.grad, reduction="mean")
        return loss

    def end(self):
        """Finish trackers and close the process group, after every rank has arrived.

        Without the barrier a rank that finishes early tears down its gloo/NCCL threads while a peer still works
        (e.g. the main process writing results); the early rank then aborts at exit ("terminate called without an
        active exception") and the launcher reports the whole run as failed.
        """
        if self.accelerator.num_processes > 1:
            self.accelerator.wait_for_everyone()
        super().end()

    def train(self, resume_from_checkpoint: str | bool | None = None, trial=None, **kwargs):
        """Train; `resume_from_checkpoint=True` resumes from the newest *complete* checkpoint in `output_dir`."""
        if resume_from_checkpoint is True:
            found = last_complete_checkpoint(self.args.output_dir)
            if found is None:
                raise ValueError(
                    f"resume_from_checkpoint=True but {self.args.output_dir} holds no complete checkpoint. Start "
                    "without resume_from_checkpoint, or point it at a checkpoint folder."
                )
            resume_from_checkpoint = found
        elif isinstance(resume_from_checkpoint, str) and not is_complete_checkpoint(resume_from_checkpoint):
            newest = last_complete_checkpoint(os.path.dirname(os.path.abspath(resume_from_checkpoint)))
            raise ValueError(
                f"{resume_from_checkpoint} is not a complete GFlowNetTrainer checkpoint (the run was probably killed "
                f"while saving it). Resume from {newest or 'an earlier checkpoint'} instead, or pass "
                "resume_from_checkpoint=True to pick the newest complete one."
            )
        return super().train(resume_from_checkpoint=resume_from_checkpoint, trial=trial, **kwargs)

    def gfn_state_dict(self) -> dict:
        """Everything the GFlowNet adds to a checkpoint: the replay buffer and the log Z head.

        (Rollout randomness is counter-based, a function of the step, so it needs no saved state.)"""
        return {
            "replay_buffer": self.replay_buffer.state_dict(),
            "log_z_head": None if self.log_z_head is None else self.log_z_head.state_dict(),
        }

    def load_gfn_state_dict(self, state: dict) -> None:
        self.replay_buffer.load_state_dict(state["replay_buffer"])
        if self.log_z_head is not None and state["log_z_head"] is not None:
            self.log_z_head.load_state_dict(state["log_z_head"])

    def _gfn_state_file(self, folder: str) -> str:
        return os.path.join(folder, f"gfn_state_rank{self.args.process_index}.pt")

    def _save_checkpoint(self, model, trial):
        model_name = Path(self.args.output_dir).name if self.args.hub_model_id is None else self.args.hub_model_id.split("/")[-1]
        self.create_model_card(model_name=model_name)
        # The GFlowNet state is written into the checkpoint folder *before* the Trainer finalises it, so a
        # checkpoint that the Trainer considers complete always holds it.
        folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        os.makedirs(folder, exist_ok=True)
        torch.save(self.gfn_state_dict(), self._gfn_state_file(folder))
        super()._save_checkpoint(model, trial)

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        path = self._gfn_state_file(checkpoint)
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"{path} is missing: this checkpoint was not written by GFlowNetTrainer (or with another number of "
                "processes), so the replay buffer and log Z cannot be restored."
            )
        self.load_gfn_state_dict(torch.load(path, weights_only=False))

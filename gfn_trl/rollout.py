"""The rollout and reward path shared by every gfn_trl trainer (GFlowNet and PPO).

`RolloutTrainer` owns what does not depend on the objective:

* loading the policy (a name, a path, a `.gguf` file or a model), its tokenizer, the stop token and LoRA;
* the latent's constraints (`LatentConstraints`: vocabulary mask, minimum and maximum length), used identically by
  the sampler and by every loss;
* the frozen reward LM (the adapter-disabled base, a frozen copy of the initial model, or a separate, optionally
  quantized, model) behind one `LikelihoodReward`;
* tokenising the dataset once (the data contract of `gfn_trl.data.tokenize_dataset`);
* counter-based rollout randomness (`_key`), sampling (`sample`) and scoring (`score_latents`);
* metrics reduced over ranks, extra trainable heads (log Z, value) outside the wrapped model, checkpoints that
  carry the trainer's own state (`gfn_state_rank{r}.pt`) and resume only from complete checkpoints.

Subclasses implement `_prepare_inputs` and `compute_loss`, and may add state with `extra_state_dict`.
"""

from __future__ import annotations

import copy
import os
import zlib
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import torch
from datasets import Dataset
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl.trainer.base_trainer import _BaseTrainer

from .checkpoints import is_complete_checkpoint, last_complete_checkpoint
from .config import RolloutConfig
from .data import tokenize_dataset
from .models import (
    load_causal_lm,
    load_quantized_reward_model,
    load_tokenizer,
    prepare_kbit_model,
    quantized_load_kwargs,
    resolve_peft_config,
    resolve_stop_token_id,
)
from .rewards import LikelihoodReward
from .sampling import LatentConstraints, left_pad, sample_latents
from .tools import Tool

try:
    from peft import PeftConfig, PeftModel, get_peft_model
except ImportError:  # peft is a dependency, but keep the import error readable
    PeftConfig = PeftModel = get_peft_model = None


def _identity(rows):
    return rows


class _ZeroHeadGrads(TrainerCallback):
    """The HF Trainer zeroes gradients with `model.zero_grad()`, which does not reach modules outside the model;
    without this the heads' gradients would accumulate over the whole run."""

    def __init__(self, trainer: RolloutTrainer):
        self.trainer = trainer

    def on_optimizer_step(self, args, state, control, **kwargs):
        for module, _ in self.trainer._heads.values():
            module.zero_grad(set_to_none=True)


class RolloutTrainer(_BaseTrainer):
    """Base of the trainers that sample latents Z from a policy q(Z | prompt) and score them with a frozen LM.

    Args:
        model (`str` or `PreTrainedModel` or `PeftModel`): the policy's starting point.  A string is a hub id, a local
            directory or a `.gguf` file.
        args (`RolloutConfig` subclass, *optional*): the settings.
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
        tool (`gfn_trl.tools.Tool`, *optional*): a tool whose outputs are forced tokens of the latent's state, not
            policy actions (the arithmetic task's calculator); also applied identically in sampling, loss and replay.
    """

    _config_class = RolloutConfig
    # `compute_loss` returns a per-micro-batch mean; the HF Trainer divides it by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        model: str | PreTrainedModel,
        args: RolloutConfig | None = None,
        train_dataset: Dataset | None = None,
        eval_dataset: Dataset | None = None,
        processing_class: PreTrainedTokenizerBase | None = None,
        peft_config: PeftConfig | None = None,
        reward_model: PreTrainedModel | None = None,
        vocab_mask: torch.Tensor | Callable | None = None,
        callbacks=None,
        optimizers=(None, None),
        tool: Tool | None = None,
    ):
        # Args
        if args is None:
            name = model if isinstance(model, str) else model.config._name_or_path
            args = self._config_class(f"{str(name).split('/')[-1] or 'model'}-{self._name}")
        if train_dataset is None:
            raise ValueError(f"{type(self).__name__} needs a train_dataset with a 'prompt' column.")

        # Model
        init_kwargs = dict(args.model_init_kwargs or {})
        if args.load_in_4bit:
            if peft_config is None:
                raise ValueError(
                    "load_in_4bit trains a LoRA adapter on frozen 4-bit weights (QLoRA): pass peft_config."
                )
            if isinstance(model, str):
                init_kwargs = {**quantized_load_kwargs("4bit", args.device), **init_kwargs}
            elif not getattr(model, "is_loaded_in_4bit", False):
                raise ValueError("load_in_4bit loads the model in 4 bits itself: pass the model's name or path (the "
                                 "model passed is not 4-bit), or load it quantized and leave load_in_4bit off.")
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
        stop_id = resolve_stop_token_id(tokenizer, args.stop_token)

        # PEFT
        if peft_config is not None:
            if get_peft_model is None:
                raise ImportError("peft_config needs the `peft` package: pip install peft")
            if PeftModel is not None and isinstance(model, PeftModel):
                raise ValueError("model is already a PeftModel; do not pass peft_config as well.")
            if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
                model = prepare_kbit_model(model, args.activation_checkpointing)
            model = get_peft_model(model, resolve_peft_config(model, peft_config))
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
        self._frozen_initial = None
        if reward_model is None and not is_peft:
            # Full fine-tuning: the reward must stay the *initial* LM, so keep a frozen copy.
            reward_model = self._frozen_initial = copy.deepcopy(model)
        if reward_model is not None:
            reward_model.eval()
            reward_model.requires_grad_(False)
            if reward_model.get_output_embeddings().weight.shape[0] < len(tokenizer):
                raise ValueError(
                    "The reward model's vocabulary is smaller than the tokenizer's: they must share a tokenizer."
                )
        self.reward_model = reward_model

        # Constraints of the policy, shared by the sampler and the loss
        allowed = vocab_mask(tokenizer) if callable(vocab_mask) else vocab_mask
        if allowed is not None:
            allowed = torch.as_tensor(allowed, dtype=torch.bool)
            if allowed.ndim != 1:
                raise ValueError(
                    f"vocab_mask must be a 1-D bool tensor over the vocabulary, got shape {tuple(allowed.shape)}."
                )
            if int(allowed.sum()) == 0:
                raise ValueError("vocab_mask allows no token; a latent could only be empty.")
        self.constraints = LatentConstraints(
            stop_id, args.max_completion_length, args.min_completion_length, allowed, tool
        )

        # Data: tokenise once, here, not on the hot path
        train_dataset = tokenize_dataset(train_dataset, tokenizer, model.config, args.max_completion_length, "train")
        if eval_dataset is not None:
            eval_dataset = tokenize_dataset(eval_dataset, tokenizer, model.config, args.max_completion_length, "eval")

        _BaseTrainer.__init__(
            self,
            model=model,
            args=args,
            data_collator=_identity,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            callbacks=callbacks,
            optimizers=optimizers,
        )


        self.is_peft = is_peft
        self._micro_step, self._micro_index = -1, 0
        self._heads: dict[str, tuple[nn.Module, float]] = {}
        self.add_callback(_ZeroHeadGrads(self))
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
    def _key(self, *parts, step: int | None = None) -> int:
        step = self.state.global_step if step is None else step
        text = ":".join(str(p) for p in (self.args.seed, step, self._micro_index, *parts))
        return zlib.crc32(text.encode("utf-8"))

    def _next_micro_batch(self) -> None:
        """Advance the micro-batch counter (reset at the first micro-batch of each optimizer step)."""
        if self.state.global_step != self._micro_step:
            self._micro_step, self._micro_index = self.state.global_step, 0
        self._micro_index += 1

    def expand(self, rows: list[dict]) -> tuple[list[dict], torch.Tensor]:
        """Each prompt repeated `num_generations` times, and the (B,) index of its prompt within `rows`."""
        k = self.args.num_generations
        expanded = [r for r in rows for _ in range(k)]
        group = torch.arange(len(rows), device=self.accelerator.device).repeat_interleave(k)
        return expanded, group

    def prompt_batch(self, expanded: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, P) left-padded policy prompts and their attention mask."""
        return left_pad(
            [r["prompt_ids"] for r in expanded], self.processing_class.pad_token_id, self.accelerator.device
        )

    @torch.no_grad()
    def sample(self, expanded: list[dict], prompt_ids, prompt_mask, temperature: float = 1.0, step: int | None = None):
        """Latents from the constrained policy at `temperature` (eval mode, KV cache): (z (B, T), lengths (B,)).

        Sample j of a prompt is seeded by (seed, step, micro-batch, prompt key, j mod num_generations)."""
        k = self.args.num_generations
        unwrapped = self.accelerator.unwrap_model(self.model)
        was_training = unwrapped.training
        unwrapped.eval()  # no dropout, and a KV cache even with activation checkpointing
        with self.accelerator.autocast():
            seeds = [self._key(r["gfn_key"], j % k, step=step) for j, r in enumerate(expanded)]
            z, lengths = sample_latents(
                unwrapped, prompt_ids, prompt_mask, self.constraints, temperature, self.processing_class.pad_token_id,
                seeds,
            )
        unwrapped.train(was_training)
        return z, lengths

    def score_latents(self, rows: list[dict], z: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, S) untempered log R(s_k ⊤) for the latents `z` of tokenized `rows` (one row per latent)."""
        return self.reward(rows, z, lengths)

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

    # ------------------------------------------------------------------ metrics
    @torch.no_grad()
    def record_metrics(self, values: dict[str, torch.Tensor | float]) -> None:
        """Average each value over the ranks and keep it until the next `log`."""
        names = list(values)
        stacked = torch.stack(
            [torch.as_tensor(v).detach().float().to(self.accelerator.device) for v in values.values()]
        )
        stacked = self.accelerator.reduce(stacked, reduction="mean")
        for name, v in zip(names, stacked.tolist()):
            self._metrics[name].append(v)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self._metrics:
            prefix = "eval_" if next(iter(logs), "").startswith("eval_") else ""
            logs = {**logs, **{prefix + k: sum(v) / len(v) for k, v in self._metrics.items()}}
            self._metrics.clear()
        super().log(logs, start_time)

    # ------------------------------------------------------------------ extra heads, optimizer
    def register_head(self, name: str, module: nn.Module, learning_rate: float) -> nn.Module:
        """A small trainable module outside the wrapped model (log Z, value): own learning rate, no weight decay,
        gradients averaged over ranks, state saved in checkpoints."""
        module = module.to(self.accelerator.device)
        self._heads[name] = (module, learning_rate)
        return module

    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        present = {id(p) for g in optimizer.param_groups for p in g["params"]}
        for module, lr in self._heads.values():
            params = [p for p in module.parameters() if id(p) not in present]
            if params:
                optimizer.add_param_group({"params": params, "lr": lr, "weight_decay": 0.0})
        return optimizer

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self._heads and self.accelerator.num_processes > 1:
            for module, _ in self._heads.values():  # the heads live outside the DDP-wrapped model
                for p in module.parameters():
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

    # ------------------------------------------------------------------ checkpoints
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
                f"{resume_from_checkpoint} is not a complete {type(self).__name__} checkpoint (the run was probably "
                f"killed while saving it). Resume from {newest or 'an earlier checkpoint'} instead, or pass "
                "resume_from_checkpoint=True to pick the newest complete one."
            )
        return super().train(resume_from_checkpoint=resume_from_checkpoint, trial=trial, **kwargs)

    def extra_state_dict(self) -> dict:
        """The trainer's own state beyond model, optimizer and scheduler (subclasses extend it)."""
        return {}

    def load_extra_state_dict(self, state: dict) -> None:
        pass

    def trainer_state_dict(self) -> dict:
        """Everything gfn_trl adds to a checkpoint: the heads and the subclass's state.

        (Rollout randomness is counter-based, a function of the step, so it needs no saved state.)"""
        return {"heads": {name: m.state_dict() for name, (m, _) in self._heads.items()}, **self.extra_state_dict()}

    def load_trainer_state_dict(self, state: dict) -> None:
        for name, (module, _) in self._heads.items():
            if state.get("heads", {}).get(name) is not None:
                module.load_state_dict(state["heads"][name])
        self.load_extra_state_dict(state)

    def _state_file(self, folder: str) -> str:
        return os.path.join(folder, f"gfn_state_rank{self.args.process_index}.pt")

    def _save_checkpoint(self, model, trial):
        model_name = (
            Path(self.args.output_dir).name if self.args.hub_model_id is None
            else self.args.hub_model_id.split("/")[-1]
        )
        self.create_model_card(model_name=model_name)
        # The trainer's state is written into the checkpoint folder *before* the Trainer finalises it, so a
        # checkpoint that the Trainer considers complete always holds it.
        folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        os.makedirs(folder, exist_ok=True)
        torch.save(self.trainer_state_dict(), self._state_file(folder))
        super()._save_checkpoint(model, trial)

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        path = self._state_file(checkpoint)
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"{path} is missing: this checkpoint was not written by {type(self).__name__} (or with another "
                "number of processes), so the trainer's own state cannot be restored."
            )
        self.load_trainer_state_dict(torch.load(path, weights_only=False))

"""The rollout and reward path shared by every gfn_trl trainer (GFlowNet and PPO).

`RolloutTrainer` owns what does not depend on the objective:

* loading the policy (a name, a path, a `.gguf` file or a model), its tokenizer, the stop token and LoRA, through
  the set-up the TRL baselines and the recipes share (`gfn_trl.trainers.setup`);
* the latent's constraints (`LatentConstraints`: vocabulary mask, minimum and maximum length), used identically by
  the sampler and by every loss;
* the frozen reward LM (the adapter-disabled base, a frozen copy of the initial model, or a separate, optionally
  quantized, model) behind one `LikelihoodReward`;
* tokenising the dataset once (the data contract of `gfn_trl.data.tokenize_dataset`);
* counter-based rollout randomness (`_key`), sampling (`sample`) and scoring (`score_latents`);
* metrics reduced over ranks, extra trainable heads (log Z, value) outside the wrapped model, checkpoints that
  carry the trainer's own state (`gfn_state_rank{r}.pt`) and resume only from complete checkpoints.

Subclasses implement `_prepare_inputs` (rows -> a `gfn_trl.trainers.batch.RolloutBatch`) and `compute_loss` (that
batch -> the loss), and may add state with `extra_state_dict`.
"""

from __future__ import annotations

import copy
import os
import shutil
from collections import defaultdict, deque
from collections.abc import Callable
from pathlib import Path

import torch
from accelerate.utils import broadcast_object_list, gather_object
from datasets import Dataset
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback
from transformers.trainer import OPTIMIZER_NAME, SCHEDULER_NAME, TRAINER_STATE_NAME
from transformers.trainer_callback import ExportableState
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, SaveStrategy, rotate_checkpoints
from transformers.utils import logging

from .._trl import _BaseTrainer
from ..data import tokenize_dataset
from ..models import eval_mode, quantized_load_kwargs
from ..rewards import LikelihoodReward
from ..rewards.functions import RewardFunctions, RewardSpec, passed_columns, signature_problem, tilted_log_rewards
from ..sampling import counter_seed, left_pad
from ..tokenization import is_conversation, output_rows
from ..tools import Tool
from . import checkpoints as ckpt
from . import completions as completions_table
from . import diagnostics, setup, validation
from .batch import RolloutBatch
from .generation import DecodeLoop, GenerationBackend, GenerationRequest, check_latents
from .model_card import write_model_card
from .rollout_config import RolloutConfig
from .validation import check_construction

try:
    from peft import PeftConfig
except ImportError:  # peft is a dependency, but keep the import error readable
    PeftConfig = None


logger = logging.get_logger(__name__)


def _identity(rows):
    return rows


# The columns that choose a row's reward (`gfn_trl.data`): a train and an eval dataset must agree on them
REWARD_COLUMNS = ("reward_prompt", "suffix", "contrast_suffix")
# The keyword arguments `compute_metrics` is called with, besides the eval dataset's other columns
METRICS_ARGUMENTS = ("prompts", "completions", "completion_ids", "log_rewards")


def eval_splits(eval_dataset) -> list[tuple[str, object]]:
    """(split name, dataset) of an eval dataset: one dataset ("eval"), a dict of them ("eval (name)"), or none."""
    if eval_dataset is None:
        return []
    if isinstance(eval_dataset, dict):
        return [(f"eval ({name})", data) for name, data in eval_dataset.items()]
    return [("eval", eval_dataset)]


def _metrics_signature_error(problem: str, columns: list[str]) -> TypeError:
    return TypeError(
        f"compute_metrics cannot be called on the evaluation's samples: {problem}. It is called with the keyword "
        f"arguments {', '.join(METRICS_ARGUMENTS)} and the eval dataset's other columns (here {columns}), one entry "
        "per sampled latent, and returns a dict of numbers: give it the signature f(prompts, completions, "
        "completion_ids, log_rewards, **columns). (It is not the HF Trainer's compute_metrics(EvalPrediction): the "
        "predictions are sampled latents, not logits.)"
    )


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
        compute_metrics (callable, *optional*): task metrics of the evaluation samples, called once per
            `evaluate()` on the main process with keyword arguments in the style of TRL's reward functions:
            `prompts` (the eval rows' prompts, one per latent), `completions` (the latents decoded as reward functions
            get them: `skip_special_tokens=True`, an assistant message for a conversational prompt), `completion_ids`
            (their token ids), `log_rewards` (untempered log R(Z ⊤), natural log) and every other column of the eval
            dataset (e.g. a gold answer), each a list with one entry per latent.  It returns a dict of numbers,
            logged with the evaluation's prefix (`eval_<name>`, unless the name has it) and never replacing one of the
            trainer's metrics.  Not the HF Trainer's `EvalPrediction` callable: the predictions here are sampled
            latents, not logits (its signature is checked at construction).
        reward_funcs (*optional*): reward functions in TRL's signature (`GRPOTrainer(reward_funcs=...)`): a callable
            `f(prompts, completions, completion_ids, **kwargs) -> list[float | None]` (sync or async), a
            sequence-classification model or its name, or a list of them (`gfn_trl.rewards.functions`).  The
            log-reward is then α · log p_LM(Z [Y] | reward_prompt) + Σ_i w_i r_i(Z) (`lm_reward_weight`,
            `reward_weights`), divided by the reward temperature.
        reward_processing_classes (*optional*): the tokenizers of reward models in `reward_funcs` (as in TRL).

    `eval_dataset` may be one dataset or a dict of them (each evaluated under its own prefix), and `evaluate()` /
    `predict()` take one at call time; each must choose its reward by the train dataset's columns (`reward_prompt`,
    `suffix`, `contrast_suffix`).

    Raises (at construction): ValueError / TypeError for a reward function or `compute_metrics` whose signature does
    not fit the datasets' columns, an eval dataset scored by another reward than the train dataset, and the checks of
    `gfn_trl.trainers.validation`.

    Evaluation (`evaluate()`, `eval_strategy="steps"`): `num_generations` latents per eval prompt, sampled on-policy
    (temperature 1, no replay) with seeds of their own (the same at every evaluation, so that two evaluations differ
    by the policy only), scored by the same reward and loss, never written to the replay buffer; the metrics are
    those of training with the `eval_` prefix.  Evaluating does not change training: the same run with and
    without periodic evaluation ends with the same weights.
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
        compute_metrics: Callable[..., dict[str, float]] | None = None,
        reward_funcs=None,
        reward_processing_classes=None,
    ):
        # Args
        if args is None:
            name = model if isinstance(model, str) else model.config._name_or_path
            args = self._config_class(f"{str(name).split('/')[-1] or 'model'}-{self._name}")
        if train_dataset is None:
            raise ValueError(f"{type(self).__name__} needs a train_dataset with a 'prompt' column.")
        check_construction(args, train_dataset, eval_dataset)
        # The reward functions of a tilted reward (`gfn_trl.rewards.functions`), checked before any model is loaded
        self.reward_functions = None
        if reward_funcs is not None and (not isinstance(reward_funcs, (list, tuple)) or len(reward_funcs)):
            self.reward_functions = RewardFunctions(reward_funcs, args.reward_weights, reward_processing_classes,
                                                    args.model_init_kwargs, args.reward_chunk_size)
            self.reward_functions.check_signatures(train_dataset.column_names, "train")
        elif args.reward_weights is not None:
            raise ValueError("reward_weights are the weights of reward_funcs, but no reward_funcs were given.")
        if args.lm_reward_weight == 0 and self.reward_functions is None:
            raise ValueError("lm_reward_weight=0 drops the LM prior and no reward_funcs were given: there is no "
                             "reward. Pass reward_funcs, or set lm_reward_weight > 0.")
        if args.lm_reward_weight == 0 and reward_model is not None:
            raise ValueError("reward_model is the LM of the prior term, but lm_reward_weight=0 drops that term: pass "
                             "one or the other.")
        self._score_prefixes_from = None  # the first prefix a prefix-scoring function scores (None: finished latents)
        if compute_metrics is not None and not callable(compute_metrics):
            raise TypeError(f"compute_metrics must be a callable returning a dict of numbers, got {compute_metrics!r}.")
        self.compute_metrics = compute_metrics  # read by _check_eval_dataset
        self._train_columns = list(train_dataset.column_names)
        for split, data in eval_splits(eval_dataset):  # before any model is loaded
            self._check_eval_dataset(data, split, args)
        if compute_metrics is not None and eval_dataset is None:  # (its columns are checked with the eval dataset)
            problem = signature_problem(compute_metrics, METRICS_ARGUMENTS, more_to_come=True)
            if problem is not None:
                raise _metrics_signature_error(problem, [])
        setup.seed_run(args)  # before LoRA's initialisation, which the HF Trainer's own seeding comes too late for

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
        # Policy, tokenizer and the latent space (`gfn_trl.trainers.setup`, shared with the TRL baselines and recipes)
        model, processing_class, _ = setup.load_policy(model, processing_class, init_kwargs)
        tokenizer = processing_class
        # the constraints of the policy, shared by the sampler and the loss
        self.constraints = setup.latent_space(tokenizer, args.max_completion_length, args.min_completion_length,
                                              args.stop_token, vocab_mask, tool, model=model)
        stop_id, policy_rows = self.constraints.stop_token_id, output_rows(model)

        base_fingerprint = validation.base_fingerprint(model, tokenizer, stop_id)  # what a resume must match

        model, is_peft = setup.wrap_policy(model, peft_config, args.activation_checkpointing)
        if args.disable_dropout:
            setup.disable_dropout(model)

        # Reward model: the adapter-disabled base by default (no second copy of the weights); none without the prior
        self.reward_model, self._frozen_initial = None, None
        if args.lm_reward_weight != 0:
            self.reward_model, self._frozen_initial = setup.reward_model(
                model, is_peft, reward_model, args.reward_model_name_or_path, args.reward_model_quantization,
                args.device, init_kwargs.get("dtype"), tokenizer, policy_rows,
            )

        # Data: tokenise once, here, not on the hot path
        train_dataset = tokenize_dataset(train_dataset, tokenizer, model.config, args.max_completion_length, "train",
                                         args.chat_template_kwargs)
        if isinstance(eval_dataset, dict):
            eval_dataset = {name: tokenize_dataset(data, tokenizer, model.config, args.max_completion_length,
                                                   f"eval ({name})", args.chat_template_kwargs)
                            for name, data in eval_dataset.items()}
        elif eval_dataset is not None:
            eval_dataset = tokenize_dataset(eval_dataset, tokenizer, model.config, args.max_completion_length, "eval",
                                            args.chat_template_kwargs)

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
        self.model.add_model_tags(self._tag_names)  # the hub's tags, as TRL's trainers add them
        self._micro_step, self._micro_index = -1, 0
        self._heads: dict[str, tuple[nn.Module, float]] = {}
        self.add_callback(_ZeroHeadGrads(self))
        self._base_fingerprint, self._nonfinite = base_fingerprint, None
        if self.reward_model is not None and not getattr(self.reward_model, "is_quantized", False):
            self.reward_model.to(self.accelerator.device)  # (a quantized model was placed when loaded)
        # The LM prior's scorer (without the prior, kept only where it costs nothing: the adapter-disabled base)
        self.reward = None
        if args.lm_reward_weight != 0 or is_peft:
            self.reward = LikelihoodReward(
                self.accelerator.unwrap_model(self.model), self.reward_model, stop_id, tokenizer.pad_token_id,
                args.reward_chunk_size, self.accelerator.autocast, args.contrast_penalty,
            )
        if self.reward_functions is not None:
            self.reward_functions.to(self.accelerator.device)
        # Metrics and latents kept until the next `log`, per mode ("eval" inside `evaluation_loop`)
        self._mode = "train"
        self._metrics: dict[str, dict[str, list[float]]] = {"train": defaultdict(list), "eval": defaultdict(list)}
        # what reward functions log through `log_metric`, kept apart so that a name cannot mix into the trainer's own
        self._function_metrics: dict[str, dict[str, list[float]]] = {"train": defaultdict(list),
                                                                     "eval": defaultdict(list)}
        per_step = (args.per_device_train_batch_size * args.num_generations * args.gradient_accumulation_steps
                    * args.world_size)
        self._completions = {"train": deque(maxlen=per_step), "eval": []}  # the `log_completions` rows
        self._eval_samples: list[dict] = []  # what `compute_metrics` receives
        self._eval_log_prefix: str | None = None
        self.compute_metrics = compute_metrics  # (the HF Trainer's __init__ set it to None)

    # ------------------------------------------------------------------ rollout and reward
    # All randomness of a rollout is counter-based: a pure function of (seed, optimizer step, micro-batch index,
    # prompt, sample index).  Runs therefore reproduce across resumes, world sizes and batch layouts, and every
    # process draws the same behaviour for a micro-batch, as a single process would.
    def _key(self, *parts, step: int | None = None) -> int:
        step = self.state.global_step if step is None else step
        return counter_seed(self.args.seed, step, self._micro_index, *parts)

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

    def eval_seeds(self, expanded: list[dict]) -> list[int]:
        """The evaluation's seeds: sample j of a prompt is seeded by (seed, "eval", prompt key, j mod
        num_generations), apart from every training seed and the same at every evaluation."""
        k = self.args.num_generations
        return [counter_seed(self.args.seed, "eval", r["gfn_key"], j % k) for j, r in enumerate(expanded)]

    @torch.no_grad()
    def sample(self, expanded: list[dict], prompt_ids, prompt_mask, temperature: float = 1.0, step: int | None = None,
               seeds: list[int] | None = None):
        """Latents from the constrained policy at `temperature` (eval mode, KV cache): (z (B, T), lengths (B,)).

        Sample j of a prompt is seeded by (seed, step, micro-batch, prompt key, j mod num_generations), or by
        `seeds` (B,) when given (`eval_seeds`)."""
        k = self.args.num_generations
        unwrapped = self.accelerator.unwrap_model(self.model)
        # eval mode: no dropout, and a KV cache even with activation checkpointing; under ZeRO-3 the weights are
        # gathered once for the whole decode (the ranks' step counts differ)
        with eval_mode(unwrapped), self.rollout_weights(unwrapped), self.accelerator.autocast():
            if seeds is None:
                seeds = [self._key(r["gfn_key"], j % k, step=step) for j, r in enumerate(expanded)]
            backend = self.generation_backend
            request = GenerationRequest(expanded, prompt_ids, prompt_mask, temperature, seeds, self.state.global_step)
            z, lengths = backend.generate(unwrapped, self.constraints, request)
            if not isinstance(backend, DecodeLoop):  # another engine: its latents must lie in the policy's support
                check_latents(self.constraints, z, lengths, backend)
        return z, lengths

    @property
    def generation_backend(self) -> GenerationBackend:
        """What `sample` asks for latents (`gfn_trl.trainers.generation`): by default our decode loop with the config's
        `cache_implementation` and `sampler_compile`; assign another `GenerationBackend` to replace it."""
        if self.__dict__.get("_generation_backend") is None:
            self._generation_backend = DecodeLoop(self.args.cache_implementation, self.args.sampler_compile)
        return self._generation_backend

    @generation_backend.setter
    def generation_backend(self, backend: GenerationBackend) -> None:
        if not isinstance(backend, GenerationBackend):
            raise TypeError(f"A generation backend needs a generate(model, constraints, request) method; got "
                            f"{type(backend).__name__}.")
        self._generation_backend = backend

    def score_latents(
        self, rows: list[dict], z: torch.Tensor, lengths: torch.Tensor, final_only: bool = False,
        log_metrics: bool = True,
    ) -> torch.Tensor:
        """(B, S) untempered log R(s_k ⊤) for the latents `z` of tokenized `rows` (one row per latent); with
        `final_only`, (B,) log R(Z ⊤) of the whole latents only (what PPO needs).

        log R = α · log p_LM + Σ_i w_i r_i (`gfn_trl.rewards.functions.tilted_log_rewards`); with no reward functions
        and α = 1 it is the LM's log-likelihood, untouched.  A function is scored on every prefix from
        `_score_prefixes_from` on if it declares `scores_prefixes` (and that attribute is set: the GFlowNet's
        objective reads prefix rewards), else on the finished latent only (its term is 0 at the other prefixes).
        `log_metrics`: record each function's mean reward as `rewards/<name>/mean` (TRL's metric)."""
        a = self.args
        lm = None
        if a.lm_reward_weight != 0:
            # the reward LM: the policy (adapter disabled) unless a separate one was given; under ZeRO-3 its weights
            # are gathered once for all of the reward's passes, whose number follows this rank's data
            reward_lm = self.reward.reward_model if self.reward.reward_model is not None else self.reward.policy
            with self.rollout_weights(reward_lm):
                lm = self.reward.final(rows, z, lengths) if final_only else self.reward(rows, z, lengths)
        if self.reward_functions is None and a.lm_reward_weight == 1:
            return lm  # the paper's reward, as it always was
        scores = None
        if self.reward_functions is not None:
            start = None if final_only else self._score_prefixes_from
            extra = {"trainer_state": self.state, "log_metric": self._log_reward_metric,
                     "log_extra": lambda column, values: None}
            scores = self.reward_functions.score(rows, z, lengths, self.processing_class, prefixes=start is not None,
                                                 min_length=start or 0, require_value=a.lm_reward_weight == 0,
                                                 extra=extra)
            if log_metrics:
                self._record_reward_means(scores, lengths)
        weights = self.reward_functions.weights if self.reward_functions is not None else []
        return tilted_log_rewards(lm, scores, lengths, a.lm_reward_weight, weights, final_only)

    def reward_spec(self) -> RewardSpec:
        """The reward this run trains on (its functions, where they are scored, their weights and α)."""
        f = self.reward_functions
        if f is None:
            return RewardSpec(lm_reward_weight=self.args.lm_reward_weight)
        prefixes = tuple(p and self._score_prefixes_from is not None for p in f.scores_prefixes)
        return RewardSpec(tuple(f.names), prefixes, tuple(f.weights), self.args.lm_reward_weight)

    def _log_reward_metric(self, name: str, value: float) -> None:
        """TRL's `log_metric` for reward functions: a scalar averaged into the next log (this process's values).
        A name the trainer logs itself is refused at that log (`_averaged_metrics`)."""
        self._function_metrics[self._mode][str(name)].append(float(value))

    def _averaged_metrics(self, mode: str, taken) -> dict[str, float]:
        """The means of the metrics recorded in `mode` since the last call, the trainer's and the reward functions'
        (`log_metric`), then forgotten.

        Raises:
            ValueError: a reward function logged a name that the trainer logs itself (its own metrics, or `taken`:
                the log's other keys), which would mix the two or replace the trainer's value.
        """
        own = {k: sum(v) / len(v) for k, v in self._metrics[mode].items()}
        functions = {k: sum(v) / len(v) for k, v in self._function_metrics[mode].items()}
        self._metrics[mode].clear()
        self._function_metrics[mode].clear()
        clash = sorted(set(functions) & (set(own) | set(taken)))
        if clash:
            raise ValueError(f"A reward function logged {clash} with log_metric, which the trainer logs itself: give "
                             "its metrics names of their own (e.g. prefixed with the function's name).")
        return {**own, **functions}

    @torch.no_grad()
    def _record_reward_means(self, scores, lengths: torch.Tensor) -> None:
        """`rewards/<name>/mean`: each function's mean over the finished latents it gave a number for, all ranks."""
        at_n = lengths[:, None, None].expand(-1, scores.values.shape[1], 1)
        values = scores.values.gather(2, at_n).squeeze(2)  # (B, m)
        given = scores.given.gather(2, at_n).squeeze(2)
        sums = torch.cat([torch.where(given, values, 0).sum(0), given.sum(0).double()]).float()
        sums = sums.to(self.accelerator.device)
        if self.accelerator.num_processes > 1:
            sums = self.accelerator.reduce(sums, reduction="sum")
        m = values.shape[1]
        means = {f"rewards/{name}/mean": sums[i] / sums[m + i]
                 for i, name in enumerate(self.reward_functions.names) if sums[m + i] > 0}
        if means:  # (the same names on every rank: the counts are reduced)
            self.record_metrics(means)

    def rollout_weights(self, *models):
        """Context in which forwards of `models` need no communication between ranks: under DeepSpeed ZeRO-3 their
        partitioned weights are gathered once (the policy's engine hooks removed meanwhile), a no-op otherwise.
        Every rank must enter it together. Nests (`gfn_trl.zero3.gathered`)."""
        from .zero3 import gathered

        if not hasattr(self, "_zero3_held"):
            self._zero3_held: set[int] = set()
        return gathered(models, self.model_wrapped, self._zero3_held)

    def _check_finite(self, log_r: torch.Tensor, inputs: RolloutBatch) -> None:
        """A terminal log-reward that is -inf or NaN would make the loss meaningless: name the sample."""
        lengths = inputs.lengths
        S = log_r.shape[1]
        idx = torch.arange(S, device=log_r.device)
        used = (idx[None, :] <= lengths[:, None]) & (idx[None, :] >= self.args.min_completion_length)
        bad = (~torch.isfinite(log_r) & used).any(1)
        if bad.any():
            b = int(bad.nonzero()[0])
            row = inputs.rows[b]
            text = self.processing_class.decode(inputs.z[b, : int(lengths[b])])
            raise FloatingPointError(
                f"Non-finite log-reward for prompt {row['prompt']!r} and latent {text!r} (tokens "
                f"{inputs['z'][b, : int(lengths[b])].tolist()}). The reward LM gives it probability 0 (a banned token, "
                "or underflow in low precision): check the vocabulary mask and run the reward pass in float32."
            )

    # ------------------------------------------------------------------ metrics
    @torch.no_grad()
    def record_metrics(self, values: dict[str, torch.Tensor | float]) -> None:
        """Average each value over the ranks and keep it until the next `log` (of training, or of the evaluation
        under way).  Every rank must record the same names in the same order."""
        if not values:
            return
        names = list(values)
        stacked = torch.stack(
            [torch.as_tensor(v).detach().float().to(self.accelerator.device) for v in values.values()]
        )
        stacked = self.accelerator.reduce(stacked, reduction="mean")
        for name, v in zip(names, stacked.tolist()):
            self._metrics[self._mode][name].append(v)

    @torch.no_grad()
    def record_generation_metrics(self, batch: RolloutBatch, log_q: torch.Tensor) -> None:
        """The diagnostics of freshly sampled on-policy latents (`gfn_trl.trainers.diagnostics`), recorded only for an
        on-policy batch (every rank draws the same behaviour): `entropy` (-mean log q(Z ⊤), nats: an unbiased
        estimate of the entropy of q over whole latents), `completions/clipped_ratio` (share of latents stopped by
        `max_completion_length`) and `completions/distinct_per_prompt` (distinct latents among a prompt's
        `num_generations`).  `log_q`: (B,) log q(Z ⊤) of the batch's latents under the sampled policy."""
        if batch.behaviour != "on_policy" or batch.temperature != 1.0:
            return
        self.record_metrics({
            "entropy": -log_q.mean(),
            "completions/clipped_ratio": diagnostics.clipped_ratio(batch.lengths, self.args.max_completion_length),
            "completions/distinct_per_prompt": diagnostics.distinct_per_prompt(batch.z, batch.lengths, batch.group),
        })

    @torch.no_grad()
    def record_completions(self, batch: RolloutBatch) -> None:
        """Keep the batch's latents (all ranks', gathered) for the `log_completions` table and, in evaluation, for
        `compute_metrics`.  Called on every rank together."""
        in_eval = self._mode == "eval"
        if not (self.args.log_completions or (in_eval and self.compute_metrics is not None)):
            return
        final = batch.log_r.gather(1, batch.lengths[:, None])[:, 0].tolist()  # untempered log R(Z ⊤)
        tok = self.processing_class
        rows = []
        for b, row in enumerate(batch.rows):
            ids = batch.z[b, : int(batch.lengths[b])].tolist()
            prompt = row["prompt"] if isinstance(row["prompt"], str) else tok.decode(row["prompt_ids"])
            rows.append({"prompt": prompt, "latent": tok.decode(ids), "log_reward": final[b],
                         "behaviour": batch.behaviour, "temperature": batch.temperature})
            if in_eval:  # what compute_metrics needs besides: the completion as reward functions get it
                text = tok.decode(ids, skip_special_tokens=True)
                completion = [{"role": "assistant", "content": text}] if is_conversation(row["prompt"]) else text
                rows[-1].update(completion=completion, completion_ids=ids, row=row)
        if self.accelerator.num_processes > 1 and in_eval:
            # gathered per prompt (what Accelerate counts), so that the latents of the rows duplicated to even out
            # the ranks' last batch are dropped
            k = self.args.num_generations
            groups = self.accelerator.gather_for_metrics([rows[i : i + k] for i in range(0, len(rows), k)],
                                                         use_gather_object=True)
            rows = [r for group in groups for r in group]
        elif self.accelerator.num_processes > 1:
            rows = gather_object(rows)
        if in_eval:
            self._eval_samples.extend(rows)
        if self.args.log_completions:
            self._completions[self._mode].extend(
                {c: r[c] for c in completions_table.COLUMNS if c != "step"} for r in rows
            )

    def _flush_completions(self, mode: str, tag: str) -> None:
        """Print the kept latents of `mode` and send them to the trackers (main process), then forget them."""
        step = self.state.global_step  # the step of the log (as the trackers have it)
        rows = [{"step": step, **r} for r in self._completions[mode]]
        self._completions[mode].clear()
        if not rows or not self.args.log_completions or not self.accelerator.is_main_process:
            return
        shown = completions_table.choose_rows(rows, self.args.num_completions_to_print,
                                              counter_seed(self.args.seed, "print", tag, step))
        title = f"{tag} at step {step} ({len(shown)} of {len(rows)} latents)"
        completions_table.print_table(shown, title)
        completions_table.send_to_trackers(rows, tag, step, self.args.report_to or [],
                                           self.callback_handler.callbacks)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the recorded metrics (averaged since the last log) to `logs` and log; then print and send the
        `log_completions` table.  An evaluation's own log (its metrics already hold the evaluation's averages,
        added by `evaluation_loop`) leaves the training metrics for the next training log."""
        prefix = self._eval_log_prefix
        is_eval = prefix is not None and any(k.startswith(prefix + "_") for k in logs)
        if not is_eval and (self._metrics["train"] or self._function_metrics["train"]):
            logs = {**logs, **self._averaged_metrics("train", logs)}
        super().log(logs, start_time)
        if is_eval:
            self._eval_log_prefix = None
            self._flush_completions("eval", f"{prefix}_completions")
        else:
            self._flush_completions("train", "completions")

    # ------------------------------------------------------------------ evaluation
    def _check_eval_dataset(self, data, split: str = "eval", args=None) -> None:
        """An eval dataset must be map-style, fill one eval batch under `dataloader_drop_last` (else the evaluation
        sees no sample at all), choose its rows' reward by the same columns as the train dataset (else its samples
        are scored by another reward, and eval_loss measures another target), and fit the signatures of the reward
        functions and of `compute_metrics`.

        Raises:
            TypeError / ValueError: naming the dataset, the column or the function, and the fix.
        """
        args = args or self.args
        validation.check_dataset_type(data, split)
        batch = args.per_device_eval_batch_size * max(1, args.world_size)
        if args.dataloader_drop_last and len(data) < batch:
            raise ValueError(
                f"dataloader_drop_last=True drops every eval batch: the {split} dataset has {len(data)} rows but an "
                f"eval batch takes {batch} (per_device_eval_batch_size={args.per_device_eval_batch_size} x "
                f"{max(1, args.world_size)} processes), so the evaluation would see no sample. Lower "
                "per_device_eval_batch_size, give more eval rows, or set dataloader_drop_last=False."
            )
        columns = list(data.column_names)
        differ = [c for c in REWARD_COLUMNS if (c in columns) != (c in self._train_columns)]
        if differ:
            where = "; ".join(f"the {'train' if c in self._train_columns else split} dataset has a {c!r} column and "
                              f"the {split if c in self._train_columns else 'train'} dataset has none" for c in differ)
            raise ValueError(
                f"The {split} dataset would be scored by another reward than the train dataset: {where}. These "
                "columns choose a row's reward (reward_prompt: the reward LM's prompt, else the prompt; suffix: log "
                "p(Z Y | reward_prompt), else log p(Z stop | reward_prompt); contrast_suffix: the contrast penalty), "
                "so the evaluation's log-rewards and eval_loss would measure another target. Give both datasets the "
                "same reward columns."
            )
        if self.reward_functions is not None:
            self.reward_functions.check_signatures(columns, split)
        if self.compute_metrics is not None:
            passed = passed_columns(columns)
            clash = sorted(set(passed) & set(METRICS_ARGUMENTS))
            if clash:
                raise ValueError(f"The {split} dataset has the column(s) {clash}, which compute_metrics receives as "
                                 "its own arguments: rename them.")
            problem = signature_problem(self.compute_metrics, [*METRICS_ARGUMENTS, *passed])
            if problem is not None:
                raise _metrics_signature_error(problem, passed)

    def _tokenized_eval(self, data, split: str = "eval"):
        """A dataset given to `evaluate` / `predict` after construction, checked (`_check_eval_dataset`) and tokenized
        as the constructor tokenizes the eval dataset (unless it already is)."""
        columns = getattr(data, "column_names", None) or []
        if "prompt_ids" in columns and "gfn_key" in columns:  # tokenized already (e.g. trainer.eval_dataset)
            return data
        self._check_eval_dataset(data, split)
        config = self.accelerator.unwrap_model(self.model).config
        return tokenize_dataset(data, self.processing_class, config, self.args.max_completion_length, split,
                                self.args.chat_template_kwargs)

    def get_eval_dataloader(self, eval_dataset=None):
        """The HF Trainer's eval dataloader; a dataset passed to `evaluate(eval_dataset=...)` (one, or each of a
        dict) is checked and tokenized first, as the constructor's is.

        Raises:
            ValueError: no eval dataset, here or at construction.
        """
        if eval_dataset is None and self.eval_dataset is None:
            raise ValueError(f"{type(self).__name__}.evaluate() needs an eval dataset: pass eval_dataset=... to the "
                             "trainer or to evaluate() (rows with a 'prompt' column, and the train dataset's reward "
                             "columns).")
        if eval_dataset is not None and not isinstance(eval_dataset, str):
            eval_dataset = self._tokenized_eval(eval_dataset)
        elif isinstance(eval_dataset, str) and isinstance(self.eval_dataset, dict) \
                and eval_dataset in self.eval_dataset:
            # (one assigned to `trainer.eval_dataset[name]` after construction)
            self.eval_dataset[eval_dataset] = self._tokenized_eval(self.eval_dataset[eval_dataset],
                                                                   f"eval ({eval_dataset})")
        elif eval_dataset is None and not isinstance(self.eval_dataset, dict):
            self.eval_dataset = self._tokenized_eval(self.eval_dataset)  # (assigned to `trainer.eval_dataset`)
        return super().get_eval_dataloader(eval_dataset)

    def get_test_dataloader(self, test_dataset):
        """`predict(test_dataset)`: the evaluation (`evaluate`) on `test_dataset`, checked and tokenized first;
        its metrics carry the `test_` prefix and there are no predictions (latents are sampled, not logits)."""
        return super().get_test_dataloader(self._tokenized_eval(test_dataset, "test"))

    def eval_inputs(self, rows: list[dict]) -> RolloutBatch:
        """The evaluation batch of a list of eval rows: `num_generations` latents per prompt, on-policy at temperature
        1 with `eval_seeds`, scored by the reward; nothing is written to the replay buffer.  Subclasses extend it
        (PPO adds its rollout's values and advantages)."""
        expanded, group = self.expand(rows)
        prompt_ids, prompt_mask = self.prompt_batch(expanded)
        z, lengths = self.sample(expanded, prompt_ids, prompt_mask, 1.0, seeds=self.eval_seeds(expanded))
        log_r = self.score_latents(expanded, z, lengths)
        return RolloutBatch(prompt_ids=prompt_ids, prompt_mask=prompt_mask, z=z, lengths=lengths, log_r=log_r.float(),
                            group=group, rows=expanded, behaviour="on_policy", temperature=1.0)

    def prediction_step(self, model, inputs, prediction_loss_only: bool, ignore_keys=None):
        """One evaluation batch: sample (`eval_inputs`), the objective's loss on it (no gradients; its metrics
        recorded for the evaluation) and its latents kept for `compute_metrics` and the completions table.
        Returns (loss, None, None): there are no logits to compare."""
        with torch.no_grad():
            batch = self.eval_inputs(inputs)
            with self.compute_loss_context_manager():
                loss = self.compute_loss(model, batch)
            self.record_completions(batch)
        return loss.detach(), None, None

    def evaluation_loop(self, dataloader, description: str, prediction_loss_only: bool | None = None,
                        ignore_keys=None, metric_key_prefix: str = "eval"):
        """The HF Trainer's loop over the eval batches (`prediction_step`), with the recorded metrics averaged into its
        output as `<metric_key_prefix>_<name>`, and `compute_metrics` called on all the samples.

        Training state that a loss computation may touch is saved and restored around it (the heads: a learned log Z
        or a value head initialises itself from its first batch), so that evaluating never changes training."""
        heads = {name: copy.deepcopy(m.state_dict()) for name, (m, _) in self._heads.items()}
        self._mode = "eval"
        self._metrics["eval"].clear()
        self._function_metrics["eval"].clear()
        self._completions["eval"].clear()
        self._eval_samples = []
        try:
            output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys,
                                             metric_key_prefix)
            hf = [k[len(metric_key_prefix) + 1:] for k in output.metrics if k.startswith(f"{metric_key_prefix}_")]
            found = {f"{metric_key_prefix}_{k}": v for k, v in self._averaged_metrics("eval", hf).items()}
            found.update(output.metrics)
            task = self._task_metrics()
        finally:
            self._mode = "train"
            self._metrics["eval"].clear()
            self._function_metrics["eval"].clear()
            for name, (module, _) in self._heads.items():
                module.load_state_dict(heads[name])
            self._nonfinite = None
        # compute_metrics' names get the prefix unless they have it (the HF Trainer's rule), and may not replace
        # a metric of the trainer's own
        task = {k if k.startswith(f"{metric_key_prefix}_") else f"{metric_key_prefix}_{k}": v for k, v in task.items()}
        clash = sorted(set(task) & set(found))
        if clash:
            raise ValueError(f"compute_metrics returned {clash}, which the trainer logs itself (its loss and rollout "
                             "metrics): rename them.")
        output.metrics.update({**found, **task})
        self._eval_log_prefix = metric_key_prefix  # `log` recognises the evaluation's own log by it
        return output

    def _task_metrics(self) -> dict[str, float]:
        """`compute_metrics` on the evaluation's samples (main process; the result is broadcast to every rank)."""
        if self.compute_metrics is None:
            return {}
        result, error = [None], None
        if self.accelerator.is_main_process:
            try:
                result = [self._call_compute_metrics(self._eval_samples)]
            except Exception as e:  # raised on every rank below, so that none waits for the broadcast
                error, result = e, [f"{type(e).__name__}: {e}"]
        if self.accelerator.num_processes > 1:
            broadcast_object_list(result, from_process=0)
        self._eval_samples = []
        if error is not None:
            raise error
        if isinstance(result[0], str):
            raise RuntimeError(f"compute_metrics failed on the main process: {result[0]}")
        return result[0]

    def _call_compute_metrics(self, samples: list[dict]) -> dict[str, float]:
        columns = passed_columns(list(samples[0]["row"]) if samples else [])
        try:
            out = self.compute_metrics(
                prompts=[s["row"]["prompt"] for s in samples], completions=[s["completion"] for s in samples],
                completion_ids=[s["completion_ids"] for s in samples], log_rewards=[s["log_reward"] for s in samples],
                **{c: [s["row"][c] for s in samples] for c in columns},
            )
        except Exception as e:
            e.add_note(f"(raised by compute_metrics, called on the {len(samples)} latents of the evaluation)")
            raise
        if not isinstance(out, dict) or not all(isinstance(k, str) for k in out):
            raise TypeError(f"compute_metrics must return a dict of metric names to numbers, got {out!r}.")
        try:
            return {k: float(v) for k, v in out.items()}
        except (TypeError, ValueError) as e:
            raise TypeError(f"compute_metrics must return numbers, got {out!r} ({e}).") from None

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
        self._nonfinite = None  # set by flag_nonfinite during compute_loss
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self._heads and self.accelerator.num_processes > 1:
            for module, _ in self._heads.values():  # the heads live outside the DDP-wrapped model
                for p in module.parameters():
                    if p.grad is not None:
                        p.grad = self.accelerator.reduce(p.grad, reduction="mean")
        self._stop_if_nonfinite(model, loss)
        return loss

    # ------------------------------------------------------------------ non-finite values
    def flag_nonfinite(self, term: str, values: torch.Tensor, used: torch.Tensor | None = None,
                       allow_neg_inf: bool = False, detail: str = "") -> None:
        """Note that `term` holds NaN or ±inf (-inf allowed with `allow_neg_inf`) where `used`.  `training_step`
        stops training after the backward pass, on every rank at once, before the optimizer step."""
        if self._nonfinite is not None:
            return
        v = values.detach()
        bad = torch.isnan(v) | (v == float("inf"))
        if not allow_neg_inf:
            bad = bad | (v == float("-inf"))
        if used is not None:
            bad = bad & used
        if bool(bad.any()):
            self._nonfinite = f"{term} holds {v[bad][:3].tolist()}{detail}"

    def _stop_if_nonfinite(self, model, loss: torch.Tensor) -> None:
        problem = self._nonfinite
        if problem is None and not bool(torch.isfinite(loss.detach()).all()):
            problem = f"the loss is {loss.detach().float().mean().item()}"
        if problem is None:
            named = list(model.named_parameters()) + [
                (f"{name} head: {n}", p) for name, (m, _) in self._heads.items() for n, p in m.named_parameters()
            ]
            bad = validation.nonfinite_gradients(named)
            if bad:
                more = f" (and {len(bad) - 1} more parameters)" if len(bad) > 1 else ""
                problem = f"the gradient of {bad[0]}{more} holds NaN or inf"
        if self.accelerator.num_processes > 1:  # every rank stops, or none
            flag = torch.tensor([float(problem is not None)], device=self.accelerator.device)
            if float(self.accelerator.gather(flag).max()) == 0:
                return
            problem = problem or "another process found a non-finite value"
        if problem is None:
            return
        step = self.state.global_step + 1
        last = ckpt.last_complete_checkpoint(self.args.output_dir)
        raise FloatingPointError(
            f"Non-finite value at optimizer step {step}: {problem}. Training stopped before that step's update, so "
            f"the weights are those after step {step - 1} and no checkpoint was written after it (the last one: "
            f"{last or 'none'}). Usual causes: a learning rate too high (learning_rate={self.args.learning_rate}), "
            "a reward temperature so small that log R / T_R overflows, or low precision. Fix the setting and resume "
            "from the last checkpoint."
        )

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
        """Train.  `resume_from_checkpoint=True` resumes from the newest *complete* checkpoint in `output_dir`
        (`gfn_trl.checkpoints`), warning about each newer one it skips; a path must be a complete checkpoint of a
        run like this one (same fingerprint and optimizer settings).  A fresh run refuses an `output_dir` that holds
        checkpoints unless `overwrite_output_dir` (then they are deleted first)."""
        out = self.args.output_dir
        if self.args.should_save:
            for stale in ckpt.remove_stale_staging(out):
                logger.warning(f"Removed {stale}: an interrupted checkpoint save.")
        if resume_from_checkpoint is True:
            skipped = []
            found = ckpt.last_complete_checkpoint(out, warn=lambda msg: (skipped.append(msg), logger.warning(msg)))
            if found is None:
                raise ValueError(
                    f"resume_from_checkpoint=True but {out} holds no complete checkpoint"
                    f"{': ' + ' '.join(skipped) if skipped else ''}. Start without resume_from_checkpoint (with "
                    "overwrite_output_dir=True if old checkpoints are there), or pass a checkpoint folder."
                )
            resume_from_checkpoint = found
        elif isinstance(resume_from_checkpoint, (str, os.PathLike)):
            resume_from_checkpoint = str(resume_from_checkpoint)
            problem = ckpt.checkpoint_problem(resume_from_checkpoint)
            if problem is not None:
                if not os.path.exists(resume_from_checkpoint):
                    raise FileNotFoundError(f"resume_from_checkpoint: {problem}.")
                parent = os.path.dirname(os.path.abspath(resume_from_checkpoint))
                newest = ckpt.last_complete_checkpoint(parent)
                raise ValueError(
                    f"{resume_from_checkpoint} is not a complete {type(self).__name__} checkpoint: {problem}. Resume "
                    f"from {newest or 'an earlier checkpoint'} instead, or pass resume_from_checkpoint=True to pick "
                    "the newest complete one."
                )
        elif not resume_from_checkpoint:
            self._claim_output_dir()
        if resume_from_checkpoint:
            self._check_resume(resume_from_checkpoint)
        return super().train(resume_from_checkpoint=resume_from_checkpoint, trial=trial, **kwargs)

    def _claim_output_dir(self) -> None:
        """A fresh run must not write beside (or over) another run's checkpoints."""
        existing = ckpt.checkpoint_folders(self.args.output_dir)
        names = ", ".join(os.path.basename(p) for p in existing)
        if existing and not self.args.overwrite_output_dir:
            raise ValueError(
                f"output_dir {self.args.output_dir} already holds checkpoints of an earlier run ({names}). Pass "
                "resume_from_checkpoint=True to continue that run, set overwrite_output_dir=True to delete them and "
                "start afresh, or choose another output_dir."
            )
        if existing and self.args.should_save:
            logger.warning(f"overwrite_output_dir=True: deleting the earlier run's checkpoints in "
                           f"{self.args.output_dir} ({names}).")
            for path in existing:
                shutil.rmtree(path)
        self.accelerator.wait_for_everyone()  # (every rank, whatever it saw: the main process may be deleting)

    def fingerprint_extra(self) -> dict:
        """What a subclass adds to the run's fingerprint (e.g. the loss and the log-Z mode)."""
        return {}

    def run_fingerprint(self) -> dict:
        """What a resume must share with the run that wrote the checkpoint (stored in its manifest)."""
        unwrapped = self.accelerator.unwrap_model(self.model)
        if self.is_peft:
            cfg = unwrapped.peft_config["default"]
            targets = cfg.target_modules if isinstance(cfg.target_modules, str) else sorted(cfg.target_modules)
            adapter = f"{type(cfg).__name__} r={getattr(cfg, 'r', None)} alpha={getattr(cfg, 'lora_alpha', None)} " \
                      f"targets={targets}"
        else:
            adapter = "none (full fine-tuning)"
        heads = {name: [list(p.shape) for p in m.parameters()] for name, (m, _) in self._heads.items()}
        return {**self._base_fingerprint, "trainer": type(self).__name__, "adapter": adapter, "heads": repr(heads),
                "processes": self.args.world_size, **self.reward_spec().fingerprint(), **self.fingerprint_extra()}

    def fixed_settings(self) -> dict:
        """The settings a checkpoint's optimizer and scheduler state carry (a resume restores them, so a changed
        value would be ignored): refused on resume rather than silently overridden."""
        a = self.args
        out = {"learning_rate": a.learning_rate, "weight_decay": a.weight_decay, "adam_beta1": a.adam_beta1,
               "adam_beta2": a.adam_beta2, "adam_epsilon": a.adam_epsilon, "optim": str(getattr(a.optim, "value",
                                                                                                  a.optim))}
        out.update({f"{name}_learning_rate": lr for name, (_, lr) in self._heads.items()})
        return out

    def _check_resume(self, path: str) -> None:
        manifest = ckpt.read_manifest(path)
        saved_fingerprint = manifest.get("fingerprint") or {}
        if not saved_fingerprint:
            logger.warning(f"{path} records no run fingerprint: it cannot be checked against this run.")
        differences = ckpt.fingerprint_differences(saved_fingerprint, self.run_fingerprint()) if saved_fingerprint \
            else []
        if differences:
            raise ValueError(
                f"Cannot resume from {path}: it was written by a different run ({'; '.join(differences)}). Resume "
                "with the same base model, tokenizer, adapter, loss and number of processes, or start a new run in "
                "another output_dir."
            )
        saved, now = manifest.get("fixed_settings", {}), self.fixed_settings()
        changed = [f"{k}: checkpoint {saved[k]!r}, now {now.get(k)!r}" for k in sorted(saved) if saved[k] != now.get(k)]
        if changed:
            raise ValueError(
                f"Cannot resume from {path} with changed optimizer settings ({'; '.join(changed)}): the optimizer "
                "and scheduler states restored from the checkpoint carry the old values, so the new ones would be "
                "silently ignored. Resume with the checkpoint's values, or start a new run from its weights."
            )

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

    def create_model_card(self, model_name=None, dataset_name=None, tags=None):
        """gfn_trl's model card (`gfn_trl.trainers.model_card`) in `output_dir`, in place of TRL's template."""
        if self.is_world_process_zero():
            write_model_card(self, self.args.output_dir, model_name=model_name, dataset_name=dataset_name, tags=tags)

    def _save(self, output_dir=None, state_dict=None):
        super()._save(output_dir, state_dict)
        if self.args.should_save:  # every saved model carries its card
            write_model_card(self, output_dir or self.args.output_dir)

    def _save_checkpoint(self, model, trial):
        """Write the checkpoint in a staging folder, then its manifest, then rename it to `checkpoint-N`
        (`gfn_trl.checkpoints`): an interrupted save leaves no `checkpoint-N`, and none is ever a mix of two runs."""
        a = self.args
        model_name = Path(a.output_dir).name if a.hub_model_id is None else a.hub_model_id.split("/")[-1]
        self.create_model_card(model_name=model_name)
        if self.hp_search_backend is None and trial is None:
            self.store_flos()
        run_dir = self._get_output_dir(trial=trial)
        final = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        staging = ckpt.staging_folder(final)
        if a.should_save and os.path.exists(staging):
            shutil.rmtree(staging)
        self.accelerator.wait_for_everyone()

        self.save_model(staging, _internal_call=True)  # weights or adapter, tokenizer, training_args.bin
        best_step = self.state.best_global_step
        if a.save_strategy in (SaveStrategy.STEPS, SaveStrategy.EPOCH, SaveStrategy.BEST) and best_step:
            best = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{best_step}")
            if best_step == self.state.global_step or os.path.exists(best):
                self.state.best_model_checkpoint = best
        resumable = not a.save_only_model
        if resumable:
            self._save_optimizer_and_scheduler(staging)
            self._save_scaler(staging)
            self._save_rng_state(staging)
        os.makedirs(staging, exist_ok=True)
        torch.save(self.trainer_state_dict(), self._state_file(staging))
        if a.should_save:
            for cb in self.callback_handler.callbacks + [self.control]:
                if isinstance(cb, ExportableState):  # the callbacks' state, as the Trainer keeps it
                    name = type(cb).__name__
                    if isinstance(self.state.stateful_callbacks.get(name), list):
                        self.state.stateful_callbacks[name].append(cb.state())
                    else:
                        self.state.stateful_callbacks[name] = cb.state()
            self.state.save_to_json(os.path.join(staging, TRAINER_STATE_NAME))
        self.accelerator.wait_for_everyone()  # every rank's files are in the staging folder
        if a.should_save:
            ckpt.write_manifest(staging, self.run_fingerprint(), self.fixed_settings(), resumable)
            ckpt.publish(staging, final)
        self.accelerator.wait_for_everyone()
        if a.push_to_hub:
            self._push_from_checkpoint(final)
        if a.should_save:
            rotate_checkpoints(output_dir=run_dir, save_total_limit=a.save_total_limit,
                               best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=True)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        try:
            super()._load_from_checkpoint(resume_from_checkpoint, model)
        except Exception as e:
            raise RuntimeError(
                f"Could not load the model weights of {resume_from_checkpoint} ({type(e).__name__}: {e})."
            ) from e

    def _load_optimizer_and_scheduler(self, checkpoint):
        if checkpoint is not None and not (self.is_deepspeed_enabled or self.is_fsdp_enabled):
            for name in (OPTIMIZER_NAME, SCHEDULER_NAME):  # the Trainer would go on with fresh ones, silently
                if not os.path.isfile(os.path.join(checkpoint, name)):
                    raise FileNotFoundError(f"{os.path.join(checkpoint, name)} is missing: the run cannot resume "
                                            "exactly from this checkpoint.")
        try:
            super()._load_optimizer_and_scheduler(checkpoint)
        except Exception as e:
            raise RuntimeError(
                f"Could not load the optimizer or scheduler state of {checkpoint} ({type(e).__name__}: {e})."
            ) from e
        if checkpoint is None:
            return
        path = self._state_file(checkpoint)
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"{path} is missing: this checkpoint was not written by {type(self).__name__} (or with another "
                "number of processes), so the trainer's own state cannot be restored."
            )
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise RuntimeError(f"Could not load {path} ({type(e).__name__}: {e}).") from e
        self.load_trainer_state_dict(state)

"""Non-GFlowNet baselines on the GFlowNet's reward and latent space: GRPO, RLOO and SFT through TRL's own trainers.
(The decoding baselines, greedy, beam, nucleus and sampling: `gfn_trl.evaluation.decoding`.)

Every baseline is compared with the GFlowNet under the same terms:

* **the same reward**: `LatentLogReward` gives a completion the GFlowNet's final-state log R(Z) =
  log p_LM(Z Y | reward_prompt) (fixed suffix) or log p_LM(Z ⊤ | reward_prompt) (stop token), untempered, from the
  same `LikelihoodReward` on the same token-level concatenation; with `reward_funcs`, each function becomes a
  `LatentRewardFunction` called on exactly the GFlowNet's inputs (the latent cut at the stop, decoded alike), and
  TRL's weighted sum with `reward_weights = [lm_reward_weight] + reward_weights` is the GFlowNet's tilted
  log R(Z) = α · log p_LM + Σ_i w_i r_i(Z);
* **the same latent space**: `LatentConstraints` (vocabulary mask, no stop before `min_length`, stop forced at
  `max_length`) reaches TRL's `generate` through `GRPOConfig.generation_kwargs` / `RLOOConfig.generation_kwargs`
  (`constrained_generation_kwargs`);
* **the same starting point, LoRA and reward LM**: built by `gfn_trl.trainers.setup`, as the GFlowNet trainer
  builds them (LoRA targets resolved alike; the reward LM is the adapter-disabled base with PEFT, else a frozen copy
  of the initial model).

What the TRL trainers do *not* share with the GFlowNet: their loss log-probabilities (and RLOO's KL to the reference)
are of the model's *unmasked* softmax, while the sampler is masked.  The sampled distribution, which is what every
comparison measures, is exactly the constrained policy at temperature 1 (TRL's defaults temperature=1, top_p=1,
top_k=0, min_p=None; keep them).

Dimension legend: B rows, T latent width, V vocabulary.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from datasets import Dataset

from ..data import tokenize_dataset
from ..models import resolve_peft_config
from ..rewards import LikelihoodReward
from ..rewards.functions import RewardFunctions
from ..sampling import LatentConstraints, clean_generation_config, latent_batch
from ..tokenization import encode_continuation, encode_prompt, output_rows
from . import setup

# ---------------------------------------------------------------------------------------------------------------------
# Shared set-up: constraints, LoRA, the latent a completion encodes


def latent_constraints(
    tokenizer,
    max_length: int,
    min_length: int = 0,
    stop_token: str | None = None,
    vocab_mask: torch.Tensor | None = None,
    tool=None,
    model=None,
) -> LatentConstraints:
    """The `LatentConstraints` the GFlowNet trainer builds from the same settings, with the same checks:
    `gfn_trl.trainers.setup.latent_space` (stop token: EOS by default, or a text that must encode to exactly one
    token; `vocab_mask`: (V,) bool, the tokens a latent may use, or a function tokenizer -> mask; `tool`: a
    `gfn_trl.tools` tool whose outputs are forced tokens; `model`: the policy, whose number of logits is checked).

    Raises:
        ValueError, TypeError: as `gfn_trl.trainers.setup.latent_space`.
    """
    return setup.latent_space(tokenizer, max_length, min_length, stop_token, vocab_mask, tool, model)


def completion_to_latent(completion_ids: Sequence[int], constraints: LatentConstraints) -> list[int]:
    """The latent a sampled completion encodes: its tokens before the first stop token.  A completion without a stop
    is cut at `max_length`: it is the forced-stop latent (the constrained policy stops there by force)."""
    ids = list(completion_ids)
    if constraints.stop_token_id in ids:
        return ids[: ids.index(constraints.stop_token_id)]
    return ids[: constraints.max_length]


# ---------------------------------------------------------------------------------------------------------------------
# 1. The reward, as a TRL reward function

_ROW_COLUMNS = ("reward_prompt_ids", "suffix_ids", "gfn_has_suffix", "contrast_suffix_ids")
_OPTIONAL_ROW_COLUMNS = ("contrast_margin",)


class LatentLogReward:
    """A TRL reward function (`GRPOTrainer(reward_funcs=[...])`, `RLOOTrainer`) that gives each completion the
    GFlowNet's reward: the final-state, untempered log R(Z) from `LikelihoodReward`.

    TRL calls it as `f(prompts=..., completions=..., completion_ids=..., **columns)` where `columns` are every other
    dataset column, one value per completion (trl/trainer/grpo_trainer.py `_calculate_rewards`).  It reads the
    columns `gfn_trl.data.tokenize_dataset` adds (`reward_prompt_ids`, `suffix_ids`, `gfn_has_suffix`,
    `contrast_suffix_ids`), so the train dataset must have gone through it (`build_grpo_trainer` does that).  Each
    completion is cut at its first stop token (`completion_to_latent`); the reward is computed on token ids,
    `reward_prompt_ids + Z [+ suffix_ids]`, never on decoded text.

    TRL gives a reward function no handle on the policy, so the reward LM is fixed here: a separate frozen LM
    (e.g. a copy of the initial model made *before* the trainer wraps it), or, through
    `use(peft_policy, disable_adapter=True)`, the PEFT policy's adapter-disabled base (the GFlowNet trainer's default:
    no second copy of the weights; `build_grpo_trainer` binds it after TRL has wrapped the model).

    Args:
        reward_model: the frozen reward LM (sharing the tokenizer), used as is; or None, then call `use` before the
            first call.
        constraints: the latent space (its stop token and `max_length` define the latent of a completion).
        pad_token_id: the tokenizer's padding id.
        chunk_size: rows scored at once.
        contrast_penalty: as in `LikelihoodReward` (rows with a `contrast_suffix`).
    Returns (call): a list of floats, log R(Z) per completion.
    """

    __name__ = "log_likelihood_reward"  # TRL names the logged metric `rewards/<__name__>/mean`

    def __init__(
        self,
        reward_model,
        constraints: LatentConstraints,
        pad_token_id: int,
        chunk_size: int | None = None,
        contrast_penalty: float = -50.0,
    ):
        self.constraints, self.pad_token_id = constraints, pad_token_id
        self.chunk_size, self.contrast_penalty = chunk_size, contrast_penalty
        self.reward: LikelihoodReward | None = None
        if reward_model is not None:
            self.use(reward_model)

    def use(self, model, disable_adapter: bool = False, autocast=None) -> LatentLogReward:
        """Score with `model`: a frozen LM (put in eval mode, gradients off), or with `disable_adapter=True` a PEFT
        policy whose adapter-disabled base is the reward.  `autocast`: a context-manager factory for the reward
        pass (e.g. the trainer's `accelerator.autocast`, as the GFlowNet trainer does)."""
        if disable_adapter:
            if not hasattr(model, "disable_adapter"):
                raise ValueError("disable_adapter=True needs a PEFT model (one with an adapter to disable).")
            policy, separate = model, None
        else:
            policy, separate = None, model
            separate.eval()
            separate.requires_grad_(False)
        self.reward = LikelihoodReward(
            policy,
            separate,
            self.constraints.stop_token_id,
            self.pad_token_id,
            self.chunk_size,
            autocast,
            self.contrast_penalty,
        )
        return self

    @torch.no_grad()
    def final_log_rewards(self, rows: list[dict], latents: list[list[int]]) -> torch.Tensor:
        """(B,) untempered log R(Z ⊤) of `latents` (token ids, no stop) for tokenized `rows` (one per latent)."""
        if self.reward is None:
            raise RuntimeError("LatentLogReward has no reward model: pass one, or call .use(model) first.")
        z, lengths = latent_batch(latents, self.constraints.stop_token_id, self.reward.device)
        return self.reward.final(rows, z, lengths)  # one copy of the suffix per row: no per-prefix rewards needed

    def __call__(self, prompts, completions, completion_ids, **columns) -> list[float]:
        missing = [c for c in _ROW_COLUMNS if c not in columns]
        if missing:
            raise KeyError(
                f"LatentLogReward needs the dataset columns {missing}: tokenize the train dataset with "
                "gfn_trl.data.tokenize_dataset (build_grpo_trainer / build_rloo_trainer do) before giving it to TRL."
            )
        # optional: a calibrated judge's per-row margin for the contrast penalty (LikelihoodReward, subjectivity)
        extra = [c for c in _OPTIONAL_ROW_COLUMNS if c in columns]
        rows = [{c: columns[c][i] for c in (*_ROW_COLUMNS, *extra)} for i in range(len(completion_ids))]
        latents = [completion_to_latent(ids, self.constraints) for ids in completion_ids]
        return self.final_log_rewards(rows, latents).tolist()


# Keyword arguments TRL passes to every reward function besides the dataset's columns (trl/trainer/grpo_trainer.py
# `_calculate_rewards`)
_TRL_EXTRAS = ("trainer_state", "log_extra", "log_metric", "environments")


class LatentRewardFunction:
    """Function `index` of a `RewardFunctions` as a TRL reward function, given the inputs the GFlowNet trainer gives
    it: the latent each completion encodes (`completion_to_latent`: cut at the first stop, or at `max_length`), its
    ids without the stop, its text decoded as the GFlowNet decodes it, the rows' `prompt` and their other original
    columns (not those `tokenize_dataset` adds), and TRL's `trainer_state`, `log_metric`, `log_extra`.  A function
    scored by `RewardFunctions.score`, so NaN and ±inf are refused as in the GFlowNet; None stays None (TRL then leaves
    the term out of the sum, as the GFlowNet does).

    Returns (call): a list with one float or None per completion.
    """

    def __init__(self, functions: RewardFunctions, index: int, constraints: LatentConstraints, tokenizer):
        self.functions, self.index, self.constraints, self.tokenizer = functions, index, constraints, tokenizer
        self.__name__ = functions.names[index]  # TRL logs `rewards/<__name__>/mean`

    def __call__(self, prompts, completions, completion_ids, **kwargs) -> list[float | None]:
        extra = {k: kwargs.pop(k) for k in _TRL_EXTRAS if k in kwargs}
        latents = [completion_to_latent(ids, self.constraints) for ids in completion_ids]
        rows = [{"prompt": p, **{c: v[j] for c, v in kwargs.items()}} for j, p in enumerate(prompts)]
        z, lengths = latent_batch(latents, self.constraints.stop_token_id)
        scores = self.functions.score(rows, z, lengths, self.tokenizer, extra=extra, only=self.index)
        at = torch.arange(len(latents))
        values = scores.values[at, self.index, lengths].tolist()
        given = scores.given[at, self.index, lengths].tolist()
        return [v if g else None for v, g in zip(values, given)]


# ---------------------------------------------------------------------------------------------------------------------
# 2. GRPO and RLOO: TRL's own trainers, sampling from the constrained latent space


def constrained_generation_kwargs(constraints: LatentConstraints, vocab_size: int, other_eos_ids=()) -> dict:
    """`generation_kwargs` that make HF `generate` sample exactly the constrained latent space:

    * `suppress_tokens`: every token the vocabulary mask does not allow (never the stop token), plus any other
      end-of-sequence id TRL would stop at (`other_eos_ids`: TRL always stops at the tokenizer's EOS, so when the
      stop is another token, e.g. ".", the EOS leaves the latent vocabulary even if the mask allows it);
    * `min_new_tokens = min_length`: no stop before `min_length` latent tokens;
    * `forced_eos_token_id = stop`: with `max_new_tokens = max_length + 1` (set `max_completion_length` so) the
      stop is forced after `max_length` latent tokens, as `LatentConstraints` forces it.
    """
    allowed = torch.ones(vocab_size, dtype=torch.bool)
    if constraints.allowed is not None:
        mask = constraints.allowed[:vocab_size]
        allowed = torch.zeros(vocab_size, dtype=torch.bool)
        allowed[: mask.shape[0]] = mask  # ids beyond the mask (a vocabulary padded past the tokenizer's) are banned
    for eos in other_eos_ids:
        if eos is not None and eos != constraints.stop_token_id:
            allowed[eos] = False
    allowed[constraints.stop_token_id] = True
    kwargs = {"forced_eos_token_id": constraints.stop_token_id, "min_new_tokens": constraints.min_length}
    suppress = (~allowed).nonzero().flatten().tolist()
    if suppress:
        kwargs["suppress_tokens"] = suppress
    return kwargs


def _build_online_rl_trainer(
    trainer_cls,
    model,
    args,
    train_dataset,
    constraints,
    processing_class,
    peft_config,
    reward_model,
    callbacks,
    chunk_size,
    reward_funcs=None,
    reward_weights=None,
    lm_reward_weight: float = 1.0,
    reward_processing_classes=None,
    contrast_penalty: float = -50.0,
):
    # the reward functions and their weights, checked as the GFlowNet trainer checks them, before any model is loaded
    functions = None
    if reward_funcs is not None and (not isinstance(reward_funcs, (list, tuple)) or len(reward_funcs)):
        functions = RewardFunctions(reward_funcs, reward_weights, reward_processing_classes, chunk_size=chunk_size)
        functions.check_signatures(train_dataset.column_names, "train")
    elif reward_weights is not None:
        raise ValueError("reward_weights are the weights of reward_funcs, but no reward_funcs were given.")
    if isinstance(lm_reward_weight, bool) or not isinstance(lm_reward_weight, (int, float)) \
            or not math.isfinite(lm_reward_weight) or lm_reward_weight < 0:
        raise ValueError(f"lm_reward_weight must be a finite number >= 0, got {lm_reward_weight!r}.")
    if lm_reward_weight == 0 and functions is None:
        raise ValueError("lm_reward_weight=0 drops the LM prior and no reward_funcs were given: there is no reward.")
    if lm_reward_weight == 0 and reward_model is not None:
        raise ValueError("reward_model is the LM of the prior term, but lm_reward_weight=0 drops that term.")
    tilted = functions is not None or lm_reward_weight != 1
    if tilted and getattr(args, "reward_weights", None) is not None:
        raise ValueError(
            "args.reward_weights is set here from the builder's lm_reward_weight and reward_weights ([lm_reward_weight]"
            " + reward_weights, the LM reward first): pass the weights to the builder and leave args.reward_weights "
            "unset."
        )
    if tilted and getattr(args, "multi_objective_aggregation", "sum_then_normalize") != "sum_then_normalize":
        raise ValueError("The GFlowNet's reward is the weighted sum of the terms: keep TRL's multi_objective_"
                         "aggregation='sum_then_normalize' so that GRPO/RLOO are given the same reward.")
    model, tokenizer, _ = setup.load_policy(model, processing_class)
    stop = constraints.stop_token_id
    # TRL's `generate` fills every generation field its own config leaves unset from `model.generation_config`, so a
    # checkpoint's shipped settings (repetition penalty, n-gram bans, bad words, ...) would reshape the sampled
    # policy: give the model a clean config, as our own sampler ignores it (`gfn_trl.sampling`).  TRL ends a
    # completion at the tokenizer's EOS and at every id of its `eos_token_id`, and cuts the completion after the
    # first of them: make the stop the model's only one (the tokenizer's EOS, if it is not the stop, is suppressed
    # below).
    model.generation_config = clean_generation_config(
        eos_token_id=[stop], pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id
    )

    # the reward LM: a separate one, else (full fine-tuning) a frozen copy of the initial model, else (PEFT) None:
    # the adapter-disabled base of the policy, bound below once TRL has wrapped the model
    reward_fn = None
    if lm_reward_weight != 0:
        reward_model, _ = setup.reward_model(model, peft_config is not None, reward_model, tokenizer=tokenizer,
                                             policy_rows=output_rows(model))
        reward_fn = LatentLogReward(reward_model, constraints, tokenizer.pad_token_id, chunk_size, contrast_penalty)
    trl_funcs = [reward_fn] if reward_fn is not None else []
    if functions is not None:
        trl_funcs += [LatentRewardFunction(functions, i, constraints, tokenizer) for i in range(len(functions))]
    if tilted:  # TRL's weighted sum (nansum: None left out) is then α · log p_LM + Σ_i w_i r_i
        args.reward_weights = ([float(lm_reward_weight)] if reward_fn is not None else []) + \
            (functions.weights if functions is not None else [])

    args.max_completion_length = constraints.max_length + 1
    vocab_size = output_rows(model)
    ours = constrained_generation_kwargs(constraints, vocab_size, [tokenizer.eos_token_id])
    args.generation_kwargs = {**(args.generation_kwargs or {}), **ours}
    dataset = tokenize_dataset(train_dataset, tokenizer, model.config, constraints.max_length, "train")
    trainer = trainer_cls(
        model=model,
        reward_funcs=trl_funcs,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=resolve_peft_config(model, peft_config),
        callbacks=callbacks,
    )
    policy = trainer.accelerator.unwrap_model(trainer.model)
    if reward_fn is None:
        pass  # no LM prior
    elif reward_model is None:  # PEFT: the adapter-disabled base of the policy is the reward
        reward_fn.use(policy, disable_adapter=True, autocast=trainer.accelerator.autocast)
    else:
        reward_fn.use(reward_model.to(trainer.accelerator.device), autocast=trainer.accelerator.autocast)
    if functions is not None:
        functions.to(trainer.accelerator.device)
    trainer.latent_reward, trainer.constraints, trainer.reward_functions = reward_fn, constraints, functions
    return trainer


def build_grpo_trainer(
    model,
    args,
    train_dataset: Dataset,
    constraints: LatentConstraints,
    processing_class=None,
    peft_config=None,
    reward_model=None,
    callbacks=None,
    reward_chunk_size: int | None = None,
    reward_funcs=None,
    reward_weights=None,
    lm_reward_weight: float = 1.0,
    reward_processing_classes=None,
    contrast_penalty: float = -50.0,
):
    """TRL's `GRPOTrainer`, unmodified, rewarded with the GFlowNet's log R(Z) and sampling the constrained latent space.

    Args:
        model: a model object or a hub id / local directory.  Its `generation_config.eos_token_id` is set to the stop.
        args (`trl.GRPOConfig`): set here: `max_completion_length = max_length + 1` and `generation_kwargs`
            (`constrained_generation_kwargs`, merged over yours).  Keep TRL's sampling defaults (temperature 1,
            top_p 1, top_k 0) for the sampler to be the constrained policy; set `disable_dropout=True` for
            generation to sample the eval-mode policy.  TRL's configs default to `bf16=True` (autocast, on CPU too);
            the reward pass then runs under the trainer's autocast, as the GFlowNet's does (GFlowNetConfig's
            default is float32: set `bf16=False` to compare like with like).
        train_dataset: the GFlowNet data contract (`prompt`, optional `reward_prompt`, `suffix`, `contrast_suffix`);
            tokenized here with `tokenize_dataset`, whose columns reach the reward function.
        constraints: the latent space (`latent_constraints`, or a GFlowNet trainer's `.constraints`).
        peft_config: LoRA; targets resolved as in the GFlowNet trainer (`resolve_peft_config`).
        reward_model: a separate frozen reward LM.  Default: with PEFT the policy's adapter-disabled base, without
            it a frozen copy of the initial model (as the GFlowNet trainer does).
        reward_funcs, reward_weights, lm_reward_weight, reward_processing_classes: the GFlowNet trainer's tilted
            reward α · log p_LM + Σ_i w_i r_i (`gfn_trl.rewards.functions`): each function is given to TRL as a
            `LatentRewardFunction` (the GFlowNet's inputs) and `args.reward_weights` is set to
            `[lm_reward_weight] + reward_weights` (without the LM term when α = 0); leave `args.reward_weights`
            unset and TRL's `multi_objective_aggregation` at its default, `"sum_then_normalize"`.
        contrast_penalty: added to log R of a latent after which a row's `contrast_suffix` is more likely than its
            `suffix` (`LikelihoodReward`; the GFlowNet's `contrast_penalty`).
    Returns: the trainer, with `.latent_reward` (the `LatentLogReward`, None when α = 0), `.reward_functions` and
    `.constraints` attached.

    Raises:
        ValueError: `args.reward_weights` set together with reward functions or α != 1; another aggregation; a bad
            `lm_reward_weight`, no reward at all (α = 0 without functions), or weights without functions.
    """
    from trl import GRPOTrainer

    return _build_online_rl_trainer(
        GRPOTrainer,
        model,
        args,
        train_dataset,
        constraints,
        processing_class,
        peft_config,
        reward_model,
        callbacks,
        reward_chunk_size,
        reward_funcs,
        reward_weights,
        lm_reward_weight,
        reward_processing_classes,
        contrast_penalty,
    )


def build_rloo_trainer(
    model,
    args,
    train_dataset: Dataset,
    constraints: LatentConstraints,
    processing_class=None,
    peft_config=None,
    reward_model=None,
    callbacks=None,
    reward_chunk_size: int | None = None,
    reward_funcs=None,
    reward_weights=None,
    lm_reward_weight: float = 1.0,
    reward_processing_classes=None,
    contrast_penalty: float = -50.0,
):
    """TRL's `RLOOTrainer`, unmodified, set up exactly as `build_grpo_trainer` (see there, also for the reward
    functions); `args` is an `RLOOConfig`.  RLOO's default `beta=0.05` KL to the reference (with PEFT: the
    adapter-disabled base) is kept."""
    from trl import RLOOTrainer

    return _build_online_rl_trainer(
        RLOOTrainer,
        model,
        args,
        train_dataset,
        constraints,
        processing_class,
        peft_config,
        reward_model,
        callbacks,
        reward_chunk_size,
        reward_funcs,
        reward_weights,
        lm_reward_weight,
        reward_processing_classes,
        contrast_penalty,
    )


# ---------------------------------------------------------------------------------------------------------------------
# 3. SFT on gold latents: TRL's SFTTrainer


def sft_dataset(dataset: Dataset, tokenizer, stop_token_id: int, gold_column: str = "completion",
                chat_template_kwargs: dict | None = None) -> Dataset:
    """The prompt-completion SFT data, tokenized on our terms: `input_ids = tokens(prompt) + Z_gold + [stop]` and
    `completion_mask` (1 on Z_gold and the stop), which TRL's `SFTTrainer` takes as an already-processed dataset.

    `gold_column` holds each row's gold latent, as text (tokenized as a continuation, `gfn_trl.tokenization.
    encode_continuation`, as `score_texts` does) or as token ids.  A gold latent ending in the stop token is not given
    a second one.  The prompt (text or a conversation, rendered with `chat_template_kwargs`) is tokenized as
    `tokenize_dataset` tokenizes it, so SFT trains q(Z | prompt) on the very token sequences the GFlowNet samples.

    Tokenizing here instead of giving TRL the text (prompt + completion + EOS) keeps Z on token ids (no decode/encode
    round trip, no merge across the prompt/completion boundary) and ends it with *our* stop token, which is not
    TRL's automatic EOS when the stop is, e.g., ".".
    """
    for column in ("prompt", gold_column):
        if column not in dataset.column_names:
            raise ValueError(f"The SFT dataset needs a {column!r} column (columns: {dataset.column_names}).")

    def tokenize(row):
        prompt = encode_prompt(tokenizer, row["prompt"], chat_template_kwargs)  # as tokenize_dataset does
        gold = row[gold_column]
        gold = encode_continuation(tokenizer, gold) if isinstance(gold, str) else list(gold)
        if gold and gold[-1] == stop_token_id:
            gold = gold[:-1]
        completion = gold + [stop_token_id]
        return {"input_ids": prompt + completion, "completion_mask": [0] * len(prompt) + [1] * len(completion)}

    return dataset.map(tokenize, remove_columns=dataset.column_names, desc="Tokenizing the SFT gold latents")


def build_sft_trainer(
    model,
    args,
    train_dataset: Dataset,
    stop_token_id: int,
    processing_class=None,
    peft_config=None,
    gold_column: str = "completion",
    callbacks=None,
):
    """TRL's `SFTTrainer`, unmodified, on gold latents: cross-entropy on Z_gold + stop given the prompt (LoRA through
    `peft_config`, targets resolved as for the GFlowNet).

    Args:
        args (`trl.SFTConfig`): `completion_only_loss` is set to True here (the loss is on the latent and the stop
            only); an explicit False is refused.
        train_dataset: `prompt` and `gold_column` (text or token ids of the gold latent, without the stop).
        stop_token_id: the stop token that ends every latent (e.g. `constraints.stop_token_id`).
    """
    from trl import SFTTrainer

    model, processing_class, _ = setup.load_policy(model, processing_class)
    if args.completion_only_loss is False:
        raise ValueError("SFT on gold latents trains on the completion only: leave completion_only_loss unset or True.")
    args.completion_only_loss = True
    return SFTTrainer(
        model=model,
        args=args,
        train_dataset=sft_dataset(train_dataset, processing_class, stop_token_id, gold_column),
        processing_class=processing_class,
        peft_config=resolve_peft_config(model, peft_config),
        callbacks=callbacks,
    )


__all__ = [
    "LatentLogReward",
    "LatentRewardFunction",
    "build_grpo_trainer",
    "build_rloo_trainer",
    "build_sft_trainer",
    "completion_to_latent",
    "constrained_generation_kwargs",
    "latent_constraints",
    "resolve_peft_config",
    "sft_dataset",
]

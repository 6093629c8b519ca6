"""Non-GFlowNet baselines on the GFlowNet's reward and latent space: GRPO, RLOO and SFT through TRL's own trainers,
and decoding (greedy, beam, diverse beam, nucleus, ancestral and tempered sampling).

Every baseline is compared with the GFlowNet under the same terms:

* **the same reward**: `LatentLogReward` gives a completion the GFlowNet's final-state log R(Z) =
  log p_LM(Z Y | reward_prompt) (fixed suffix) or log p_LM(Z ⊤ | reward_prompt) (stop token), untempered, from the
  same `LikelihoodReward` on the same token-level concatenation;
* **the same latent space**: `LatentConstraints` (vocabulary mask, no stop before `min_length`, stop forced at
  `max_length`) reaches TRL's `generate` through `GRPOConfig.generation_kwargs` / `RLOOConfig.generation_kwargs`
  (`constrained_generation_kwargs`), and the decoders apply `LatentConstraints.apply` inside HF `generate` or in
  our own beam search;
* **the same starting point and LoRA**: target modules are resolved as the GFlowNet trainer resolves them.

What the TRL trainers do *not* share with the GFlowNet: their loss log-probabilities (and RLOO's KL to the reference)
are of the model's *unmasked* softmax, while the sampler is masked.  The sampled distribution, which is what every
comparison measures, is exactly the constrained policy at temperature 1 (TRL's defaults temperature=1, top_p=1,
top_k=0, min_p=None; keep them).

Dimension legend: B rows, T latent width, V vocabulary.
"""

from __future__ import annotations

import copy
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from datasets import Dataset
from transformers import LogitsProcessor, LogitsProcessorList

from .data import tokenize_dataset
from .models import load_causal_lm, load_tokenizer, resolve_peft_config, resolve_stop_token_id
from .rewards import LikelihoodReward
from .sampling import (
    LatentConstraints,
    clean_generate,
    clean_generation_config,
    left_pad,
    right_pad,
    sample_latents,
)
from .tokenization import encode_continuation, encode_prompt, output_rows

# ---------------------------------------------------------------------------------------------------------------------
# Shared set-up: constraints, LoRA, the latent a completion encodes


def latent_constraints(
    tokenizer,
    max_length: int,
    min_length: int = 0,
    stop_token: str | None = None,
    vocab_mask: torch.Tensor | None = None,
    tool=None,
) -> LatentConstraints:
    """The `LatentConstraints` the GFlowNet trainer builds from the same settings (stop token: EOS by default, or a
    text that must encode to exactly one token; `vocab_mask`: (V,) bool, the tokens a latent may use, or a function
    tokenizer -> mask; `tool`: a `gfn_trl.tools` tool whose outputs are forced tokens)."""
    stop_id = resolve_stop_token_id(tokenizer, stop_token)
    allowed = vocab_mask(tokenizer) if callable(vocab_mask) else vocab_mask
    if allowed is not None:
        allowed = torch.as_tensor(allowed, dtype=torch.bool)
    return LatentConstraints(stop_id, max_length, min_length, allowed, tool)


def completion_to_latent(completion_ids: Sequence[int], constraints: LatentConstraints) -> list[int]:
    """The latent a sampled completion encodes: its tokens before the first stop token.  A completion without a stop
    is cut at `max_length`: it is the forced-stop latent (the constrained policy stops there by force)."""
    ids = list(completion_ids)
    if constraints.stop_token_id in ids:
        return ids[: ids.index(constraints.stop_token_id)]
    return ids[: constraints.max_length]


def _latent_batch(latents: list[list[int]], stop_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) right-padded latents (T >= 1, padded with the stop) and their (B,) lengths."""
    z, lengths = right_pad(latents, stop_id, device=device)
    if z.shape[1] == 0:  # every latent is empty
        z = torch.full((len(latents), 1), stop_id, dtype=torch.long, device=device)
    return z, lengths


# ---------------------------------------------------------------------------------------------------------------------
# 1. The reward, as a TRL reward function

_ROW_COLUMNS = ("reward_prompt_ids", "suffix_ids", "gfn_has_suffix", "contrast_suffix_ids")


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
        z, lengths = _latent_batch(latents, self.constraints.stop_token_id, self.reward.device)
        return self.reward.final(rows, z, lengths)  # one copy of the suffix per row: no per-prefix rewards needed

    def __call__(self, prompts, completions, completion_ids, **columns) -> list[float]:
        missing = [c for c in _ROW_COLUMNS if c not in columns]
        if missing:
            raise KeyError(
                f"LatentLogReward needs the dataset columns {missing}: tokenize the train dataset with "
                "gfn_trl.data.tokenize_dataset (build_grpo_trainer / build_rloo_trainer do) before giving it to TRL."
            )
        rows = [{c: columns[c][i] for c in _ROW_COLUMNS} for i in range(len(completion_ids))]
        latents = [completion_to_latent(ids, self.constraints) for ids in completion_ids]
        return self.final_log_rewards(rows, latents).tolist()


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
):
    if isinstance(model, str):
        name = model
        model = load_causal_lm(name)
        processing_class = processing_class or load_tokenizer(name)
    if processing_class is None:
        raise ValueError("Pass `processing_class` (the tokenizer) with a model object.")
    tokenizer = processing_class
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
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

    if reward_model is None and peft_config is None:
        reward_model = copy.deepcopy(model)  # full fine-tuning: the reward must stay the *initial* LM
    reward_fn = LatentLogReward(reward_model, constraints, tokenizer.pad_token_id, chunk_size)

    args.max_completion_length = constraints.max_length + 1
    vocab_size = output_rows(model)
    ours = constrained_generation_kwargs(constraints, vocab_size, [tokenizer.eos_token_id])
    args.generation_kwargs = {**(args.generation_kwargs or {}), **ours}
    dataset = tokenize_dataset(train_dataset, tokenizer, model.config, constraints.max_length, "train")
    trainer = trainer_cls(
        model=model,
        reward_funcs=[reward_fn],
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=resolve_peft_config(model, peft_config),
        callbacks=callbacks,
    )
    policy = trainer.accelerator.unwrap_model(trainer.model)
    if reward_model is None:  # PEFT: the adapter-disabled base of the policy is the reward
        reward_fn.use(policy, disable_adapter=True, autocast=trainer.accelerator.autocast)
    else:
        reward_fn.use(reward_model.to(trainer.accelerator.device), autocast=trainer.accelerator.autocast)
    trainer.latent_reward, trainer.constraints = reward_fn, constraints
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
    Returns: the trainer, with `.latent_reward` (the `LatentLogReward`) and `.constraints` attached.
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
):
    """TRL's `RLOOTrainer`, unmodified, set up exactly as `build_grpo_trainer` (see there); `args` is an `RLOOConfig`.
    RLOO's default `beta=0.05` KL to the reference (with PEFT: the adapter-disabled base) is kept."""
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

    if isinstance(model, str):
        name = model
        model = load_causal_lm(name)
        processing_class = processing_class or load_tokenizer(name)
    if processing_class is None:
        raise ValueError("Pass `processing_class` (the tokenizer) with a model object.")
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


# ---------------------------------------------------------------------------------------------------------------------
# 4. Decoding baselines (sentence continuation): constrained greedy, beam, diverse beam, nucleus, sampling


class _ConstrainedLogProbs(LogitsProcessor):
    """Inside `generate`: the constrained policy's log-probabilities, log softmax(LatentConstraints.apply(logits)).

    Renormalising changes nothing for greedy or sampling (a shift of the logits) and makes HF's nucleus filter see
    the constrained distribution; it runs before HF's own temperature / top-k / top-p warpers."""

    def __init__(self, constraints: LatentConstraints, prompt_width: int):
        self.constraints, self.prompt_width = constraints, prompt_width

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.constraints.apply_decoding(scores, input_ids[:, self.prompt_width :]), dim=-1)


@torch.no_grad()
def _generate(model, prompts: list[list[int]], constraints, pad_id, **config) -> list[list[int]]:
    """HF `generate` under the constraints (left-padded batch) with the settings `config` and no others (not the
    checkpoint's: `clean_generate`); the latents, cut at the first stop."""
    device = next(model.parameters()).device
    ids, mask = left_pad(prompts, pad_id, device)
    stop = constraints.stop_token_id
    out = clean_generate(  # only the processors asked for here: none of the checkpoint's generation_config
        model, ids, mask, LogitsProcessorList([_ConstrainedLogProbs(constraints, ids.shape[1])]),
        max_new_tokens=constraints.max_length + 1, eos_token_id=stop, pad_token_id=pad_id, use_cache=True, **config,
    )
    return [completion_to_latent(row, constraints) for row in out[:, ids.shape[1] :].tolist()]


@dataclass
class _Beam:
    group: int
    tokens: list[int]
    score: float  # Σ constrained log q, minus the diversity penalties along the way
    row: int  # the row of the model's last logits / KV cache that continues this beam


@torch.no_grad()
def beam_search(
    model,
    prompt_ids: list[int],
    constraints: LatentConstraints,
    num_beams: int,
    num_return: int,
    num_groups: int = 1,
    diversity_penalty: float = 0.0,
) -> list[list[int]]:
    """Beam search over the constrained policy, or diverse (group) beam search (Vijayakumar et al., 2016).

    A beam's score is the constrained log q(Z ⊤) (no length penalty: HF's `length_penalty=0`), minus, with groups,
    `diversity_penalty` × (how many earlier groups chose the same token at the same step) at every step (the
    Hamming diversity of HF's former group beam search, accumulated into the score as HF did).  Each group keeps
    `num_beams // num_groups` beams; a stop among a group's top-k candidates finishes a hypothesis; a group is done
    when it holds k hypotheses no live beam can beat.  All groups' hypotheses are pooled and the best `num_return`
    returned (fewer if the constrained space has fewer latents).  Candidates with probability 0 under the
    constraints are never kept, so every returned latent is in the latent space (HF's beam search keeps -inf beams
    when the beam is wider than the constrained support).  One prompt at a time, with the KV cache.

    Returns: up to `num_return` distinct latents (token ids, no stop), best first.
    """
    if num_beams % num_groups:
        raise ValueError(f"num_beams ({num_beams}) must be a multiple of num_groups ({num_groups}).")
    k = num_beams // num_groups
    stop = constraints.stop_token_id
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    ids = torch.tensor([prompt_ids], device=device)
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True)
    cache, logits = out.past_key_values, out.logits[:, -1].float()  # (R, V), one row per live beam
    live = [_Beam(g, [], 0.0, 0) for g in range(num_groups)]
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(num_groups)]
    for step in range(constraints.max_length + 1):
        prefix = {b.row: b.tokens for b in live}  # the latent that each row of `logits` continues
        forced = constraints.forced_next([prefix[r] for r in range(logits.shape[0])], device)
        logp = torch.log_softmax(constraints.apply(logits, step, forced), dim=-1)  # (R, V)
        chosen = torch.zeros(logp.shape[-1], device=device)  # tokens taken at this step by earlier groups
        next_live: list[_Beam] = []
        for g in range(num_groups):
            beams = [b for b in live if b.group == g]
            if not beams:
                continue
            rows = torch.tensor([b.row for b in beams], device=device)
            scores = torch.tensor([b.score for b in beams], device=device)
            cand = scores[:, None] + logp[rows] - diversity_penalty * chosen[None, :]  # (nb, V)
            top = cand.flatten().topk(min(2 * k, cand.numel()))
            kept: list[_Beam] = []
            for rank, (value, index) in enumerate(zip(top.values.tolist(), top.indices.tolist())):
                if value == float("-inf") or len(kept) == k:
                    break
                parent, token = divmod(index, logp.shape[-1])
                if token == stop:
                    if rank < k:
                        finished[g].append((value, beams[parent].tokens))
                else:
                    kept.append(_Beam(g, beams[parent].tokens + [token], value, beams[parent].row))
            finished[g] = sorted(finished[g], key=lambda h: -h[0])[:k]
            # scores only decrease, so a group holding k hypotheses better than its best live beam is done
            if len(finished[g]) == k and (not kept or max(b.score for b in kept) <= finished[g][-1][0]):
                kept = []
            for b in kept:
                chosen[b.tokens[-1]] += 1
            next_live += kept
        if not next_live:
            break
        cache.reorder_cache(torch.tensor([b.row for b in next_live], device=device))
        tokens = torch.tensor([[b.tokens[-1]] for b in next_live], device=device)
        mask = torch.ones(len(next_live), len(prompt_ids) + step + 1, dtype=torch.long, device=device)
        out = model(input_ids=tokens, attention_mask=mask, past_key_values=cache, use_cache=True)
        cache, logits = out.past_key_values, out.logits[:, -1].float()
        live = [_Beam(b.group, b.tokens, b.score, r) for r, b in enumerate(next_live)]
    model.train(was_training)
    pool = sorted((h for group in finished for h in group), key=lambda h: -h[0])
    return [tokens for _, tokens in pool[:num_return]]


DECODING_METHODS = (
    "greedy",
    "sample",
    "tempered",
    "nucleus",
    "beam",
    "beam_5x",
    "diverse_beam",
    "diverse_beam_5x",
)


@torch.no_grad()
def decode(
    model,
    tokenizer,
    prompt_ids_list: list[list[int]],
    method: str,
    n: int,
    constraints: LatentConstraints,
    temperature: float = 1.0,
    top_p: float = 0.95,
    diversity_penalty: float = 1.0,
    compute_factor: int = 5,
    seed: int = 0,
    batch_size: int = 8,
) -> list[list[list[int]]]:
    """n latents per prompt from a decoding method, every one inside the constrained latent space.

    Methods (the paper's sentence-continuation baselines, §5.1 of reference/paper.md):

    * `greedy`: the constrained argmax path, repeated n times (one latent; diversity 0).
    * `sample`: ancestral sampling of the constrained policy (`sample_latents`, counter-based seeds).
    * `tempered`: the same at `temperature`.
    * `nucleus`: HF top-p sampling (p = `top_p`) of the constrained distribution (RNG seeded by `seed`).
    * `beam`: beam search with n beams, the n best (`beam_search`, no length penalty).
    * `beam_5x`: `compute_factor` × n beams, the n best ("5× the compute").
    * `diverse_beam`: n beams in n groups with Hamming diversity `diversity_penalty`, the n best.
    * `diverse_beam_5x`: `compute_factor` × n beams in n groups, the n best.

    (The authors' code returns one beam sequence repeated n times; here every beam method returns its n best.)

    Args:
        model: the LM (e.g. the base LM, or a PEFT policy with its adapter disabled by the caller).
        prompt_ids_list: tokenized prompts (e.g. rows' `prompt_ids` from `tokenize_dataset`).
    Returns: per prompt, a list of n latents (token id lists without the stop), fewer only if a beam method finds
        fewer than n latents in the whole space.
    """
    if method not in DECODING_METHODS:
        raise ValueError(f"Unknown decoding method {method!r}; choose from {DECODING_METHODS}.")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else constraints.stop_token_id
    was_training = model.training
    model.eval()
    out: list[list[list[int]]] = []
    if method.startswith(("beam", "diverse_beam")):
        beams = n * (compute_factor if method.endswith("_5x") else 1)
        groups = n if method.startswith("diverse") else 1
        penalty = diversity_penalty if method.startswith("diverse") else 0.0
        out = [beam_search(model, p, constraints, beams, n, groups, penalty) for p in prompt_ids_list]
    elif method == "greedy":
        for lo in range(0, len(prompt_ids_list), batch_size):
            latents = _generate(model, prompt_ids_list[lo : lo + batch_size], constraints, pad, do_sample=False)
            out += [[z] * n for z in latents]
    elif method == "nucleus":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for lo in range(0, len(prompt_ids_list), batch_size):
                chunk = [p for p in prompt_ids_list[lo : lo + batch_size] for _ in range(n)]
                latents = _generate(
                    model, chunk, constraints, pad, do_sample=True, temperature=1.0, top_k=0, top_p=top_p
                )
                out += [latents[i : i + n] for i in range(0, len(latents), n)]
    else:  # sample / tempered: the library's sampler, row seeds a function of (seed, prompt, sample)
        t = temperature if method == "tempered" else 1.0
        device = next(model.parameters()).device
        for lo in range(0, len(prompt_ids_list), batch_size):
            chunk = prompt_ids_list[lo : lo + batch_size]
            ids, mask = left_pad([p for p in chunk for _ in range(n)], pad, device)
            seeds = [zlib.crc32(f"decode:{seed}:{lo + i // n}:{i % n}".encode()) for i in range(len(chunk) * n)]
            z, lengths = sample_latents(model, ids, mask, constraints, t, pad, seeds)
            latents = [z[b, : int(lengths[b])].tolist() for b in range(z.shape[0])]
            out += [latents[i : i + n] for i in range(0, len(latents), n)]
    model.train(was_training)
    return out


__all__ = [
    "DECODING_METHODS",
    "LatentLogReward",
    "beam_search",
    "build_grpo_trainer",
    "build_rloo_trainer",
    "build_sft_trainer",
    "completion_to_latent",
    "constrained_generation_kwargs",
    "decode",
    "latent_constraints",
    "resolve_peft_config",
    "sft_dataset",
]

"""The one set-up every method shares: the policy and its tokenizer, the latent space, LoRA, and the reward LM.

`RolloutTrainer.__init__` (GFlowNet, PPO), the TRL baselines' builders (`gfn_trl.trainers.trl_baselines`: GRPO,
RLOO, SFT) and the recipes' runner build these with the functions below, so that every method samples the same
constrained latent space from the same starting point and is rewarded by the same frozen LM:

* `seed_run`: the run's seed, set before anything random is drawn (LoRA's initialisation included);
* `load_policy`: a model given by name (hub id, directory, `.gguf` file) is loaded, its tokenizer too, and the
  tokenizer gets a pad token (`ensure_pad_token`);
* `latent_space`: the `LatentConstraints` (stop token, minimum and maximum length, vocabulary mask, tool) after every
  check: the stop is one token, the model's embedding covers the tokenizer, the mask is a bool mask of the right size
  allowing more than the stop, ids the tokenizer cannot decode are banned, the tool's answers are checked;
* `wrap_policy`: LoRA (targets resolved as for every method: `gfn_trl.models.resolve_peft_config`), on 4/8-bit
  weights too (QLoRA);
* `reward_model`: the frozen reward LM: a separate one (given, or loaded by name, optionally quantized), else with
  PEFT none (the policy's adapter-disabled base scores), else a frozen copy of the initial model.
"""

from __future__ import annotations

import copy
import os

import torch
from torch import nn

from ..models import load_causal_lm, load_quantized_reward_model, prepare_kbit_model, resolve_peft_config
from ..sampling import LatentConstraints
from ..tokenization import (
    check_policy_vocabulary,
    check_reward_vocabulary,
    load_tokenizer,
    resolve_stop_token_id,
    restrict_to_decodable,
    try_load_tokenizer,
)
from .validation import checked_tool, resolve_vocab_mask

try:
    from peft import PeftModel, get_peft_model
except ImportError:  # peft is a dependency, but keep the import error readable
    PeftModel = get_peft_model = None


def seed_run(args) -> None:
    """Seed Python, NumPy and torch from `args.seed` (`args.full_determinism` as the HF Trainer reads it), before any
    model is built or wrapped.

    The HF Trainer seeds in its own `__init__`, but LoRA's `A` matrices are drawn earlier, when the policy is wrapped
    (here, and in TRL's trainers given a `peft_config`).  Since torch 2.10 a process starts from a random default
    seed, so an unseeded adapter differs from run to run: with B = 0 the first loss is equal but every gradient
    differs (a recipe's step-1 grad norm: 12.36 against 12.75, same command).
    """
    from transformers.trainer_utils import enable_full_determinism, set_seed

    if getattr(args, "full_determinism", False):
        enable_full_determinism(args.seed)
    else:
        set_seed(args.seed)


def ensure_pad_token(tokenizer) -> None:
    """Give a tokenizer without a pad token its EOS as pad (padding is always masked out, so any id will do).

    Raises:
        ValueError: the tokenizer has neither a pad token nor an EOS token.
    """
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise ValueError(
                "The tokenizer has neither a pad token nor an EOS token. Set one, e.g. "
                "tokenizer.add_special_tokens({'pad_token': '<pad>'}) and resize the model's embeddings."
            )
        tokenizer.pad_token = tokenizer.eos_token


def load_policy(model, processing_class=None, init_kwargs: dict | None = None):
    """The policy's starting point and its tokenizer: `(model, tokenizer, name_or_path)`.

    Args:
        model: a hub id, a local directory or a `.gguf` file (loaded with `gfn_trl.models.load_causal_lm` and
            `init_kwargs`, e.g. `{"dtype": "bfloat16"}`), or a model object (used as is).
        processing_class: the tokenizer; by default loaded from the model's name or path (its `gguf_file` too).
    The tokenizer is given a pad token if it has none (`ensure_pad_token`).  A model from a local path (a string, or
    a model object whose `name_or_path` exists relative to the working directory) is renamed to the absolute path
    (of the `.gguf` file for a GGUF checkpoint), which the adapter's `base_model_name_or_path` and the model card
    record.
    """
    init_kwargs = dict(init_kwargs or {})
    if isinstance(model, str):
        name_or_path = model
        model = load_causal_lm(name_or_path, **init_kwargs)
        local = os.path.join(os.path.expanduser(name_or_path), init_kwargs.get("gguf_file") or "")
    else:
        name_or_path = model.config._name_or_path
        local = os.path.expanduser(name_or_path or "")
    if name_or_path and os.path.exists(local.rstrip(os.sep)):
        # a local checkpoint is named by its absolute path (a GGUF one by the file): the adapter's
        # `base_model_name_or_path` and the model card take this name, and a relative one would resolve against the
        # working directory of whoever loads the adapter, or be looked up on the hub ("org/name")
        model.config.name_or_path = model.name_or_path = os.path.abspath(local.rstrip(os.sep))
    if processing_class is None:
        processing_class = load_tokenizer(name_or_path, init_kwargs.get("gguf_file"))
    ensure_pad_token(processing_class)
    return model, processing_class, name_or_path


def latent_space(
    tokenizer,
    max_length: int,
    min_length: int = 0,
    stop_token: str | None = None,
    vocab_mask: torch.Tensor | None = None,
    tool=None,
    model=None,
) -> LatentConstraints:
    """The latent space every method samples and every loss and reward reads, checked.

    Args:
        tokenizer: the policy's tokenizer.
        max_length, min_length: the latent's length bounds in tokens (the stop is forced at `max_length`, banned
            below `min_length`).
        stop_token: the token that ends a latent, as text (one token: `gfn_trl.tokenization.resolve_stop_token_id`);
            the tokenizer's EOS by default.
        vocab_mask: (V,) bool, the tokens a latent may use (V = len(tokenizer), or up to the model's padded number
            of logits), or a function tokenizer -> mask; None: every token.
        tool: a `gfn_trl.tools` tool whose outputs are forced tokens; wrapped so that each answer is checked.
        model: the policy; its number of logits V_model is checked against the tokenizer and bounds the mask.
            Without it, V_model is taken as the larger of len(tokenizer) and the mask's length.
    Returns:
        `LatentConstraints` whose `allowed` is a (V_model,) bool mask with the ids the tokenizer cannot decode banned
        (None when nothing is banned).
    Raises:
        ValueError: the stop token is not one token; the model has fewer logits than the tokenizer has ids; the mask
            is not a 1-D bool tensor of a valid length or allows no token besides the stop; bad lengths.
        TypeError: the tool has no `forced_tokens` method.
    """
    stop_id = resolve_stop_token_id(tokenizer, stop_token)
    allowed = vocab_mask(tokenizer) if callable(vocab_mask) else vocab_mask
    if model is not None:
        rows = check_policy_vocabulary(model, tokenizer)  # refuses an embedding smaller than the tokenizer
    else:
        rows = max(len(tokenizer), len(allowed) if allowed is not None else 0)
    allowed = resolve_vocab_mask(allowed, tokenizer, rows, stop_id, min_length)
    allowed = restrict_to_decodable(allowed, tokenizer, rows)  # padded ids decode to nothing: never sampled
    return LatentConstraints(stop_id, max_length, min_length, allowed, checked_tool(tool, len(tokenizer)))


def wrap_policy(model, peft_config=None, activation_checkpointing: bool = False):
    """The trainable policy: `model` with a LoRA adapter from `peft_config` (targets resolved for the model), or the
    model itself for full fine-tuning.  Returns `(policy, is_peft)`.

    A 4- or 8-bit model is prepared for training first (QLoRA, `gfn_trl.models.prepare_kbit_model`); with activation
    checkpointing the inputs require gradients (frozen embeddings would otherwise cut the checkpointed graph).

    Raises:
        ImportError: `peft_config` without the `peft` package.
        ValueError: `model` is already a `PeftModel` and `peft_config` is given too.
    """
    if peft_config is not None:
        if get_peft_model is None:
            raise ImportError("peft_config needs the `peft` package: pip install peft")
        if PeftModel is not None and isinstance(model, PeftModel):
            raise ValueError("model is already a PeftModel; do not pass peft_config as well.")
        if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
            model = prepare_kbit_model(model, activation_checkpointing)
        model = get_peft_model(model, resolve_peft_config(model, peft_config))
    is_peft = PeftModel is not None and isinstance(model, PeftModel)
    if is_peft and activation_checkpointing:
        model.enable_input_require_grads()
    return model, is_peft


def disable_dropout(model: nn.Module) -> None:
    """Set every dropout of `model` to p = 0, so that teacher-forced log-probabilities are those of the sampler."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


def reward_model(
    policy,
    is_peft: bool,
    given=None,
    name_or_path: str | None = None,
    quantization: str | None = None,
    device=None,
    dtype=None,
    tokenizer=None,
    policy_rows: int | None = None,
):
    """The frozen reward LM: `(reward_model, frozen_copy)`.

    In order: `given` (a separate LM sharing the tokenizer); else the LM `name_or_path` (loaded with `dtype`, or in
    `quantization` "8bit"/"4bit" on `device`); else, with PEFT, None (the reward is the policy's adapter-disabled
    base: no second copy of the weights); else, for full fine-tuning, a frozen copy of the initial `policy` (the
    reward must stay the initial LM), which is also returned as `frozen_copy` (None otherwise).  The reward LM is put
    in eval mode without gradients; a separate one is checked against the policy's vocabulary when `tokenizer` and
    `policy_rows` are given (`gfn_trl.tokenization.check_reward_vocabulary`).

    Raises:
        ValueError: the separate reward LM's vocabulary does not match the policy's.
    """
    reward, reward_tokenizer = given, None  # the separate reward LM's own tokenizer, when it is loaded by name
    if reward is None and name_or_path is not None:
        reward_tokenizer = try_load_tokenizer(name_or_path)
        if quantization:
            reward = load_quantized_reward_model(name_or_path, quantization, device)
        else:
            reward = load_causal_lm(name_or_path, dtype=dtype)
    frozen_copy = None
    if reward is None and not is_peft:
        reward = frozen_copy = copy.deepcopy(policy)
    if reward is not None:
        reward.eval()
        reward.requires_grad_(False)
        if reward is not frozen_copy and tokenizer is not None and policy_rows is not None:
            check_reward_vocabulary(reward, policy_rows, tokenizer, reward_tokenizer)
    return reward, frozen_copy


__all__ = ["disable_dropout", "ensure_pad_token", "latent_space", "load_policy", "reward_model", "wrap_policy"]

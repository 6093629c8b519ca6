"""What a reward LM's architecture allows: which reward path is exact for it, and how to call its forward.

The packed reward passes (`gfn_trl.rewards.packed`) are exact only for LMs whose every layer is attention that reads
token positions from `position_ids` and visibility from the attention mask; these checks read the model's class,
config and forward signature (and, for `_split_lm_head`, compare one short forward) to decide.  Results are cached
per model.  This module imports nothing from gfn_trl, so any layer may use it.
"""

from __future__ import annotations

import inspect
import warnings
import weakref

import torch

# Config fields of LMs whose logits are not the output layer applied to the last hidden state.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier",
                     "lm_head_multiplier")

_SPLIT_CHECKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # HF model -> verified split or None


def _hf_model(model):
    """The transformers model inside a PEFT wrapper (LoRA layers are injected in place, so the adapter context of
    the wrapper still applies), or the model itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _text_config(model):
    """The (text) config of the transformers model inside `model`."""
    config = _hf_model(model).config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _split_lm_head(model):
    """(backbone, head) with `model(x).logits == head(backbone(x).last_hidden_state)`, or None.

    None (the caller then runs the full forward) for: LMs with a logit transform in their config (soft-capping,
    logit scales), sharded parameters (FSDP2 DTensors, DeepSpeed ZeRO-3), models without a separate backbone or
    output layer, and any model on which one check on a short input disagrees (done once per model)."""
    hf = _hf_model(model)
    peft_config = getattr(model, "active_peft_config", None)
    if getattr(peft_config, "is_prompt_learning", False):
        return None  # the wrapper's forward adds virtual tokens that the backbone alone would not see
    if hf in _SPLIT_CHECKED:
        return _SPLIT_CHECKED[hf]
    split = None
    config = _text_config(hf)
    backbone = getattr(hf, "base_model", None)
    head = hf.get_output_embeddings() if hasattr(hf, "get_output_embeddings") else None
    transformed = [name for name in _LOGIT_TRANSFORMS if getattr(config, name, None) not in (None, 1, 1.0)]
    sharded = any(type(p).__name__ == "DTensor" or hasattr(p, "ds_id") for p in hf.parameters())
    if not transformed and not sharded and backbone is not None and backbone is not hf and head is not None:
        split = (backbone, head)
        ids = torch.arange(1, 6, device=head.weight.device)[None] % config.vocab_size
        was_training = hf.training
        hf.eval()
        with torch.no_grad():
            want = model(input_ids=ids, use_cache=False).logits[0, -1].float()
            got = head(backbone(input_ids=ids, use_cache=False).last_hidden_state[0, -1]).float()
        hf.train(was_training)
        tol = 1e-3 * max(1.0, want.abs().max().item())
        if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-3, atol=tol):
            warnings.warn(f"{type(hf).__name__}: the logits are not head(last hidden state); the reward pass "
                          "computes full logits instead (slower, more memory).", stacklevel=3)
            split = None
    _SPLIT_CHECKED[hf] = split
    return split


def _sliding_window(model) -> int | None:
    """The attention window of an LM with sliding-window (or Llama-4-style chunked) layers, or None.  The packed
    masks do not apply it, so they are exact only while a sequence's true length stays within it."""
    config = _text_config(model)
    windows = [getattr(config, "attention_chunk_size", None)]
    if getattr(config, "use_sliding_window", True) is not False:  # Qwen2-style configs carry a window they do not use
        windows.append(getattr(config, "sliding_window", None))
    windows = [w for w in windows if isinstance(w, int) and w > 0]
    return min(windows) if windows else None


# Layer kinds whose attention reads token order from position_ids and visibility from the attention mask (windows
# and chunks apart: `_sliding_window`).
_PACKABLE_LAYERS = {"full_attention", "sliding_attention", "chunked_attention", "attention"}
# Config fields of hybrid attention / state-space LMs from before `layer_types` described them.
_HYBRID_FIELDS = ("layers_block_type", "hybrid_override_pattern", "attn_layer_period", "mamba_d_state")
_OBSTACLES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # HF model -> `_packing_obstacle`


def _packing_obstacle(model) -> str | None:
    """Why the packed layout would not give this LM's exact rewards, or None.

    The packed passes put the suffix copies after z_T in the sequence and tell the model their true positions
    through `position_ids` and what each token sees through a 4-D attention mask.  That is exact only for an LM
    whose every layer is attention that reads both: not for recurrent / convolutional / linear-attention layers
    (Mamba, RWKV, hybrids), whose state runs over the copies in sequence order, nor for LMs that take positions or
    windows from the token order (ALiBi: BLOOM, MPT, Falcon with alibi; GPT-Neo's local layers)."""
    hf = _hf_model(model)
    if hf not in _OBSTACLES:
        _OBSTACLES[hf] = _find_packing_obstacle(hf)
    return _OBSTACLES[hf]


def _find_packing_obstacle(hf) -> str | None:
    """`_packing_obstacle` of the transformers model `hf`, uncached: from its config's layer kinds and position
    scheme and its forward's signature."""
    name, config = type(hf).__name__, _text_config(hf)
    kinds = set(map(str, getattr(config, "layer_types", None) or [])) - _PACKABLE_LAYERS
    if kinds:
        return f"{name} has {', '.join(sorted(kinds))} layers (a state over the token order, not attention)"
    if any(getattr(config, f, None) is not None for f in _HYBRID_FIELDS):
        return f"{name} has state-space layers (a state over the token order, not attention)"
    try:
        takes_positions = "position_ids" in inspect.signature(hf.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover
        takes_positions = True
    if not takes_positions:
        return f"{name} takes no position_ids (positions come from the token order)"
    attn = getattr(config, "attn_config", None)
    attn_alibi = attn.get("alibi", False) if isinstance(attn, dict) else getattr(attn, "alibi", False)
    if getattr(config, "alibi", False) or attn_alibi or getattr(config, "position_embedding_type", None) == "alibi":
        return f"{name} uses ALiBi (positions come from the token order)"
    if "local" in (getattr(config, "attention_layers", None) or []):
        return f"{name} has local attention layers whose window follows the token order"
    return None

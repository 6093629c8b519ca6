"""The data contract: validating and tokenising `prompt` / `reward_prompt` / `suffix` rows, once, before training.

Optional `contrast_suffix` (with `suffix`): a wrong alternative Y' (e.g. the other label).  When the reward LM
prefers Y' to Y after a prefix, that prefix's log-reward gets `contrast_penalty` (the paper's subjectivity reward).

`prompt` and `reward_prompt` are text or conversations (TRL's conversational format, a list of `{"role", "content"}`
messages, rendered with the tokenizer's chat template); they are tokenized as the beginning of a sequence (BOS once
if the tokenizer adds one, never a trailing EOS).  `suffix` and `contrast_suffix` are tokenized as continuations in
the middle of a sequence (no space or special token added).  Both rules live in `gfn_trl.tokenization`.
"""

from __future__ import annotations

from datasets import Dataset

from .tokenization import encode_continuation, encode_prompt, is_conversation, render_prompt


def _check_prompt(value, what: str, i: int, split: str) -> None:
    if isinstance(value, str) and value.strip():  # (a prompt of spaces only is empty too)
        return
    if is_conversation(value):
        return
    raise ValueError(
        f"Row {i} of the {split} dataset has an empty or invalid {what!r}: {value!r}. Give text, or a conversation "
        "(a list of {'role': ..., 'content': ...} messages)."
    )


def tokenize_dataset(
    dataset: Dataset, tokenizer, model_config, max_completion_length: int, split: str = "train",
    chat_template_kwargs: dict | None = None,
) -> Dataset:
    """Add `prompt_ids`, `reward_prompt_ids`, `suffix_ids`, `contrast_suffix_ids`, `gfn_key` and `gfn_has_suffix` to
    every row.

    `prompt_ids` / `reward_prompt_ids` are `gfn_trl.tokenization.encode_prompt` of the (rendered) prompts, with
    `chat_template_kwargs` passed to the chat template; `suffix_ids` / `contrast_suffix_ids` are
    `encode_continuation` of the texts.  So `reward_prompt_ids + Z + suffix_ids` decodes to the reward prompt, the
    latent's text and the suffix, with nothing in between.

    Raises a ValueError naming the row and the fix for: no `prompt` column, an empty dataset, an empty or invalid
    prompt or reward prompt (or one ending with EOS, or a conversation without a chat template), a suffix that
    tokenizes to nothing, and a row that does not fit the model's context window together with
    `max_completion_length`.
    """
    columns = set(dataset.column_names)
    if "prompt" not in columns:
        raise ValueError(
            f"The {split} dataset has no 'prompt' column (columns: {sorted(columns)}). Rename the column holding "
            "the policy's input text to 'prompt'."
        )
    if len(dataset) == 0:
        raise ValueError(f"The {split} dataset is empty.")
    has_reward_prompt, has_suffix = "reward_prompt" in columns, "suffix" in columns
    has_contrast = "contrast_suffix" in columns
    if has_contrast and not has_suffix:
        raise ValueError(
            f"The {split} dataset has a 'contrast_suffix' column but no 'suffix': a contrast suffix is a wrong "
            "alternative to the suffix (e.g. the wrong label). Add the 'suffix' column or drop 'contrast_suffix'."
        )
    max_pos = getattr(model_config.get_text_config(), "max_position_embeddings", None)

    def encode(value, what: str, i: int) -> tuple[str, list[int]]:
        try:
            return render_prompt(tokenizer, value, chat_template_kwargs), encode_prompt(
                tokenizer, value, chat_template_kwargs
            )
        except ValueError as e:
            raise ValueError(f"Row {i} of the {split} dataset, {what!r}: {e}") from e

    def tokenize(batch, indices):
        out = {"prompt_ids": [], "reward_prompt_ids": [], "suffix_ids": [], "contrast_suffix_ids": [], "gfn_key": [],
               "gfn_has_suffix": []}
        for j, i in enumerate(indices):
            prompt = batch["prompt"][j]
            _check_prompt(prompt, "prompt", i, split)
            reward_prompt = batch["reward_prompt"][j] if has_reward_prompt else prompt
            _check_prompt(reward_prompt, "reward_prompt", i, split)
            suffix = batch["suffix"][j] if has_suffix else None
            for column in ("suffix", "contrast_suffix")[: has_suffix + has_contrast]:
                if not isinstance(batch[column][j], str):
                    raise ValueError(f"Row {i} of the {split} dataset has a non-text '{column}': "
                                     f"{batch[column][j]!r}. Give every row a text {column}.")
            p_text, p_ids = encode(prompt, "prompt", i)
            r_text, r_ids = encode(reward_prompt, "reward_prompt", i)
            s_ids = encode_continuation(tokenizer, suffix) if has_suffix and suffix else []
            if has_suffix and not s_ids:
                raise ValueError(
                    f"Row {i} of the {split} dataset has a 'suffix' ({suffix!r}) that tokenizes to nothing. Give "
                    "every row a non-empty suffix, or drop the column to use the stop-token reward."
                )
            c_ids = encode_continuation(tokenizer, batch["contrast_suffix"][j] or "") if has_contrast else []
            if has_contrast and not c_ids:
                raise ValueError(f"Row {i} of the {split} dataset has a 'contrast_suffix' that tokenizes to nothing.")
            need = max(len(p_ids), len(r_ids) + max(len(s_ids), len(c_ids))) + max_completion_length + 1
            if max_pos is not None and need > max_pos:
                raise ValueError(
                    f"Row {i} of the {split} dataset needs {need} positions (prompt {len(p_ids)}, reward prompt "
                    f"{len(r_ids)}, suffix {len(s_ids)}, max_completion_length {max_completion_length}) but the "
                    f"model's context window is {max_pos}. Shorten the text or lower max_completion_length."
                )
            out["prompt_ids"].append(p_ids)
            out["reward_prompt_ids"].append(r_ids)
            out["suffix_ids"].append(s_ids)
            out["contrast_suffix_ids"].append(c_ids)
            out["gfn_key"].append("\x1f".join([p_text, r_text, suffix or ""]))
            out["gfn_has_suffix"].append(has_suffix)
        return out

    return dataset.map(tokenize, batched=True, with_indices=True, desc=f"Tokenizing the {split} prompts")

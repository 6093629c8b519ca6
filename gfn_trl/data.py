"""The data contract: validating and tokenising `prompt` / `reward_prompt` / `suffix` rows, once, before training.

Optional `contrast_suffix` (with `suffix`): a wrong alternative Y' (e.g. the other label).  When the reward LM
prefers Y' to Y after a prefix, that prefix's log-reward gets `contrast_penalty` (the paper's subjectivity reward).
"""

from __future__ import annotations

from datasets import Dataset


def tokenize_dataset(
    dataset: Dataset, tokenizer, model_config, max_completion_length: int, split: str = "train"
) -> Dataset:
    """Add `prompt_ids`, `reward_prompt_ids`, `suffix_ids`, `gfn_key` and `gfn_has_suffix` to every row.

    Raises a ValueError naming the row and the fix for: no `prompt` column, an empty dataset, an empty prompt or
    reward prompt, a suffix that tokenizes to nothing, and a row that does not fit the model's context window
    together with `max_completion_length`.
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

    def tokenize(batch, indices):
        out = {"prompt_ids": [], "reward_prompt_ids": [], "suffix_ids": [], "contrast_suffix_ids": [], "gfn_key": [],
               "gfn_has_suffix": []}
        for j, i in enumerate(indices):
            prompt = batch["prompt"][j]
            if not isinstance(prompt, str) or not prompt:
                raise ValueError(f"Row {i} of the {split} dataset has an empty or non-text 'prompt': {prompt!r}.")
            reward_prompt = batch["reward_prompt"][j] if has_reward_prompt else prompt
            if not isinstance(reward_prompt, str) or not reward_prompt:
                raise ValueError(f"Row {i} of the {split} dataset has an empty 'reward_prompt'.")
            suffix = batch["suffix"][j] if has_suffix else None
            p_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
            r_ids = tokenizer(reward_prompt, add_special_tokens=True)["input_ids"]
            s_ids = tokenizer(suffix, add_special_tokens=False)["input_ids"] if has_suffix and suffix else []
            if has_suffix and not s_ids:
                raise ValueError(
                    f"Row {i} of the {split} dataset has a 'suffix' ({suffix!r}) that tokenizes to nothing. Give "
                    "every row a non-empty suffix, or drop the column to use the stop-token reward."
                )
            c_ids = (
                tokenizer(batch["contrast_suffix"][j], add_special_tokens=False)["input_ids"] if has_contrast else []
            )
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
            out["gfn_key"].append("\x1f".join([prompt, reward_prompt, suffix or ""]))
            out["gfn_has_suffix"].append(has_suffix)
        return out

    return dataset.map(tokenize, batched=True, with_indices=True, desc=f"Tokenizing the {split} prompts")

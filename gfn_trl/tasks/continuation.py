"""Sentence continuation (paper §4.1): given a prompt X of 1-3 sentences, sample the next sentence Z so that
q(Z) ∝ p_LM(Z "." | X)^(1/T).

Data: the paper's prompts are 1-3 OpenWebText sentences (each 5-30 GPT-2 tokens, characters `[a-zA-Z0-9,.!? ]`),
joined by spaces and **ending with one trailing space**; the authors train on the first 950 of their 10,000 prompts
and validate on the next 50 (prompts 950-999).  Sources: the embedded `tasks/data/prompts.txt` (120 prompts written
for this project, in the same format), a `.txt` file with one prompt per line (the authors' `prompts.txt` format:
only the line break is removed, so the trailing space stays), a `.jsonl` file, or a hub dataset id, with a `text`
column.  Text is never modified: a prompt without a trailing space keeps none.

Data contract: `prompt` = the raw text X, and nothing else.  No `suffix` column, so the trainer uses the stop-token
reward log R(s_k ⊤) = log p_LM(z_1..z_k "." | X), with `stop_token="."`.

Vocabulary (`vocab_mask`).  The authors ban a list of GPT-2 tokens (their `illegal_tokens`): <|endoftext|>,
newlines, tab, double quotes, http/https/://, www, "Â", runs of `$@#%^&|~!?.*-=_` (including single "!" and "?", so
only "." can end a sentence), the single capital letters A-Z and "US", "Mr", "Mrs", "M", "Ms", "Dr", "Prof", "Jr",
"St", "Av" (so that no abbreviation's period can end a sentence).  A token list written for GPT-2 does not carry
over to another tokenizer, so we ban by the token's decoded text instead:

* a token is allowed only if its text is non-empty and made of the characters of the paper's prompts minus the
  banned punctuation, i.e. ASCII letters, digits, "," and " " (`ALLOWED_CHARS`).  This covers the newline, tab,
  quote, symbol-run, "!", "?", ".." and "Â" bans, and bans *every* other token containing "." — so "." is reachable
  only as the stop action;
* special and added tokens are banned;
* tokens whose stripped text is one of `BANNED_WORDS` (the single capital letters, the abbreviations, http, https,
  www) are banned.  The paper's list holds GPT-2's *no-space* spellings ("A", "Mr"); we ban those and also the
  space-prefixed ones (" Mr", " J"), which the paper's list left open although they end abbreviations just the same,
  except " A" and " I", which are words (`SPACE_PREFIXED_WORDS`).  As in the paper (whose prompts end with a space,
  so the first latent token has no leading space), a continuation therefore cannot begin with the words "A" or "I";
* the stop token (".") is allowed.

Deviations, all stricter than the paper: tokens with characters outside `ALLOWED_CHARS` that the paper's list left
open are banned (apostrophes as in "'s", hyphens, colons, brackets, non-ASCII letters, ...), and so are tokens with
a run of two or more spaces (formatting, like the banned tab).  Digits are allowed, as in the paper.  The paper also
applied its mask (as a -50 logit penalty) to the reward LM; here the mask constrains the policy only and the reward
is the unmasked base LM's log p(Z "." | X).

Evaluation (the paper's §6): for each held-out prompt, `eval_samples` continuations, scored by the base LM's
log p(Z "." | X) (mean and max over the samples, averaged over prompts), and the embedding diversity of the samples
(1 - mean pairwise cosine similarity, "." removed), averaged over prompts.
"""

from __future__ import annotations

import functools
import json
import os
import string

import torch
from datasets import Dataset, load_dataset

from ..data import tokenize_dataset
from ..evaluation import Scored, likelihood_summary, score_tokens
from ..evaluation.decoding import decode
from ..evaluation.text_metrics import TextEncoder, default_encoder_path, diversity
from . import DATA_DIR
from .base import Evaluated, RunContext, Summary, Task, TaskData, TaskSpec
from .files import load_data

EMBEDDED = DATA_DIR / "prompts.txt"

ALLOWED_CHARS = frozenset(string.ascii_letters + string.digits + ", ")
"""Characters a latent token may contain: the paper's prompt alphabet [a-zA-Z0-9,.!? ] without the banned "!", "?"
and ".", which is only the stop action."""

ABBREVIATIONS = ("US", "Mr", "Mrs", "M", "Ms", "Dr", "Prof", "Jr", "St", "Av")
"""The paper's abbreviations (its list banned them so that their period cannot end a sentence)."""

BANNED_WORDS = frozenset(string.ascii_uppercase) | frozenset(ABBREVIATIONS) | {"http", "https", "www"}
"""Token texts (leading space stripped) banned in both spellings, except `SPACE_PREFIXED_WORDS`."""

SPACE_PREFIXED_WORDS = frozenset({" A", " I"})
"""Space-prefixed tokens of `BANNED_WORDS` that stay allowed: the words "a" and "I"."""


# ------------------------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------------------------


def _read_txt(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if not text.strip():
        raise ValueError(f"Prompt file {path} is empty: it needs one prompt per line.")
    lines = text.split("\n")
    if lines[-1] == "":  # the final line break
        lines = lines[:-1]
    prompts = []
    for i, line in enumerate(lines, start=1):
        line = line[:-1] if line.endswith("\r") else line  # only the line break goes: the trailing space stays
        if not line.strip():
            raise ValueError(f"Line {i} of {path} is empty: every line must hold one prompt (remove blank lines).")
        prompts.append(line)
    return prompts


def _read_jsonl(path: str) -> list[str]:
    prompts = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, start=1):
            if not line.strip():
                raise ValueError(f"Line {i} of {path} is empty: JSON Lines needs one JSON object per line.")
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"Line {i} of {path} is not valid JSON ({e.msg}).") from None
            if not isinstance(record, dict) or "text" not in record:
                keys = sorted(record) if isinstance(record, dict) else type(record).__name__
                raise ValueError(
                    f"Line {i} of {path} has no 'text' field ({keys}): each line needs the prompt in 'text'."
                )
            prompts.append(record["text"])
    if not prompts:
        raise ValueError(f"Prompt file {path} is empty: it needs one JSON object with a 'text' field per line.")
    return prompts


def load_prompts(source: str | None = None) -> Dataset:
    """Prompts as a Dataset with one column, `text`.

    Args:
        source: None (the embedded `tasks/data/prompts.txt`), a `.txt` file (one prompt per line; only the line break
            is removed, so the paper's trailing space is kept), a `.jsonl` file or a hub dataset id (its `train` split)
            with a `text` column.

    Raises FileNotFoundError for a missing file and ValueError naming the line/row for an empty file, an empty prompt,
    a missing `text` column or invalid JSON.
    """
    if source is None:
        source = str(EMBEDDED)
    if source.endswith((".txt", ".jsonl")):
        if not os.path.exists(source):
            raise FileNotFoundError(f"Prompt file {source} does not exist.")
        texts = _read_txt(source) if source.endswith(".txt") else _read_jsonl(source)
    else:
        ds = load_dataset(source, split="train")
        if "text" not in ds.column_names:
            raise ValueError(
                f"{source} has no 'text' column (has {ds.column_names}). The continuation task needs the prompts "
                "(1-3 sentences each) in a 'text' column."
            )
        if len(ds) == 0:
            raise ValueError(f"{source} has no rows.")
        texts = ds["text"]
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise ValueError(f"Prompt {i} of {source} is empty or not text ({t!r}): every prompt needs some text.")
    return Dataset.from_dict({"text": list(texts)})


def split(prompts: Dataset, num_eval: int = 50) -> tuple[Dataset, Dataset]:
    """(train, validation).  The paper's split: of the first 1,000 prompts, 0-949 train and 950-999 validate.
    Smaller sets hold out their last `num_eval` prompts."""
    if len(prompts) >= 1000:
        return prompts.select(range(950)), prompts.select(range(950, 1000))
    if len(prompts) <= num_eval:
        raise ValueError(f"{len(prompts)} prompts cannot give {num_eval} evaluation prompts and a training set.")
    n = len(prompts) - num_eval
    return prompts.select(range(n)), prompts.select(range(n, len(prompts)))


def to_contract(prompts: Dataset, strip_trailing_space: bool = False) -> Dataset:
    """`text` rows -> the trainer's single column `prompt` (the raw text; stop-token reward, so no suffix).

    `strip_trailing_space` removes the paper's trailing space.  Keep it for GPT-2 (the paper's setting).  Tokenizers
    that split " 2" into " " + "2" (SmolLM2's does) make a prompt ending with the space token strongly
    predict a digit (SmolLM2-135M: 43% of the first-token mass on the embedded prompts, 0% without the space).
    """
    if strip_trailing_space:
        return prompts.map(lambda r: {"prompt": r["text"].rstrip(" ")}, remove_columns=prompts.column_names)
    return prompts.map(lambda r: {"prompt": r["text"]}, remove_columns=prompts.column_names)


# ------------------------------------------------------------------------------------------------------------------
# Vocabulary
# ------------------------------------------------------------------------------------------------------------------


def _token_allowed(text: str) -> bool:
    if not text or not set(text) <= ALLOWED_CHARS or "  " in text:
        return False
    return text.lstrip(" ") not in BANNED_WORDS or text in SPACE_PREFIXED_WORDS


def vocab_mask(tokenizer, stop_token: str = ".") -> torch.Tensor:
    """(V,) bool over `len(tokenizer)`: the tokens a continuation may use (the paper's ban list, see the module
    docstring).  The stop token is allowed; every other token containing "." is banned.  A token's text is its text
    in the middle of a sequence (`gfn_trl.tokenization.token_texts`): decoded alone, a SentencePiece "▁I" reads "I"
    (banned as a letter, not allowed as the word " I") and the lone "▁" reads ""."""
    from ..models import resolve_stop_token_id
    from ..tokenization import token_texts

    stop_ids = [resolve_stop_token_id(tokenizer, stop_token)]  # one token, as the trainer resolves it
    V = len(tokenizer)
    texts = token_texts(tokenizer, V)
    allowed = torch.tensor([_token_allowed(t) for t in texts], dtype=torch.bool)
    special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
    allowed[[i for i in special if i < V]] = False
    allowed[stop_ids[0]] = True
    return allowed


# ------------------------------------------------------------------------------------------------------------------
# Evaluation
# ------------------------------------------------------------------------------------------------------------------


def evaluate(scored: list[Scored], encoder=None) -> dict[str, float]:
    """Base-LM log p(Z "." | X) (`log_likelihood/mean`, `log_likelihood/max`), the mean number of tokens before the
    stop (`length/mean`) and, with an encoder, `diversity`: the mean over prompts of `gfn_trl.metrics.diversity` of
    the prompt's samples (the paper's embedding diversity)."""
    if not scored:
        raise ValueError("evaluate needs at least one scored prompt.")
    metrics = likelihood_summary(scored)
    metrics["length/mean"] = sum(sum(map(len, s.tokens)) / len(s.tokens) for s in scored) / len(scored)
    if encoder is not None:
        metrics["diversity"] = sum(diversity(s.texts, encoder) for s in scored) / len(scored)
    return metrics


# ------------------------------------------------------------------------------------------------------------------
# The recipe's task (recipes/continuation.py)
# ------------------------------------------------------------------------------------------------------------------


class ContinuationTask(Task):
    """Sentence continuation: the paper's ban list as the vocabulary (`vocab_mask`, whatever --ban_newlines says),
    the untuned LM (`lm`) and the `--decoding` baselines, metrics of `evaluate`."""

    # prompt files, no gold latents (no --trainer sft), the sentence encoder of the diversity metric, --decoding
    spec = TaskSpec(
        "continuation", data_formats=(".txt", ".jsonl"), gold=False, encoder=True, decoding=True,
        summary=(
            "sentence continuation (Hu et al. 2024, §4.1): sample the next sentence Z of a prompt X with "
            'probability ∝ p_LM(Z "." | X)^(1/T): likely and diverse continuations.'
        ),
    )
    baselines = ("lm",)  # the untuned LM, ancestral sampling with the same sampler

    def check(self, ctx: RunContext) -> None:
        if ctx.args.stop_token is None:
            raise ValueError('Sentence continuation ends a latent with "."; set --stop_token "."')

    def load(self, ctx: RunContext) -> TaskData:
        recipe = ctx.recipe
        prompts = load_data(load_prompts, recipe.dataset)
        train, held_out = split(prompts, num_eval=min(recipe.num_eval, 50) if len(prompts) < 1000 else 50)
        if recipe.num_train:
            train = train.select(range(min(recipe.num_train, len(train))))
        return TaskData(train, held_out.select(range(min(recipe.num_eval, len(held_out)))))

    def to_contract(self, ctx: RunContext, data: TaskData) -> Dataset:
        return to_contract(data.train, strip_trailing_space=ctx.recipe.strip_trailing_space)

    def vocab_mask(self, ctx: RunContext):
        return functools.partial(vocab_mask, stop_token=ctx.args.stop_token)

    def prepare_evaluation(self, ctx: RunContext, data: TaskData) -> None:
        held_out = to_contract(data.eval, strip_trailing_space=ctx.recipe.strip_trailing_space)
        rows = list(tokenize_dataset(held_out, ctx.tokenizer, ctx.model.config, ctx.built.constraints.max_length,
                                     "eval"))
        ctx.eval = rows, TextEncoder(default_encoder_path())

    def evaluate(self, ctx: RunContext, method: str) -> Evaluated:
        rows, encoder = ctx.eval
        if method in (ctx.recipe.decoding or []):  # the paper's decoding baselines, on the untuned LM
            b, recipe = ctx.built, ctx.recipe
            with b.policy.disable_adapter():
                latents = decode(b.policy, ctx.tokenizer, [r["prompt_ids"] for r in rows], method, recipe.eval_samples,
                                 b.constraints, temperature=recipe.decoding_temperature, seed=ctx.args.seed)
            scored = score_tokens(b.reward, ctx.tokenizer, rows, latents)
        else:
            scored = ctx.sample(rows, disable_adapter=method in self.baselines)
        return Evaluated(scored, evaluate(scored, encoder))

    def samples(self, ctx: RunContext, results: dict[str, Evaluated]) -> list[dict]:
        return [{"method": method, "prompt": s.row["prompt"], "samples": s.texts, "log_likelihood": s.log_likelihood}
                for method, r in results.items() for s in r.scored]

    def summary(self, ctx: RunContext, data: TaskData, results: dict[str, Evaluated], seeded: int) -> Summary:
        trained = results[ctx.recipe.trainer].scored
        examples = [{"prompt": s.row["prompt"],
                     **{f"{m} samples": " | ".join(t + "." for t in results[m].scored[i].texts[:3]) for m in results}}
                    for i, s in enumerate(trained[:3])]
        return Summary("sentence continuation", examples)


TASK = ContinuationTask()

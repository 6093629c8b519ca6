"""Integer arithmetic with a latent rationale (paper §4.4): X a question, Z a chain of partial results, Y the answer.

    X = "Question: 6 - 0 - 4 - 8 = ? Answer:"
    Z = " 6 - 0 = 6, 6 - 4 = 2, 2 - 8 = -6"
    Y = ". The answer is -6."

Operands are 1-digit (0-9), operators + and -, evaluated left to right.  Training problems have 3 or 4 operands;
the tests have 3 and 4 operands (in distribution) and 5 operands (out of distribution).

Data contract (the paper's `FrozenModelWithPrompt` reward; reward_prompt != prompt):
    prompt         "Question: 6 - 0 - 4 - 8 = ? Answer:"                 (the policy sees the query only, no shots)
    reward_prompt  few_shot_prompt(shots) + prompt                       (k-shot demonstrations with gold rationales)
    suffix         ". The answer is -6."
    answer         -6                                                     (int)
    gold           " 6 - 0 = 6, 6 - 4 = 2, 2 - 8 = -6"                   (gold_rationale)
The few-shot demonstrations follow the paper's format exactly: "\\n".join(query + " " + rationale + solution) + "\\n".

The calculator tool (`calculator`, on by default in the recipe, as in the paper): whenever the policy emits the token
"=" or " =" (as the authors' calculator: not "==", " +=", ...), the calculator evaluates the two-term expression
since the last ",", "." or "=" and appends " " + result to the *state*: those tokens are forced (`gfn_trl.tools`),
not policy actions, so the policy writes " 6 - 0 =", the calculator " 6", the policy ", 6 - 4 =", the calculator
" 2", ...  The state is the same text as the gold rationale and the reward-prompt demonstrations,
" 6 - 0 = 6, 6 - 4 = 2, 2 - 8 = -6", and the reward scores it with the tool's outputs in place
(log p(Z_with_tool_outputs Y | 3-shot prompt + X), as in the paper).  Replayed latents get the same forced positions,
recomputed from their tokens (the authors re-score them without the tool, a defect of their code; we do not).
Without the calculator (`--calculator false`) the policy writes the results too and accuracy measures the LM's own
arithmetic.

Deliberate fixes of defects of the authors' code (GFNOrg/gfn-lm-tuning):
* `gold_rationale` evaluates every operand left to right, and the calculator reads the last two operands
  of a longer expression (the paper's `limit_capability: 2`) instead of dropping one (their `get_limited_expr`);
* the tests never overlap the training problems (`make_splits` and `load_splits` assert it).

Loading real data (`load_problems`, `load_splits`): a JSON list or a JSONL file of objects, in either format
    the paper's:   {"str_query": "Question: 6 - 0 - 4 - 8 = ? Answer:", "num_sol": -6,
                    "str_rationale": "...", "str_sol": ". The answer is -6."}      (str_rationale, str_sol optional)
    plain:         {"question": "6 - 0 - 4 - 8", "answer": -6, "rationale": "..."}  (rationale optional)
The question may be the bare expression or the full query.  Operands must be non-negative integers and operators
+ or -; `answer` must equal the left-to-right value.  A given rationale is checked to be text and then ignored:
the paper's files hold tool-style rationales without results ("6 - 0 =, 6 - 4 =, 2 - 8 =") that only make sense
with the calculator, so gold rationales always come from `gold_rationale`.  `load_splits` also reads a directory
holding the paper's files (`1digit_34_op+-_train_50.json`, `1digit_34_op+-_hw.json`, `1digit_{3,4,5}_op+-_test.json`).

Training problems (`training_problems`): the first `N_GOLD` have their gold rationale put in a GFlowNet's replay
buffer; `--gold_weight w` repeats each of them w times in the training set, so that they are drawn w times as often
as the others (the authors weight them 1 against 0.2 for the problems without a rationale: w = 5, ~4.8 % of the
draws with their 10 + 1000 problems; the default, 1, draws every problem alike).

Evaluation (`evaluate`): the paper's protocol, 10 samples per question at temperature 0.1, the prediction of each
sample read from its rationale as the authors read it (`extract_answer`: the text after the last "=" if it is an
integer, else the last word if it is one), majority vote; plus the base-LM log-likelihood log p(Z Y | reward_prompt)
of the samples, which is the same likelihood for every method (methods are not scored under their own likelihoods).
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from datasets import Dataset

from ..data import tokenize_dataset
from ..evaluation import Scored, likelihood_summary
from ..evaluation.text_metrics import majority_vote_accuracy
from ..progress import say
from ..sampling import LatentConstraints
from ..tokenization import encode_continuation
from ..tools import TextTool
from .base import Evaluated, ReplaySeeds, RunContext, Summary, Task, TaskData, TaskSpec
from .files import load_data
from .lm_stage import finetune_lm

OPERATORS = ("+", "-")
TRAIN_OPERANDS = (3, 4)
TEST_OPERANDS = (3, 4)
OOD_OPERANDS = 5
# The paper's vocabulary constraint: tokens made only of these characters ('▁' and 'Ġ' are how SentencePiece and
# byte-level BPE vocabularies write a space; we test decoded text, so a space stands for both), plus the stop token.
ALLOWED_CHARS = frozenset(" ,.0123456789=+-")
# The paper's file names (GFNOrg/gfn-lm-tuning, infill_subj_arithmetic/data/arithmetic_with_tool/).
PAPER_TRAIN_FILES = ("1digit_34_op+-_train_50.json", "1digit_34_op+-_hw.json")
PAPER_TEST_FILES = {3: "1digit_3_op+-_test.json", 4: "1digit_4_op+-_test.json", 5: "1digit_5_op+-_test.json"}


@dataclass(frozen=True)
class Problem:
    """operands[0] ops[0] operands[1] ops[1] ... evaluated left to right."""

    operands: tuple[int, ...]
    operators: tuple[str, ...]

    def __post_init__(self):
        if len(self.operands) < 2:
            raise ValueError(f"A problem needs at least 2 operands, got {self.operands}.")
        if len(self.operators) != len(self.operands) - 1:
            raise ValueError(
                f"{len(self.operands)} operands need {len(self.operands) - 1} operators, got {self.operators}."
            )
        if any(op not in OPERATORS for op in self.operators):
            raise ValueError(f"Operators must be '+' or '-', got {self.operators}.")
        if any(not isinstance(x, int) or isinstance(x, bool) or x < 0 for x in self.operands):
            raise ValueError(f"Operands must be non-negative integers, got {self.operands}.")

    @property
    def n_operands(self) -> int:
        return len(self.operands)

    @property
    def expression(self) -> str:
        """'6 - 0 - 4 - 8'"""
        parts = [str(self.operands[0])]
        for op, x in zip(self.operators, self.operands[1:]):
            parts += [op, str(x)]
        return " ".join(parts)

    @property
    def query(self) -> str:
        """'Question: 6 - 0 - 4 - 8 = ? Answer:' (the paper's X)."""
        return f"Question: {self.expression} = ? Answer:"

    def partial_results(self) -> list[int]:
        """The value after each operator, left to right (the last one is the answer)."""
        acc, out = self.operands[0], []
        for op, x in zip(self.operators, self.operands[1:]):
            acc = acc + x if op == "+" else acc - x
            out.append(acc)
        return out

    @property
    def answer(self) -> int:
        return self.partial_results()[-1]


# ----------------------------------------------------------------------------------------------------------------
# Generation and splits
# ----------------------------------------------------------------------------------------------------------------


def random_problem(rng: random.Random, n_operands: int) -> Problem:
    """1-digit operands 0-9, operators + and - drawn uniformly."""
    return Problem(tuple(rng.randrange(10) for _ in range(n_operands)),
                   tuple(rng.choice(OPERATORS) for _ in range(n_operands - 1)))


def _space_size(n_operands: int) -> int:
    return 10**n_operands * 2 ** (n_operands - 1)


def generate_problems(
    rng: random.Random, n: int, operand_counts: Sequence[int], exclude: Iterable[Problem] = ()
) -> list[Problem]:
    """`n` distinct 1-digit problems, each with a number of operands drawn uniformly from `operand_counts`, none of
    them in `exclude`.  Raises ValueError when the problem space is too small."""
    excluded = set(exclude)
    counts = set(operand_counts)
    room = sum(_space_size(k) for k in counts) - sum(1 for p in excluded if p.n_operands in counts)
    if n > room:
        raise ValueError(f"Cannot draw {n} distinct problems with {list(operand_counts)} operands: only {room} exist "
                         "outside the excluded ones.")
    out, seen = [], set(excluded)
    while len(out) < n:
        p = random_problem(rng, rng.choice(list(operand_counts)))
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out


def check_disjoint(splits: dict[str, list[Problem]]) -> None:
    """Assert that no test problem (keys starting with 'test') is a training, demonstration, rationale-LM or
    validation problem (the paper's defect 5: its in-training test set was made of training queries), and that no
    validation problem (keys starting with 'val') is a training, demonstration or rationale-LM problem."""
    seen = set(splits.get("train", [])) | set(splits.get("shots", [])) | set(splits.get("rationale", []))
    validation = {p for name, problems in splits.items() if name.startswith("val") for p in problems}
    for name, problems in splits.items():
        if name.startswith("test") or name.startswith("val"):
            overlap = (seen | (validation if name.startswith("test") else set())) & set(problems)
            assert not overlap, (
                f"{len(overlap)} problems of {name} are also training/demonstration/rationale-LM"
                f"{'/validation' if name.startswith('test') else ''} problems, e.g. {next(iter(overlap)).expression}"
            )


def make_splits(seed: int, n_train: int, n_test_per_length: int, n_shots: int = 0, n_val_per_length: int = 0,
                n_rationale: int = 0) -> dict[str, list[Problem]]:
    """Seeded splits: 'test_3', 'test_4' (in distribution), 'test_5' (OOD), each `n_test_per_length` distinct
    problems, then 'shots' (`n_shots` few-shot demonstrations) and 'train' (`n_train` problems), both with 3-4
    operands, distinct, and disjoint from every test (asserted).  Then, drawn after those (so that they do not change
    them) and disjoint from all of them: 'rationale' (`n_rationale` problems with 3-4 operands, the rationale-LM
    stage's texts), then 'val_3', 'val_4' (`n_val_per_length` each, the training distribution's validation problems,
    on which settings are chosen; drawn last, so that asking for them changes no other split)."""
    rng = random.Random(f"arithmetic:{seed}")
    splits = {f"test_{k}": generate_problems(rng, n_test_per_length, [k]) for k in (*TEST_OPERANDS, OOD_OPERANDS)}
    tests = [p for k in splits for p in splits[k]]
    pool = generate_problems(rng, n_shots + n_train, TRAIN_OPERANDS, exclude=tests)
    splits["shots"], splits["train"] = pool[:n_shots], pool[n_shots:]
    used = tests + pool
    if n_rationale:
        splits["rationale"] = generate_problems(rng, n_rationale, TRAIN_OPERANDS, exclude=used)
        used += splits["rationale"]
    for k in TRAIN_OPERANDS if n_val_per_length else ():
        splits[f"val_{k}"] = generate_problems(rng, n_val_per_length, [k], exclude=used)
        used += splits[f"val_{k}"]
    check_disjoint(splits)
    return splits


# ----------------------------------------------------------------------------------------------------------------
# Text
# ----------------------------------------------------------------------------------------------------------------


def gold_rationale(problem: Problem) -> str:
    """' 6 - 0 = 6, 6 - 4 = 2, 2 - 8 = -6': every step of the left-to-right evaluation, results written out."""
    steps, left = [], problem.operands[0]
    for op, x, result in zip(problem.operators, problem.operands[1:], problem.partial_results()):
        steps.append(f"{left} {op} {x} = {result}")
        left = result
    return " " + ", ".join(steps)


def solution(answer: int) -> str:
    """Y: '. The answer is -6.'"""
    return f". The answer is {answer}."


def few_shot_prompt(examples: Sequence[Problem]) -> str:
    """The paper's reward-prompt demonstrations, "\\n".join(query + " " + rationale + solution) + "\\n"; '' for none."""
    if not examples:
        return ""
    return "\n".join(p.query + " " + gold_rationale(p).strip() + solution(p.answer) for p in examples) + "\n"


def rationale_texts(problems: Sequence[Problem], stop: str) -> list[str]:
    """The rationale-LM stage's texts: for each problem "X Z Y" (query, gold rationale, solution) and "X Z" + `stop`
    (the latent's stop token right after the rationale, the terminal state a policy reaches by stopping there):
    'Question: 6 - 0 = ? Answer: 6 - 0 = 6. The answer is 6.' and 'Question: 6 - 0 = ? Answer: 6 - 0 = 6<|im_end|>'.
    Fine-tuned on both, the LM (the reward, and the policy's start) prefers the complete gold rationale to a short
    partial one before Y, and its policy knows where to stop."""
    return [text for p in problems
            for text in (p.query + gold_rationale(p) + solution(p.answer), p.query + gold_rationale(p) + stop)]


def to_contract(problems: Sequence[Problem], shots: Sequence[Problem], prompt_shots: Sequence[Problem] = ()) -> Dataset:
    """Problems -> the trainer's columns.  The reward prompt holds the `shots` demonstrations; the policy prompt holds
    `prompt_shots` (none by default, as in the paper; the k-shot prompting baseline passes the shots)."""
    demos, policy_demos = few_shot_prompt(shots), few_shot_prompt(prompt_shots)
    return Dataset.from_dict({
        "prompt": [policy_demos + p.query for p in problems],
        "reward_prompt": [demos + p.query for p in problems],
        "suffix": [solution(p.answer) for p in problems],
        "answer": [p.answer for p in problems],
        "gold": [gold_rationale(p) for p in problems],
        "question": [p.expression for p in problems],
        "n_operands": [p.n_operands for p in problems],
    })


_QUERY = re.compile(r"^\s*(?:Question:)?\s*(?P<expr>.*?)\s*(?:=\s*\?\s*(?:Answer:)?)?\s*$", re.DOTALL)
_EXPR = re.compile(r"^\d+(?:\s*[+-]\s*\d+)+$")


def parse_question(question: str) -> Problem:
    """'6 - 0 - 4 - 8' or 'Question: 6 - 0 - 4 - 8 = ? Answer:' -> Problem.  Raises ValueError otherwise."""
    if not isinstance(question, str):
        raise ValueError(f"question must be text, got {type(question).__name__} {question!r}")
    expr = _QUERY.match(question).group("expr").replace("\u2212", "-")
    if not _EXPR.match(expr):
        raise ValueError(f"question {question!r} is not an expression of non-negative integers joined by + and - "
                         "(e.g. '6 - 0 - 4 - 8' or 'Question: 6 - 0 - 4 - 8 = ? Answer:')")
    tokens = re.findall(r"\d+|[+-]", expr)
    return Problem(tuple(int(t) for t in tokens[0::2]), tuple(tokens[1::2]))


def extract_answer(text: str) -> int | None:
    """The prediction of a rationale `text`, read as the authors' `extract_answer` reads it (GFNOrg/gfn-lm-tuning,
    infill_subj_arithmetic/utils.py): the text after the last "=", if it is an integer once spaces and "." around it
    are stripped (' 2 - 8 = -6.' -> -6); else the last whitespace-separated word, if it is one (' 6 - 0 = 6, 6 - 4'
    -> 4: a rationale cut mid-step is read by its last number, not its last result); else None (' 7 - 9 =', ' 6,',
    '').  Theirs returns -1 for None, a vote that counts as right when the answer is -1; theirs also reads the query
    before the rationale, whose own "= ? Answer:" never parses, so the readings agree (except for a rationale glued to
    "Answer:" with no space)."""
    pieces = [text.rsplit("=", 1)[1]] if "=" in text else []
    words = text.split()
    if words:
        pieces.append(words[-1])
    for piece in pieces:
        try:
            return int(piece.strip().strip("."))
        except ValueError:
            continue
    return None


# ----------------------------------------------------------------------------------------------------------------
# The calculator tool
# ----------------------------------------------------------------------------------------------------------------

_TWO_TERMS = re.compile(r"(-?\d+)((?:[+-]\d+)+)")


def calculator_result(text: str) -> str | None:
    """What the calculator appends after `text`, which ends with "=" (' 6 - 0 = 6, 6 - 4 =' -> ' 2').

    It evaluates the expression between the last ",", "." or "=" before that "=" and the "=".  Like the paper's
    calculator with `limit_capability: 2` it handles two operands: of a longer expression it evaluates the last two
    (' 6 - 3 - 4 =' -> 3 - 4 -> ' -1'); the first operand may be negative (a partial result, '-6 + 3').  Anything
    else (no operator, a lone number, text) gets no result (None), and the policy goes on writing."""
    head = text.rstrip()
    if not head.endswith("="):
        return None
    expression = re.split(r"[,.=]", head[:-1])[-1].replace(" ", "")
    m = _TWO_TERMS.fullmatch(expression)
    if m is None:
        return None
    terms = re.findall(r"([+-])(\d+)", m.group(2))
    left = int(m.group(1)) if len(terms) == 1 else int(terms[-2][1])
    op, right = terms[-1]
    return f" {left + int(right) if op == '+' else left - int(right)}"


def calculator(tokenizer) -> TextTool:
    """The calculator as a `gfn_trl.tools` tool for `tokenizer`: fires on the tokens "=" and " =" (spaces around "="
    ignored), as the authors' calculator does; "==", " +=", " -=", "====" do not fire it."""
    return TextTool(tokenizer, "=", calculator_result)


def gold_latent(tokenizer, problem: Problem, tool: TextTool | None = None) -> list[int]:
    """The gold rationale as latent token ids.  With the calculator, the policy's pieces (' 6 - 0 =', ', 6 - 4 =')
    and the tool's outputs are tokenized separately, exactly as sampling produces them (`TextTool.tokenize`), so the
    latent is one the constrained policy can write; without it, the whole text is tokenized."""
    if tool is None:
        return encode_continuation(tokenizer, gold_rationale(problem))
    return tool.tokenize(gold_rationale(problem))


# ----------------------------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------------------------


def _answer(value, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"{where}: 'answer' must be an integer, got {value!r}")
    if isinstance(value, str):
        if not re.fullmatch(r"\s*-?\d+\s*", value):
            raise ValueError(f"{where}: 'answer' must be an integer, got {value!r}")
        value = int(value)
    return value


def load_problems(path: str | os.PathLike) -> list[Problem]:
    """Problems from a JSON list or a JSONL file (formats in the module docstring).  Raises FileNotFoundError or
    ValueError naming the file, the row and the fix."""
    path = str(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"Arithmetic data file {path} does not exist.")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if path.endswith(".jsonl"):
        rows = []
        for i, line in enumerate(text.splitlines()):
            if line.strip():
                try:
                    rows.append((f"{path} line {i + 1}", json.loads(line)))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path} line {i + 1} is not valid JSON: {e.msg}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}); a .json file must hold a list "
                             "of problems, a .jsonl file one problem per line.") from None
        if not isinstance(data, list):
            raise ValueError(f"{path} must hold a JSON list of problems, got a {type(data).__name__}.")
        rows = [(f"{path} row {i}", r) for i, r in enumerate(data)]
    if not rows:
        raise ValueError(f"{path} holds no problems.")
    problems = []
    for where, row in rows:
        if not isinstance(row, dict):
            raise ValueError(
                f"{where}: expected an object like {{\"question\": \"6 - 0 - 4 - 8\", \"answer\": -6}}, got {row!r}"
            )
        q_key = "question" if "question" in row else "str_query" if "str_query" in row else None
        a_key = "answer" if "answer" in row else "num_sol" if "num_sol" in row else None
        if q_key is None or a_key is None:
            raise ValueError(f"{where}: needs a 'question' (or 'str_query') and an 'answer' (or 'num_sol'); has "
                             f"{sorted(row)}")
        try:
            problem = parse_question(row[q_key])
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        answer = _answer(row[a_key], where)
        if answer != problem.answer:
            raise ValueError(f"{where}: answer {answer} but {problem.expression} evaluates left to right to "
                             f"{problem.answer}.")
        for key in ("rationale", "str_rationale", "str_sol"):
            if key in row and not isinstance(row[key], str):
                raise ValueError(f"{where}: '{key}' must be text, got {row[key]!r}")
        problems.append(problem)
    return problems


def _dedupe(problems: Iterable[Problem]) -> list[Problem]:
    return list(dict.fromkeys(problems))


def load_splits(
    source: str | None, seed: int, n_train: int | None, n_test_per_length: int, n_shots: int = 0,
    n_val_per_length: int = 0, n_rationale: int = 0,
) -> dict[str, list[Problem]]:
    """Train / shots / test_3 / test_4 / test_5 problems, disjoint (asserted).

    * None: `make_splits` (generated, seeded);
    * a directory with the paper's files: tests from `1digit_{3,4,5}_op+-_test.json` (the first `n_test_per_length`
      of each present), shots then train from `1digit_34_op+-_train_50.json` and `1digit_34_op+-_hw.json`, with every
      test problem removed from them (the paper's test files overlap its training pool);
    * one JSON/JSONL file: the first `n_test_per_length` distinct problems with 3, 4 and 5 operands are the tests;
      of the other 3- and 4-operand problems the first `n_shots` are the demonstrations and the rest the train set.
    From a file or directory, the rationale-LM problems (`n_rationale`) are the last of the training pool and the
    validation problems (`n_val_per_length` of 3 and of 4 operands) the last of each length before them; the train set
    is what remains.
    """
    if source is None:
        return make_splits(seed, n_train if n_train is not None else 1000, n_test_per_length, n_shots,
                           n_val_per_length, n_rationale)
    if os.path.isdir(source):
        tests = {f"test_{k}": _dedupe(load_problems(Path(source, name)))[:n_test_per_length]
                 for k, name in PAPER_TEST_FILES.items() if Path(source, name).exists()}
        train_files = [Path(source, name) for name in PAPER_TRAIN_FILES if Path(source, name).exists()]
        if not tests or not train_files:
            raise FileNotFoundError(f"{source} must hold the paper's files: at least one of {list(PAPER_TRAIN_FILES)} "
                                    f"and at least one of {list(PAPER_TEST_FILES.values())}.")
        held_out = {p for t in tests.values() for p in t}
        pool = [p for p in _dedupe(p for f in train_files for p in load_problems(f)) if p not in held_out]
    else:
        problems = _dedupe(load_problems(source))
        tests = {f"test_{k}": [p for p in problems if p.n_operands == k][:n_test_per_length]
                 for k in (*TEST_OPERANDS, OOD_OPERANDS)}
        tests = {k: v for k, v in tests.items() if v}
        held_out = {p for t in tests.values() for p in t}
        pool = [p for p in problems if p not in held_out and p.n_operands in TRAIN_OPERANDS]
    if len(pool) <= n_shots:
        raise ValueError(f"{source} leaves {len(pool)} training problems after holding out the tests; need more than "
                         f"the {n_shots} demonstrations.")
    rest, held = pool[n_shots:], {}
    if n_rationale:  # the last problems of the pool, then the last ones of each length: not the first training ones
        held["rationale"], rest = rest[len(rest) - n_rationale:], rest[:max(len(rest) - n_rationale, 0)]
    for k in TRAIN_OPERANDS if n_val_per_length else ():
        of_k = [p for p in rest if p.n_operands == k][-n_val_per_length:]
        held[f"val_{k}"], rest = of_k, [p for p in rest if p not in set(of_k)]
    if any(len(v) < (n_rationale if k == "rationale" else n_val_per_length) for k, v in held.items()) or not rest:
        raise ValueError(f"{source} has too few training problems for {n_shots} demonstrations, {n_rationale} "
                         f"rationale-LM problems, {n_val_per_length} validation problems per length and a train set.")
    splits = {**tests, "shots": pool[:n_shots], "train": rest[:n_train] if n_train else rest, **held}
    check_disjoint(splits)
    return splits


# ----------------------------------------------------------------------------------------------------------------
# Tokens
# ----------------------------------------------------------------------------------------------------------------


def vocab_mask(tokenizer) -> torch.Tensor:
    """(V,) bool: tokens whose text is made only of digits, space, ',', '.', '=', '+', '-' (the paper's
    `▁Ġ,.1234567890=+-`), plus EOS; special tokens are excluded.  A token's text is its text in the middle of a
    sequence (`gfn_trl.tokenization.token_texts`): SentencePiece's lone "▁", the space Llama writes before each digit,
    decodes to "" alone and was banned."""
    from ..tokenization import token_texts

    texts = token_texts(tokenizer)
    allowed = torch.tensor([bool(t) and set(t) <= ALLOWED_CHARS for t in texts], dtype=torch.bool)
    allowed[list(tokenizer.all_special_ids)] = False
    if tokenizer.eos_token_id is not None:
        allowed[tokenizer.eos_token_id] = True
    return allowed


def rationale_token_budget(tokenizer, n_operands: int, tool: TextTool | None = None) -> int:
    """Tokens that the longest gold rationale of an `n_operands` problem takes (the tool's outputs count: they are
    part of the state): the latent length a policy needs to write a complete rationale.  Two-digit partial results are
    the longest, so the maximum is taken over all-'+' and all-'-' extremes and a seeded sample of problems."""
    rng = random.Random(f"budget:{n_operands}")
    candidates = [Problem((9,) * n_operands, ("+",) * (n_operands - 1)),
                  Problem((0,) + (9,) * (n_operands - 1), ("-",) * (n_operands - 1))]
    candidates += [random_problem(rng, n_operands) for _ in range(200)]
    return max(len(gold_latent(tokenizer, p, tool)) for p in candidates)


# ----------------------------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------------------------


def evaluate(scored: list[Scored]) -> dict[str, float]:
    """Majority-vote accuracy over each question's samples (the prediction of a sample is `extract_answer` of its
    rationale), the accuracy of single samples, the fraction of samples holding a number, and the base-LM
    log-likelihood summary (log p(Z Y | reward_prompt), the same likelihood for every method)."""
    predictions = [[extract_answer(t) for t in s.texts] for s in scored]
    gold = [int(s.row["answer"]) for s in scored]
    n = sum(len(p) for p in predictions)
    metrics = {
        "accuracy": majority_vote_accuracy(predictions, gold),
        "sample_accuracy": sum(x == g for p, g in zip(predictions, gold) for x in p) / max(n, 1),
        "parsed": sum(x is not None for p in predictions for x in p) / max(n, 1),
    }
    metrics.update(likelihood_summary(scored))
    return metrics


# ----------------------------------------------------------------------------------------------------------------
# The recipe's task (recipes/arithmetic.py): its argument is `calculator`
# ----------------------------------------------------------------------------------------------------------------

N_SHOTS = 3  # demonstrations in the reward prompt (the paper's `num_points: 3`)
N_GOLD = 10  # training problems whose gold rationale seeds the replay buffer (the paper's `num_train: 10`)


def training_problems(problems: Sequence[Problem], gold_weight: int = 1, n_gold: int = N_GOLD) -> list[Problem]:
    """The training rows, in the trainer's order: `problems`, then `gold_weight - 1` more copies of each of the first
    `n_gold` (those whose gold rationale seeds the replay buffer), so that a uniform draw over the rows picks each of
    them `gold_weight` times as often as another problem.  The authors draw their 10 problems with a rationale with
    weight 1 and the 1000 without with weight 0.2 (`train_weight` in their data.py): `gold_weight=5`.

    Raises:
        ValueError: `gold_weight` is not an integer >= 1.
    """
    if isinstance(gold_weight, bool) or not isinstance(gold_weight, int) or gold_weight < 1:
        raise ValueError(f"--gold_weight must be an integer >= 1 (the paper's 1 : 0.2 is 5), got {gold_weight!r}.")
    return list(problems) + [p for p in problems[:n_gold] for _ in range(gold_weight - 1)]
SPLITS = {"test3": "test_3", "test4": "test_4", "ood5": "test_5"}  # metric prefix -> `load_splits` key
VALIDATION_SPLITS = {"val3": "val_3", "val4": "val_4"}  # --eval_split validation: the training distribution's


class ArithmeticTask(Task):
    """Integer arithmetic: the optional rationale-LM stage (`--rationale_lm_steps`), the calculator tool
    (`--calculator`), digit/operator latents, the first `--num_gold` gold rationales in the replay buffer (those
    problems drawn `--gold_weight` times as often), the untuned LM zero-shot (`prompting`) and with the
    demonstrations (`3-shot`) as baselines, each test split (or, under `--eval_split validation`, each validation
    split) with a latent budget that holds its longest gold rationale."""

    # JSON / JSON Lines problems or the paper's data directory, gold rationales (--trainer sft), no encoder
    spec = TaskSpec(
        "arithmetic", data_formats=(".json", ".jsonl"), data_dir=True, gold=True,
        summary=(
            "integer arithmetic with a latent rationale and a calculator (Hu et al. 2024, §4.4): sample the chain "
            "of intermediate results Z of a problem X with probability ∝ p_LM(Z Y | demonstrations, X), Y the "
            "answer."
        ),
    )
    baselines = ("prompting", "3-shot")

    def check(self, ctx: RunContext) -> None:
        t = ctx.task_args
        training_problems([], t.gold_weight)  # raises on a bad --gold_weight
        if isinstance(t.num_gold, bool) or not isinstance(t.num_gold, int) or t.num_gold < -1:
            raise ValueError(f"--num_gold must be -1 (every training problem) or a count >= 0, got {t.num_gold!r}.")
        if t.num_gold == 0 and getattr(ctx.recipe, "trainer", None) == "sft":
            raise ValueError("--trainer sft with --num_gold 0: no training problem has a gold rationale to fine-tune "
                             "on (SFT learns from the first --num_gold problems' rationales). Pass --num_gold N, or -1 "
                             "for every training problem.")
        if t.rationale_lm_steps < 0:
            raise ValueError("--rationale_lm_steps must be 0 (no rationale-LM stage) or more.")
        if t.rationale_lm_steps and not t.rationale_lm_learning_rate > 0:
            raise ValueError(f"--rationale_lm_learning_rate must be > 0 with --rationale_lm_steps "
                             f"{t.rationale_lm_steps}, got {t.rationale_lm_learning_rate}.")
        if t.rationale_lm_steps and t.num_rationale < 1:
            raise ValueError(f"--rationale_lm_steps {t.rationale_lm_steps} needs --num_rationale >= 1 held-out "
                             f"problems to train on, got {t.num_rationale}.")
        if t.rationale_lm_steps and t.rationale_lm_cache and os.path.exists(t.rationale_lm_cache) \
                and not os.path.isdir(t.rationale_lm_cache):
            raise ValueError(f"--rationale_lm_cache {t.rationale_lm_cache} is a file, not a folder: pass a folder "
                             "(it is created if missing).")
        if t.eval_split not in ("test", "validation"):
            raise ValueError(f"--eval_split must be 'test' or 'validation', got {t.eval_split!r}.")

    def uses_tool(self, ctx: RunContext) -> bool:
        return ctx.task_args.calculator

    def load(self, ctx: RunContext) -> TaskData:
        recipe, t = ctx.recipe, ctx.task_args
        validation = t.eval_split == "validation"
        splits = load_data(load_splits, recipe.dataset, seed=ctx.args.seed, n_train=recipe.num_train,
                           n_test_per_length=recipe.num_eval, n_shots=N_SHOTS,
                           n_val_per_length=recipe.num_eval if validation else 0,
                           n_rationale=t.num_rationale if t.rationale_lm_steps else 0)
        if t.num_gold > len(splits["train"]):  # not refused: the paper's 10 with a small --num_train is a use
            say(f"Warning: --num_gold {t.num_gold} exceeds the {len(splits['train'])} training problems: all "
                f"{len(splits['train'])} come with their gold rationale (the GFlowNet's replay seeds, SFT's "
                "training set; -1 says so).")
        held_out = {key: splits[key] for key in (*SPLITS.values(), *VALIDATION_SPLITS.values()) if splits.get(key)}
        names = VALIDATION_SPLITS if validation else SPLITS
        evaluated = {name: splits[key] for name, key in names.items() if splits.get(key)}
        return TaskData(splits["train"], evaluated, extra={"shots": splits["shots"], "held_out": held_out,
                                                           "rationale": splits.get("rationale", [])})

    def prepare_model(self, ctx: RunContext, data: TaskData) -> bool:
        """The rationale-LM stage (`--rationale_lm_steps`): the LM fine-tuned on `rationale_texts` of held-out
        problems (`gfn_trl.tasks.lm_stage.finetune_lm`, as infilling's story LM), which then is the reward, the
        policy's start, the prompting baselines and the evaluation likelihood for every trainer alike."""
        t = ctx.task_args
        if t.rationale_lm_steps <= 0:
            return False
        problems = data.extra["rationale"]
        evaluated = {p for split in data.extra["held_out"].values() for p in split}
        assert not evaluated & set(problems), "rationale-LM problems overlap a test or validation split"
        assert not set(data.train) & set(problems), "rationale-LM problems overlap the training problems"
        stop = getattr(ctx.args, "stop_token", None) or ctx.tokenizer.eos_token
        ctx.model = finetune_lm(ctx.model, ctx.tokenizer, rationale_texts(problems, stop), t.rationale_lm_steps,
                                t.rationale_lm_learning_rate, batch_size=8, seed=ctx.args.seed, max_length=96,
                                name="rationale_lm", cache_dir=t.rationale_lm_cache)
        from ..trainers.setup import seed_run

        seed_run(ctx.args)  # what follows (LoRA, sampling) starts from the run's seed, cached stage or not
        return True

    def make_tool(self, ctx: RunContext) -> TextTool | None:
        return calculator(ctx.tokenizer) if ctx.task_args.calculator else None

    def to_contract(self, ctx: RunContext, data: TaskData) -> Dataset:
        budget = ctx.args.max_completion_length
        too_long = sum(len(gold_latent(ctx.tokenizer, p, ctx.tool)) > budget for p in data.train)
        if too_long:
            say(f"Warning: {too_long} of {len(data.train)} training problems have a gold rationale longer than "
                f"max_completion_length={budget} tokens; the policy cannot write it in full.")
        n_gold = self._n_gold(ctx, data)
        if ctx.recipe.trainer == "sft":  # SFT learns from rationales: only the problems given one (the paper's 10)
            gold = list(data.train)[:n_gold]
            # as token ids the sampler writes (with the calculator, its outputs tokenized apart from the policy's
            # pieces), not the text: tokenized whole, a SentencePiece tokenizer merges a result with the comma after
            # it ("▁6,"), a latent the calculator never lets the policy write
            contract = to_contract(gold, data.extra["shots"]).remove_columns("gold")
            return contract.add_column("gold", [gold_latent(ctx.tokenizer, p, ctx.tool) for p in gold])
        return to_contract(training_problems(data.train, ctx.task_args.gold_weight, n_gold), data.extra["shots"])

    @staticmethod
    def _n_gold(ctx: RunContext, data: TaskData) -> int:
        """The training problems whose gold rationale seeds the replay buffer: the first --num_gold (-1: all)."""
        n = ctx.task_args.num_gold
        return len(data.train) if n == -1 else min(n, len(data.train))

    def vocab_mask(self, ctx: RunContext):
        return vocab_mask

    def replay_seeds(self, ctx: RunContext, data: TaskData) -> ReplaySeeds:
        n_gold = self._n_gold(ctx, data)
        rows = training_problems(data.train, ctx.task_args.gold_weight, n_gold)  # copies share their problem's buffer
        gold = [[gold_latent(ctx.tokenizer, p, ctx.tool)] if i < n_gold else [] for i, p in enumerate(rows)]
        return ReplaySeeds(gold, "gold rationales")

    def prepare_evaluation(self, ctx: RunContext, data: TaskData) -> None:
        c, shots = ctx.built.constraints, data.extra["shots"]
        ctx.eval = {}
        for name, problems in data.eval.items():
            n_operands = max(p.n_operands for p in problems)
            budget = max(c.max_length, rationale_token_budget(ctx.tokenizer, n_operands, ctx.tool))
            rows = {prompting: list(tokenize_dataset(
                to_contract(problems, shots, prompt_shots=shots if prompting == "3-shot" else ()),
                ctx.tokenizer, ctx.model.config, budget, "eval")) for prompting in ("zero-shot", "3-shot")}
            ctx.eval[name] = (LatentConstraints(c.stop_token_id, budget, c.min_length, c.allowed, c.tool), rows)

    def evaluate(self, ctx: RunContext, method: str) -> Evaluated:
        prompting = "3-shot" if method == "3-shot" else "zero-shot"  # the trained policy sees X alone
        scored = {name: ctx.sample(rows[prompting], disable_adapter=method in self.baselines, constraints=c)
                  for name, (c, rows) in ctx.eval.items()}
        return Evaluated(scored, {f"{name}/{k}": v for name, s in scored.items() for k, v in evaluate(s).items()})

    def samples(self, ctx: RunContext, results: dict[str, Evaluated]) -> list[dict]:
        return [{"method": method, "split": name, "question": s.row["question"], "answer": s.row["answer"],
                 "gold": s.row["gold"], "samples": s.texts, "predictions": [extract_answer(t) for t in s.texts],
                 "log_likelihood": s.log_likelihood}
                for method, r in results.items() for name, rows in r.scored.items() for s in rows]

    def summary(self, ctx: RunContext, data: TaskData, results: dict[str, Evaluated], seeded: int) -> Summary:
        trained = results[ctx.recipe.trainer].scored
        examples = [{"question": s.row["question"], "answer": s.row["answer"], "gold": s.row["gold"],
                     **{f"{m} sample": results[m].scored[name][i].texts[0] for m in results}}
                    for name in data.eval for i, s in enumerate(trained[name][:1])]
        return Summary(f"integer arithmetic ({'with' if ctx.tool else 'no'} calculator tool)", examples)


TASK = ArithmeticTask()

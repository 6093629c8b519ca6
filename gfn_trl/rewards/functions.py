"""Reward functions in TRL's signature, and the tilted log-reward they make together with the frozen LM's prior.

A run's log-reward of stopping after the prefix s_k = z_1..z_k (natural log, untempered; the trainers divide it by
the reward temperature T_R) is

    log R(s_k ⊤) = α · log p_LM(s_k [Y] | reward_prompt) + Σ_i w_i · r_i(s_k)

with α = `lm_reward_weight`, r_i = `reward_funcs[i]` and w_i = `reward_weights[i]` (1 each by default).  The LM term
is `gfn_trl.rewards.LikelihoodReward` (the stop-token or fixed-suffix reward, contrast penalty included); α = 1 with
no functions is the paper's reward (Hu et al. 2024, §2-3), and α = 0 drops the LM prior.

A reward function is what TRL's `GRPOTrainer(reward_funcs=...)` takes (trl/trainer/grpo_trainer.py
`_calculate_rewards`): a callable `f(prompts, completions, completion_ids, **kwargs) -> list[float | None]`,
synchronous or `async`, called with keyword arguments, one list entry per completion, where

* `prompts` are the rows' `prompt` column (text, or a conversation);
* `completions` are the latents' text, decoded with `skip_special_tokens=True` (the latent only: no prompt, no stop
  token); for a conversational prompt, `[{"role": "assistant", "content": text}]`, as TRL gives them;
* `completion_ids` are the latents' token ids z_1..z_n (without the stop token, which is the action that ends the
  latent, not part of it; TRL's include the EOS it sampled);
* `**kwargs` are the dataset's other columns (one value per completion; not the columns `tokenize_dataset` adds)
  and `trainer_state` (the `transformers.TrainerState`), `log_metric(name, value)` (a scalar averaged into the
  logs; this process's calls only) and `log_extra(column, values)` (accepted and ignored: there is no completions
  table), as TRL passes them.

It returns one reward per completion: a list, or a one-dimensional array (numpy, torch), as TRL accepts.  Its
signature is checked against a dataset's columns before training (`RewardFunctions.check_signatures`), and an
exception raised inside it carries a note naming the function and its first input.

It may also be a sequence-classification model (`AutoModelForSequenceClassification`, one label) or its hub id or
path: the reward is its logit on `prompt text + completion` (a conversation: the chat template of the prompt and the
completion message), as in TRL.

**None and non-finite values.**  TRL's convention for None is kept: the function does not apply to that sample, and
its term is left out of log R (it contributes 0, TRL's `nansum`).  A sample (a state the loss reads) for which every
function returns None while α = 0 has no reward at all and is refused with an error, since a GFlowNet needs R of
every sample it trains on (TRL instead gives such a sample advantage 0).  NaN and ±inf are refused with an error
naming the function, the prompt and the completion: TRL turns None into NaN and then cannot tell the two apart, but
a NaN returned by a function is a bug, and ±inf would make the loss infinite (return a large finite penalty).

**Prefixes.**  Every state s_k may stop, so every prefix is itself a finished latent and any function can score it.
A function that sets the attribute `scores_prefixes = True` (e.g. `f.scores_prefixes = True`, or on a model) is
called on every terminable prefix, and the per-prefix objectives (modified SubTB, DB) then run unchanged, exactly as
for the LM reward; the cost is n + 1 scorings per latent (identical prefixes of a batch are scored once).  A function
without it scores finished latents only; it then needs an objective that reads log R at the terminal state only
(trajectory balance, `loss_type="tb"`; `check_objective`).  README, "Reward functions", gives the proofs.

Dimension legend: B latents, T latent width, S = T + 1 states, m reward functions.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..tokenization import is_conversation

RewardFunc = str | nn.Module | Callable

# The columns `gfn_trl.data.tokenize_dataset` adds to every row: internal, not passed to reward functions (TRL's
# own columns "completion" and "completion_ids" are not passed either).
ADDED_COLUMNS = ("prompt_ids", "reward_prompt_ids", "suffix_ids", "contrast_suffix_ids", "gfn_key", "gfn_has_suffix")
_NOT_PASSED = ("prompt", "completion", "completion_ids", *ADDED_COLUMNS)
# What every call passes besides `prompts`, `completions`, `completion_ids` and the dataset's columns (TRL's extras)
CALL_EXTRAS = ("trainer_state", "log_metric", "log_extra")


def passed_columns(column_names: Sequence[str]) -> list[str]:
    """The dataset columns a reward function receives as keyword arguments (one list entry per completion): every
    column but `prompt` (given as `prompts`), TRL's `completion` / `completion_ids`, and those `tokenize_dataset`
    adds."""
    return [c for c in column_names if c not in _NOT_PASSED]


def signature_problem(func, names: Sequence[str], more_to_come: bool = False) -> str | None:
    """Why `func` cannot be called with the keyword arguments `names` (each passed, none more), or None when it can
    (or when its signature cannot be read, e.g. a builtin).  Says which parameters no argument fills and which
    arguments it does not take.  `more_to_come`: further arguments (columns not known yet) may fill its other
    parameters, so only the arguments it does not take count."""
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return None
    params = sig.parameters.values()
    missing = [p.name for p in params if p.default is p.empty and p.name not in names
               and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params)
    named = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    extra = [] if takes_any else [n for n in names if n not in named]
    parts = []
    if missing and not more_to_come:
        parts.append(f"no argument fills its parameter(s) {missing}")
    if extra:
        parts.append(f"it does not take {extra} (it has no **kwargs)")
    return "; ".join(parts) or None


def callable_name(func) -> str:
    """A reward function's name for metrics and checkpoints, as TRL names it: a model's checkpoint name, a
    function's `__name__` (through `functools.partial`), else the class name of a callable object."""
    if isinstance(func, nn.Module):
        return str(getattr(getattr(func, "config", None), "_name_or_path", "") or type(func).__name__).split("/")[-1]
    while isinstance(func, functools.partial):
        func = func.func
    return getattr(func, "__name__", type(func).__name__)


def is_async_callable(func) -> bool:
    """Whether calling `func` returns a coroutine: an `async def` function, a `functools.partial` of one, or an
    object whose `__call__` is `async`.  (A plain function that returns an awaitable is awaited too, once called.)"""
    while isinstance(func, functools.partial):
        func = func.func
    return inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(type(func).__call__)


def _run_coroutines(coros: list) -> list:
    """Await `coros` concurrently and return their results in order, from synchronous code: on a fresh event loop,
    or in a worker thread when this thread already runs one (a notebook)."""

    async def gather():
        return await asyncio.gather(*coros)

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(gather())
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, gather()).result()


@dataclass
class FunctionScores:
    """What the reward functions returned for a batch of latents, by state.

    Attributes:
        values: (B, m, S) float64 r_i(s_k), untempered; 0 where the function was not called or returned None.
        given: (B, m, S) bool, the function returned a number there.
        called: (B, m, S) bool, the function was called there (s_n always; every terminable prefix for a function
            scored on prefixes).
    """

    values: Tensor
    given: Tensor
    called: Tensor


@dataclass(frozen=True)
class RewardSpec:
    """The reward a run trains on, as its checkpoints' fingerprint records it.

    Attributes:
        names: the reward functions' names, in order.
        prefixes: for each function, whether it is scored on every prefix in this run (it declares
            `scores_prefixes` and the objective reads prefix rewards), or on the finished latent only.
        weights: w_i.
        lm_reward_weight: α (0: the LM term is not computed).
    """

    names: tuple[str, ...] = ()
    prefixes: tuple[bool, ...] = ()
    weights: tuple[float, ...] = ()
    lm_reward_weight: float = 1.0

    @property
    def is_default(self) -> bool:
        """The paper's reward: the LM's log-likelihood alone (α = 1, no functions)."""
        return not self.names and self.lm_reward_weight == 1

    def fingerprint(self) -> dict:
        """What a resume must share with the run that wrote the checkpoint (`RolloutTrainer.run_fingerprint`): the
        functions, where they are scored, their weights and α; empty for the default reward, so that checkpoints
        written before reward functions existed keep their fingerprint.

        A resume with another reward is refused rather than recomputed: the replay buffer holds the untempered
        log R of the old target for every entry (not its parts), and a function need not be a pure function of
        the latent (`trainer_state`), so the old entries cannot be rescored exactly."""
        if self.is_default:
            return {}
        funcs = ", ".join(f"{n} (w={w:g}, {'prefixes' if p else 'terminal'})"
                          for n, w, p in zip(self.names, self.weights, self.prefixes))
        return {"reward": f"lm_reward_weight={self.lm_reward_weight:g}; reward_funcs: {funcs or 'none'}"}


def reads_prefix_rewards(objective) -> bool:
    """Whether a registered objective (`gfn_trl.losses.Objective`) reads log R(s_k ⊤) at states other than the
    terminal one: every objective but those whose only window is (s_0, s_n), i.e. whose batch log Z fits the "tb"
    windows (`Objective.log_z_windows`: the loss's own windows)."""
    return objective.log_z_windows != "tb"


def check_objective(functions: RewardFunctions | None, objective) -> None:
    """Refuse a terminal-only reward function with an objective that reads prefix rewards.

    Raises:
        ValueError: a function without `scores_prefixes` and an objective that reads log R at every prefix.
    """
    if functions is None or not reads_prefix_rewards(objective):
        return
    terminal = [n for n, p in zip(functions.names, functions.scores_prefixes) if not p]
    if terminal:
        raise ValueError(
            f"The reward function(s) {terminal} score finished latents only, but loss_type={objective.name!r} reads "
            "the log-reward of every prefix s_k (it trains the flow of every state, each of which may stop). Either "
            "use loss_type='tb' (trajectory balance with a per-prompt log Z: it reads the reward of the finished "
            "latent only), or, if the function gives the right reward to a prefix as a finished latent, set "
            "`f.scores_prefixes = True` on it: it is then called on every prefix."
        )


class RewardFunctions:
    """The external reward functions r_1..r_m of a run, called in TRL's signature (module docstring).

    Args:
        reward_funcs: one or a list of: a callable (sync or async), a sequence-classification model, or its hub id
            or local path (loaded with `AutoModelForSequenceClassification.from_pretrained(..., num_labels=1,
            **model_init_kwargs)`).
        reward_weights: w_i, one finite number per function; None: 1 each.
        reward_processing_classes: tokenizers of the model rewards (one, or a list aligned with `reward_funcs`,
            None entries for callables); a model's missing tokenizer is loaded from its name.
        model_init_kwargs: keyword arguments for loading a reward model given by name.
        chunk_size: texts per forward of a reward model (None: all at once).

    Raises:
        ValueError: no functions, weights of the wrong number or not finite, processing classes of the wrong number.
        TypeError: an entry that is neither a callable, a model nor a string.
    """

    def __init__(
        self,
        reward_funcs: RewardFunc | Sequence[RewardFunc],
        reward_weights: Sequence[float] | None = None,
        reward_processing_classes=None,
        model_init_kwargs: dict | None = None,
        chunk_size: int | None = None,
    ):
        funcs = list(reward_funcs) if isinstance(reward_funcs, (list, tuple)) else [reward_funcs]
        if not funcs:
            raise ValueError("reward_funcs is empty: pass at least one reward function (or None: the LM reward only).")
        if reward_processing_classes is None:
            reward_processing_classes = [None] * len(funcs)
        elif not isinstance(reward_processing_classes, (list, tuple)):
            reward_processing_classes = [reward_processing_classes]
        if len(reward_processing_classes) != len(funcs):
            raise ValueError(f"reward_processing_classes has {len(reward_processing_classes)} entries for "
                             f"{len(funcs)} reward functions: give one per function (None for a callable).")
        processing = list(reward_processing_classes)
        for i, f in enumerate(funcs):
            if isinstance(f, str):
                from transformers import AutoModelForSequenceClassification

                funcs[i] = AutoModelForSequenceClassification.from_pretrained(f, num_labels=1,
                                                                              **(model_init_kwargs or {}))
            if isinstance(funcs[i], nn.Module):
                processing[i] = self._model_tokenizer(funcs[i], processing[i])
                funcs[i].eval().requires_grad_(False)
            elif not callable(funcs[i]):
                raise TypeError(f"reward_funcs[{i}] is a {type(f).__name__}: give a callable f(prompts, completions, "
                                "completion_ids, **kwargs), a sequence-classification model, or its name or path.")
        if reward_weights is None:
            weights = [1.0] * len(funcs)
        else:
            weights = list(reward_weights)
            if len(weights) != len(funcs):
                raise ValueError(f"reward_weights has {len(weights)} entries for {len(funcs)} reward functions: give "
                                 "one weight per function (or none: 1 each).")
            for w in weights:
                if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
                    raise ValueError(f"reward_weights must be finite numbers, got {weights!r}.")
        self.funcs, self.processing_classes = funcs, processing
        self.weights = [float(w) for w in weights]
        names = [callable_name(f) for f in funcs]
        # two functions of one name (two lambdas) would share `rewards/<name>/mean`: number the later ones
        self.names = [n if names[:i].count(n) == 0 else f"{n}_{names[:i].count(n)}" for i, n in enumerate(names)]
        self.scores_prefixes = [bool(getattr(f, "scores_prefixes", False)) for f in funcs]
        self.chunk_size = chunk_size

    def __len__(self) -> int:
        return len(self.funcs)

    def check_signatures(self, column_names: Sequence[str], split: str = "train") -> None:
        """Refuse, before training, a function that cannot take the arguments it will be called with on the rows of a
        dataset with these columns (a required column the dataset lacks, or no `**kwargs` for the other columns and
        TRL's extras); reward models are not checked.

        Raises:
            ValueError: naming the function, its unfilled parameters or the arguments it does not take, and the fix.
        """
        columns = passed_columns(column_names)
        own = ("prompts", "completions", "completion_ids", *CALL_EXTRAS)
        clash = sorted(set(columns) & set(own))
        if clash:
            raise ValueError(f"The {split} dataset has the column(s) {clash}, which reward functions receive as their "
                             "own arguments (TRL's signature): rename them.")
        names = [*own[:3], *columns, *CALL_EXTRAS]
        for f, name in zip(self.funcs, self.names):
            if isinstance(f, nn.Module):
                continue
            problem = signature_problem(f, names)
            if problem is not None:
                raise ValueError(
                    f"The reward function {name!r} cannot be called on the {split} dataset: {problem}. A reward "
                    "function is called, as in TRL, with the keyword arguments prompts, completions, completion_ids, "
                    f"the dataset's other columns (here {columns}) and {', '.join(CALL_EXTRAS)}: give it the "
                    "signature f(prompts, completions, completion_ids, **kwargs), add a missing column to the "
                    "dataset, or give that parameter a default."
                )

    @staticmethod
    def _model_tokenizer(model: nn.Module, tokenizer):
        if tokenizer is None:
            from transformers import AutoTokenizer

            name = getattr(model.config, "_name_or_path", None)
            if not name:
                raise ValueError("A reward model object without a name needs its tokenizer: pass "
                                 "reward_processing_classes.")
            tokenizer = AutoTokenizer.from_pretrained(name)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        model.config.pad_token_id = tokenizer.pad_token_id
        return tokenizer

    def to(self, device) -> RewardFunctions:
        """Move the reward models to `device`."""
        for f in self.funcs:
            if isinstance(f, nn.Module):
                f.to(device)
        return self

    # ------------------------------------------------------------------ scoring
    @torch.no_grad()
    def score(
        self,
        rows: Sequence[Mapping],
        z: Tensor,
        lengths: Tensor,
        tokenizer,
        *,
        prefixes: bool = False,
        min_length: int = 0,
        require_value: bool = False,
        extra: Mapping[str, Any] | None = None,
        only: int | None = None,
    ) -> FunctionScores:
        """Call the functions on the latents `z` of `rows` (one dataset row per latent).

        Args:
            rows: the B dataset rows (their `prompt` and other columns reach the functions).
            z, lengths: (B, T) latents right-padded (any pad), (B,) their lengths n.
            tokenizer: decodes the latents into `completions`.
            prefixes: call each function that declares `scores_prefixes` on every prefix s_k, k = min_length..n
                (else every function on the finished latent s_n only).
            min_length: the first terminable prefix.
            require_value: refuse a state where every called function returned None (α = 0: nothing else scores it).
            extra: keyword arguments for every call (`trainer_state`, `log_metric`, `log_extra`).
            only: call only function `only` (the others' entries stay 0 and not called).

        Returns:
            `FunctionScores` with (B, m, S) tensors on `z`'s device.

        Raises:
            ValueError: a function returned a list of the wrong length, an array that is not one-dimensional, NaN
                or ±inf; or (`require_value`) no number at all for a state.
            TypeError: a function returned something that is not a number or None (text included).
            Whatever a function raises, with a note naming it and its first input.
        """
        B, S = z.shape[0], z.shape[1] + 1
        m = len(self.funcs)
        n = [int(x) for x in lengths.tolist()]
        zl = z.tolist()
        values = torch.zeros(B, m, S, dtype=torch.float64)
        given = torch.zeros(B, m, S, dtype=torch.bool)
        called = torch.zeros(B, m, S, dtype=torch.bool)
        chosen = range(m) if only is None else [only]
        item_sets = {
            False: [(b, n[b]) for b in range(B)],
            True: [(b, k) for b in range(B) for k in range(min(min_length, n[b]), n[b] + 1)],
        }
        inputs = {}  # per item set: the distinct (row, prefix) items and the call's arguments
        for on_prefixes in {prefixes and self.scores_prefixes[i] for i in chosen}:
            inputs[on_prefixes] = self._inputs(rows, zl, item_sets[on_prefixes], tokenizer)

        results: dict[int, list] = {}
        pending = []
        for i in chosen:
            args = inputs[prefixes and self.scores_prefixes[i]]
            f = self.funcs[i]
            try:
                if isinstance(f, nn.Module):
                    results[i] = self._model_rewards(i, args["prompts"], args["completions"])
                elif is_async_callable(f):
                    pending.append(i)
                else:
                    results[i] = f(prompts=args["prompts"], completions=args["completions"],
                                   completion_ids=args["completion_ids"], **args["columns"], **(extra or {}))
            except Exception as e:
                e.add_note(self._failure_note(i, args))
                raise
        # a plain function may return an awaitable (e.g. a synchronous decorator around an async function): awaited
        awaited = [i for i, out in results.items() if inspect.isawaitable(out)]
        if pending or awaited:
            coros = []
            for i in pending:
                args = inputs[prefixes and self.scores_prefixes[i]]
                coros.append(self._noted(i, args, self.funcs[i](
                    prompts=args["prompts"], completions=args["completions"], completion_ids=args["completion_ids"],
                    **args["columns"], **(extra or {}))))
            coros += [self._noted(i, inputs[prefixes and self.scores_prefixes[i]], results[i]) for i in awaited]
            results.update(zip(pending + awaited, _run_coroutines(coros)))

        for i in chosen:
            args = inputs[prefixes and self.scores_prefixes[i]]
            out = self._checked(i, results[i], args)
            for (b, k), u in zip(item_sets[prefixes and self.scores_prefixes[i]], args["inverse"]):
                called[b, i, k] = True
                if out[u] is not None:
                    values[b, i, k], given[b, i, k] = out[u], True
        if require_value:
            missing = called.any(1) & ~given.any(1)  # (B, S)
            if bool(missing.any()):
                b, k = (int(x) for x in missing.nonzero()[0])
                text = tokenizer.decode(zl[b][:k], skip_special_tokens=True)
                raise ValueError(
                    f"Every reward function returned None for the latent {text!r} (prompt {rows[b]['prompt']!r}) and "
                    "lm_reward_weight is 0, so it has no reward at all. A GFlowNet needs R of every latent it samples: "
                    "make at least one function return a number for it, or set lm_reward_weight > 0."
                )
        device = z.device
        return FunctionScores(values.to(device), given.to(device), called.to(device))

    @staticmethod
    def _inputs(rows, zl, items, tokenizer) -> dict:
        """The distinct (row, prefix) items of `items` (an identical prefix of the same row object is scored once)
        and the call's arguments for them; `inverse[j]` is item j's index among the distinct ones."""
        order: dict[tuple, int] = {}
        inverse, distinct = [], []
        for b, k in items:
            key = (id(rows[b]), tuple(zl[b][:k]))
            if key not in order:
                order[key] = len(distinct)
                distinct.append((b, k))
            inverse.append(order[key])
        ids = [zl[b][:k] for b, k in distinct]
        texts = tokenizer.batch_decode(ids, skip_special_tokens=True) if ids else []
        prompts = [rows[b]["prompt"] for b, _ in distinct]
        completions = [[{"role": "assistant", "content": t}] if is_conversation(p) else t
                       for p, t in zip(prompts, texts)]
        keys = [c for c in rows[0] if c not in _NOT_PASSED] if rows else []
        columns = {c: [rows[b][c] for b, _ in distinct] for c in keys}
        return {"prompts": prompts, "completions": completions, "completion_ids": ids, "columns": columns,
                "inverse": inverse}

    def _model_rewards(self, i: int, prompts, completions) -> list[float]:
        """A sequence-classification model's logit on prompt + completion, as TRL scores with a reward model."""
        model, tok = self.funcs[i], self.processing_classes[i]
        if prompts and is_conversation(prompts[0]):
            texts = [tok.apply_chat_template(list(p) + list(c), tokenize=False) for p, c in zip(prompts, completions)]
        else:
            texts = [p + c for p, c in zip(prompts, completions)]
        device = next(model.parameters()).device
        chunk = self.chunk_size or max(1, len(texts))
        out: list[float] = []
        for lo in range(0, len(texts), chunk):
            enc = tok(text=texts[lo : lo + chunk], return_tensors="pt", padding=True, padding_side="right",
                      add_special_tokens=False).to(device)
            out += model(**enc).logits[:, 0].float().tolist()
        return out

    def _failure_note(self, i: int, args) -> str:
        """What an exception raised inside function `i` is annotated with: the function and the call's inputs."""
        count = len(args["completions"])
        first = f"; the first: {args['completions'][0]!r} for the prompt {args['prompts'][0]!r}" if count else ""
        return f"(raised by the reward function {self.names[i]!r}, called on {count} completion(s){first})"

    async def _noted(self, i: int, args, coro):
        try:
            return await coro
        except Exception as e:
            e.add_note(self._failure_note(i, args))
            raise

    def _checked(self, i: int, out, args) -> list[float | None]:
        name = self.names[i]
        count = len(args["completions"])
        if not isinstance(out, (list, tuple)) and hasattr(out, "tolist") and hasattr(out, "shape"):
            # an array (numpy, torch, jax, ...), as TRL accepts: one dimension, one reward per completion
            shape = tuple(out.shape)
            if len(shape) != 1:
                raise ValueError(
                    f"The reward function {name!r} returned a {type(out).__name__} of shape {shape}, but a reward "
                    f"function returns one reward per completion: a list, or a one-dimensional array of {count} "
                    "(e.g. `.reshape(-1)` an array of shape (n, 1))."
                )
            out = out.tolist()
        if not isinstance(out, Sequence) or isinstance(out, (str, bytes)):
            raise TypeError(f"The reward function {name!r} returned a {type(out).__name__}: it must return a list "
                            "with one reward (a number, or None) per completion.")
        if len(out) != count:
            raise ValueError(f"The reward function {name!r} returned {len(out)} rewards, but {count} were expected "
                             "(one per prompt-completion pair).")
        checked: list[float | None] = []
        for j, v in enumerate(out):
            if v is None:
                checked.append(None)
                continue
            try:
                if isinstance(v, (str, bytes)):  # float("1.0") would parse: a text reward is a bug, not a number
                    raise TypeError
                x = float(v)
            except (TypeError, ValueError):
                raise TypeError(f"The reward function {name!r} returned {v!r} for the completion "
                                f"{args['completions'][j]!r}: a reward is a number, or None where the function does "
                                "not apply.") from None
            if not math.isfinite(x):
                raise ValueError(
                    f"The reward function {name!r} returned {x} for the completion {args['completions'][j]!r} of the "
                    f"prompt {args['prompts'][j]!r}. A reward must be a finite number (a log-reward term: -inf "
                    "would give the latent probability 0 and the loss an infinite residual; use a large finite "
                    "penalty), or None where the function does not apply (its term is then left out of log R)."
                )
            checked.append(x)
        return checked


# ---------------------------------------------------------------------------------------------------------------------
# The tilted log-reward


def tilted_log_rewards(
    lm: Tensor | None,
    scores: FunctionScores | None,
    lengths: Tensor,
    lm_reward_weight: float,
    weights: Sequence[float],
    final_only: bool = False,
) -> Tensor:
    """log R = α · log p_LM + Σ_i w_i · r_i, untempered, summed in float64 and returned in float32.

    Args:
        lm: (B, S) per-prefix log p_LM(s_k [Y] | reward_prompt), or (B,) at the terminal state with `final_only`;
            None when α = 0 (not computed).
        scores: the functions' `FunctionScores` ((B, m, S); 0 where a function was not called or returned None), or
            None without functions.
        lengths: (B,) n.
        lm_reward_weight, weights: α and w (m entries).
        final_only: return (B,) log R(Z ⊤) at the terminal state only.
    Returns:
        (B, S) float32 log R(s_k ⊤) (where a function was not called, its term is 0: at k < n for a function scored
        on finished latents only, and past n), or (B,) with `final_only`.
    """
    if scores is not None:
        fn = scores.values  # (B, m, S)
        if final_only:
            fn = fn.gather(2, lengths[:, None, None].expand(-1, fn.shape[1], 1)).squeeze(2)  # (B, m)
        coef = torch.tensor([float(w) for w in weights], dtype=torch.float64, device=fn.device)
        total = (fn.double() * coef.reshape(1, -1, *([1] * (fn.dim() - 2)))).sum(1)  # (B, S) or (B,)
    else:
        total = None
    if lm is not None and lm_reward_weight != 0:
        prior = float(lm_reward_weight) * lm.double()
        total = prior if total is None else prior + total
    if total is None:
        raise ValueError("No reward: lm_reward_weight is 0 and there are no reward functions.")
    return total.float()

"""The paper configs (recipes/configs/*_gpt-j.yaml, *_gpt2-*.yaml) hold the authors' settings where their runs set them.

Each config is parsed by its recipe's own parser (as `accelerate launch recipes/<task>.py --config ...` parses it), and
the values are the ones read in the authors' code (GFNOrg/gfn-lm-tuning, 8604cff): no gradient clipping anywhere;
torch.optim.AdamW's weight decay 0.01; their construction below the minimum length (-99 / T_R, the unconstrained
stop in the loss; the subjectivity E-step's reward has no minimum); dropout kept in training where they keep it
(LoRA 0.1 in arithmetic and infilling, GPT-2's own 0.1 in infilling), zeroed where they zero it (continuation);
infilling evaluated at temperature 0.9; arithmetic's 10 problems with a rationale drawn with weight 1 against 0.2.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset

from gfn_trl import GFlowNetTrainer
from gfn_trl.runner.build import peft_config
from gfn_trl.testing import load_recipe, tiny_model, tiny_tokenizer

ROOT = Path(__file__).resolve().parents[1]
PAPER = {  # task -> its paper config
    "arithmetic": "arithmetic_gpt-j.yaml",
    "infill": "infill_gpt2-large.yaml",
    "continuation": "continuation_gpt2-xl.yaml",
    "subjectivity": "subjectivity_gpt-j.yaml",
}


def parse(task: str, monkeypatch, *extra: str):
    """(recipe arguments, GFlowNetConfig, task arguments or None) of the task's paper config, parsed by its recipe."""
    recipe = load_recipe(task)
    argv = [f"{task}.py", "--config", str(ROOT / "recipes" / "configs" / PAPER[task]), *extra]
    monkeypatch.setattr(sys, "argv", argv)
    parsed = recipe.make_parser().parse_args_and_config()
    return (*parsed, None) if len(parsed) == 2 else parsed


@pytest.mark.parametrize("task", list(PAPER))
def test_the_optimizer_is_the_authors(task, monkeypatch):
    _, a, _ = parse(task, monkeypatch)
    assert a.max_grad_norm == 0  # never clipped (the HF Trainer clips only when max_grad_norm > 0)
    assert a.weight_decay == 0.01  # torch.optim.AdamW's default
    assert (a.adam_beta1, a.adam_epsilon) == (0.9, 1e-8)
    assert a.adam_beta2 == (0.99 if task == "subjectivity" else 0.999)


@pytest.mark.parametrize("task", list(PAPER))
def test_states_below_the_minimum_length_are_the_authors(task, monkeypatch):
    _, a, _ = parse(task, monkeypatch)
    assert a.min_length_mode == "penalize" and a.loss_min_length() == 0
    # the subjectivity E-step scores the empty rationale with the LM (its reward's min_len is 0); the others give -99
    assert a.min_length_log_reward == (None if task == "subjectivity" else -99.0)
    assert a.min_completion_length == {"arithmetic": 5, "infill": 5, "continuation": 1, "subjectivity": 1}[task]


def test_infill_is_evaluated_as_the_authors_did(monkeypatch):
    r, _, _ = parse("infill", monkeypatch)
    assert (r.eval_samples, r.eval_temperature) == (25, 0.9)


def test_arithmetic_draws_the_gold_problems_as_often_as_the_authors(monkeypatch):
    from gfn_trl.tasks.arithmetic import N_GOLD, make_splits, training_problems

    r, _, task = parse("arithmetic", monkeypatch)
    assert (r.num_train, task.gold_weight) == (1010, 5)
    problems = make_splits(0, r.num_train, 1, 3)["train"]
    rows = training_problems(problems, task.gold_weight)
    gold = set(problems[:N_GOLD])
    share = sum(p in gold for p in rows) / len(rows)
    assert share == pytest.approx(10 * 1 / (10 * 1 + 1000 * 0.2))  # the authors' train_weight: 4.76 %


@pytest.mark.parametrize(("task", "arch", "kept"), [("infill", "gpt2", True), ("arithmetic", "gptj", True),
                                                    ("continuation", "gpt2", False)])
def test_dropout_is_kept_where_the_authors_keep_it(task, arch, kept, monkeypatch, tmp_path):
    """A trainer built from the parsed config (a tiny model of the paper's architecture, LoRA from the config) has
    LoRA's dropout at the config's p where the authors keep it, and GPT-2's own dropout with it (infilling)."""
    r, a, _ = parse(task, monkeypatch, "--output_dir", str(tmp_path), "--use_cpu", "true", "--report_to", "none")
    assert a.disable_dropout == (not kept) and r.lora_dropout == 0.1
    tok = tiny_tokenizer()
    model = tiny_model(arch, len(tok))
    own = {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)}  # the architecture's own dropout
    trainer = GFlowNetTrainer(model, a, train_dataset=Dataset.from_dict({"prompt": ["the cat"], "suffix": ["sat ."]}),
                              processing_class=tok, peft_config=peft_config(r))
    lora = [d.p for name, m in trainer.model.named_modules() if name.endswith("lora_dropout")
            for d in m.values()]
    rest = {m.p for name, m in trainer.model.named_modules()
            if isinstance(m, torch.nn.Dropout) and ".lora_dropout." not in name}
    assert lora and set(lora) == ({0.1} if kept else {0.0})
    assert rest == (own if kept else {0.0})
    if task == "infill":
        assert own == {0.1}  # GPT-2's attention, residual and embedding dropout: on in the authors' infilling policy


def test_subjectivity_m_step_is_the_authors(monkeypatch):
    """The M-step notebook: a new LoRA trained 100 steps of 32 x 8 at lr 1e-4 on 100 GFlowNet rationales per review."""
    _, _, t = parse("subjectivity", monkeypatch)
    assert (t.m_step_steps, t.m_step_rationales, t.m_step_learning_rate) == (100, 100, 1e-4)
    assert (t.m_step_batch_size, t.m_step_gradient_accumulation_steps) == (32, 8)

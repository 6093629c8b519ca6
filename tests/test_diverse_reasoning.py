"""The diverse-reasoning recipe (issue 16): the verifier's log-reward, the splits, the metrics (majority vote, pass@k,
distinct right rationales), and the recipe end to end for the GFlowNet and TRL's GRPO on a real tiny checkpoint
(in-process, a few steps): both get the verifier and write the metrics."""

import json
import math
import sys

import pytest
from test_recipe_outputs import RUN, tiny_checkpoint  # a sibling test module (pytest puts tests/ on the path)

from gfn_trl.evaluation import Scored
from gfn_trl.tasks import diverse_reasoning as dr
from gfn_trl.testing import load_recipe


def test_verifier_is_log_of_epsilon_plus_indicator():
    f = dr.CorrectAnswer(epsilon=0.05)
    assert f.scores_prefixes is True and f.__name__ == "correct_answer"
    out = f(prompts=["q"] * 5, completions=[" 7 - 3 = 4, 4 + 5 = 9", " 9", " 7 - 3 = 4, 4 + 5 =", "", " 4 + 5 = 8"],
            completion_ids=[[1]] * 5, answer=[9, 9, 9, 9, 9], gold=["g"] * 5)
    right, wrong = math.log(1.05), math.log(0.05)
    assert out == pytest.approx([right, right, wrong, wrong, wrong])
    # conversational completions (TRL's format) are read from the assistant message
    assert f(prompts=[[{"role": "user", "content": "q"}]], completions=[[{"role": "assistant", "content": " = 9"}]],
             completion_ids=[[1]], answer=[9]) == pytest.approx([right])
    for bad in (0, -1.0, float("inf"), float("nan"), True):
        with pytest.raises(ValueError, match="verifier_epsilon"):
            dr.CorrectAnswer(bad)


def test_splits_are_seeded_disjoint_and_small():
    a, b = dr.make_splits(0, 20, 10), dr.make_splits(0, 20, 10)
    assert a == b and dr.make_splits(1, 20, 10) != a
    assert not set(a["test"]) & (set(a["train"]) | set(a["shots"]))
    assert all(p.n_operands in dr.OPERANDS for split in a.values() for p in split)
    rows = dr.to_contract(a["train"][:2], a["shots"])
    assert rows["prompt"][0].startswith(dr.few_shot_prompt(a["shots"])) and rows["prompt"][0].endswith("Answer:")
    assert "suffix" not in rows.column_names and rows["answer"] == [p.answer for p in a["train"][:2]]


def test_metrics_count_distinct_right_rationales():
    row = {"answer": 9}
    scored = [
        # 3 right (2 distinct token sequences), 1 wrong: majority 9
        Scored(row, [[1, 2], [1, 2], [3], [4]], [" 4 + 5 = 9", " 4 + 5 = 9", " 9", " 8"], [-1.0] * 4),
        # 1 right of 4: pass@k but the majority (8) is wrong
        Scored({"answer": 2}, [[5], [6], [6], [7]], [" 2", " 8", " 8", ""], [-2.0] * 4),
    ]
    m = dr.evaluate(scored)
    assert m["accuracy"] == 0.5 and m["pass@k"] == 1.0 and m["sample_accuracy"] == 4 / 8
    assert m["distinct_correct"] == (2 + 1) / 2 and m["distinct"] == (3 + 3) / 2
    assert m["log_likelihood/mean"] == -1.5


@pytest.mark.parametrize("trainer", ["gfn", "grpo"])
def test_recipe_runs_end_to_end(trainer, tmp_path, monkeypatch):
    tiny_checkpoint(tmp_path / "tiny")
    monkeypatch.chdir(tmp_path)
    argv = ["--trainer", trainer, "--model_name_or_path", "tiny", "--output_dir", "out", *RUN,
            "--skip_baseline", "false", "--num_train", "2", "--num_eval", "2", "--eval_samples", "3",
            "--num_generations", "2", "--per_device_train_batch_size", "4" if trainer == "grpo" else "2"]
    module = load_recipe("diverse_reasoning")
    monkeypatch.setattr(sys, "argv", ["diverse_reasoning.py", *argv])
    recipe, args, task = module.make_parser().parse_args_and_config()
    assert args.stop_token == "." and args.lm_reward_weight == 1.0 and task.verifier_epsilon == 0.01
    metrics = module.main(recipe, args, task)

    assert set(metrics) == {"prompting", trainer}
    for method in metrics.values():
        assert 0 <= method["test/accuracy"] <= method["test/pass@k"] <= 1
        assert 0 <= method["test/distinct_correct"] <= method["test/distinct"] <= 3
    written = json.loads((tmp_path / "out" / "metrics.json").read_text())["metrics"]
    assert written[trainer]["test/pass@k"] == metrics[trainer]["test/pass@k"]
    samples = [json.loads(line) for line in (tmp_path / "out" / "samples.jsonl").read_text().splitlines()]
    assert {s["method"] for s in samples} == {"prompting", trainer} and all(len(s["samples"]) == 3 for s in samples)
    # the verifier reached the trainer: its reward is logged under its name
    history = json.loads((tmp_path / "out" / "trainer_state.json").read_text())["log_history"]
    logged = [v for entry in history for k, v in entry.items() if k.startswith("rewards/correct_answer/mean")]
    assert logged, history
    assert all(math.log(0.01) - 1e-6 <= float(v) <= math.log(1.01) + 1e-6 for v in logged)

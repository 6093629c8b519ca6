"""Evaluation inside the trainers (`evaluate()`, `eval_strategy="steps"`) and the `log_completions` table, through the
public API on real tiny models and a real tokenizer."""

import glob
import sys

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig

from gfn_trl import GFlowNetConfig, GFlowNetTrainer, PPOConfig, PPOTrainer
from gfn_trl.testing import tiny_model, tiny_tokenizer
from gfn_trl.trainers import completions as completions_table

ROWS = {
    "prompt": ["the cat", "a dog", "the big dog", "a red cat"],
    "suffix": ["slept .", "ran .", "ate .", "sat ."],
}
EVAL_ROWS = {"prompt": ["a big cat", "the red dog", "a cat"], "suffix": ["ate .", "sat .", "ran ."],
             "gold": ["x", "y", "z"]}


def _trainer(tmp_path, kind="gflownet", compute_metrics=None, **kw):
    tok = tiny_tokenizer()
    common = dict(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=2, per_device_eval_batch_size=2,
                  num_generations=3, max_completion_length=4, learning_rate=1e-2, warmup_steps=0, logging_steps=1,
                  save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True, seed=3)
    common.update(kw)
    config_class, trainer_class = (GFlowNetConfig, GFlowNetTrainer) if kind == "gflownet" else (PPOConfig, PPOTrainer)
    return trainer_class(tiny_model("gpt2", len(tok), seed=0), config_class(**common),
                         train_dataset=Dataset.from_dict(ROWS), eval_dataset=Dataset.from_dict(EVAL_ROWS),
                         processing_class=tok, peft_config=LoraConfig(r=4), compute_metrics=compute_metrics)


@pytest.mark.parametrize("kind", ["gflownet", "ppo"])
def test_evaluate_samples_on_policy_and_hands_the_samples_to_compute_metrics(tmp_path, kind):
    seen = []

    def task_metrics(prompts, completions, completion_ids, log_rewards, **columns):
        seen.append((prompts, completions, completion_ids, log_rewards, columns))
        return {"gold_rows": len(columns["gold"]), "mean_log_r": sum(log_rewards) / len(log_rewards)}

    # one eval batch: the recorded metrics are means over eval batches (as the HF Trainer's eval_loss), so with a
    # single batch eval_log_reward/mean is the mean over the samples
    trainer = _trainer(tmp_path, kind, compute_metrics=task_metrics, per_device_eval_batch_size=3)
    if kind == "gflownet":
        trainer.train()  # a buffer to leave alone
        buffer = trainer.replay_buffer.state_dict()
    first = trainer.evaluate()
    second = trainer.evaluate()

    (prompts, completions, ids, log_rewards, columns), _ = seen
    k = trainer.args.num_generations
    assert prompts == [p for p in EVAL_ROWS["prompt"] for _ in range(k)]  # every eval prompt, num_generations times
    assert columns["gold"] == [g for g in EVAL_ROWS["gold"] for _ in range(k)] and columns["suffix"][0] == "ate ."
    tok = trainer.processing_class
    assert completions == [tok.decode(z) for z in ids] and all(1 <= len(z) <= 4 for z in ids)
    # the rewards are the trainer's own scores of these latents
    rows = [r for r in trainer.eval_dataset for _ in range(k)]
    z = torch.nn.utils.rnn.pad_sequence([torch.tensor(t) for t in ids], batch_first=True)
    want = trainer.score_latents(rows, z, torch.tensor([len(t) for t in ids]), final_only=True)
    torch.testing.assert_close(torch.tensor(log_rewards), want.float(), atol=1e-5, rtol=0)
    assert first["eval_mean_log_r"] == pytest.approx(sum(log_rewards) / len(log_rewards))
    assert first["eval_gold_rows"] == 3 * k
    # the objective's loss and the rollout metrics, with the eval_ prefix
    assert torch.isfinite(torch.tensor(first["eval_loss"]))
    assert first["eval_log_reward/mean"] == pytest.approx(first["eval_mean_log_r"], abs=1e-5)
    assert first["eval_entropy"] > 0 and 0 <= first["eval_completions/clipped_ratio"] <= 1
    assert 1 <= first["eval_completions/distinct_per_prompt"] <= k
    # the same seeds at every evaluation: with unchanged weights, the same numbers
    assert {n: v for n, v in first.items() if "runtime" not in n and "per_second" not in n} == {
        n: v for n, v in second.items() if "runtime" not in n and "per_second" not in n}
    assert trainer.state.log_history[-1]["eval_loss"] == second["eval_loss"]
    if kind == "gflownet":
        assert trainer.replay_buffer.state_dict() == buffer  # evaluation never writes to the replay buffer
        assert "eval_replay_buffer/size" not in first and "eval_loss/on_policy" not in first
    else:
        assert "eval_ppo/value_loss" in first and "eval_kl" in first


def _train_logs(trainer):
    keep = lambda h: not any(k.startswith("eval_") or "runtime" in k or "per_second" in k for k in h)  # noqa: E731
    return [h for h in trainer.state.log_history if keep(h)]


@pytest.mark.parametrize("kind, extra", [
    ("gflownet", {"log_z": "learned"}),  # the log Z head initialises itself from its first batch
    ("ppo", {"adaptive_kl": True, "num_ppo_epochs": 2}),  # the critic likewise; the KL coefficient adapts
])
def test_periodic_evaluation_does_not_change_training(tmp_path, kind, extra):
    plain = _trainer(tmp_path / "plain", kind, max_steps=6, **extra)
    plain.train()
    evaluated = _trainer(tmp_path / "eval", kind, max_steps=6, eval_strategy="steps", eval_steps=2,
                         eval_on_start=True, log_completions=True, num_completions_to_print=2, **extra)
    evaluated.train()

    evals = [h for h in evaluated.state.log_history if "eval_loss" in h]
    assert [h["step"] for h in evals] == [0, 2, 4, 6]
    assert len({h["eval_loss"] for h in evals}) > 1  # the policy changed between evaluations
    for (n, p), (_, q) in zip(plain.model.named_parameters(), evaluated.model.named_parameters()):
        assert torch.equal(p, q), n
    for name, (head, _) in plain._heads.items():
        other = evaluated._heads[name][0]
        assert all(torch.equal(a, b) for a, b in zip(head.state_dict().values(), other.state_dict().values())), name
    assert _train_logs(plain) == _train_logs(evaluated)
    if kind == "gflownet":
        assert plain.replay_buffer.state_dict() == evaluated.replay_buffer.state_dict()
    else:
        assert plain.kl_coef == evaluated.kl_coef != extra.get("kl_coef", 0.05)


def test_log_completions_table_reaches_tensorboard_and_stdout(tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer = _trainer(tmp_path, max_steps=2, report_to=["tensorboard"], log_completions=True,
                       num_completions_to_print=2, eval_strategy="steps", eval_steps=2)
    trainer.train()
    out = capsys.readouterr().out
    assert "completions at step 1 (2 of 6 latents)" in out and "eval_completions at step 2 (2 of 9 latents)" in out

    (event_file,) = glob.glob(str(tmp_path / "**" / "events.out.tfevents.*"), recursive=True)
    events = EventAccumulator(event_file, size_guidance={"tensors": 0})
    events.Reload()
    tables = {}
    for tag in ("completions/text_summary", "eval_completions/text_summary"):
        (*_, last) = events.Tensors(tag)
        tables[tag] = (last.step, last.tensor_proto.string_val[0].decode())
    step, text = tables["completions/text_summary"]
    lines = text.splitlines()
    assert step == 2 and lines[0] == "| step | prompt | latent | log_reward | behaviour | temperature |"
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    assert len(rows) == 6  # the whole table (one optimizer step: 2 prompts x 3 latents), not just the printed rows
    assert {r[1] for r in rows} <= set(ROWS["prompt"])
    assert all(r[4] in ("on_policy", "tempered", "replay") for r in rows)
    assert all(float(r[3]) < 0 and float(r[5]) > 0 for r in rows)
    step, text = tables["eval_completions/text_summary"]
    eval_rows = [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()[2:]]
    assert step == 2 and len(eval_rows) == 9 and {r[4] for r in eval_rows} == {"on_policy"}
    assert {r[1] for r in eval_rows} == set(EVAL_ROWS["prompt"]) and {float(r[5]) for r in eval_rows} == {1.0}


def test_completions_table_prints_without_rich(monkeypatch, capsys):
    rows = [{"step": 3, "prompt": "the cat", "latent": "sat on\nthe mat", "log_reward": -12.345678,
             "behaviour": "replay", "temperature": 1.0}]
    monkeypatch.setitem(sys.modules, "rich.console", None)  # `import rich.console` now raises ImportError
    completions_table.print_table(rows, "completions at step 3")
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "completions at step 3"
    assert out[1].split() == list(completions_table.COLUMNS)
    assert out[3].split() == ["3", "the", "cat", "sat", "on⏎the", "mat", "-12.35", "replay", "1"]
    assert completions_table.choose_rows(list(range(10)), 3, seed=1) == completions_table.choose_rows(
        list(range(10)), 3, seed=1)
    assert "\\|" in completions_table.markdown_table([{**rows[0], "latent": "a|b"}])


def test_compute_metrics_must_return_numbers(tmp_path):
    trainer = _trainer(tmp_path, compute_metrics=lambda **kw: {"bad": "text"})
    with pytest.raises(TypeError, match="compute_metrics must return numbers"):
        trainer.evaluate()
    with pytest.raises(TypeError, match="compute_metrics must be a callable"):
        _trainer(tmp_path, compute_metrics={"not": "callable"})
    with pytest.raises(ValueError, match="num_completions_to_print"):
        GFlowNetConfig(str(tmp_path), num_completions_to_print=0)

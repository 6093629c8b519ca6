"""recipes/infill.py: its configs parse, and its offline default runs end to end (CI-sized)."""

import json
import sys
from pathlib import Path

import pytest
import torch

from gfn_trl.testing import load_recipe

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("config", ["infill_gpt2-large.yaml", "infill_smollm2.yaml"])
def test_configs_parse(config, monkeypatch):
    recipe = load_recipe("infill")
    monkeypatch.setattr(sys, "argv", ["infill.py", "--config", str(ROOT / "recipes" / "configs" / config)])
    r, a, task = recipe.make_parser().parse_args_and_config()
    assert task.seed_gold  # the paper seeds the buffer with the gold sentence 4
    # the embedded default makes its story LM first; the paper's config starts from one
    assert task.story_lm_steps == (0 if "gpt2" in config else recipe.CPU_DEFAULTS["story_lm_steps"])
    assert a.max_completion_length in (20, 25) and a.min_completion_length == 5
    if "gpt2" in config:
        assert (r.lora_r, a.num_generations, a.gradient_accumulation_steps, a.max_steps) == (64, 64, 16, 2000)
        assert (a.reward_temperature_start, a.reward_temperature_end, a.reward_temperature_horizon) == (1.1, 0.85, 100)


@pytest.mark.slow
def test_offline_default_runs_end_to_end(tmp_path, monkeypatch):
    recipe = load_recipe("infill")
    monkeypatch.setattr(sys, "argv", ["infill.py", "--output_dir", str(tmp_path), "--max_steps", "2", "--num_eval", "2",
                                      "--eval_samples", "2", "--num_train", "4", "--use_cpu", "true",
                                      "--story_lm_steps", "2"])
    recipe.main(*recipe.make_parser().parse_args_and_config())
    metrics = json.loads((tmp_path / "metrics.json").read_text())["metrics"]
    for method in ("prompting", "gfn"):
        assert set(metrics[method]) == {"log_likelihood/mean", "log_likelihood/max", "bleu4", "gleu4", "bertscore_f1"}
        assert metrics[method]["log_likelihood/mean"] < 0
    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 4 and all(len(s["samples"]) == 2 and "\n" not in "".join(s["samples"]) for s in samples)
    assert (tmp_path / "adapter_model.safetensors").exists()
    # the story LM the adapter was trained on is saved, and the output directory reloads into the evaluated policy
    from peft import AutoPeftModelForCausalLM

    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tmp_path / "base_model")
    monkeypatch.chdir(ROOT)
    check = json.loads((tmp_path / "policy_check.json").read_text())
    policy = AutoPeftModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.tensor([check["prompt_ids"] + check["latent_ids"] + [check["stop_token_id"]]])
    n = len(check["prompt_ids"])
    with torch.no_grad():
        logits = policy(input_ids=ids).logits[0, n - 1 : -1].log_softmax(-1)
    assert logits.gather(1, ids[0, n:, None]).sum().item() == pytest.approx(check["policy_log_prob"], abs=1e-4)


def test_story_lm_stage_learns_the_training_stories():
    """The paper's first stage (TRL SFTTrainer on whole stories) raises the LM's likelihood of those stories."""
    from datasets import Dataset

    from gfn_trl.tasks import infill
    from gfn_trl.testing import WORDS, tiny_model, tiny_tokenizer

    tok = tiny_tokenizer()
    model = tiny_model("gpt2", len(tok), seed=0)
    story = ["the cat sat on a mat", "then the dog ran", "the big dog ate", "and then slept", "the red cat sat"]
    stories = Dataset.from_dict({f"sentence{i + 1}": [s] * 4 for i, s in enumerate(story)})
    assert set(" ".join(story).split()) <= set(WORDS)
    ids = torch.tensor([tok(infill.story_texts(stories)[0])["input_ids"]])

    def nll(m):
        with torch.no_grad():
            return m(input_ids=ids, labels=ids).loss.item()

    before = nll(model.eval())
    tuned = infill.finetune_story_lm(model, tok, stories, max_steps=20, learning_rate=1e-2, batch_size=4)
    assert nll(tuned) < before - 0.5
    assert infill.finetune_story_lm(tuned, tok, stories, max_steps=0) is tuned  # 0 steps: the model as it is


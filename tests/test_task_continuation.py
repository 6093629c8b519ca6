"""Sentence continuation (paper §4.1): prompt loaders on local files in the real formats, the split, the data
contract, the vocabulary mask on the real SmolLM2 tokenizer, evaluation, the recipe's configs and a CI-sized run."""

import json
import sys
from pathlib import Path

import pytest
import torch

from gfn_trl.evaluation import Scored
from gfn_trl.tasks import continuation
from gfn_trl.testing import load_recipe

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------------------------


def test_embedded_prompts_keep_their_trailing_space_and_map_to_the_contract():
    prompts = continuation.load_prompts()
    assert len(prompts) == 120
    assert all(t.endswith(". ") or t.endswith("! ") or t.endswith("? ") for t in prompts["text"])
    train, held_out = continuation.split(prompts, num_eval=8)
    assert len(train) == 112 and len(held_out) == 8
    assert held_out["text"] == prompts["text"][112:]  # the last prompts validate, as in the paper
    rows = continuation.to_contract(held_out)
    assert rows.column_names == ["prompt"]  # stop-token reward: no suffix, no reward_prompt
    assert rows["prompt"] == held_out["text"]
    assert continuation.to_contract(held_out, strip_trailing_space=True)["prompt"] == [t[:-1] for t in held_out["text"]]


def test_txt_prompts_and_the_paper_split(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("".join(f"Sentence number {i}. Another one. \n" for i in range(1200)))
    prompts = continuation.load_prompts(str(path))
    assert prompts["text"][0] == "Sentence number 0. Another one. "  # only the line break goes
    train, held_out = continuation.split(prompts, num_eval=8)  # >= 1000 prompts: the paper's 950 / 50 of the first 1000
    assert len(train) == 950 and len(held_out) == 50
    assert held_out["text"][0].startswith("Sentence number 950.")
    assert held_out["text"][-1].startswith("Sentence number 999.")
    crlf = tmp_path / "crlf.txt"
    crlf.write_bytes(b"One. \r\nTwo. \r\n")
    assert continuation.load_prompts(str(crlf))["text"] == ["One. ", "Two. "]


def test_jsonl_prompts_with_a_text_column(tmp_path):
    path = tmp_path / "owt.jsonl"
    path.write_text("".join(json.dumps({"text": f"Prompt {i}. ", "id": i}) + "\n" for i in range(5)))
    prompts = continuation.load_prompts(str(path))
    assert prompts["text"] == [f"Prompt {i}. " for i in range(5)]
    assert continuation.to_contract(prompts).column_names == ["prompt"]


def test_malformed_prompt_files_give_clear_errors(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty.txt is empty"):
        continuation.load_prompts(str(empty))
    blank_line = tmp_path / "blank.txt"
    blank_line.write_text("First prompt. \n\nThird prompt. \n")
    with pytest.raises(ValueError, match="Line 2 of .*blank.txt is empty"):
        continuation.load_prompts(str(blank_line))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        continuation.load_prompts(str(tmp_path / "missing.txt"))
    empty_jsonl = tmp_path / "empty.jsonl"
    empty_jsonl.write_text("")
    with pytest.raises(ValueError, match="empty.jsonl is empty"):
        continuation.load_prompts(str(empty_jsonl))
    no_text = tmp_path / "no_text.jsonl"
    no_text.write_text(json.dumps({"text": "Fine. "}) + "\n" + json.dumps({"sentence": "Wrong column. "}) + "\n")
    with pytest.raises(ValueError, match=r"Line 2 of .*no_text.jsonl has no 'text' field \(\['sentence'\]\)"):
        continuation.load_prompts(str(no_text))
    empty_text = tmp_path / "empty_text.jsonl"
    empty_text.write_text(json.dumps({"text": "Fine. "}) + "\n" + json.dumps({"text": "  "}) + "\n")
    with pytest.raises(ValueError, match="Prompt 1 of .*empty_text.jsonl is empty"):
        continuation.load_prompts(str(empty_text))
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"text": "Fine. "}\n{"text": \n')
    with pytest.raises(ValueError, match="Line 2 of .*bad.jsonl is not valid JSON"):
        continuation.load_prompts(str(bad_json))
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("One. \nTwo. \n")
    with pytest.raises(ValueError, match="cannot give 8 evaluation prompts"):
        continuation.split(continuation.load_prompts(str(tiny)), num_eval=8)


# ------------------------------------------------------------------------------------------------------------------
# Vocabulary mask on the real tokenizer
# ------------------------------------------------------------------------------------------------------------------


def test_vocab_mask_follows_the_papers_ban_list(smollm2_tokenizer):
    tok = smollm2_tokenizer
    mask = continuation.vocab_mask(tok)
    assert mask.dtype == torch.bool and mask.shape == (len(tok),)

    def allowed(text):
        ids = tok.encode(text, add_special_tokens=False)
        assert len(ids) == 1, (text, ids)
        return bool(mask[ids[0]])

    stop = tok.encode(".", add_special_tokens=False)[0]
    assert mask[stop]  # the stop action
    for word in [" the", "The", " cat", " sat", " on", ",", " and", " A", " I", " 2", "3", " ", " Because"]:
        assert allowed(word) if word != " 2" else all(mask[i] for i in tok.encode(word, add_special_tokens=False))
    for banned in ["\n", "\n\n", "\t", '"', "!", "?", "...", " .", "'s", " www", "http", "A", "I", "J", " J", " Mr",
                   "Mr", " Dr", " St", " US", "  "]:
        assert not allowed(banned), banned
    texts = tok.batch_decode([[i] for i in range(len(tok))])
    # "." is reachable only as the stop action; no allowed token contains a newline or a banned character
    assert [i for i in range(len(tok)) if mask[i] and "." in texts[i]] == [stop]
    assert not any(mask[i] and ("\n" in texts[i] or "!" in texts[i] or "?" in texts[i]) for i in range(len(tok)))
    assert not mask[list(tok.all_special_ids)].any()
    assert not mask[list(tok.added_tokens_decoder)].any()
    digits = [tok.convert_tokens_to_ids(str(d)) for d in range(10)]
    assert mask[digits].all()  # the paper bans no digit
    assert mask.sum() > 0.9 * len(tok)


# ------------------------------------------------------------------------------------------------------------------
# Evaluation
# ------------------------------------------------------------------------------------------------------------------


class _FakeEncoder:
    """Orthogonal embeddings per distinct text: diversity = fraction of pairs that differ."""

    def embed(self, texts):
        vocab = {t: i for i, t in enumerate(dict.fromkeys(texts))}
        return torch.eye(max(len(vocab), 1))[[vocab[t] for t in texts]]


def test_evaluate_reports_likelihood_and_diversity():
    scored = [
        Scored({"prompt": "a "}, [[1, 2], [3]], ["Same", "Same"], [-2.0, -4.0]),
        Scored({"prompt": "b "}, [[1], [2, 3, 4]], ["One", "Two"], [-1.0, -3.0]),
    ]
    m = continuation.evaluate(scored, _FakeEncoder())
    assert m["log_likelihood/mean"] == pytest.approx((-3.0 + -2.0) / 2)
    assert m["log_likelihood/max"] == pytest.approx((-2.0 + -1.0) / 2)
    assert m["diversity"] == pytest.approx((0.0 + 1.0) / 2)
    assert m["length/mean"] == pytest.approx((1.5 + 2.0) / 2)
    assert "diversity" not in continuation.evaluate(scored, None)


# ------------------------------------------------------------------------------------------------------------------
# Recipe
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", ["continuation_gpt2-xl.yaml", "continuation_smollm2.yaml"])
def test_configs_parse(config, monkeypatch):
    recipe = load_recipe("continuation")
    monkeypatch.setattr(sys, "argv", ["continuation.py", "--config", str(ROOT / "recipes" / "configs" / config)])
    r, a = recipe.make_parser().parse_args_and_config()
    assert a.stop_token == "." and a.min_completion_length == 1
    assert (a.reward_temperature_start, a.reward_temperature_end) == (1.0, 0.8)
    assert (a.replay_prob, a.replay_prioritized, a.replay_sim_tolerance) == (0.25, False, 0.25)
    assert a.tempered_prob / (a.tempered_prob + a.on_policy_prob) == pytest.approx(0.666)
    if "gpt2" in config:
        assert r.model_name_or_path == "gpt2-xl" and r.dtype == "float32" and a.bf16 is False
        assert (r.lora_r, r.lora_alpha, r.lora_dropout) == (64, 16, 0.1)
        assert r.lora_target_modules == ["c_attn", "c_proj", "c_fc"]
        assert (a.learning_rate, a.warmup_steps, a.lr_scheduler_type) == (1e-4, 20, "constant_with_warmup")
        assert (a.num_generations, a.gradient_accumulation_steps, a.per_device_train_batch_size) == (8, 32, 1)
        assert (a.max_completion_length, a.reward_temperature_horizon, a.replay_buffer_size) == (30, 750, 50)
        assert r.num_eval == 50
    else:  # the file is the recipe's CPU default written out
        defaults = recipe.CPU_DEFAULTS
        for key, value in defaults.items():
            if key not in ("output_dir", "report_to"):  # report_to "none" is parsed to []
                assert getattr(a if hasattr(a, key) else r, key) == value, key


@pytest.mark.slow
def test_offline_default_runs_end_to_end(tmp_path, monkeypatch):
    recipe = load_recipe("continuation")
    monkeypatch.setattr(sys, "argv", [
        "continuation.py", "--output_dir", str(tmp_path), "--max_steps", "2", "--num_eval", "2", "--eval_samples", "2",
        "--num_train", "4", "--num_generations", "4", "--max_completion_length", "6", "--use_cpu", "true",
    ])
    r, a = recipe.make_parser().parse_args_and_config()
    recipe.main(r, a)
    metrics = json.loads((tmp_path / "metrics.json").read_text())["metrics"]
    for method in ("lm", "gfn"):
        assert set(metrics[method]) == {"log_likelihood/mean", "log_likelihood/max", "length/mean", "diversity"}
        assert metrics[method]["log_likelihood/max"] >= metrics[method]["log_likelihood/mean"]
        assert metrics[method]["log_likelihood/mean"] < 0 and 1 <= metrics[method]["length/mean"] <= 6
    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 4 and {s["method"] for s in samples} == {"lm", "gfn"}
    for s in samples:
        assert len(s["samples"]) == 2 and len(s["log_likelihood"]) == 2
        assert not any(c in "".join(s["samples"]) for c in "\n.!?")
    assert (tmp_path / "adapter_model.safetensors").exists()

"""Every recipe's output directory reloads with standard tools (PEFT / transformers, from another directory) into the
policy it evaluated: the run records one evaluated sample with its log-likelihoods (policy_check.json), and the reloaded
model reproduces them.  Real tiny checkpoints (a Llama with a byte-level BPE tokenizer trained on the embedded data),
every task, every trainer, in-process runs of a few steps."""

import json
import sys
from pathlib import Path

import pytest
import torch

from gfn_trl.testing import load_recipe

ROOT = Path(__file__).resolve().parents[1]


def tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    """A local HF checkpoint directory: a tiny Llama and a 600-token byte-level BPE tokenizer (EOS = pad =
    <|endoftext|>) trained on the embedded task data, so that every recipe's text tokenizes like a real LM's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from gfn_trl.tasks import DATA_DIR
    from gfn_trl.testing import tiny_model

    texts = [p.read_text(encoding="utf-8") for p in sorted(Path(DATA_DIR).iterdir())
             if p.suffix in (".csv", ".txt", ".jsonl")]
    texts.append("Question: 6 - 0 - 4 - 8 = ? Answer: 6 - 0 = 6, 6 - 4 = 2, 2 - 8 = -6. The answer is -6.")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    model = tiny_model("llama", len(tokenizer), seed=seed, hidden=32)
    model.config.max_position_embeddings = 512  # rotary positions: the arithmetic reward prompt is long
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def log_prob(model, context: list[int], target: list[int]) -> float:
    """sum_k log p(target_k | context, target_<k): a plain forward pass, written out here, not gfn_trl's."""
    ids = torch.tensor([context + target])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(context) - 1 : -1].float()
    return logits.log_softmax(-1).gather(1, torch.tensor(target)[:, None]).sum().item()


def stage_lm(task: str, extra: list[str]) -> bool:
    """Whether the run fine-tunes the LM first (infill's story LM, arithmetic's rationale LM): its first two flags."""
    return extra[:1] in (["--story_lm_steps"], ["--rationale_lm_steps"]) and extra[1] != "0"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipe_outputs")
    tiny_checkpoint(root / "tiny")
    return root


RUN = ["--max_steps", "2", "--num_eval", "1", "--eval_samples", "1", "--skip_baseline", "true", "--use_cpu", "true",
       "--learning_rate", "0.02", "--warmup_steps", "0", "--logging_steps", "1", "--report_to", "none",
       "--max_completion_length", "6", "--seed", "1"]

CASES = [
    ("infill", "gfn", ["--story_lm_steps", "1"]),  # the story LM is the adapter's base: saved under base_model/
    ("infill", "sft", ["--story_lm_steps", "0"]),
    ("continuation", "ppo", []),
    ("continuation", "grpo", []),
    ("continuation", "gfn", ["--lora_r", "0"]),  # full fine-tuning: the model itself
    ("subjectivity", "gfn", ["--wishful_rationales", "0"]),
    ("arithmetic", "gfn", ["--rationale_lm_steps", "1", "--max_completion_length", "8"]),  # calculator, rationale LM
    ("arithmetic", "rloo", ["--rationale_lm_steps", "0", "--calculator", "false"]),
]


@pytest.mark.parametrize(("task", "trainer", "extra"), CASES, ids=[f"{t}-{m}{'-'.join([''] + e[:2])}"
                                                                   for t, m, e in CASES])
def test_output_dir_reloads_into_the_evaluated_policy(task, trainer, extra, workdir, tmp_path, monkeypatch):
    from peft import AutoPeftModelForCausalLM, PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # The run: from the folder that holds the checkpoint, with the relative path a user would type
    run_dir = workdir / f"{task}-{trainer}-{len(extra)}"
    run_dir.mkdir()
    (run_dir / "tiny").symlink_to(workdir / "tiny")
    monkeypatch.chdir(run_dir)
    argv = ["--trainer", trainer, "--model_name_or_path", "tiny", "--output_dir", "out", *RUN, *extra]
    argv += ["--num_labelled", "2"] if task == "subjectivity" else ["--num_train", "2"]
    if trainer != "sft":
        argv += ["--num_generations", "2"]
    if trainer in ("grpo", "rloo"):  # TRL counts completions: 2 prompts x 2 latents a step
        argv += ["--per_device_train_batch_size", "4"]
    module = load_recipe(task)
    monkeypatch.setattr(sys, "argv", [f"{task}.py", *argv])
    module.main(*module.make_parser().parse_args_and_config())

    # The reload: standard tools only, from another directory
    out = run_dir / "out"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    full = "--lora_r" in extra
    if full:
        assert not (out / "adapter_config.json").exists()
        policy = AutoModelForCausalLM.from_pretrained(out).eval()
    else:
        policy = AutoPeftModelForCausalLM.from_pretrained(out).eval()
        assert isinstance(policy, PeftModel)
        base = json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"]
        if stage_lm(task, extra):
            assert Path(base) == out / "base_model"  # the story / rationale LM, saved in HF format with its tokenizer
            assert (out / "base_model" / "config.json").exists() and (out / "base_model" / "tokenizer.json").exists()
        else:  # an unmodified local base is referenced, not copied
            assert Path(base) == workdir / f"{task}-{trainer}-{len(extra)}" / "tiny" and Path(base).is_absolute()
            assert not (out / "base_model").exists()

    check = json.loads((out / "policy_check.json").read_text())  # what the run recorded
    latent, stop = check["latent_ids"], check["stop_token_id"]
    reloaded = log_prob(policy, check["prompt_ids"], latent + [stop])
    assert reloaded == pytest.approx(check["policy_log_prob"], abs=1e-4)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.decode(latent, skip_special_tokens=True) == check["text"]
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    texts = samples[0].get("samples") or samples[0].get("rationales")
    assert texts[0] == check["text"]  # the recorded sample is the run's first evaluated one

    # The training moved the policy (so the check can tell a reloaded adapter from none), and, for the story LM, the
    # saved base is the story LM, not the checkpoint it started from
    untuned = AutoModelForCausalLM.from_pretrained(workdir / "tiny").eval()
    untuned_lp = log_prob(untuned, check["prompt_ids"], latent + [stop])
    if full:
        assert abs(untuned_lp - reloaded) > 1e-3
        return
    with policy.disable_adapter():
        base_lp = log_prob(policy, check["prompt_ids"], latent + [stop])
        start = check["reward_scored_from"]
        base_ll = log_prob(policy, check["reward_ids"][:start], check["reward_ids"][start:])
    assert abs(base_lp - reloaded) > 1e-3, "the adapter must make a difference for this test to mean anything"
    assert (abs(base_lp - untuned_lp) > 1e-3) == stage_lm(task, extra)
    # the adapter-disabled base gives the evaluation likelihood of the sample
    assert base_ll == pytest.approx(check["base_log_prob"], abs=1e-4)
    assert base_ll == pytest.approx(check["evaluated_log_likelihood"], abs=1e-3)
    if task != "subjectivity":  # (subjectivity's samples.jsonl holds its own per-label scores)
        assert samples[0]["log_likelihood"][0] == pytest.approx(check["evaluated_log_likelihood"], abs=1e-6)


@pytest.mark.slow
def test_gguf_default_saves_its_dequantized_base(tmp_path, monkeypatch):
    """The embedded default (SmolLM2 GGUF): the adapter's base is the de-quantized model under base_model/."""
    from peft import AutoPeftModelForCausalLM

    module = load_recipe("continuation")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["continuation.py", "--output_dir", "out", *RUN, "--num_train", "2",
                                      "--num_generations", "2"])
    module.main(*module.make_parser().parse_args_and_config())
    out = tmp_path / "out"
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(out / "base_model")
    monkeypatch.chdir(ROOT)
    check = json.loads((out / "policy_check.json").read_text())
    policy = AutoPeftModelForCausalLM.from_pretrained(out).eval()
    got = log_prob(policy, check["prompt_ids"], check["latent_ids"] + [check["stop_token_id"]])
    assert got == pytest.approx(check["policy_log_prob"], abs=1e-4)

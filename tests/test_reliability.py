"""A run killed while saving a checkpoint resumes from the last complete one and loses nothing."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from gfn_trl.checkpoints import is_complete_checkpoint, last_complete_checkpoint

SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from gfn_trl import GFlowNetConfig, GFlowNetTrainer
    from gfn_trl.testing import tiny_model, tiny_tokenizer

    out, mode = sys.argv[1], sys.argv[2]

    class KilledWhileSaving(GFlowNetTrainer):
        def _save_optimizer_and_scheduler(self, output_dir):
            if mode == "kill" and self.state.global_step == 4:
                os.kill(os.getpid(), signal.SIGKILL)  # the adapter is written, the rest is not
            super()._save_optimizer_and_scheduler(output_dir)

    tok = tiny_tokenizer()
    args = GFlowNetConfig(output_dir=out, max_steps=6, per_device_train_batch_size=2, num_generations=3,
                          max_completion_length=4, learning_rate=1e-2, warmup_steps=0, logging_steps=1,
                          save_strategy="steps", save_steps=2, report_to="none", use_cpu=True, disable_tqdm=True, seed=1)
    data = Dataset.from_dict({"prompt": ["the cat", "a dog", "the big dog"], "suffix": ["sat .", "ran .", "ate ."]})
    trainer = KilledWhileSaving(tiny_model("gpt2", len(tok)), args, train_dataset=data, processing_class=tok,
                                peft_config=LoraConfig(r=4))
    trainer.train(resume_from_checkpoint=True if mode == "resume" else None)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    weights = {k: v.tolist() for k, v in trainer.model.state_dict().items() if "lora" in k}
    import json
    with open(os.path.join(out, f"result_{mode}.json"), "w") as f:
        json.dump({"losses": losses, "weights": weights}, f)
    """  # noqa: E501 (a line of the embedded script)
)


def _run(script, out, mode):
    return subprocess.run([sys.executable, str(script), str(out), mode], capture_output=True, text=True, timeout=300)


def test_sigkill_during_a_checkpoint_save_resumes_from_the_last_complete_one(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    killed, clean = tmp_path / "killed", tmp_path / "clean"

    proc = _run(script, killed, "kill")
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert (killed / "checkpoint-4").is_dir() and not is_complete_checkpoint(str(killed / "checkpoint-4"))
    assert is_complete_checkpoint(str(killed / "checkpoint-2"))
    assert last_complete_checkpoint(str(killed)) == str(killed / "checkpoint-2")

    proc = _run(script, killed, "resume")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _run(script, clean, "none").returncode == 0

    resumed = json.loads((killed / "result_resume.json").read_text())
    reference = json.loads((clean / "result_none.json").read_text())
    assert resumed["losses"][2:] == reference["losses"][2:]  # steps 3..6 replayed identically
    assert resumed["weights"] == reference["weights"]


def test_resuming_from_an_incomplete_checkpoint_names_the_fix(tmp_path):
    from datasets import Dataset

    from gfn_trl import GFlowNetConfig, GFlowNetTrainer
    from gfn_trl.testing import tiny_model, tiny_tokenizer

    (tmp_path / "checkpoint-3").mkdir()
    (tmp_path / "checkpoint-3" / "trainer_state.json").write_text('{"trunc')
    tok = tiny_tokenizer()
    args = GFlowNetConfig(output_dir=str(tmp_path), max_steps=1, num_generations=2, report_to="none", use_cpu=True)
    trainer = GFlowNetTrainer(tiny_model("gpt2", len(tok)), args,
                              train_dataset=Dataset.from_dict({"prompt": ["a cat"]}), processing_class=tok)
    with pytest.raises(ValueError, match="not a complete GFlowNetTrainer checkpoint"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-3"))
    with pytest.raises(ValueError, match="holds no complete checkpoint"):
        trainer.train(resume_from_checkpoint=True)


def test_non_finite_reward_names_the_sample(tmp_path):
    """A reward LM that gives a token probability 0 makes log R = -inf: the run stops and says which sample."""
    from datasets import Dataset
    from peft import LoraConfig

    from gfn_trl import GFlowNetConfig, GFlowNetTrainer
    from gfn_trl.testing import tiny_model, tiny_tokenizer

    tok = tiny_tokenizer()
    reward = tiny_model("gpt2", len(tok), seed=1)
    head = torch.nn.Linear(reward.lm_head.in_features, reward.lm_head.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(reward.lm_head.weight)
        head.bias.zero_()
        head.bias[tok.convert_tokens_to_ids("ran")] = float("-inf")  # "ran" is impossible under the reward LM
    reward.lm_head = head
    args = GFlowNetConfig(output_dir=str(tmp_path), max_steps=1, num_generations=2, max_completion_length=3,
                          report_to="none", use_cpu=True, disable_tqdm=True)
    data = Dataset.from_dict({"prompt": ["the cat"], "suffix": ["ran ."]})
    trainer = GFlowNetTrainer(tiny_model("gpt2", len(tok)), args, train_dataset=data, processing_class=tok,
                              peft_config=LoraConfig(r=4), reward_model=reward)
    with pytest.raises(FloatingPointError, match="Non-finite log-reward for prompt 'the cat'"):
        trainer.train()


def test_tokenizer_without_pad_or_eos(tmp_path):
    from datasets import Dataset
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from gfn_trl import GFlowNetConfig, GFlowNetTrainer
    from gfn_trl.testing import tiny_model

    raw = Tokenizer(models.WordLevel(vocab={"<unk>": 0, "a": 1, "cat": 2}, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>")
    args = GFlowNetConfig(output_dir=str(tmp_path), max_steps=1, num_generations=2, report_to="none", use_cpu=True)
    with pytest.raises(ValueError, match="neither a pad token nor an EOS token"):
        GFlowNetTrainer(tiny_model("gpt2", 3), args, train_dataset=Dataset.from_dict({"prompt": ["a cat"]}),
                        processing_class=tok)


def test_bf16_reward_pass_stays_finite_and_close_to_fp32():
    """Low-precision reward LMs: log-softmax runs in float32, so bf16 weights cost accuracy, not finiteness."""
    from gfn_trl.rewards import prefix_log_rewards
    from gfn_trl.testing import tiny_model

    fp32 = tiny_model("llama", 40, seed=2).eval()
    bf16 = tiny_model("llama", 40, seed=2).eval().to(torch.bfloat16)
    prompts = [[3, 4, 5], [6, 7]]
    z = torch.tensor([[8, 9, 10, 11], [12, 13, 0, 0]])
    lengths = torch.tensor([4, 2])
    a = prefix_log_rewards(fp32, prompts, z, lengths, 0, 0, [[14, 15], [16]])
    b = prefix_log_rewards(bf16, prompts, z, lengths, 0, 0, [[14, 15], [16]])
    assert b.dtype == torch.float32 and torch.isfinite(b).all()
    assert (a - b).abs().max() < 0.1 * (z.shape[1] + 2)  # a few hundredths of a nat per scored token

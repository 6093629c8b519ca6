"""GFlowNetTrainer through its public API, on real tiny models and a real tokenizer."""

import copy

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig

from gfn_trl import GFlowNetConfig, GFlowNetTrainer
from gfn_trl.testing import ARCHS, UNPACKABLE_ARCHS, tiny_model, tiny_tokenizer

ROWS = {
    "prompt": ["the cat", "a dog", "the big dog", "a red cat"],
    "suffix": ["slept .", "ran .", "ate .", "sat ."],
}


def _config(tmp_path, **kw):
    base = dict(
        output_dir=str(tmp_path),
        max_steps=3,
        per_device_train_batch_size=2,
        num_generations=3,
        max_completion_length=4,
        learning_rate=1e-2,
        warmup_steps=0,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=3,
    )
    base.update(kw)
    return GFlowNetConfig(**base)


def _trainer(tmp_path, arch="gpt2", rows=ROWS, peft=True, **kw):
    tok = tiny_tokenizer()
    model = tiny_model(arch, len(tok), seed=0)
    return GFlowNetTrainer(
        model,
        _config(tmp_path, **kw),
        train_dataset=Dataset.from_dict(rows),
        processing_class=tok,
        peft_config=LoraConfig(r=4) if peft else None,
    )


@pytest.mark.parametrize("arch", ARCHS + UNPACKABLE_ARCHS)
def test_lora_training_on_each_architecture(tmp_path, arch):
    trainer = _trainer(tmp_path, arch)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    for n, p in trainer.model.named_parameters():
        changed = not torch.equal(before[n], p.detach())
        if "lora_B" in n:
            assert changed, f"LoRA parameter {n} did not train"
        elif "lora" not in n:
            assert not changed, f"base parameter {n} changed"
    log = trainer.state.log_history[0]
    assert log["log_reward/mean"] < 0 and 1 <= log["completion_length/mean"] <= 4
    assert len(trainer.replay_buffer) > 0


def test_stop_token_reward_with_subtb_and_no_log_z(tmp_path):
    trainer = _trainer(tmp_path, rows={"prompt": ROWS["prompt"]}, min_completion_length=0, stop_token=".")
    assert trainer.constraints.stop_token_id == trainer.processing_class.convert_tokens_to_ids(".")
    assert not trainer.needs_log_z
    trainer.train()
    assert "log_z/mean" not in trainer.state.log_history[0]


def test_full_finetuning_keeps_the_reward_frozen(tmp_path):
    trainer = _trainer(tmp_path, peft=False, loss_type="tb")
    reward_before = copy.deepcopy(trainer.reward_model.state_dict())
    policy_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert any(not torch.equal(policy_before[n], p) for n, p in trainer.model.named_parameters())
    for k, v in trainer.reward_model.state_dict().items():
        assert torch.equal(v, reward_before[k])


def test_adapter_disabled_reward_is_the_base_model(tmp_path):
    trainer = _trainer(tmp_path, max_steps=4)
    tok = trainer.processing_class
    base = tiny_model("gpt2", len(tok), seed=0).eval()  # the same initial weights
    trainer.train()
    rows = [trainer.train_dataset[0]] * 2
    z = torch.tensor([[3, 4, 0], [5, 6, 7]])
    lengths = torch.tensor([2, 3])
    from gfn_trl.rewards import prefix_log_rewards

    want = prefix_log_rewards(
        base, [r["reward_prompt_ids"] for r in rows], z, lengths, 0, 0, [r["suffix_ids"] for r in rows]
    )
    got = trainer.score_latents(rows, z, lengths)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_learned_log_z_and_db_loss(tmp_path):
    trainer = _trainer(tmp_path, loss_type="db", log_z="learned", log_z_learning_rate=0.1, max_steps=4)
    trainer.train()
    assert bool(trainer.log_z_head.initialized)
    zs = [h["log_z/mean"] for h in trainer.state.log_history if "log_z/mean" in h]
    assert len(zs) == 4 and len(set(zs)) > 1  # log Z moves with training


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    a = _trainer(tmp_path / "a", max_steps=8, seed=5)
    a.train()
    b = _trainer(tmp_path / "b", max_steps=8, seed=5, save_strategy="steps", save_steps=4)
    b.train()
    ckpt = tmp_path / "b" / "checkpoint-4"
    assert (ckpt / "gfn_state_rank0.pt").exists()
    c = _trainer(tmp_path / "b", max_steps=8, seed=5, save_strategy="steps", save_steps=4)
    c.train(resume_from_checkpoint=str(ckpt))
    losses = lambda t: [h["loss"] for h in t.state.log_history if "loss" in h]  # noqa: E731
    assert losses(c)[4:] == losses(a)[4:]
    for (n, p), (_, q) in zip(a.model.named_parameters(), c.model.named_parameters()):
        assert torch.equal(p, q), n
    assert c.replay_buffer.state_dict() == a.replay_buffer.state_dict()


def test_checkpoint_model_card_cites_the_paper(tmp_path):
    trainer = _trainer(tmp_path, max_steps=1, save_strategy="steps", save_steps=1)
    trainer.train()
    card = (tmp_path / "README.md").read_text()
    assert "GFlowNet" in card and "2310.04363" in card and "hu2024amortizing" in card


# ---------------------------------------------------------------------------------------------------------- bad input
def test_missing_prompt_column(tmp_path):
    with pytest.raises(ValueError, match="no 'prompt' column"):
        _trainer(tmp_path, rows={"text": ["the cat"]})


def test_empty_prompt(tmp_path):
    with pytest.raises(ValueError, match="Row 1 .* empty"):
        _trainer(tmp_path, rows={"prompt": ["the cat", ""]})


def test_suffix_that_tokenizes_to_nothing(tmp_path):
    with pytest.raises(ValueError, match="suffix.*tokenizes to nothing"):
        _trainer(tmp_path, rows={"prompt": ["the cat", "a dog"], "suffix": ["sat .", ""]})


def test_stop_token_must_be_one_token(tmp_path):
    with pytest.raises(ValueError, match="exactly one token"):
        _trainer(tmp_path, stop_token="the cat")


def test_prompt_longer_than_the_context_window(tmp_path):
    with pytest.raises(ValueError, match="context window is 128"):
        _trainer(tmp_path, rows={"prompt": ["the cat " * 70]})


def test_lora_targets_that_do_not_exist(tmp_path):
    tok = tiny_tokenizer()
    with pytest.raises(ValueError, match=r"\['q_proj'\] do not exist"):
        GFlowNetTrainer(tiny_model("gpt2", len(tok)), _config(tmp_path), train_dataset=Dataset.from_dict(ROWS),
                        processing_class=tok, peft_config=LoraConfig(r=4, target_modules=["q_proj"]))


def test_config_combinations_that_cannot_work(tmp_path):
    with pytest.raises(ValueError, match="num_generations >= 2"):
        _config(tmp_path, num_generations=1)
    with pytest.raises(ValueError, match="loss_type"):
        _config(tmp_path, loss_type="ppo")
    with pytest.raises(ValueError, match="min_completion_length"):
        _config(tmp_path, min_completion_length=5, max_completion_length=3)
    with pytest.raises(ValueError, match="not all 0"):
        _config(tmp_path, on_policy_prob=0, tempered_prob=0, replay_prob=0)
    with pytest.raises(ValueError, match="set reward_model_name_or_path too"):
        _config(tmp_path, reward_model_quantization="8bit")
    with pytest.raises(ValueError, match="'8bit', '4bit' or unset"):
        _config(tmp_path, reward_model_quantization="3bit", reward_model_name_or_path="x")


def test_missing_model_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        GFlowNetTrainer("./no/such/model", _config(tmp_path), train_dataset=Dataset.from_dict(ROWS))
    with pytest.raises(FileNotFoundError, match="GGUF file"):
        GFlowNetTrainer(str(tmp_path / "missing.gguf"), _config(tmp_path), train_dataset=Dataset.from_dict(ROWS))


def test_config_parses_from_the_command_line_and_help_renders(capsys):
    from trl import TrlParser

    parser = TrlParser((GFlowNetConfig,))
    (cfg,) = parser.parse_args_into_dataclasses(
        ["--output_dir", "x", "--loss_type", "tb", "--num_generations", "4", "--use_cpu", "true"]
    )
    assert cfg.loss_type == "tb" and cfg.num_generations == 4
    with pytest.raises(SystemExit):
        parser.parse_args_into_dataclasses(["--help"])
    out = capsys.readouterr().out
    assert "--loss_type" in out and "modified SubTB" in out and "--reward_temperature_horizon" in out


def test_activation_checkpointing_with_lora_trains(tmp_path):
    trainer = _trainer(tmp_path, arch="llama", activation_checkpointing=True, max_steps=2)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_B" in n}
    trainer.train()
    assert any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters() if "lora_B" in n)


def test_seed_replay_buffer_adds_known_latents_with_their_rewards(tmp_path):
    trainer = _trainer(tmp_path)
    tok = trainer.processing_class
    latents = [tok("on the mat")["input_ids"], None, tok("a b c d e f")["input_ids"], tok("and then")["input_ids"]]
    assert trainer.seed_replay_buffer(latents) == 2  # row 1 skipped; row 2 is longer than max_completion_length
    rows = list(trainer.train_dataset)
    for i in (0, 3):
        (entry,) = trainer.replay_buffer.entries(rows[i]["gfn_key"])
        assert list(entry.tokens) == latents[i]
        z = torch.tensor([latents[i]])
        want = trainer.score_latents([rows[i]], z, torch.tensor([len(latents[i])]))[0]
        assert torch.allclose(torch.tensor(entry.log_rewards), want, atol=1e-5)
    assert rows[2]["gfn_key"] not in trainer.replay_buffer

"""Nothing silent (issue 12): a run killed while saving resumes from the last complete checkpoint and loses nothing;
non-finite training stops with an error naming the step and the term (kind 1); settings outside their domain are
refused at construction, naming the field (kind 2); problems knowable at construction are reported there (kind 5).
Checkpoint faults (kinds 3 and 4): tests/test_checkpoint_faults.py; a property test of the config:
tests/test_config_property.py."""

import json
import re
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

    save = torch.save

    def killing_save(obj, f, *args, **kwargs):  # the trainer's own state (replay buffer, log Z head) half-written
        if mode == "kill" and trainer.state.global_step == 4 and str(f).endswith("gfn_state_rank0.pt"):
            with open(f, "wb") as partial:
                partial.write(b"half a file")
            os.kill(os.getpid(), signal.SIGKILL)  # the adapter, optimizer and scheduler are written, the rest is not
        return save(obj, f, *args, **kwargs)

    torch.save = killing_save
    tok = tiny_tokenizer()
    args = GFlowNetConfig(output_dir=out, max_steps=6, per_device_train_batch_size=2, num_generations=3,
                          max_completion_length=4, learning_rate=1e-2, warmup_steps=0, logging_steps=1,
                          save_strategy="steps", save_steps=2, report_to="none", use_cpu=True, disable_tqdm=True, seed=1,
                          log_z="learned", on_policy_prob=0.25, tempered_prob=0.25, replay_prob=0.5)
    data = Dataset.from_dict({"prompt": ["the cat", "a dog", "the big dog"], "suffix": ["sat .", "ran .", "ate ."]})
    trainer = GFlowNetTrainer(tiny_model("gpt2", len(tok)), args, train_dataset=data, processing_class=tok,
                              peft_config=LoraConfig(r=4))
    trainer.train(resume_from_checkpoint=True if mode == "resume" else None)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    weights = {k: v.tolist() for k, v in trainer.model.state_dict().items() if "lora" in k}
    log_z = {k: v.tolist() for k, v in trainer.log_z_head.state_dict().items()}
    buffer = trainer.replay_buffer.state_dict()
    import json
    with open(os.path.join(out, f"result_{mode}.json"), "w") as f:
        json.dump({"losses": losses, "weights": weights, "log_z": log_z, "replay_stats": buffer["stats"],
                   "replay": repr(buffer["data"])}, f)
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
    assert not (killed / "checkpoint-4").exists()  # the save was staged: no half-written checkpoint-4
    assert (killed / ".staging-checkpoint-4").is_dir()
    assert is_complete_checkpoint(str(killed / "checkpoint-2"))
    assert last_complete_checkpoint(str(killed)) == str(killed / "checkpoint-2")

    proc = _run(script, killed, "resume")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _run(script, clean, "none").returncode == 0

    resumed = json.loads((killed / "result_resume.json").read_text())
    reference = json.loads((clean / "result_none.json").read_text())
    assert resumed["losses"][2:] == reference["losses"][2:]  # steps 3..6 replayed identically
    assert resumed["weights"] == reference["weights"]
    # the trainer's own state, restored from checkpoint-2 and carried on: the learned log Z head, the replay buffer
    # and its counters (offered, inserted, duplicates)
    assert resumed["log_z"] == reference["log_z"]
    assert resumed["replay"] == reference["replay"] and resumed["replay_stats"] == reference["replay_stats"]
    assert resumed["replay_stats"]["offered"] > 0


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



# ---------------------------------------------------------------------------------------------------------------------
# Shared tiny setup

def _tiny(out, rows=None, tool=None, vocab_mask=None, lora=None, model=None, **overrides):
    from datasets import Dataset
    from peft import LoraConfig

    from gfn_trl import GFlowNetConfig, GFlowNetTrainer
    from gfn_trl.testing import tiny_model, tiny_tokenizer

    tok = tiny_tokenizer()
    kw = dict(output_dir=str(out), max_steps=2, per_device_train_batch_size=2, num_generations=3,
              max_completion_length=4, learning_rate=1e-2, warmup_steps=0, logging_steps=1, save_strategy="no",
              report_to="none", use_cpu=True, disable_tqdm=True, seed=1)
    kw.update(overrides)
    rows = rows if rows is not None else {"prompt": ["the cat", "a dog", "the big dog"],
                                          "suffix": ["sat .", "ran .", "ate ."]}
    data = rows if not isinstance(rows, dict) else Dataset.from_dict(rows)
    return GFlowNetTrainer(model if model is not None else tiny_model("gpt2", len(tok)), GFlowNetConfig(**kw),
                           train_dataset=data, processing_class=tok, peft_config=lora or LoraConfig(r=4),
                           vocab_mask=vocab_mask, tool=tool)


# ---------------------------------------------------------------------------------------------------------------------
# Kind 1: non-finite training stops, naming the step and the term; the last checkpoint stays the last good one


def test_a_diverging_learning_rate_stops_at_the_first_non_finite_step(tmp_path):
    from gfn_trl import checkpoints as ckpt

    trainer = _tiny(tmp_path, learning_rate=1e4, max_steps=8, save_strategy="steps", save_steps=1)
    with pytest.raises(FloatingPointError, match=r"Non-finite value at optimizer step (\d+): .*(log q|loss|gradient)"
                       ) as err:
        trainer.train()
    import re

    step = int(re.search(r"optimizer step (\d+)", str(err.value)).group(1))
    assert step <= 8
    folders = ckpt.checkpoint_folders(str(tmp_path))
    assert [int(p.rsplit("-", 1)[1]) for p in folders] == list(range(1, step))  # none at or after the bad step
    assert f"the last one: {folders[-1]}" in str(err.value)
    assert ckpt.is_complete_checkpoint(folders[-1])
    for name, p in trainer.model.named_parameters():  # the bad step's update never happened
        assert torch.isfinite(p).all(), name
    from safetensors.torch import load_file

    for name, t in load_file(f"{folders[-1]}/adapter_model.safetensors").items():
        assert torch.isfinite(t).all(), name


def test_a_nan_subtb_lambda_that_slips_past_the_config_stops_at_step_1(tmp_path):
    trainer = _tiny(tmp_path)
    trainer.args.subtb_lambda = float("nan")  # bypassing __post_init__ (which refuses it: see kind 2)
    with pytest.raises(FloatingPointError, match=r"optimizer step 1: (log Z|the loss) holds \[nan"):
        trainer.train()
    assert trainer.state.global_step == 0


def test_a_tiny_reward_temperature_is_refused_and_an_overflowing_loss_is_caught(tmp_path):
    from gfn_trl import GFlowNetConfig

    with pytest.raises(ValueError, match="reward_temperature_start must lie in"):
        GFlowNetConfig(str(tmp_path), reward_temperature_start=1e-20, reward_temperature_end=1e-20)
    trainer = _tiny(tmp_path)
    trainer.args.reward_temperature_start = trainer.args.reward_temperature_end = 1e-20  # past the config's check
    with pytest.raises(FloatingPointError, match=r"optimizer step 1: the loss holds \[(inf|nan)\] \(reward temperature "
                       r"T_R = 1e-20"):
        trainer.train()


def test_a_non_finite_gradient_names_the_parameter(tmp_path):
    trainer = _tiny(tmp_path)
    name, param = next((n, p) for n, p in trainer.model.named_parameters() if "lora_A" in n)
    param.register_hook(lambda g: g * float("nan"))
    with pytest.raises(FloatingPointError, match=f"step 1: the gradient of {name}"):
        trainer.train()
    assert torch.isfinite(param).all()


# ---------------------------------------------------------------------------------------------------------------------
# Kind 2: settings outside their domain are refused at construction, naming the field

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("config, kwargs, field", [
    ("gfn", dict(subtb_lambda=-1), "subtb_lambda"),
    ("gfn", dict(subtb_lambda=NAN), "subtb_lambda"),
    ("gfn", dict(subtb_lambda=1e10, max_completion_length=10), "subtb_lambda"),
    ("gfn", dict(on_policy_prob=NAN), "on_policy_prob"),
    ("gfn", dict(sampling_temperature_max=INF), "sampling_temperature_max"),
    ("gfn", dict(sampling_temperature_min=0.0), "sampling_temperature_min"),
    ("gfn", dict(log_z_learning_rate=-1e-3), "log_z_learning_rate"),
    ("gfn", dict(reward_chunk_size=-2), "reward_chunk_size"),
    ("gfn", dict(on_policy_prob=0.5, tempered_prob=0.5, replay_prob=0.5), "must sum to 1"),
    ("gfn", dict(replay_prob=1.5, on_policy_prob=0, tempered_prob=0), "replay_prob"),
    ("gfn", dict(replay_prob=0.5, on_policy_prob=-0.5, tempered_prob=1.0), "on_policy_prob"),
    ("gfn", dict(model_init_kwargs="{dtype: bfloat16}"), "model_init_kwargs must be a dict or a JSON object"),
    ("gfn", dict(model_init_kwargs="dtype=bfloat16"), "model_init_kwargs must be a dict or a JSON object"),
    ("gfn", dict(reward_temperature_end=-INF), "reward_temperature_end"),
    ("gfn", dict(reward_temperature_horizon=-1), "reward_temperature_horizon"),
    ("gfn", dict(replay_buffer_size=0), "replay_buffer_size"),
    ("gfn", dict(replay_sim_tolerance=0.5), "replay_sim_tolerance"),
    ("gfn", dict(contrast_penalty=INF), "contrast_penalty"),
    ("gfn", dict(contrast_penalty=5.0), "contrast_penalty"),
    ("gfn", dict(learning_rate=NAN), "learning_rate"),
    ("gfn", dict(learning_rate=-1e-4), "learning_rate"),
    ("gfn", dict(weight_decay=INF), "weight_decay"),
    ("gfn", dict(adam_beta1=1.0), "adam_beta1"),
    ("gfn", dict(adam_epsilon=0.0), "adam_epsilon"),
    ("gfn", dict(max_grad_norm=NAN), "max_grad_norm"),
    ("gfn", dict(warmup_steps=-1), "warmup_steps"),
    ("gfn", dict(num_generations=2.5), "num_generations"),
    ("ppo", dict(kl_coef=NAN), "kl_coef"),
    ("ppo", dict(gamma=NAN), "gamma"),
    ("ppo", dict(cliprange=INF), "cliprange"),
    ("ppo", dict(sampling_temperature=INF), "sampling_temperature"),
    ("ppo", dict(value_learning_rate=-1.0), "value_learning_rate"),
    ("ppo", dict(kl_horizon=0), "kl_horizon"),
])
def test_settings_outside_their_domain_are_refused_naming_the_field(tmp_path, config, kwargs, field):
    from gfn_trl import GFlowNetConfig, PPOConfig

    cls = GFlowNetConfig if config == "gfn" else PPOConfig
    with pytest.raises(ValueError, match=re.escape(field)):
        cls(str(tmp_path), **kwargs)


def test_config_docstrings_and_help_state_the_same_domains():
    """Each field whose help names a domain (">= 0", "must sum to 1", ...) states it in the docstring too."""
    import dataclasses

    from gfn_trl import GFlowNetConfig, PPOConfig, RolloutConfig

    for cls in (RolloutConfig, GFlowNetConfig, PPOConfig):
        parts = re.split(r"\n    (\w+) \(`", cls.__doc__)
        sections = {name: " ".join(text.split()) for name, text in zip(parts[1::2], parts[2::2])}
        for f in dataclasses.fields(cls):
            if f.name not in cls.__dict__.get("__annotations__", {}):
                continue
            help_text = f.metadata.get("help", "")
            for phrase in ("> 0", ">= 0", ">= 1", ">= 1e-6", "<= 1e37", "[0, 0.5)", "[-1e6, 0]", "must sum to 1"):
                if phrase in help_text:
                    assert phrase in sections.get(f.name, ""), (cls.__name__, f.name, phrase)


# ---------------------------------------------------------------------------------------------------------------------
# Kind 5: problems knowable at construction are reported at construction


def test_an_output_dir_that_cannot_be_written_fails_at_construction(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(PermissionError, match="output_dir .*a_file/out.* is not writable"):
        _tiny(blocker / "out", save_strategy="steps", save_steps=1)


def test_drop_last_with_a_batch_larger_than_the_dataset(tmp_path):
    with pytest.raises(ValueError, match="dataloader_drop_last=True drops every batch: the train dataset has 3 rows "
                       "but a batch takes 4"):
        _tiny(tmp_path, per_device_train_batch_size=4, dataloader_drop_last=True)


def test_a_prompt_of_spaces_names_the_row(tmp_path):
    with pytest.raises(ValueError, match="Row 1 of the train dataset has an empty or invalid 'prompt'"):
        _tiny(tmp_path, rows={"prompt": ["the cat", "   "]})


def test_an_iterable_dataset_is_refused_with_the_fix(tmp_path):
    from datasets import Dataset

    data = Dataset.from_dict({"prompt": ["the cat", "a dog"]}).to_iterable_dataset()
    with pytest.raises(TypeError, match="IterableDataset, which has no len\\(\\).*map-style datasets.Dataset"):
        _tiny(tmp_path, rows=data)


def test_a_missing_contrast_suffix_names_the_row(tmp_path):
    with pytest.raises(ValueError, match="Row 1 of the train dataset .*contrast_suffix"):
        _tiny(tmp_path, rows={"prompt": ["the cat", "a dog"], "suffix": ["sat .", "ran ."],
                              "contrast_suffix": ["ran .", None]})


def test_seed_replay_buffer_needs_one_latent_per_row(tmp_path):
    trainer = _tiny(tmp_path, rows={"prompt": ["the cat", "a dog"], "suffix": ["sat .", "ran ."]})
    with pytest.raises(ValueError, match="got 5 latents for a training set of 2 rows"):
        trainer.seed_replay_buffer([[3]] * 5)
    assert trainer.seed_replay_buffer([[3], None]) == 1


def test_a_tool_answering_with_the_wrong_length_is_refused(tmp_path):
    class ConstantTool:  # one entry whatever the latent: would be broadcast over every state
        def forced_tokens(self, latent):
            return [-1]

    class ShortTool:  # right for the empty latent, one short afterwards
        def forced_tokens(self, latent):
            return [-1] * max(1, len(latent))

    trainer = _tiny(tmp_path, tool=ConstantTool())  # [-1] is right for the empty latent...
    with pytest.raises(ValueError, match=r"ConstantTool.forced_tokens\(\[\d+.*\]\) returned 1 entries; it must return "
                       r"len\(latent\) \+ 1"):
        trainer.train()  # ... and wrong at the first token, before any update
    assert trainer.state.global_step == 0
    with pytest.raises(ValueError, match="ShortTool.forced_tokens"):
        _tiny(tmp_path / "b", tool=ShortTool()).train()

    class EmptyTool:
        def forced_tokens(self, latent):
            return []

    with pytest.raises(ValueError, match=r"EmptyTool.forced_tokens\(\[\]\) returned 0 entries"):
        _tiny(tmp_path / "c", tool=EmptyTool())


def test_vocab_masks_of_the_wrong_kind(tmp_path):
    from gfn_trl.testing import tiny_tokenizer

    V = len(tiny_tokenizer())
    with pytest.raises(ValueError, match="vocab_mask must be a bool tensor .* got dtype torch.int64"):
        _tiny(tmp_path, vocab_mask=torch.tensor([2, 3, 4]))  # token ids, not a mask
    only_stop = torch.zeros(V, dtype=torch.bool)
    only_stop[0] = True
    with pytest.raises(ValueError, match="allows only the stop token"):
        _tiny(tmp_path, vocab_mask=only_stop)
    with pytest.raises(ValueError, match="vocab_mask has 5 entries but the tokenizer has"):
        _tiny(tmp_path, vocab_mask=torch.ones(5, dtype=torch.bool))
    ok = torch.ones(V, dtype=torch.bool)
    ok[5] = False
    assert _tiny(tmp_path, vocab_mask=ok).constraints.allowed.dtype == torch.bool


def test_lora_on_an_embedding_trains_and_a_layer_norm_is_named_for_what_it_is(tmp_path):
    from peft import LoraConfig

    trainer = _tiny(tmp_path, lora=LoraConfig(r=4, target_modules=["c_attn", "wte"]), max_steps=1)
    assert any("wte" in n and "lora" in n for n, _ in trainer.model.named_parameters())
    trainer.train()
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in trainer.state.log_history if "loss" in h)
    with pytest.raises(ValueError, match=r"LoRA cannot adapt \['ln_f \(LayerNorm\)'\]"):
        _tiny(tmp_path, lora=LoraConfig(r=4, target_modules=["c_attn", "ln_f"]))
    with pytest.raises(ValueError, match=r"\['q_proj'\] do not exist"):
        _tiny(tmp_path, lora=LoraConfig(r=4, target_modules=["q_proj"]))


@pytest.mark.parametrize("trainer_name", ["GFlowNetTrainer", "PPOTrainer"])
def test_the_adapter_is_initialised_from_the_run_seed_not_the_global_rng(tmp_path, trainer_name):
    """LoRA's A matrices are drawn when the policy is wrapped, before the HF Trainer seeds; torch 2.13 starts every
    process from a random default seed.  The same config must give the same adapter whatever the global RNG holds."""
    from datasets import Dataset
    from peft import LoraConfig

    import gfn_trl
    from gfn_trl.testing import tiny_model, tiny_tokenizer

    trainer_cls = getattr(gfn_trl, trainer_name)
    config_cls = gfn_trl.GFlowNetConfig if trainer_name == "GFlowNetTrainer" else gfn_trl.PPOConfig
    tok = tiny_tokenizer()
    data = Dataset.from_dict({"prompt": ["the cat", "a dog"], "suffix": ["sat .", "ran ."]})
    adapters = []
    for global_seed in (1, 2):
        model = tiny_model("gpt2", len(tok))
        torch.manual_seed(global_seed)  # what an unseeded process would hold
        args = config_cls(output_dir=str(tmp_path / str(global_seed)), per_device_train_batch_size=2,
                          num_generations=2, max_completion_length=4, report_to="none", use_cpu=True, seed=7)
        trainer = trainer_cls(model, args, train_dataset=data, processing_class=tok, peft_config=LoraConfig(r=4))
        adapters.append({k: v.clone() for k, v in trainer.model.state_dict().items() if "lora_A" in k})
    assert adapters[0] and adapters[0].keys() == adapters[1].keys()
    for name in adapters[0]:
        torch.testing.assert_close(adapters[0][name], adapters[1][name], rtol=0, atol=0, msg=name)


def test_every_config_field_has_a_docstring_entry_and_help_and_the_stated_default_is_the_real_one():
    """A field of our configs is documented twice (the class docstring and `help`, which `--help` prints): both exist,
    and a default the docstring states ("defaults to `25`") is the field's default."""
    import dataclasses

    from gfn_trl import GFlowNetConfig, PPOConfig, RolloutConfig

    for cls in (RolloutConfig, GFlowNetConfig, PPOConfig):
        parts = re.split(r"\n    (\w+) \(`", cls.__doc__)
        sections = {name: " ".join(text.split()) for name, text in zip(parts[1::2], parts[2::2])}
        own = cls.__dict__.get("__annotations__", {})
        for f in dataclasses.fields(cls):
            if f.name not in own or f.name.startswith("_"):
                continue
            overridden = any(f.name in getattr(base, "__dataclass_fields__", {}) for base in cls.__mro__[1:])
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help"
            if overridden:  # an inherited HF/TRL field with a new default: its help says why
                continue
            assert f.name in sections, f"{cls.__name__}.{f.name} is not in the class docstring"
            stated = re.search(r"defaults to `([^`]*)`", sections[f.name].split(")")[0] + ")")
            if stated:
                text = stated.group(1).strip("\"'")
                try:  # numbers compare as numbers ("1e-2" is 0.01)
                    same = float(text) == float(f.default)
                except (TypeError, ValueError):
                    same = text == str(f.default)
                assert same, (cls.__name__, f.name, stated.group(1), f.default)

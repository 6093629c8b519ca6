"""The generation seam (`gfn_trl.trainers.generation`): the trainer asks its `generation_backend` for latents; the
static-cache loop and HF `generate` plugged in there train exactly as the default decode loop."""

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig

from gfn_trl import GFlowNetConfig, GFlowNetTrainer
from gfn_trl.testing import tiny_model, tiny_tokenizer
from gfn_trl.trainers.generation import DecodeLoop, GenerateBackend, GenerationRequest

ROWS = {"prompt": ["the cat", "a dog", "the big dog", "a red cat"], "suffix": ["slept .", "ran .", "ate .", "sat ."]}


def _trainer(tmp_path, **kw):
    tok = tiny_tokenizer()
    args = GFlowNetConfig(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=2, num_generations=3,
                          max_completion_length=4, learning_rate=1e-2, warmup_steps=0, logging_steps=1,
                          save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True, seed=3,
                          on_policy_prob=0.5, tempered_prob=0.5, replay_prob=0.0, **kw)
    return GFlowNetTrainer(tiny_model("llama", len(tok), seed=0, init_std=0.3), args,
                           train_dataset=Dataset.from_dict(ROWS), processing_class=tok, peft_config=LoraConfig(r=4))


def _run(trainer):
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    lora = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora" in n}
    return losses, lora


def test_static_cache_and_generate_backends_train_like_the_default_loop(tmp_path):
    """Same seeds, same latents: the losses and the trained adapter are identical (not merely close)."""
    losses, lora = _run(_trainer(tmp_path / "a"))
    static = _trainer(tmp_path / "b", cache_implementation="static")
    assert static.generation_backend == DecodeLoop("static", False)
    generate = _trainer(tmp_path / "c")
    generate.generation_backend = GenerateBackend()
    for other in (static, generate):
        losses_o, lora_o = _run(other)
        assert losses_o == losses
        assert all(torch.equal(lora[n], lora_o[n]) for n in lora)


class _OutsideTheVocabulary:
    """A backend that writes a token the vocabulary mask bans."""

    def generate(self, model, constraints, request: GenerationRequest):
        banned = int((~constraints.allowed).nonzero()[0])
        B = request.prompt_ids.shape[0]
        return torch.full((B, 1), banned), torch.ones(B, dtype=torch.long)


def test_a_backend_outside_the_policys_support_is_refused_by_name(tmp_path):
    tok = tiny_tokenizer()
    mask = torch.ones(len(tok), dtype=torch.bool)
    mask[tok.convert_tokens_to_ids("mat")] = False
    args = GFlowNetConfig(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=2, num_generations=3,
                          max_completion_length=4, save_strategy="no", report_to="none", use_cpu=True,
                          disable_tqdm=True, on_policy_prob=1.0, tempered_prob=0.0, replay_prob=0.0)
    trainer = GFlowNetTrainer(tiny_model("gpt2", len(tok)), args, train_dataset=Dataset.from_dict(ROWS),
                              processing_class=tok, peft_config=LoraConfig(r=4), vocab_mask=mask)
    trainer.generation_backend = _OutsideTheVocabulary()
    with pytest.raises(ValueError, match="_OutsideTheVocabulary returned latent 0 .* cannot write"):
        trainer.train()
    with pytest.raises(TypeError, match="generate\\(model, constraints, request\\)"):
        trainer.generation_backend = object()


def test_sampler_config_is_validated():
    with pytest.raises(ValueError, match="cache_implementation must be 'static', 'dynamic' or unset"):
        GFlowNetConfig(output_dir="/tmp/x", cache_implementation="paged", use_cpu=True)
    with pytest.raises(ValueError, match="sampler_compile=True compiles the static-cache decode step"):
        GFlowNetConfig(output_dir="/tmp/x", cache_implementation="dynamic", sampler_compile=True, use_cpu=True)
    assert GFlowNetConfig(output_dir="/tmp/x", sampler_compile=True, use_cpu=True).cache_implementation is None

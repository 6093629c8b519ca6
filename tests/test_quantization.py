"""Quantized weights through bitsandbytes (its CPU backend): a QLoRA policy (`load_in_4bit`) and a separate reward LM
in 8 or 4 bits (`reward_model_quantization`).  Real tiny models saved to disk and loaded back quantized."""

import bitsandbytes as bnb  # in the dev extra; users get it with the `bitsandbytes` extra
import pytest
import torch
from datasets import Dataset
from peft import LoraConfig

from gfn_trl import GFlowNetConfig, GFlowNetTrainer
from gfn_trl.rewards import LikelihoodReward
from gfn_trl.testing import tiny_model, tiny_tokenizer

ROWS = {"prompt": ["the cat", "a dog"], "suffix": ["slept .", "ran ."]}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny Llama and its tokenizer, saved as a local checkpoint."""
    path = tmp_path_factory.mktemp("tiny_llama")
    tok = tiny_tokenizer()
    tiny_model("llama", len(tok), seed=0, hidden=64, init_std=0.3).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path), tok


def _config(tmp_path, **kw):
    return GFlowNetConfig(str(tmp_path), max_steps=3, per_device_train_batch_size=2, num_generations=3,
                          max_completion_length=4, learning_rate=5e-3, warmup_steps=0, logging_steps=1,
                          save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True, seed=0, **kw)


def test_qlora_policy_trains_a_lora_adapter_on_4bit_weights(saved, tmp_path):
    path, tok = saved
    trainer = GFlowNetTrainer(path, _config(tmp_path, load_in_4bit=True), train_dataset=Dataset.from_dict(ROWS),
                              processing_class=tok, peft_config=LoraConfig(r=4, lora_alpha=8))
    model = trainer.accelerator.unwrap_model(trainer.model)
    four_bit = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert four_bit and model.get_base_model().is_loaded_in_4bit
    lora_before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    moved = [n for n, p in model.named_parameters() if "lora_B" in n and not torch.equal(p, lora_before[n])]
    assert moved  # the adapter learned; the 4-bit base is frozen
    assert all(not p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)


def test_qlora_gradients_equal_those_of_the_dequantized_model_after_sampling(saved, tmp_path):
    """The LoRA gradients of the 4-bit policy are those of a dense model holding the dequantized weights, also
    after an eval-mode sampling pass (bitsandbytes' CPU backend would otherwise switch to a kernel without a
    backward there)."""
    from peft import get_peft_model

    from gfn_trl.sampling import policy_log_probs

    path, tok = saved
    lora = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False)  # non-zero B: gradients reach every A
    trainer = GFlowNetTrainer(path, _config(tmp_path, load_in_4bit=True), train_dataset=Dataset.from_dict(ROWS),
                              processing_class=tok, peft_config=lora)
    model = trainer.accelerator.unwrap_model(trainer.model)
    rows, _ = trainer.expand(list(trainer.train_dataset))
    ids, mask = trainer.prompt_batch(rows)
    z, lengths = trainer.sample(rows, ids, mask)  # eval mode, no gradients
    assert (lengths > 0).any()

    def grads(m):
        m.train()
        m.zero_grad()
        log_pf, log_pterm = policy_log_probs(m, ids, mask, z, lengths, trainer.constraints)
        (log_pf.sum() + log_pterm.gather(1, lengths[:, None]).sum()).backward()
        return {n: p.grad.clone() for n, p in m.named_parameters() if "lora_A" in n}

    got = grads(model)
    dense = tiny_model("llama", len(tok), seed=0, hidden=64, init_std=0.3)
    with torch.no_grad():
        for name, module in model.get_base_model().named_modules():
            if isinstance(module, bnb.nn.Linear4bit):
                weight = bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state)
                target = dense.get_submodule(name.removesuffix(".base_layer")).weight
                target.copy_(weight.reshape(target.shape))
    targets = model.peft_config["default"].target_modules
    reference = get_peft_model(dense, LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    reference.load_state_dict({n: p for n, p in model.state_dict().items() if "lora_" in n}, strict=False)
    want = grads(reference)
    assert got.keys() == want.keys() and len(got) > 0
    for name in got:
        assert torch.allclose(got[name], want[name], rtol=1e-3, atol=1e-5), name


def test_qlora_needs_lora(saved, tmp_path):
    path, tok = saved
    with pytest.raises(ValueError, match="pass peft_config"):
        GFlowNetTrainer(path, _config(tmp_path, load_in_4bit=True), train_dataset=Dataset.from_dict(ROWS),
                        processing_class=tok)


@pytest.mark.parametrize("bits", ["8bit", "4bit"])
def test_quantized_reward_model_scores_close_to_full_precision_and_trains(saved, tmp_path, bits):
    path, tok = saved
    args = _config(tmp_path, reward_model_name_or_path=path, reward_model_quantization=bits)
    trainer = GFlowNetTrainer(path, args, train_dataset=Dataset.from_dict(ROWS), processing_class=tok,
                              peft_config=LoraConfig(r=4, lora_alpha=8))
    assert trainer.reward_model.is_quantized
    rows = list(trainer.train_dataset)
    z = torch.tensor([[4, 5, 6, 7], [8, 9, 0, 0]])
    lengths = torch.tensor([4, 2])
    quantized = trainer.score_latents(rows, z, lengths)
    full = LikelihoodReward(None, tiny_model("llama", len(tok), seed=0, hidden=64, init_std=0.3).eval(), 0, 0)
    exact = full(rows, z, lengths)
    idx = torch.arange(5)[None, :] <= lengths[:, None]  # the states s_0..s_n of each latent
    err = (quantized - exact)[idx].abs().max().item()
    tol = 0.05 if bits == "8bit" else 0.15  # NF4 on a tiny random model loses more
    assert err < tol * exact[idx].abs().max().item(), (quantized, exact)  # a few % off, not another model
    trainer.train()
    assert all(torch.isfinite(torch.tensor([h["loss"] for h in trainer.state.log_history if "loss" in h])))


def test_recipes_load_the_policy_in_4bit_with_the_flag(saved, tmp_path):
    from gfn_trl.recipe import RecipeArguments, load_model_and_tokenizer

    path, _ = saved
    model, _ = load_model_and_tokenizer(RecipeArguments(model_name_or_path=path), _config(tmp_path, load_in_4bit=True))
    assert model.is_loaded_in_4bit
    dense, _ = load_model_and_tokenizer(RecipeArguments(model_name_or_path=path), _config(tmp_path))
    assert not getattr(dense, "is_loaded_in_4bit", False)
    with pytest.raises(ValueError, match="GGUF"):
        load_model_and_tokenizer(
            RecipeArguments(model_name_or_path="/x/model.gguf"), _config(tmp_path, load_in_4bit=True)
        )

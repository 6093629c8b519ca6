"""GPU check: a GPT-J-6B-shaped GFlowNet step on one card (random weights: no hub needed).

    python benchmarks/gpu_check.py --preset gptj6b --reward adapter      # reward = base with LoRA disabled
    python benchmarks/gpu_check.py --preset gptj6b --reward 8bit         # separate reward LM in 8-bit
    accelerate launch --config_file accelerate_configs/deepspeed_zero2.yaml --num_processes 1 benchmarks/gpu_check.py
    python benchmarks/gpu_check.py --preset tiny --device cpu            # dry run of this script on a CPU
    GPU_CHECK_DRY_RUN=1 bash benchmarks/gpu_check.sh                     # all of gpu_check.sh, tiny, on a CPU

Infilling shapes: one prompt of 40 tokens x 64 latents of up to 25 tokens, a 12-token suffix, LoRA r=64 on
q/k/v/out_proj, bf16. Prints the device, peak memory, and the time of each training step (the first includes
warm-up). benchmarks/gpu_check.sh runs all of it in one go.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from peft import LoraConfig  # noqa: E402
from transformers import GPTJConfig, GPTJForCausalLM, TrainerCallback  # noqa: E402

from gfn_trl import GFlowNetConfig, GFlowNetTrainer  # noqa: E402
from gfn_trl.testing import tiny_tokenizer  # noqa: E402


class StepTimer(TrainerCallback):
    def __init__(self):
        self.times, self._t = [], None

    def _sync(self):
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def on_step_begin(self, args, state, control, **kw):
        self._sync()
        self._t = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        self._sync()
        self.times.append(time.perf_counter() - self._t)


def versions() -> dict:
    out = {}
    for name in ("torch", "transformers", "peft", "accelerate", "trl", "bitsandbytes", "deepspeed"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def cpu_backend(device: str) -> dict:
    """A CPU rehearsal: plain runs are told use_cpu; under DeepSpeed (DS_ACCELERATOR=cpu) that would turn DeepSpeed
    off, so they name the gloo backend instead.  fp32 throughout."""
    if device != "cpu":
        return {}
    backend = {"ddp_backend": "gloo"} if os.environ.get("ACCELERATE_USE_DEEPSPEED") == "true" else {"use_cpu": True}
    return {**backend, "bf16": False}  # fp32 everywhere in the rehearsal, also on a host that has a GPU


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=["gptj6b", "tiny"], default="gptj6b")
    p.add_argument("--reward", choices=["adapter", "8bit"], default="adapter")
    p.add_argument("--device", default="cuda")
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--activation_checkpointing", action="store_true")
    p.add_argument("--out", default=None, help="append the result as one JSON line to this file")
    a = p.parse_args(argv)

    words = [f"w{i}" for i in range(50400 if a.preset == "gptj6b" else 500)]
    tok = tiny_tokenizer(words)
    cfg = GPTJConfig(vocab_size=len(tok), bos_token_id=0, eos_token_id=0, pad_token_id=0)
    if a.preset == "tiny":
        cfg = GPTJConfig(vocab_size=len(tok), n_embd=64, n_layer=2, n_head=4, rotary_dim=8, bos_token_id=0,
                         eos_token_id=0, pad_token_id=0)
    dtype = torch.bfloat16 if a.device == "cuda" else torch.float32
    torch.manual_seed(0)
    with torch.device(a.device):
        model = GPTJForCausalLM(cfg).to(dtype)
    reward_path = None
    if a.reward == "8bit":
        reward_path = tempfile.mkdtemp(prefix="gptj_reward_")
        model.save_pretrained(reward_path)

    prompt = " ".join(words[3:43])
    suffix = " ".join(words[50:62])
    args = GFlowNetConfig(
        output_dir=tempfile.mkdtemp(), max_steps=a.steps, per_device_train_batch_size=1, num_generations=a.samples,
        max_completion_length=25, min_completion_length=5, learning_rate=1e-4, warmup_steps=0,
        on_policy_prob=1.0, tempered_prob=0.0, replay_prob=0.0, logging_steps=1, save_strategy="no",
        report_to="none", disable_tqdm=True, activation_checkpointing=a.activation_checkpointing,
        reward_model_name_or_path=reward_path, reward_model_quantization="8bit" if reward_path else None,
        reward_chunk_size=16, **cpu_backend(a.device),
    )
    lora = LoraConfig(r=64, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "out_proj"])
    trainer = GFlowNetTrainer(model, args, processing_class=tok, peft_config=lora,
                              train_dataset=Dataset.from_dict({"prompt": [prompt] * 8, "suffix": [suffix] * 8}))
    timer = StepTimer()
    trainer.add_callback(timer)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    result = {
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "preset": a.preset, "reward": a.reward, "samples": a.samples,
        "distributed": trainer.accelerator.distributed_type.value,
        "step_seconds": [round(t, 3) for t in timer.times],
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None,
        "loss": [h["loss"] for h in trainer.state.log_history if "loss" in h],
        "versions": versions(),
    }
    if trainer.accelerator.is_main_process:
        print("GPU_CHECK " + json.dumps(result), flush=True)
        if a.out:
            with open(a.out, "a") as f:
                f.write(json.dumps(result) + "\n")
    trainer.end()
    return result


if __name__ == "__main__":
    main()

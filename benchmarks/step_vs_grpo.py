"""One GFlowNet training step against one TRL GRPO step: same model, LoRA, batch and lengths.

    python benchmarks/step_vs_grpo.py [--preset small|gpt2|tiny] [--samples 16] [--length 20] [--steps 6]

Both trainers sample `--samples` completions of exactly `--length` tokens for one prompt per step (GFlowNet:
min = max completion length; GRPO: min_new_tokens = max_completion_length), score them with the frozen base LM
(GRPO: one log-likelihood pass over prompt + completion, as its reward function; GFlowNet: log R for every prefix,
in one packed pass with a fixed suffix) and take one optimizer step. The GFlowNet step does strictly more work
(per-prefix rewards). Prints the median step time of each (first step excluded), their ratio and tokens/s.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from peft import LoraConfig  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel, TrainerCallback  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from gfn_trl import GFlowNetConfig, GFlowNetTrainer  # noqa: E402
from gfn_trl.testing import tiny_tokenizer  # noqa: E402

PRESETS = {"tiny": (64, 2, 2), "small": (256, 4, 4), "gpt2": (768, 12, 12)}
WORDS = [f"w{i}" for i in range(2000)]


class StepTimer(TrainerCallback):
    def __init__(self):
        self.times, self._t = [], None

    def on_step_begin(self, args, state, control, **kw):
        self._t = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        self.times.append(time.perf_counter() - self._t)


def build(preset, vocab, seed=0):
    d, layers, heads = PRESETS[preset]
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=vocab, n_embd=d, n_layer=layers, n_head=heads, n_positions=256,
                     bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return GPT2LMHeadModel(cfg)


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=list(PRESETS), default="small")
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--length", type=int, default=20)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    tok = tiny_tokenizer(WORDS)
    prompt = " ".join(WORDS[i] for i in range(3, 43))  # 40 tokens, the infilling shape
    suffix = " ".join(WORDS[i] for i in range(50, 62))  # 12 tokens
    lora = LoraConfig(r=16, lora_alpha=16, target_modules=["c_attn", "c_proj"], fan_in_fan_out=True)
    common = dict(max_steps=a.steps, learning_rate=1e-4, logging_steps=1000, save_strategy="no", report_to="none",
                  use_cpu=True, bf16=False, disable_tqdm=True, seed=0, max_completion_length=a.length)

    gfn_args = GFlowNetConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=1, num_generations=a.samples,
                              min_completion_length=a.length, warmup_steps=0, on_policy_prob=1.0, tempered_prob=0.0,
                              replay_prob=0.0, **common)  # every step samples and scores (no replay shortcut)
    gfn = GFlowNetTrainer(build(a.preset, len(tok)), gfn_args, processing_class=tok, peft_config=lora,
                          train_dataset=Dataset.from_dict({"prompt": [prompt] * 64, "suffix": [suffix] * 64}))
    gfn_timer = StepTimer()
    gfn.add_callback(gfn_timer)

    reward_lm = build(a.preset, len(tok)).eval()

    def base_log_likelihood(prompts, completions, completion_ids, **kwargs):
        prompt_ids = tok(prompts[0])["input_ids"]
        ids = torch.tensor([prompt_ids + list(c) for c in completion_ids])
        with torch.no_grad():
            logp = torch.log_softmax(reward_lm(input_ids=ids).logits[:, :-1].float(), -1)
        lp = logp.gather(-1, ids[:, 1:, None]).squeeze(-1)[:, len(prompt_ids) - 1 :]
        return lp.sum(1).tolist()

    grpo_args = GRPOConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=a.samples,
                           num_generations=a.samples, generation_kwargs={"min_new_tokens": a.length},
                           activation_checkpointing=False, warmup_steps=0, **common)
    grpo = GRPOTrainer(build(a.preset, len(tok)), reward_funcs=base_log_likelihood, args=grpo_args,
                       processing_class=tok, peft_config=lora,
                       train_dataset=Dataset.from_dict({"prompt": [prompt] * 64}))
    grpo_timer = StepTimer()
    grpo.add_callback(grpo_timer)

    # Run back to back in one process; run on an otherwise idle machine.
    for trainer in (gfn, grpo):
        trainer.train()
    g = statistics.median(gfn_timer.times[1:])
    r = statistics.median(grpo_timer.times[1:])
    tokens = a.samples * (40 + a.length)
    d, layers, heads = PRESETS[a.preset]
    print(f"machine: {cpu_name()} ({os.cpu_count()} cores), torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"model: GPT-2 shape d={d} layers={layers} heads={heads} vocab={len(tok)}, LoRA r=16 on c_attn,c_proj")
    print(f"batch: 1 prompt x {a.samples} samples, prompt 40, completion {a.length}, suffix 12; {a.steps} steps")
    print(f"GFlowNet step (SubTB, per-prefix rewards): {g:.3f} s   ({tokens / g:.0f} policy tokens/s)")
    print(f"GRPO step (one reward pass):               {r:.3f} s   ({tokens / r:.0f} policy tokens/s)")
    print(f"ratio GFlowNet/GRPO: {g / r:.2f}")
    return {"gfn_s": g, "grpo_s": r, "ratio": g / r}


if __name__ == "__main__":
    main()

"""Evaluation run used by tests/test_distributed_eval.py: `python` or `accelerate launch` this file.

    ddp_eval.py OUTPUT_DIR PER_DEVICE_TRAIN_BATCH

Trains a tiny GPT-2 GFlowNet for 4 steps with an evaluation every 2 (3 eval prompts, one per device and batch, so that
with two processes Accelerate pads the last eval batch with a duplicated row) and `log_completions`.  Writes
OUTPUT_DIR/result.json (main process): the evaluations' metrics and, per evaluation, the samples `compute_metrics`
received (prompt, latent, log R), sorted.
"""

import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from peft import LoraConfig  # noqa: E402

from gfn_trl import GFlowNetConfig, GFlowNetTrainer  # noqa: E402
from gfn_trl.testing import tiny_model, tiny_tokenizer  # noqa: E402

torch.set_num_threads(1)
out, per_device = sys.argv[1], int(sys.argv[2])
ROWS = {"prompt": ["the cat", "a dog", "the big dog", "a red cat"], "suffix": ["slept .", "ran .", "ate .", "sat ."]}
EVAL = {"prompt": ["a big cat", "the red dog", "a cat"], "suffix": ["ate .", "sat .", "ran ."]}
seen = []


def metrics(prompts, completions, completion_ids, log_rewards, **columns):
    seen.append(sorted(zip(prompts, completions, [round(x, 4) for x in log_rewards])))
    return {"samples": len(completions)}


tok = tiny_tokenizer()
args = GFlowNetConfig(
    output_dir=out, max_steps=4, per_device_train_batch_size=per_device, per_device_eval_batch_size=1,
    num_generations=3, max_completion_length=4, learning_rate=1e-2, warmup_steps=0, logging_steps=1,
    save_strategy="no", report_to="none", disable_tqdm=True, seed=3, eval_strategy="steps", eval_steps=2,
    log_completions=True, num_completions_to_print=2, loss_type="tb", use_cpu=True,
)
trainer = GFlowNetTrainer(tiny_model("gpt2", len(tok), seed=0), args, train_dataset=Dataset.from_dict(ROWS),
                          eval_dataset=Dataset.from_dict(EVAL), processing_class=tok, peft_config=LoraConfig(r=4),
                          compute_metrics=metrics)
trainer.train()
if trainer.accelerator.is_main_process:
    evals = [{k: v for k, v in h.items() if k.startswith("eval_") and "runtime" not in k and "per_second" not in k}
             for h in trainer.state.log_history if "eval_loss" in h]
    with open(os.path.join(out, "result.json"), "w") as f:
        json.dump({"evals": evals, "seen": seen, "world_size": trainer.accelerator.num_processes}, f)

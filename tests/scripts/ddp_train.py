"""Training run used by tests/test_distributed.py: `python` or `accelerate launch` this file.

    ddp_train.py OUTPUT_DIR PER_DEVICE_BATCH LOSS_TYPE [resume]
Writes OUTPUT_DIR/result.json (main process): logged losses, rewards and the final LoRA weights.
Under DeepSpeed on CPU (GFN_TEST_DEEPSPEED=1, DS_ACCELERATOR=cpu) the Trainer must not be told use_cpu (Accelerate
then turns DeepSpeed off) and needs the gloo backend named.
"""

import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from datasets import Dataset  # noqa: E402
from peft import LoraConfig  # noqa: E402

from gfn_trl import GFlowNetConfig, GFlowNetTrainer  # noqa: E402
from gfn_trl.testing import tiny_model, tiny_tokenizer  # noqa: E402

out, per_device, loss_type = sys.argv[1], int(sys.argv[2]), sys.argv[3]
resume = len(sys.argv) > 4 and sys.argv[4] == "resume"
tok = tiny_tokenizer()
args = GFlowNetConfig(
    output_dir=out, max_steps=6, per_device_train_batch_size=per_device, num_generations=3, max_completion_length=4,
    learning_rate=1e-2, warmup_steps=0, logging_steps=1, save_strategy="steps", save_steps=3, report_to="none",
    disable_tqdm=True, seed=1, loss_type=loss_type, replay_prob=0.25,
    **({"ddp_backend": "gloo"} if os.environ.get("GFN_TEST_DEEPSPEED") else {"use_cpu": True}),
)
data = Dataset.from_dict(
    {"prompt": ["the cat", "a dog", "the big dog", "a red cat"], "suffix": ["sat .", "ran .", "ate .", "slept ."]}
)
trainer = GFlowNetTrainer(tiny_model("gpt2", len(tok)), args, train_dataset=data, processing_class=tok,
                          peft_config=LoraConfig(r=4))
trainer.train(resume_from_checkpoint=os.path.join(out, "checkpoint-3") if resume else None)
if trainer.accelerator.is_main_process:
    logs = [h for h in trainer.state.log_history if "loss" in h]
    result = {
        "world_size": trainer.accelerator.num_processes,
        # FSDP2 holds DTensor shards, DeepSpeed ZeRO-3 partitioned parameters (with a ds_id)
        "sharded": any(type(p).__name__ == "DTensor" or hasattr(p, "ds_id") for p in trainer.model.parameters()),
        "losses": [h["loss"] for h in logs],
        "log_reward": [h["log_reward/mean"] for h in logs],
        "replay": [h["behaviour/replay"] for h in logs],
        "buffer_size": [h["replay_buffer/size"] for h in logs],
        "weights": {k: v.flatten().tolist() for k, v in trainer.model.state_dict().items() if "lora" in k},
    }
    with open(os.path.join(out, "result_resume.json" if resume else "result.json"), "w") as f:
        json.dump(result, f)
trainer.end()  # closes the process group cleanly (gloo threads otherwise abort at exit)

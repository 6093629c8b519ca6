"""Training run used by tests/test_distributed.py: `python` or `accelerate launch` this file.

    ddp_train.py OUTPUT_DIR PER_DEVICE_BATCH LOSS_TYPE [resume] [empty]

Writes OUTPUT_DIR/result.json (main process): logged losses, rewards, the final LoRA weights and the partition sizes
of the weights seen during the rollout; and OUTPUT_DIR/forwards_rank{r}.json (every process): per rollout, how many
forward passes of the LM the rank ran for sampling and for the reward, and what its data looked like.

The model is a GPT-2 of width 320: wide enough that DeepSpeed ZeRO-3 really partitions its big weights (its default
`stage3_param_persistence_threshold` keeps every parameter under 1e5 elements whole on every rank; at width 320 the
attention and MLP matrices hold 1.0e5 to 4.1e5 elements). The suffixes have 1 and 2 tokens and the reward is scored
two rows at a time (`reward_chunk_size=2`), so the ranks' reward passes differ in number.

`empty`: two rows, one of which always ends its latent at once: the last token of its prompt ("red") has a large
component along one hidden direction, and the stop token's output row reads that direction, so q(stop | s_0) = 1
(with min_completion_length=0). With one prompt per rank, one rank samples only empty latents in every step.

Under DeepSpeed on CPU (GFN_TEST_DEEPSPEED=1, DS_ACCELERATOR=cpu) the Trainer must not be told use_cpu (Accelerate
then turns DeepSpeed off) and needs the gloo backend named.
"""

import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from peft import LoraConfig  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

from gfn_trl import GFlowNetConfig, GFlowNetTrainer  # noqa: E402
from gfn_trl.testing import tiny_tokenizer  # noqa: E402

out, per_device, loss_type = sys.argv[1], int(sys.argv[2]), sys.argv[3]
resume, empty = "resume" in sys.argv[4:], "empty" in sys.argv[4:]
WIDTH = 320
tok = tiny_tokenizer()


def wide_gpt2(vocab_size: int) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    # untied output layer: the stop token's output row can then be set without touching its input embedding
    cfg = GPT2Config(n_embd=WIDTH, n_layer=2, n_head=4, n_positions=64, vocab_size=vocab_size, bos_token_id=0,
                     eos_token_id=0, pad_token_id=0, tie_word_embeddings=False)
    model = GPT2LMHeadModel(cfg)
    if empty:
        with torch.no_grad():
            # Hidden direction 0 is silent (no embedding, position or layer output writes to it) except in the
            # embedding of "red", 10 there, while the rest of the residual stream is ~0.4 in norm. At s_0 of a prompt
            # ending in "red" the final layer norm then gives ~sqrt(320) = 18 along direction 0, and the stop's output
            # row reads it: a logit of ~70 against O(1) for the other tokens, beyond any Gumbel draw even at sampling
            # temperature 2, so every latent of that prompt is empty. Elsewhere the stop is an ordinary action.
            model.transformer.wte.weight[:, 0] = 0.0
            model.transformer.wpe.weight[:, 0] = 0.0
            for block in model.transformer.h:
                for layer in (block.attn.c_proj, block.mlp.c_proj):  # Conv1D: weight (in, out)
                    layer.weight[:, 0] = 0.0
                    layer.bias[0] = 0.0
            model.transformer.wte.weight[tok.convert_tokens_to_ids("red"), 0] = 10.0
            model.lm_head.weight[tok.eos_token_id, 0] = 4.0
    return model


args = GFlowNetConfig(
    output_dir=out, max_steps=6, per_device_train_batch_size=per_device, num_generations=3, max_completion_length=4,
    min_completion_length=0 if empty else 1, learning_rate=1e-3 if empty else 1e-2, warmup_steps=0, logging_steps=1,
    save_strategy="steps", save_steps=3, report_to="none", disable_tqdm=True, seed=1, loss_type=loss_type,
    replay_prob=0.25, reward_chunk_size=2,
    **({"ddp_backend": "gloo"} if os.environ.get("GFN_TEST_DEEPSPEED") else {"use_cpu": True}),
)
if empty:
    # the reward LM reads the prompt without "red", and latents may not use it (the vocabulary mask), so that the
    # surgery above changes nothing but the policy's first action on the "red" prompt
    rows = {"prompt": ["the cat", "a dog red"], "reward_prompt": ["the cat", "a dog"], "suffix": ["sat", "ran ."]}
else:
    rows = {"prompt": ["the cat", "a dog", "the big dog", "a red cat"], "suffix": ["sat .", "ran", "ate .", "slept"]}
model = wide_gpt2(len(tok))

# Every forward of the GPT-2 body, counted: under ZeRO-3 each one gathers the partitioned weights (a collective)
# unless the rollout holds them gathered, so unequal counts across ranks are what used to deadlock.
forwards = [0]
model.transformer.register_forward_pre_hook(lambda module, inputs: forwards.__setitem__(0, forwards[0] + 1))


def shard_sizes(module) -> dict:
    """name -> [local shard, full size, elements held now, kept whole] of each DeepSpeed ZeRO-3 parameter."""
    return {n: [p.ds_tensor.numel(), p.ds_numel, p.data.numel(), bool(p.ds_persist)]
            for n, p in module.named_parameters() if hasattr(p, "ds_tensor")}


class Observed(GFlowNetTrainer):
    """Records, per rollout and per rank, the forwards of sampling and of the reward and the data they ran on."""

    observed: list = []
    shards: dict = {}

    def sample(self, expanded, *a, **kw):
        if not self.shards:  # the weights as the rollout finds them: partitioned, nothing gathered
            self.shards.update(shard_sizes(self.accelerator.unwrap_model(self.model)))
        before = forwards[0]
        z, lengths = super().sample(expanded, *a, **kw)
        self.observed.append({"step": self.state.global_step, "sample_forwards": forwards[0] - before})
        return z, lengths

    def score_latents(self, rows, z, lengths):
        before = forwards[0]
        log_r = super().score_latents(rows, z, lengths)
        distinct = {(r["gfn_key"], tuple(z[b, : int(lengths[b])].tolist())) for b, r in enumerate(rows)}
        self.observed[-1].update(reward_forwards=forwards[0] - before, lengths=lengths.tolist(),
                                 suffix_lengths=[len(r["suffix_ids"]) for r in rows], distinct_rows=len(distinct))
        return log_r


vocab_mask = torch.ones(len(tok), dtype=torch.bool)
if empty:
    vocab_mask[tok.convert_tokens_to_ids("red")] = False
trainer = Observed(model, args, train_dataset=Dataset.from_dict(rows), processing_class=tok,
                   peft_config=LoraConfig(r=4), vocab_mask=vocab_mask if empty else None)
trainer.train(resume_from_checkpoint=os.path.join(out, "checkpoint-3") if resume else None)
tag = "_resume" if resume else ""
rank = trainer.accelerator.process_index
with open(os.path.join(out, f"forwards{tag}_rank{rank}.json"), "w") as f:
    json.dump(trainer.observed, f)
weights = {k: v.flatten().tolist() for k, v in trainer.model.state_dict().items() if "lora" in k}
if trainer.accelerator.is_main_process:
    logs = [h for h in trainer.state.log_history if "loss" in h]
    result = {
        "world_size": trainer.accelerator.num_processes,
        # FSDP2 holds DTensor shards, DeepSpeed ZeRO-3 partitioned parameters (with a ds_id)
        "sharded": any(type(p).__name__ == "DTensor" or hasattr(p, "ds_id") for p in trainer.model.parameters()),
        "shards": trainer.shards,
        "persistence_threshold": (trainer.model_wrapped.zero_param_persistence_threshold()
                                  if hasattr(trainer.model_wrapped, "zero_param_persistence_threshold") else None),
        "losses": [h["loss"] for h in logs],
        "log_reward": [h["log_reward/mean"] for h in logs],
        "completion_length": [h["completion_length/mean"] for h in logs],
        "replay": [h["behaviour/replay"] for h in logs],
        "buffer_size": [h["replay_buffer/size"] for h in logs],
        "weights": weights,
    }
    with open(os.path.join(out, f"result{tag}.json"), "w") as f:
        json.dump(result, f)
trainer.end()  # closes the process group cleanly (gloo threads otherwise abort at exit)

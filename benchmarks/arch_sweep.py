"""Does gfn_trl score and train an architecture exactly?  A sweep over tiny random configs of HF causal LMs.

For each model type: build a tiny random model from `AutoConfig.for_model(type)` (hidden 32, 2 layers, vocabulary
40; no hub needed), then compare against plain forward passes over unpadded sequences

* the per-prefix rewards of both kinds (fixed suffix, stop token) from `prefix_log_rewards`, on a left-padded batch
  of prompts of different lengths, two rows sharing a prompt;
* the policy's teacher-forced log-probabilities from `policy_log_probs` on the same batch;

and report which reward path the model takes (packed, or plain passes and why: `_packing_obstacle`).

    python benchmarks/arch_sweep.py                 # the default list below
    python benchmarks/arch_sweep.py falcon_h1 jamba # any model types transformers knows

A model type whose tiny config cannot be built this way (some need matching sub-dimensions) reports BUILD-FAIL:
that says nothing about gfn_trl.
"""

from __future__ import annotations

import argparse
import os
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM  # noqa: E402

from gfn_trl import rewards  # noqa: E402
from gfn_trl.rewards.capability import _packing_obstacle  # noqa: E402
from gfn_trl.sampling import LatentConstraints, left_pad, policy_log_probs  # noqa: E402

DEFAULT = ("gpt2 gpt_neox qwen2 llama opt bloom falcon gemma gemma2 gemma3_text phi phi3 mistral stablelm starcoder2 "
           "gpt_bigcode gpt_neo olmo olmo2 cohere qwen3 granite mpt persimmon smollm3 glm helium exaone4 mamba "
           "falcon_mamba lfm2 xglm").split()
V, STOP = 40, 0
TINY = dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=128, bos_token_id=0, eos_token_id=0, pad_token_id=0,
            n_embd=32, n_layer=2, n_head=4, d_model=32, ffn_dim=64, n_positions=128, head_dim=8, num_heads=4,
            word_embed_proj_dim=32)


def build(model_type: str):
    config = AutoConfig.for_model(model_type)
    for key, value in TINY.items():
        if hasattr(config, key):
            try:
                setattr(config, key, value)
            except AttributeError:  # a derived property (Falcon's head_dim)
                pass
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


@torch.no_grad()
def direct(model, context: list[int], continuation: list[int]) -> float:
    """log p(continuation | context) by one plain forward pass, no padding."""
    logp = torch.log_softmax(model(input_ids=torch.tensor([context + continuation])).logits[0].float(), -1)
    return sum(logp[len(context) + i - 1, t].item() for i, t in enumerate(continuation))


def batch():
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(1, V, (n,), generator=g).tolist() for n in (3, 7, 5, 2)]
    prompts[3] = prompts[0]  # two rows share a prompt
    suffixes = [torch.randint(1, V, (n,), generator=g).tolist() for n in (2, 4, 1, 3)]
    lengths = torch.tensor([5, 0, 3, 2])
    z = torch.randint(1, V, (4, 5), generator=g)
    z[torch.arange(5)[None] >= lengths[:, None]] = STOP
    return prompts, suffixes, z, lengths


def check(model) -> dict:
    prompts, suffixes, z, lengths = batch()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        suffix = rewards.prefix_log_rewards(model, prompts, z, lengths, STOP, STOP, suffixes)
        stop = rewards.prefix_log_rewards(model, prompts, z, lengths, STOP, STOP, None)
    reward_err = max(
        max(abs(suffix[b, k].item() - direct(model, prompts[b], z[b, :k].tolist() + suffixes[b])),
            abs(stop[b, k].item() - direct(model, prompts[b], z[b, :k].tolist() + [STOP])))
        for b in range(len(prompts)) for k in range(int(lengths[b]) + 1))
    ids, mask = left_pad(prompts, STOP)
    log_pf, _ = policy_log_probs(model, ids, mask, z, lengths, LatentConstraints(STOP, 5))
    policy_err = max(
        abs(log_pf[b, k].item() - direct(model, prompts[b] + z[b, :k].tolist(), [int(z[b, k])]))
        for b in range(len(prompts)) for k in range(int(lengths[b])))
    obstacle = _packing_obstacle(model)
    return {"path": "packed" if obstacle is None else f"plain ({obstacle})", "reward": reward_err,
            "policy": policy_err}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_types", nargs="*", default=DEFAULT)
    p.add_argument("--tol", type=float, default=1e-4, help="largest |difference| reported as OK")
    a = p.parse_args(argv)
    results = {}
    for model_type in a.model_types:
        try:
            model = build(model_type)
        except Exception as e:  # noqa: BLE001 - a sweep reports and goes on
            print(f"{model_type:16s} BUILD-FAIL {type(e).__name__}: {str(e)[:100]}")
            continue
        try:
            r = check(model)
        except Exception as e:  # noqa: BLE001
            print(f"{model_type:16s} FAIL {type(e).__name__}: {str(e)[:160]}")
            results[model_type] = None
            continue
        ok = "OK " if max(r["reward"], r["policy"]) < a.tol else "BAD"
        print(f"{model_type:16s} {ok} reward {r['reward']:.1e}  policy {r['policy']:.1e}  {r['path']}")
        results[model_type] = r
    return results


if __name__ == "__main__":
    main()

"""Sampler speed at equal shapes, side by side in one run: HF `generate`, our decode loop with a dynamic cache, and
the static-cache loop eager and compiled (`gfn_trl.sampling.sample_latents`).

All four draw the same latents (row-seeded Gumbel-max sampling of the constrained policy; `generate` through
`gfn_trl.trainers.generation.GenerateBackend`, a logits processor); the script checks that they are equal before it
times anything.  Every row writes exactly `--new` tokens (`min_length` = `max_length` = new - 1, then the forced
stop), so all do the same forwards.  The methods run interleaved, `--repeats` rounds, so that machine load affects
them alike; the compiled loop's first call (the compilation) is reported apart.  Tiny random Llama by default
(hidden 256, 4 layers, vocabulary 32000), on the CPU.

    python benchmarks/sampling.py                                   # batch 16, prompt 40, 21 new tokens, 1 thread
    python benchmarks/sampling.py --threads 2 --repeats 9 --lora 16  # also: LoRA unmerged against merged
    python benchmarks/sampling.py --device cuda --gptj_shapes        # GPT-J-6B shapes in bf16 (random weights)

`--gptj_shapes` (GPU): GPT-J-6B's config (d 4096, 28 layers, 16 heads, rotary 64, vocabulary 50400) in bf16, 64
latents of 25 tokens then the stop after prompts of 40: the shapes of the paper's infilling run.  Next to the
measured step time it prints the memory-bandwidth bound: every decode step reads all weights once and the KV cache
written so far, so a step cannot take less than (weight bytes + mean KV bytes) / HBM bandwidth (`--hbm_tb_s`,
4.8 TB/s for an H200, 3.35 for an H100 SXM).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import GPTJConfig, GPTJForCausalLM, LlamaConfig, LlamaForCausalLM  # noqa: E402

from gfn_trl.sampling import LatentConstraints, left_pad, sample_latents  # noqa: E402
from gfn_trl.trainers.generation import GenerateBackend, GenerationRequest  # noqa: E402

STOP = 0
METHODS = {"generate": "HF generate", "dynamic": "decode loop, dynamic cache", "static": "static cache, eager",
           "compiled": "static cache, compiled"}


def build(a):
    torch.manual_seed(0)
    if a.gptj_shapes:
        config = GPTJConfig(n_embd=4096, n_layer=28, n_head=16, rotary_dim=64, n_positions=2048, vocab_size=50400,
                            bos_token_id=1, eos_token_id=STOP, pad_token_id=STOP)
        with torch.device(a.device):
            model = GPTJForCausalLM(config)
    else:
        config = LlamaConfig(hidden_size=a.hidden, intermediate_size=4 * a.hidden, num_hidden_layers=a.layers,
                             num_attention_heads=a.hidden // 64, num_key_value_heads=a.hidden // 64,
                             vocab_size=a.vocab, max_position_embeddings=512, bos_token_id=1, eos_token_id=STOP,
                             pad_token_id=STOP)
        model = LlamaForCausalLM(config).to(a.device)
    return model.to(getattr(torch, a.dtype)).eval()


def hbm_bound_ms(model, a) -> tuple[float, float, float]:
    """(bound in ms per decode step, weight GB, mean KV-cache GB read per step)."""
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    cfg = model.config
    layers = getattr(cfg, "num_hidden_layers", None) or cfg.n_layer
    hidden = getattr(cfg, "hidden_size", None) or cfg.n_embd
    heads = getattr(cfg, "num_attention_heads", None) or cfg.n_head
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    kv_width = hidden // heads * kv_heads
    mean_positions = a.prompt + a.new / 2
    kv_bytes = a.batch * mean_positions * layers * 2 * kv_width * torch.finfo(getattr(torch, a.dtype)).bits / 8
    return (weight_bytes + kv_bytes) / (a.hbm_tb_s * 1e12) * 1e3, weight_bytes / 1e9, kv_bytes / 1e9


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--prompt", type=int, default=40, help="prompt length (rows left-padded by up to 8 tokens)")
    p.add_argument("--new", type=int, default=21, help="tokens generated per row, the stop included")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, help="float32 (CPU default) or bfloat16 (GPU default)")
    p.add_argument("--gptj_shapes", action="store_true", help="GPT-J-6B config, bf16, batch 64, prompt 40, new 26")
    p.add_argument("--hbm_tb_s", type=float, default=4.8, help="memory bandwidth for the bound (H200: 4.8)")
    p.add_argument("--lora", type=int, default=0, help="also time a LoRA policy (this rank, on q/k/v/o), unmerged "
                   "against merged, with the static eager loop")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of: " + ",".join(METHODS))
    a = p.parse_args(argv)
    if a.gptj_shapes:
        a.batch, a.prompt, a.new = 64, 40, 26
    a.dtype = a.dtype or ("bfloat16" if a.device.startswith("cuda") else "float32")
    methods = [m.strip() for m in a.methods.split(",")]
    unknown = set(methods) - set(METHODS)
    if unknown:
        p.error(f"unknown methods {sorted(unknown)}; choose from {list(METHODS)}")
    torch.set_num_threads(a.threads)
    model = build(a)
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(1, vocab, (a.prompt - (b % 8),), generator=g).tolist() for b in range(a.batch)]
    ids, mask = left_pad(prompts, STOP, a.device)
    c = LatentConstraints(STOP, max_length=a.new - 1, min_length=a.new - 1)  # every row writes a.new tokens
    seeds = (torch.arange(a.batch) * 7919 + 3).tolist()
    request = GenerationRequest([{}] * a.batch, ids, mask, 1.0, seeds)
    cuda = a.device.startswith("cuda")

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def runner(method, policy):
        if method == "generate":
            return lambda: GenerateBackend().generate(policy, c, request)[0]
        impl = "dynamic" if method == "dynamic" else "static"
        compiled = method == "compiled"
        return lambda: sample_latents(policy, ids, mask, c, 1.0, STOP, seeds, cache_implementation=impl,
                                      compile=compiled)[0]

    runs = {METHODS[m]: runner(m, model) for m in methods}
    methods = [METHODS[m] for m in methods]
    if a.lora:
        from peft import LoraConfig, get_peft_model

        targets = ["q_proj", "k_proj", "v_proj", "out_proj"] if a.gptj_shapes else ["q_proj", "k_proj", "v_proj",
                                                                                    "o_proj"]
        lora = get_peft_model(build(a), LoraConfig(r=a.lora, lora_alpha=a.lora, target_modules=targets))
        with torch.no_grad():
            for n, w in lora.named_parameters():
                if "lora_B" in n:
                    w.normal_(0, 0.02)  # a trained adapter (B = 0 at initialisation)
        lora.eval()
        merged = get_peft_model(build(a), LoraConfig(r=a.lora, lora_alpha=a.lora, target_modules=targets))
        merged.load_state_dict(lora.state_dict())
        merged = merged.merge_and_unload().eval()
        runs["LoRA unmerged, static eager"] = runner("static", lora)
        runs["LoRA merged, static eager"] = runner("static", merged)

    # the same latents everywhere (LoRA merged: up to rounding of the merged weights, so compared apart)
    with torch.no_grad():
        first = {}
        for name, run in runs.items():
            t = time.perf_counter()
            first[name] = run()
            sync()
            if name == METHODS["compiled"]:
                print(f"compilation (first call of the compiled loop): {time.perf_counter() - t:.1f} s", flush=True)
    reference = first[methods[0]] if methods else None
    for name in methods:
        assert first[name].shape[1] == a.new - 1 and torch.equal(first[name], reference), f"{name} disagrees"
    if a.lora:
        same = torch.equal(first["LoRA merged, static eager"], first["LoRA unmerged, static eager"])
        print(f"LoRA merged and unmerged latents {'identical' if same else 'differ (merged-weight rounding)'}")

    times = {name: [] for name in runs}
    with torch.no_grad():
        for _ in range(a.repeats):  # interleaved, so that machine load affects every method alike
            for name, run in runs.items():
                sync()
                t = time.perf_counter()
                run()
                sync()
                times[name].append(time.perf_counter() - t)
    tokens = a.batch * a.new
    desc = "GPT-J-6B shapes" if a.gptj_shapes else f"Llama d={a.hidden} x{a.layers} V={vocab}"
    print(f"{desc}, {a.dtype} on {a.device}, batch {a.batch}, prompt {a.prompt}, {a.new} new tokens, "
          f"{a.threads} thread(s), median of {a.repeats} interleaved runs, load average {os.getloadavg()[0]:.1f}")
    base = statistics.median(times[methods[0]]) if methods else None
    for name, ts in times.items():
        med = statistics.median(ts)
        rel = f"  {base / med:5.2f}x {methods[0]}" if base else ""
        print(f"  {name:32s} {med * 1e3:8.1f} ms  {tokens / med:9.0f} tokens/s  {med / a.new * 1e3:7.2f} ms/step "
              f"(min {min(ts) * 1e3:.1f} ms){rel}")
    if cuda:
        bound, w_gb, kv_gb = hbm_bound_ms(model, a)
        print(f"  HBM bound: {bound:.2f} ms/step ({w_gb:.1f} GB weights + {kv_gb:.2f} GB mean KV cache per step at "
              f"{a.hbm_tb_s} TB/s)")
    return times


if __name__ == "__main__":
    main()

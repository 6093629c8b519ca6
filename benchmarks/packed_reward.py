"""Packed vs naive fixed-suffix per-prefix log-rewards: correctness and speed on infilling shapes.

The fixed-suffix reward log R(s_k ⊤) = log p(z_1..z_k Y | X) is needed for every prefix k = 0..n of each latent.
`suffix_log_rewards_naive` runs n + 1 forward passes (one per prefix); the packed scorer (`prefix_log_rewards`
with `suffix_ids`) computes all of them over one shared computation of the prefix: the distinct prompts once, the
latents once, then the suffix copies k <= n reading [prompt z_1..z_k] through a read-only cache, with the output
layer only on the scored positions (see gfn_trl/rewards/packed.py).
This script builds a random-init causal LM (no hub access needed), draws a batch with the paper's infilling
shapes, checks the two agree, and times both.

Default batch (flags change it): 64 latents, prompts of 40 ± 3 tokens (left-padded), latent lengths uniform in
[5, 25] with at least one of length 25 (right-padded with the stop token), suffixes of 12 ± 2 tokens.

    # CPU, GPT-2-style model of moderate size (n_embd 256, 4 layers, 4 heads, vocab 50257)
    python benchmarks/packed_reward.py
    # real GPT-2 small shape (768 / 12 layers / 12 heads); slow on a small CPU, --batch 16 keeps it short
    python benchmarks/packed_reward.py --preset gpt2 [--batch 16 --repeats 1]
    # GPT-J 6B shape (GPTJConfig()), on a GPU
    python benchmarks/packed_reward.py --preset gptj6b --device cuda --dtype bfloat16
    # tiny smoke run (what a test calls)
    python benchmarks/packed_reward.py --preset tiny --batch 4 --repeats 1

`main(argv)` returns a dict of the results (seconds, ratio, max abs diff, shapes, token counts).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, GPT2Config, GPTJConfig  # noqa: E402

from gfn_trl.rewards import prefix_log_rewards, suffix_log_rewards_naive  # noqa: E402
from gfn_trl.rewards.packed import _copies_per_row  # noqa: E402

if __package__:  # `python -m benchmarks.<name>`, or imported as `benchmarks.<name>`
    from ._rss import RssPeak
else:  # `python benchmarks/<name>.py`: this folder is sys.path[0]
    from _rss import RssPeak

PRESETS = {
    # name: (config class, overrides)
    "tiny": (GPT2Config, dict(n_embd=32, n_layer=2, n_head=2, vocab_size=1000)),
    "small": (GPT2Config, dict(n_embd=256, n_layer=4, n_head=4, vocab_size=50257)),
    "gpt2": (GPT2Config, dict(n_embd=768, n_layer=12, n_head=12, vocab_size=50257)),
    "gptj6b": (GPTJConfig, dict()),  # GPTJConfig() defaults: 4096 / 28 layers / 16 heads, rotary 64, vocab 50400
}

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--preset", choices=sorted(PRESETS), default="small")
    p.add_argument("--n-embd", type=int, default=None, help="override the preset's hidden size")
    p.add_argument("--n-layer", type=int, default=None, help="override the preset's number of layers")
    p.add_argument("--n-head", type=int, default=None, help="override the preset's number of heads")
    p.add_argument("--vocab", type=int, default=None, help="override the preset's vocabulary size")
    p.add_argument("--attn", choices=["sdpa", "eager"], default="sdpa", help="attention implementation")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--batch", type=int, default=64, help="number of latents B")
    p.add_argument("--prompt-len", type=int, default=40)
    p.add_argument("--prompt-jitter", type=int, default=3, help="prompt lengths uniform in prompt-len ± jitter")
    p.add_argument("--latent-min", type=int, default=5)
    p.add_argument("--latent-max", type=int, default=25, help="latent lengths uniform in [min, max], one row at max")
    p.add_argument("--suffix-len", type=int, default=12)
    p.add_argument("--suffix-jitter", type=int, default=2, help="suffix lengths uniform in suffix-len ± jitter")
    p.add_argument("--chunk-size", type=int, default=None, help="prefix_log_rewards chunk_size for the packed pass")
    p.add_argument("--samples-per-prompt", type=int, default=1,
                   help="rows sharing each prompt (the trainer's num_generations); 1 = every row its own prompt")
    p.add_argument("--repeats", type=int, default=3,
                   help="timed repeats per method, interleaved packed/naive (median and spread reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up runs per method")
    p.add_argument("--atol", type=float, default=1e-3, help="max abs diff allowed packed vs naive (fp32 only)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-naive", action="store_true", help="time the packed pass only (no check, no ratio)")
    return p.parse_args(argv)


def cpu_name() -> str:
    name = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return name or platform.machine() or "unknown CPU"


def build_model(args):
    cls, overrides = PRESETS[args.preset]
    kw = dict(overrides)
    names = {"n_embd": args.n_embd, "n_layer": args.n_layer, "n_head": args.n_head, "vocab_size": args.vocab}
    kw.update({k: v for k, v in names.items() if v is not None})
    vocab = kw.get("vocab_size", cls().vocab_size)
    if cls is GPTJConfig:  # rotary dims cannot exceed the head dim when the shape is overridden
        default = GPTJConfig()
        head_dim = kw.get("n_embd", default.n_embd) // kw.get("n_head", default.n_head)
        kw["rotary_dim"] = min(default.rotary_dim, head_dim)
    cfg = cls(**kw, bos_token_id=vocab - 1, eos_token_id=vocab - 1, pad_token_id=vocab - 1)  # stop = pad = last id
    torch.manual_seed(args.seed)
    with torch.device(args.device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=DTYPES[args.dtype], attn_implementation=args.attn)
    model.eval().requires_grad_(False)
    n_params = sum(p.numel() for p in model.parameters())
    return model, cfg, n_params


def make_batch(args, vocab: int, stop: int):
    """Prompts (list of lists), latents z (B, T) padded with `stop`, lengths (B,), suffixes (list of lists)."""
    g = torch.Generator().manual_seed(args.seed + 1)
    B = args.batch

    def lens(center, jitter, n):
        return torch.randint(max(1, center - jitter), center + jitter + 1, (n,), generator=g)

    def toks(n):
        return torch.randint(0, vocab - 1, (int(n),), generator=g).tolist()  # never the stop/pad id

    k = max(1, args.samples_per_prompt)
    distinct = [toks(n) for n in lens(args.prompt_len, args.prompt_jitter, -(-B // k))]
    prompts = [distinct[b // k] for b in range(B)]
    suffixes = [toks(n) for n in lens(args.suffix_len, args.suffix_jitter, B)]
    lengths = torch.randint(args.latent_min, args.latent_max + 1, (B,), generator=g)
    lengths[0] = args.latent_max  # at least one full-width latent
    T = args.latent_max
    z = torch.randint(0, vocab - 1, (B, T), generator=g)
    z[torch.arange(T)[None, :] >= lengths[:, None]] = stop
    return prompts, z, lengths, suffixes


def token_counts(prompts, lengths, suffixes, T: int, hidden: int):
    """Positions fed to the model (incl. padding) and positions whose V-wide logits are computed, per method.

    Packed (gfn_trl/rewards/packed.py): each distinct prompt once; B rows of T latent tokens; the W - 1 fed tokens of
    every live copy k <= n, C copies to a row (C from the same cost model, `_copies_per_row`); the output layer on
    the live states and the real suffix tokens of live copies only."""
    B = len(prompts)
    distinct = {tuple(p) for p in prompts}
    P = max(len(p) for p in prompts)
    W = max(len(s) for s in suffixes)
    live = torch.tensor(lengths) + 1
    C = _copies_per_row(live, P + T, W - 1, hidden)
    copy_rows = sum(-(-int(n) // C) for n in live)
    fed_packed = len(distinct) * P + B * T + copy_rows * C * (W - 1)
    logits_packed = int(live.sum()) + sum((n + 1) * (len(s) - 1) for n, s in zip(lengths, suffixes))
    packed = dict(passes="3", fed=fed_packed, logits=logits_packed,
                  layout=P + T + (T + 1) * W, copies_per_row=C, distinct_prompts=len(distinct))
    fed = 0
    for k in range(T + 1):
        fed += B * max(len(prompts[b]) + k + len(suffixes[b]) for b in range(B))
    naive = dict(passes=T + 1, fed=fed, logits=fed)  # the naive loop keeps every position's logits
    real = sum(len(p) + int(n) + len(s) for p, n, s in zip(prompts, lengths, suffixes))
    return packed, naive, real


def measure(fns: dict, args) -> dict:
    """Warm up each method, then time them interleaved (the order alternates between repeats), so that load from
    other processes hits both alike.  Per method: outputs, wall and CPU seconds, minor page faults, and peak memory
    of each run (CUDA: max allocated, weights included; CPU: peak RSS above the RSS at the start of the run)."""
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    res = {name: dict(out=None, wall=[], cpu=[], faults=[], peak=[]) for name in fns}
    for name, fn in fns.items():
        for _ in range(args.warmup):
            res[name]["out"] = fn()
    rss = RssPeak()
    for r in range(max(1, args.repeats)):
        for name in (list(fns) if r % 2 == 0 else list(reversed(list(fns)))):
            sync()
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            else:
                rss.start()
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            c0, t0 = time.process_time(), time.perf_counter()
            res[name]["out"] = fns[name]()
            sync()
            res[name]["wall"].append(time.perf_counter() - t0)
            res[name]["cpu"].append(time.process_time() - c0)
            res[name]["faults"].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
            res[name]["peak"].append(torch.cuda.max_memory_allocated() if dev.type == "cuda" else rss.stop()[0])
    return res


def gib(x):
    return "n/a" if x is None else f"{x / 2**30:.2f} GiB"


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    model, cfg, n_params = build_model(args)
    stop = pad = cfg.vocab_size - 1
    prompts, z, lengths, suffixes = make_batch(args, cfg.vocab_size, stop)
    z, lengths = z.to(args.device), lengths.to(args.device)
    T = z.shape[1]
    hidden = getattr(cfg, "hidden_size", None) or cfg.n_embd
    packed_tok, naive_tok, real_tok = token_counts(prompts, lengths.tolist(), suffixes, T, hidden)

    dev = torch.device(args.device)
    device_name = cpu_name()
    if dev.type == "cuda":
        device_name = f"{torch.cuda.get_device_name(dev)} (host CPU: {device_name})"
    shape = f"{cfg.model_type} n_embd={cfg.n_embd} n_layer={cfg.n_layer} n_head={cfg.n_head} vocab={cfg.vocab_size}"
    p_lens = [len(p) for p in prompts]
    s_lens = [len(s) for s in suffixes]
    print("packed vs naive fixed-suffix per-prefix log-rewards")
    print(f"  device        : {args.device}  {device_name}")
    thp = os.environ.get("THP_MEM_ALLOC_ENABLE", "unset")
    print(
        f"  torch         : {torch.__version__}, threads={torch.get_num_threads()}, dtype={args.dtype}, "
        f"attn={args.attn}, THP_MEM_ALLOC_ENABLE={thp}"
    )
    print(f"  model         : preset={args.preset}  {shape}  ({n_params / 1e6:.1f}M params, random init)")
    print(
        f"  batch         : B={args.batch}  prompt {min(p_lens)}-{max(p_lens)} tok (left-padded to {max(p_lens)}), "
        f"latent {int(lengths.min())}-{int(lengths.max())} tok (T={T}, S={T + 1} states), "
        f"suffix {min(s_lens)}-{max(s_lens)} tok"
    )
    print(
        f"  packed        : {packed_tok['distinct_prompts']} distinct prompts ({args.samples_per_prompt} rows each), "
        f"{packed_tok['copies_per_row']} suffix copies per row of the copies pass (the one-pass layout would be "
        f"L = P + T + (T+1)·W = {packed_tok['layout']} positions/row), chunk_size={args.chunk_size}"
    )
    sys.stdout.flush()

    def run_packed():
        return prefix_log_rewards(model, prompts, z, lengths, stop, pad, suffixes, chunk_size=args.chunk_size)

    def run_naive():
        return suffix_log_rewards_naive(model, prompts, z, lengths, suffixes, pad)

    fns = {"packed": run_packed} if args.skip_naive else {"packed": run_packed, "naive": run_naive}
    with torch.no_grad():
        m = measure(fns, args)
    packed, t_packed, c_packed = m["packed"]["out"], m["packed"]["wall"], m["packed"]["cpu"]
    s_packed, cpu_packed = statistics.median(t_packed), statistics.median(c_packed)
    f_packed, peak_packed = int(statistics.median(m["packed"]["faults"])), max(m["packed"]["peak"])
    res = dict(
        device=args.device, device_name=device_name, threads=torch.get_num_threads(), dtype=args.dtype, attn=args.attn,
        preset=args.preset, n_embd=cfg.n_embd, n_layer=cfg.n_layer, n_head=cfg.n_head, vocab=cfg.vocab_size,
        n_params=n_params, batch=args.batch, T=T, layout=packed_tok["layout"], real_tokens=real_tok,
        samples_per_prompt=args.samples_per_prompt, copies_per_row=packed_tok["copies_per_row"],
        packed_tokens=packed_tok["fed"], packed_logit_positions=packed_tok["logits"], packed_seconds=s_packed,
        packed_times=t_packed, packed_cpu_seconds=cpu_packed, packed_page_faults=f_packed,
        packed_peak_bytes=peak_packed,
    )
    rows = [("", "passes", "tokens fed", "logit rows", "median s", "runs (s)", "CPU s", "page faults", "peak mem")]
    rows.append(("packed", packed_tok["passes"], packed_tok["fed"], packed_tok["logits"], f"{s_packed:.3f}",
                 " ".join(f"{t:.2f}" for t in t_packed), f"{cpu_packed:.2f}", f_packed, gib(peak_packed)))
    if not args.skip_naive:
        naive, t_naive, c_naive = m["naive"]["out"], m["naive"]["wall"], m["naive"]["cpu"]
        s_naive, cpu_naive = statistics.median(t_naive), statistics.median(c_naive)
        f_naive, peak_naive = int(statistics.median(m["naive"]["faults"])), max(m["naive"]["peak"])
        diff = (packed.float() - naive.float()).abs().max().item()
        ratios = [n / p for n, p in zip(t_naive, t_packed)]  # per interleaved repeat
        ratio = statistics.median(ratios)
        rows.append(("naive", naive_tok["passes"], naive_tok["fed"], naive_tok["logits"], f"{s_naive:.3f}",
                     " ".join(f"{t:.2f}" for t in t_naive), f"{cpu_naive:.2f}", f_naive, gib(peak_naive)))
        res.update(naive_tokens=naive_tok["fed"], naive_logit_positions=naive_tok["logits"], naive_seconds=s_naive,
                   naive_times=t_naive, naive_cpu_seconds=cpu_naive, naive_page_faults=f_naive,
                   naive_peak_bytes=peak_naive, max_abs_diff=diff, ratio=ratio, ratios=ratios,
                   cpu_ratio=cpu_naive / cpu_packed)
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    print()
    for r in rows:
        print("  " + "  ".join(str(c).rjust(w) for c, w in zip(r, widths)))
    print(f"  (real tokens in the batch, prompt + latent + suffix: {real_tok};")
    print("   'logit rows' = positions whose V-wide logits are computed;")
    print("   'CPU s' = median process CPU time (user+sys, all threads), less sensitive than wall time to other load;")
    print("   'page faults' = median minor page faults per run (first touches of freshly allocated memory);")
    if dev.type == "cuda":
        print("   'peak mem' = torch.cuda.max_memory_allocated over the timed runs, weights included)")
    else:
        print("   'peak mem' = peak RSS above the RSS at the start of the run, sampled every 2 ms, max over runs)")
    print()
    if not args.skip_naive:
        print(f"  max |packed - naive| = {diff:.3e}  (over {args.batch}×{T + 1} per-prefix log-rewards)")
        verdict = f"{ratio:.2f}× faster" if ratio >= 1 else f"{1 / ratio:.2f}× SLOWER"
        print(f"  packed is {verdict} than naive (median of the per-repeat ratios, range "
              f"{min(ratios):.2f}-{max(ratios):.2f}; medians {s_naive:.3f} s / {s_packed:.3f} s wall clock)")
        cpu_ratio = cpu_naive / cpu_packed
        print(f"  CPU-time ratio naive/packed = {cpu_ratio:.2f}×  ({cpu_naive:.2f} s / {cpu_packed:.2f} s)")
        if args.dtype == "float32":
            assert diff < args.atol, f"packed and naive disagree: max abs diff {diff:.3e} >= {args.atol}"
        else:
            print(f"  ({args.dtype}: no tolerance asserted; the fp32 run is the correctness check)")
    load = os.getloadavg()[0]
    res["load_average"] = load
    print(f"  load average at the end (1/5/15 min): {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if dev.type == "cpu" and load > torch.get_num_threads() + 0.5:
        print(f"  WARNING: load average {load:.1f} > {torch.get_num_threads()} threads: other processes share the CPU")
    res["total_seconds"] = time.perf_counter() - t_start
    print(f"  total runtime {res['total_seconds']:.1f} s (incl. model build and warm-up)")
    return res


if __name__ == "__main__":
    main()

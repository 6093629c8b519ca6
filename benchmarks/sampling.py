"""Sampler speed: our decode loop (`gfn_trl.sampling.sample_latents`) against HF `generate` at equal shapes.

Both draw the same latents (row-seeded Gumbel-max sampling of the constrained policy; the script checks that they
are equal): `generate` through a logits processor, as the sampler did before it became its own loop.  Every row
writes exactly `--new` tokens (`min_length` = `max_length` = new - 1, then the forced stop), so both do the same
forwards.  Tiny random Llama by default (hidden 256, 4 layers, vocabulary 32000), on the CPU.

    python benchmarks/sampling.py                          # batch 16, prompt 40, 21 new tokens, 1 thread
    python benchmarks/sampling.py --threads 2 --repeats 9
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, LogitsProcessor, LogitsProcessorList  # noqa: E402

from gfn_trl.sampling import LatentConstraints, gumbel_noise, left_pad, sample_latents  # noqa: E402

STOP = 0


class _GumbelProcessor(LogitsProcessor):
    """The former sampler's processor: constraints, temperature, then the row seeds' Gumbel noise (greedy argmax)."""

    def __init__(self, constraints, prompt_width, temperature, seeds):
        self.c, self.p, self.t, self.seeds = constraints, prompt_width, temperature, seeds

    def __call__(self, input_ids, scores):
        scores = self.c.apply_decoding(scores, input_ids[:, self.p :]) / self.t
        return scores + gumbel_noise(self.seeds, input_ids.shape[1] - self.p, scores.shape[-1]).to(scores.dtype)


def hf_generate(model, ids, mask, constraints, seeds):
    config = GenerationConfig(do_sample=False, max_new_tokens=constraints.max_length + 1, eos_token_id=STOP,
                              pad_token_id=STOP)
    processor = LogitsProcessorList([_GumbelProcessor(constraints, ids.shape[1], 1.0, seeds)])
    return model.generate(input_ids=ids, attention_mask=mask, generation_config=config,
                          logits_processor=processor)[:, ids.shape[1] :]


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
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=a.hidden, intermediate_size=4 * a.hidden, num_hidden_layers=a.layers,
                         num_attention_heads=a.hidden // 64, num_key_value_heads=a.hidden // 64,
                         vocab_size=a.vocab, max_position_embeddings=512, bos_token_id=1, eos_token_id=STOP,
                         pad_token_id=STOP)
    model = LlamaForCausalLM(config).eval()
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(1, a.vocab, (a.prompt - (b % 8),), generator=g).tolist() for b in range(a.batch)]
    ids, mask = left_pad(prompts, STOP)
    c = LatentConstraints(STOP, max_length=a.new - 1, min_length=a.new - 1)  # every row writes a.new tokens
    seeds = torch.arange(a.batch) * 7919 + 3

    ours = sample_latents(model, ids, mask, c, 1.0, STOP, seeds)[0]
    theirs = hf_generate(model, ids, mask, c, seeds)
    assert theirs.shape[1] == a.new and torch.equal(theirs[:, :-1], ours), "the two samplers disagree"

    times = {"HF generate": [], "decode loop": []}
    with torch.no_grad():
        for _ in range(a.repeats):  # interleaved, so that machine load affects both alike
            for name, run in (("HF generate", lambda: hf_generate(model, ids, mask, c, seeds)),
                              ("decode loop", lambda: sample_latents(model, ids, mask, c, 1.0, STOP, seeds))):
                t0 = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - t0)
    tokens = a.batch * a.new
    print(f"batch {a.batch}, prompt {a.prompt}, {a.new} new tokens, Llama d={a.hidden} x{a.layers} V={a.vocab}, "
          f"{a.threads} thread(s), median of {a.repeats}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:12s} {med * 1e3:7.1f} ms  {tokens / med:8.0f} tokens/s  (min {min(ts) * 1e3:.1f} ms)")
    ratio = statistics.median(times["HF generate"]) / statistics.median(times["decode loop"])
    print(f"  speed-up of the decode loop: {ratio:.2f}x")
    return times


if __name__ == "__main__":
    main()

"""Replay-buffer insertion at the paper's infilling scale: the buffer as shipped against a pure-Python edit distance.

The de-duplication compares every new latent with every entry of its prompt's bucket by token edit distance
(the authors' rule, "distance < tolerance · (len a + len b)"), so insertion costs O(batch · capacity · n²).  At the
paper's infilling scale (buckets of 50, latents of up to 25 tokens, tolerance 0.25) this runs on every rank at
every step.  Both variants insert the same 1,024 latents into the same pre-filled buckets in this one process, so
the ratio is meaningful on a shared machine; they must end with identical buffers.

    python benchmarks/replay_insert.py [--latents 1024] [--prompts 16] [--capacity 50] [--rounds 3]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import gfn_trl.replay as replay
from gfn_trl.replay import ReplayBuffer


def python_edit_distance(a, b) -> int:
    """The textbook dynamic programme, in pure Python: the baseline."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def latents(n: int, rng: random.Random, vocab: int = 2000, min_len: int = 5, max_len: int = 25):
    """Latents that partly share tokens (half are mutations of earlier ones), so de-duplication has work to do."""
    out = []
    for _ in range(n):
        if out and rng.random() < 0.5:
            z = list(rng.choice(out))
            for _ in range(rng.randint(1, 6)):
                z[rng.randrange(len(z))] = rng.randrange(vocab)
        else:
            z = [rng.randrange(vocab) for _ in range(rng.randint(min_len, max_len))]
        out.append(z)
    return out


def fill(buffer: ReplayBuffer, keys, items) -> None:
    for key, (z, score) in zip(keys, items):
        buffer.add(key, z, [0.0] * len(z) + [score])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--latents", type=int, default=1024)
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--capacity", type=int, default=50)
    p.add_argument("--tolerance", type=float, default=0.25)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args(argv)
    rng = random.Random(0)
    keys = [f"p{i % a.prompts}" for i in range(a.latents)]
    prefill_keys = [f"p{i % a.prompts}" for i in range(a.prompts * a.capacity)]
    prefill = [(z, -rng.random() * 50) for z in latents(len(prefill_keys), rng)]
    batch = [(z, -rng.random() * 50) for z in latents(a.latents, rng)]

    shipped = replay._edit_distance
    times = {"shipped": [], "python": []}
    buffers = {}
    for _ in range(a.rounds):
        for name, fn in (("python", python_edit_distance), ("shipped", shipped)):
            replay._edit_distance = fn
            buf = ReplayBuffer(a.capacity, sim_tolerance=a.tolerance)
            fill(buf, prefill_keys, prefill)
            t = time.perf_counter()
            fill(buf, keys, batch)
            times[name].append(time.perf_counter() - t)
            buffers[name] = buf.state_dict()
    replay._edit_distance = shipped
    assert buffers["shipped"] == buffers["python"], "the shipped distance changed which latents the buffer keeps"
    py, sh = statistics.median(times["python"]), statistics.median(times["shipped"])
    print(f"{a.latents} latents into {a.prompts} buckets of {a.capacity} (tolerance {a.tolerance}), "
          f"median of {a.rounds} rounds:")
    print(f"  pure-Python edit distance: {py:.3f} s")
    print(f"  shipped ({shipped.__module__}.{shipped.__name__}): {sh:.3f} s")
    print(f"  speed-up: {py / sh:.1f}x; identical buffers: yes")


if __name__ == "__main__":
    main()

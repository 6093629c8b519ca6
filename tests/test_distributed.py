"""Two processes (accelerate launch, gloo on CPU) train exactly like one process with the same global batch.

Rollout randomness is counter-based (a function of seed, step, prompt and sample index), so both runs draw the same
latents. With TB, whose loss is a mean over trajectories, the two-process gradient (DDP's mean of per-rank means over
equal shares) equals the one-process one up to float32 rounding: we require equal latent lengths, rewards to 1e-5 and
losses and LoRA weights to 1e-4 (relative, or absolute below 1). Why not tighter: Adam divides each gradient element
by its own magnitude, so where a gradient is at rounding level a rounding difference (two per-rank means against one
mean) flips a full step of size lr; on the width-320 model that leaves the losses up to 2.5e-5 and the weights up to
1.1e-5 apart after 6 steps (measured), while a wrong latent, reward or gradient average moves them by far more.
(SubTB normalises by the number of windows per process, which differs between ranks, so there the runs agree on
latents and rewards but the loss differs by a few percent: see the README.)

The model (tests/scripts/ddp_train.py) is a GPT-2 of width 320, wide enough that DeepSpeed ZeRO-3 really partitions
its attention and MLP weights (asserted below from the parameters' shards), and the data make the ranks' rollouts
differ in shape: suffixes of 1 and 2 tokens, the reward scored two rows at a time, and in the `empty` run one rank
whose latents are all empty. Under ZeRO-3 every forward of partitioned weights is a collective, so before the rollout
held its weights gathered, ranks with unequal numbers of forwards aborted (gloo: "Is there a distributed collective
mismatch in your code?"; NCCL would hang).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gfn_trl.testing import accelerate_launch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "scripts" / "ddp_train.py"
CONFIGS = ROOT / "accelerate_configs"
DDP, ZERO2, ZERO3 = CONFIGS / "cpu_2proc.yaml", CONFIGS / "cpu_2proc_zero2.yaml", CONFIGS / "cpu_2proc_zero3.yaml"
# The GPT-2 weights of width 320 that ZeRO-3 must partition (DeepSpeed keeps parameters under 1e5 elements whole):
# per block, the attention's qkv (320 x 960) and output (320 x 320) and the MLP's two (320 x 1280) matrices, all
# inside LoRA layers (`base_layer`).
BIG = ("attn.c_attn.base_layer.weight", "attn.c_proj.base_layer.weight", "mlp.c_fc.base_layer.weight",
       "mlp.c_proj.base_layer.weight")


def _launch(out, per_device, loss, *extra, processes=2, config=DDP):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    if "zero" in Path(config).name:  # DeepSpeed on CPU
        env.update(DS_ACCELERATOR="cpu", GFN_TEST_DEEPSPEED="1")
    if processes == 1:
        cmd = [sys.executable, str(SCRIPT), str(out), str(per_device), loss, *extra]
    else:
        cmd = accelerate_launch(config, str(SCRIPT), str(out), str(per_device), loss, *extra)
    # a run takes ~1 min on 2 busy cores; a deadlocked one (ranks waiting on different collectives) fails after 5
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    tag = "_resume" if "resume" in extra else ""
    result = json.loads((Path(out) / f"result{tag}.json").read_text())
    result["rollouts"] = [json.loads((Path(out) / f"forwards{tag}_rank{r}.json").read_text())
                          for r in range(result["world_size"])]
    return result


def _close(a, b, tol=1e-5):
    assert len(a) == len(b), (a, b)
    return all(abs(x - y) <= tol * max(1.0, abs(x)) for x, y in zip(a, b))


def _matches_one_process(one, two, tol=1e-4):
    assert one["world_size"] == 1 and two["world_size"] == 2
    assert len(one["losses"]) == len(two["losses"]) == 6
    assert _close(one["log_reward"], two["log_reward"])  # the same latents were drawn and got the same rewards
    assert one["completion_length"] == two["completion_length"]
    # the replay buffer is shared across ranks: same size as one process's, and replay steps happen on both
    assert one["replay"] == two["replay"] and 1.0 in one["replay"]
    assert one["buffer_size"] == two["buffer_size"]
    assert _close(one["losses"], two["losses"], tol), (one["losses"], two["losses"])
    assert one["weights"].keys() == two["weights"].keys() and one["weights"]
    for k in one["weights"]:
        assert len(one["weights"][k]) == len(two["weights"][k]) > 0  # gathered, not an empty shard
        assert _same_tensor(one["weights"][k], two["weights"][k], 10 * tol), k


def _same_tensor(a, b, tol):
    """Two runs' copies of one weight agree as a tensor: ||a - b|| <= tol * ||a||.  Not element by element: Adam
    normalises each element's step, so an element whose gradient is ~0 in both runs steps by the sign of the float
    noise between one all-reduced and one local gradient (seen: 1.2e-4 on one element of 768 after 6 steps, with the
    tensor's relative difference 7.5e-5).  A real divergence (other latents, a missed gradient) moves whole tensors by
    ~lr per step, 1e-2 here."""
    assert len(a) == len(b), (len(a), len(b))
    diff = sum((x - y) ** 2 for x, y in zip(a, b)) ** 0.5
    return diff <= tol * max(sum(x * x for x in a) ** 0.5, 1e-12)


def _resumes(two, resumed):
    assert _close(resumed["losses"][3:], two["losses"][3:])
    assert _close(resumed["log_reward"][3:], two["log_reward"][3:])
    for k in two["weights"]:
        assert _close(resumed["weights"][k], two["weights"][k]), k


def _paired(run):
    """Per rollout (both ranks sample and score together, replay steps apart): (rank 0's record, rank 1's)."""
    r0, r1 = run["rollouts"]
    assert [o["step"] for o in r0] == [o["step"] for o in r1] and r0
    return list(zip(r0, r1))


def _assert_partitioned(run):
    """Every big weight was split across the two ranks when the rollout started: each rank holds its half (DeepSpeed
    pads the shard to a multiple of the world size), nothing gathered, and DeepSpeed does not keep it whole."""
    assert run["persistence_threshold"] == 10**5  # DeepSpeed's default: parameters below it are kept whole
    shards = run["shards"]
    big = {n: s for n, s in shards.items() if n.endswith(BIG)}
    assert len(big) == 2 * len(BIG), sorted(shards)  # two blocks
    for name, (local, full, held, whole) in big.items():
        assert full > 10**5 and local < full and 2 * local - full in (0, 1), (name, local, full)
        assert held == 0 and not whole, name  # the parameter's own tensor is empty until a forward gathers it
    assert all(whole for n, (_, full, _, whole) in shards.items() if n not in big and full <= 10**5)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("ddp")
    one = _launch(base / "one", 2, "tb", processes=1)
    two = _launch(base / "two", 1, "tb")
    resumed = _launch(base / "two", 1, "tb", "resume")
    return base, one, two, resumed


def test_two_processes_match_one_process_with_the_same_global_batch(runs):
    _, one, two, _ = runs
    assert not two["sharded"]
    _matches_one_process(one, two)


def test_two_process_checkpoints_resume(runs):
    base, _, two, resumed = runs
    ckpt = base / "two" / "checkpoint-3"
    assert (ckpt / "gfn_state_rank0.pt").exists() and (ckpt / "gfn_state_rank1.pt").exists()
    _resumes(two, resumed)


# Sharded parameters: DeepSpeed ZeRO-3 (on DeepSpeed's CPU accelerator) splits the big weights across the ranks, and
# the default reward is the policy with its LoRA adapter disabled. Two sharded processes must still reproduce the
# one-process run, and resume from their own checkpoints. (FSDP2 cannot be tested this way: Accelerate enables FSDP
# only on accelerators, never for multi-process CPU runs.)
@pytest.fixture(scope="module")
def zero3_runs(runs):
    base, one, _, _ = runs
    two = _launch(base / "zero3", 1, "tb", config=ZERO3)
    resumed = _launch(base / "zero3", 1, "tb", "resume", config=ZERO3)
    return base, one, two, resumed


def test_zero3_partitions_the_weights(zero3_runs):
    _, one, two, _ = zero3_runs
    assert two["sharded"] and not one["sharded"] and not one["shards"]
    _assert_partitioned(two)


def test_zero3_ranks_with_unequal_suffixes_match_one_process(zero3_runs):
    """The ranks' reward passes differ in number (a 1-token suffix needs no copies pass, a 2-token one does), yet
    training runs and reproduces the one-process run."""
    base, one, two, _ = zero3_runs
    unequal = [(a, b) for a, b in _paired(two) if set(a["suffix_lengths"]) != set(b["suffix_lengths"])]
    assert unequal, "no rollout had different suffix lengths on the two ranks"
    assert any(a["reward_forwards"] != b["reward_forwards"] for a, b in unequal)
    assert (base / "zero3" / "checkpoint-3" / "global_step3").is_dir()  # a DeepSpeed checkpoint, sharded states
    _matches_one_process(one, two)


def test_zero3_checkpoints_resume(zero3_runs):
    _, _, two, resumed = zero3_runs
    _assert_partitioned(resumed)
    _resumes(two, resumed)


def test_deepspeed_zero2_matches_one_process(runs):
    base, one, _, _ = runs
    two = _launch(base / "zero2", 1, "tb", config=ZERO2)
    assert not two["shards"]  # ZeRO-2 partitions gradients and optimizer states, never the weights
    _matches_one_process(one, two)


# One rank samples only empty latents (ddp_train.py's `empty` run: its prompt makes the stop certain at s_0), the other
# samples latents of up to 4 tokens: the ranks differ in the latent pass of the reward (none for empty latents), in
# reward chunks (identical rows are scored once: 1 distinct row against 3, two to a chunk) and in the suffix (2 tokens
# against 1). (Their decoding steps would differ too, but the sampler itself keeps sharded ranks stepping together.)
# The empty rank still runs its teacher-forced forward and backward (prompt only), as ZeRO-3's gradients need.
@pytest.fixture(scope="module")
def empty_runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("empty")
    one = _launch(base / "one", 2, "tb", "empty", processes=1)
    two = _launch(base / "zero3", 1, "tb", "empty", config=ZERO3)
    resumed = _launch(base / "zero3", 1, "tb", "empty", "resume", config=ZERO3)
    return one, two, resumed


def _one_rank_empty(a, b):
    """One rank's latents are all empty, the other's are not."""
    longest = sorted([max(a["lengths"]), max(b["lengths"])])
    return longest[0] == 0 < longest[1]


def _chunks(record, chunk_size=2):
    return -(-record["distinct_rows"] // chunk_size)


def test_zero3_with_a_rank_of_empty_latents_matches_one_process(empty_runs):
    one, two, _ = empty_runs
    _assert_partitioned(two)
    pairs = _paired(two)
    empty_vs_not = [(a, b) for a, b in pairs if _one_rank_empty(a, b)]
    assert empty_vs_not, pairs
    for a, b in empty_vs_not:  # without gathered weights each of these would have been a collective mismatch
        assert a["reward_forwards"] != b["reward_forwards"]
    assert any(_chunks(a) != _chunks(b) for a, b in pairs)
    _matches_one_process(one, two)


def test_zero3_with_a_rank_of_empty_latents_resumes(empty_runs):
    _, two, resumed = empty_runs
    # the resumed steps (4 to 6) still have a rank of empty latents beside one of non-empty latents
    assert any(_one_rank_empty(a, b) for a, b in _paired(resumed))
    _resumes(two, resumed)

import json
import math
import random

import pytest

from gfn_trl.replay import ReplayBuffer


def test_keeps_the_highest_reward_distinct_latents_per_prompt():
    buf = ReplayBuffer(capacity=3)
    for i, score in enumerate([-5.0, -1.0, -3.0, -4.0, -2.0]):
        assert buf.add("p", [i], [0.0, score])
    assert sorted(e.score for e in buf.entries("p")) == [-3.0, -2.0, -1.0]
    assert not buf.add("p", [1], [0.0, -1.0])  # exact duplicate
    assert len(buf) == 3 and "q" not in buf
    buf.add("q", [7, 8], [0.0, -0.5, -0.7])
    assert len(buf.entries("q")) == 1 and len(buf) == 4


def test_rejects_non_finite_rewards_and_bad_shapes():
    buf = ReplayBuffer(capacity=2)
    assert not buf.add("p", [1], [0.0, -math.inf])
    with pytest.raises(ValueError, match="one value per prefix"):
        buf.add("p", [1, 2], [0.0, -1.0])


def test_edit_distance_tolerance_keeps_the_better_duplicate():
    buf = ReplayBuffer(capacity=5, sim_tolerance=0.25)
    buf.add("p", [1, 2, 3, 4], [0, 0, 0, 0, -3.0])
    assert buf.add("p", [1, 2, 3, 5], [0, 0, 0, 0, -1.0])  # distance 1 <= 0.25 * 8: replaces the worse one
    assert [e.tokens for e in buf.entries("p")] == [(1, 2, 3, 5)]
    assert buf.add("p", [9, 9, 9, 9], [0, 0, 0, 0, -2.0])  # far: kept as a new entry
    assert len(buf) == 2


def test_prioritised_sampling_follows_the_reward():
    buf = ReplayBuffer(capacity=10, prioritized=True)
    buf.add("p", [1], [0.0, math.log(0.75)])
    buf.add("p", [2], [0.0, math.log(0.25)])
    draws = buf.sample("p", 20000, random.Random(0))
    frac = sum(e.tokens == (1,) for e in draws) / len(draws)
    assert abs(frac - 0.75) < 0.02
    uniform = ReplayBuffer(capacity=10, prioritized=False)
    for e in buf.entries("p"):
        uniform.add("p", e.tokens, e.log_rewards)
    frac = sum(e.tokens == (1,) for e in uniform.sample("p", 20000, random.Random(0))) / 20000
    assert abs(frac - 0.5) < 0.02
    assert buf.sample("missing", 4, random.Random(0)) == []


def test_state_dict_round_trip_is_json_serialisable():
    buf = ReplayBuffer(capacity=4, prioritized=False, sim_tolerance=0.1)
    buf.add("a\x1fb", [3, 4], [0.0, -1.0, -2.0])
    state = json.loads(json.dumps(buf.state_dict()))
    other = ReplayBuffer()
    other.load_state_dict(state)
    assert other.entries("a\x1fb") == buf.entries("a\x1fb")
    assert (other.capacity, other.prioritized, other.sim_tolerance) == (4, False, 0.1)



def test_edit_distance_equals_the_textbook_dynamic_programme():
    # the buffer's distance (rapidfuzz) on token ids, including ids beyond any character range and empty latents
    import random

    from benchmarks.replay_insert import python_edit_distance
    from gfn_trl.replay import _edit_distance

    rng = random.Random(0)
    for _ in range(500):
        a = tuple(rng.choice([0, 1, 2, 70000, 150000]) for _ in range(rng.randint(0, 12)))
        b = tuple(rng.choice([0, 1, 2, 70000, 150000]) for _ in range(rng.randint(0, 12)))
        assert _edit_distance(a, b) == python_edit_distance(a, b), (a, b)


def test_counters_of_offered_inserted_and_duplicate_latents():
    buf = ReplayBuffer(capacity=2, sim_tolerance=0.25)
    assert buf.fill() == 0.0
    buf.add("p", [1, 2, 3, 4], [0, 0, 0, 0, -3.0])  # new
    buf.add("p", [1, 2, 3, 5], [0, 0, 0, 0, -1.0])  # a duplicate within the tolerance, better: replaces
    buf.add("p", [1, 2, 3, 6], [0, 0, 0, 0, -9.0])  # a duplicate, worse: rejected
    buf.add("p", [9, 9, 9, 9], [0, 0, 0, 0, -2.0])  # new
    assert not buf.add("p", [7, 7, 7, 7], [0, 0, 0, 0, -5.0])  # new but the worst of a full bucket: never kept
    assert [e.tokens for e in buf.entries("p")] == [(1, 2, 3, 5), (9, 9, 9, 9)]
    buf.add("q", [4], [0.0, -math.inf])  # ruled out by the reward
    buf.add("q", [4], [0.0, -1.0])
    assert buf.stats == {"offered": 7, "inserted": 4, "duplicates": 2}
    assert buf.fill() == pytest.approx(3 / (2 * 2))  # 3 entries in 2 buckets of 2


def test_state_dict_keeps_the_counters_and_loads_a_state_saved_without_them():
    buf = ReplayBuffer(capacity=3)
    buf.add("p", [1], [0.0, -1.0])
    buf.add("p", [1], [0.0, -1.0])
    other = ReplayBuffer()
    other.load_state_dict(json.loads(json.dumps(buf.state_dict())))
    assert other.stats == buf.stats == {"offered": 2, "inserted": 1, "duplicates": 1}
    old = {k: v for k, v in buf.state_dict().items() if k != "stats"}  # a checkpoint written before the counters
    other.load_state_dict(old)
    assert other.entries("p") == buf.entries("p") and other.stats == {"offered": 0, "inserted": 0, "duplicates": 0}
    # a rebuild under new settings re-adds the saved entries without counting them as traffic
    buf.add("p", [2], [0.0, -2.0])
    before = dict(buf.stats)
    buf.reconfigure(1, True, 0.0)
    assert buf.stats == before and len(buf) == 1

"""benchmarks/arch_sweep.py in CI: 32 HF causal-LM architectures (tiny random configs) get per-prefix rewards and
policy log-probabilities equal to plain forward passes, and the packed reward path exactly where it is exact."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLAIN = {"bloom", "mpt", "gpt_neo", "mamba", "falcon_mamba"}  # ALiBi, a window by token order, recurrent state


def test_every_architecture_in_the_sweep_is_exact():
    spec = importlib.util.spec_from_file_location("arch_sweep", ROOT / "benchmarks" / "arch_sweep.py")
    sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)
    results = sweep.main([])
    assert set(results) == set(sweep.DEFAULT) and len(results) == 32  # every one built
    for model_type, r in results.items():
        assert r is not None, f"{model_type} failed"
        assert r["reward"] < 1e-4 and r["policy"] < 1e-4, (model_type, r)
        assert r["path"].startswith("plain") == (model_type in PLAIN), (model_type, r["path"])

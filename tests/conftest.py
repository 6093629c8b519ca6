import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

# Tiny models on a 2-core machine: one intra-op thread is faster (no waiting on a descheduled sibling thread) and
# leaves the other core to the second process of the distributed tests.
torch.set_num_threads(1)

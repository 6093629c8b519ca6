"""The paper's four tasks: data loading (real formats and the embedded offline data), templates, evaluation."""

from pathlib import Path

DATA_DIR = Path(__file__).parent / "data"

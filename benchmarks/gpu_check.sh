#!/usr/bin/env bash
# Runs on an offline H100/H200 lent through the device tool, from the repository root, with the wheels of
# ../shared/gpu/fetch-wheels.sh copied into .whl/ (carry .whl). About 5 minutes. Results: $OUT/gpu_check.jsonl
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
R=$PWD; (cd /tmp && tar xzf "$R"/.whl/deepspeed-*.tar.gz && cd deepspeed-*/ && DS_BUILD_OPS=0 \
  python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site .) || echo "deepspeed install failed"
nvidia-smi --query-gpu=name,memory.total --format=csv
python3 benchmarks/gpu_check.py --reward adapter --out "$OUT/gpu_check.jsonl" 2>&1 | grep -E "GPU_CHECK|Error|error" | tail -5
python3 benchmarks/gpu_check.py --reward 8bit --out "$OUT/gpu_check.jsonl" 2>&1 | grep -E "GPU_CHECK|Error|error" | tail -5
for z in 2 3; do
  timeout 240 python3 -m accelerate.commands.launch --config_file accelerate_configs/deepspeed_zero$z.yaml --num_processes 1 \
    benchmarks/gpu_check.py --reward adapter --steps 2 --out "$OUT/gpu_check.jsonl" 2>&1 | grep -E "GPU_CHECK|Error|error" | tail -5
done
python3 benchmarks/packed_reward.py --preset gptj6b --device cuda --dtype bfloat16 2>&1 | tail -15 | tee "$OUT/packed_reward_gpu.txt"

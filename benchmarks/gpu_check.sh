#!/usr/bin/env bash
# The GPU check of issue #5, for an offline H100/H200 lent through the device tool. From the repository root, after
# benchmarks/gpu_wheels.sh has filled .whl/ on a machine with PyPI access:
#
#     run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=600)
#
# About 6-8 minutes: a GPT-J-6B-shaped GFlowNet step (random weights, bf16, LoRA r=64, 64 latents of <= 25 tokens)
# with the adapter-disabled reward, the same with an 8-bit separate reward LM, DeepSpeed ZeRO-2 and ZeRO-3
# single-GPU launches of the adapter case, the packed reward against the naive loop at GPT-J shapes, and last an
# FSDP2 single-GPU launch (never run yet; it cannot be rehearsed on a CPU).
# Each step's full log is in $OUT/<step>.log; the results, one JSON line per step, in $OUT/gpu_check.jsonl.
#
# GPU_CHECK_DRY_RUN=1 rehearses every step on a CPU with a tiny GPT-J (DeepSpeed on its CPU accelerator, gloo,
# fp32); tests/test_gpu_check.py runs it that way. GPU_CHECK_WHEELS names the wheel directory (default .whl); where it
# does not exist the installed packages are used as they are.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check}; mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

if [ -n "${GPU_CHECK_DRY_RUN:-}" ]; then
  MODEL=(--preset tiny --device cpu --samples 8 --steps 2)
  LAUNCH=(--mixed_precision no)  # bf16 needs the GPU: transformers refuses it on a CPU unless use_cpu, which turns
                                 # DeepSpeed off; on the GPU the configs' bf16 and GFlowNetConfig's (unset: on) agree
  PACKED=(--preset tiny --batch 4 --repeats 1)
  export DS_ACCELERATOR=cpu
else
  MODEL=(--preset gptj6b --device cuda)
  LAUNCH=()
  PACKED=(--preset gptj6b --device cuda --dtype bfloat16 --repeats 2)
fi

WHEELS=$(realpath -m "${GPU_CHECK_WHEELS:-.whl}")
if [ -d "$WHEELS" ]; then  # the wheels the GPU machine lacks (benchmarks/gpu_wheels.sh), installed ahead of its own
  SITE=${SITE:-/tmp/site}
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl \
    > "$OUT/install.log" 2>&1 || { echo "wheel install failed:"; tail -20 "$OUT/install.log"; }
  (cd /tmp && rm -rf deepspeed-*/ && tar xzf "$WHEELS"/deepspeed-*.tar.gz && cd deepspeed-*/ && DS_BUILD_OPS=0 \
    "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --target "$SITE" .) >> "$OUT/install.log" 2>&1 \
    || { echo "deepspeed install failed:"; tail -20 "$OUT/install.log"; }
  export PYTHONPATH=$SITE:$PWD
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
"$PY" -c "import sys, torch, transformers, peft, accelerate, trl
print('python', sys.version.split()[0], '| torch', torch.__version__, 'cuda', torch.version.cuda, '| transformers',
      transformers.__version__, '| peft', peft.__version__, '| accelerate', accelerate.__version__, '| trl', trl.__version__)" \
  2>&1 | tail -3

FAILED=0
step() {  # step NAME TIMEOUT CMD...: full log to $OUT/NAME.log; the result line, or the log's tail on failure
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "== $name: rc $rc, $((SECONDS - t0)) s"
  grep -E "^GPU_CHECK " "$OUT/$name.log" | tail -1
  if [ $rc -ne 0 ]; then FAILED=1; grep -vE "^\s*$" "$OUT/$name.log" | tail -12; fi
}

J=$OUT/gpu_check.jsonl
step adapter 200 "$PY" benchmarks/gpu_check.py "${MODEL[@]}" --reward adapter --out "$J"
step reward_8bit 200 "$PY" benchmarks/gpu_check.py "${MODEL[@]}" --reward 8bit --out "$J"
for z in 2 3; do
  step "zero$z" 240 "$PY" -m accelerate.commands.launch --config_file "accelerate_configs/deepspeed_zero$z.yaml" \
    --num_processes 1 "${LAUNCH[@]}" benchmarks/gpu_check.py "${MODEL[@]}" --reward adapter --steps 2 --out "$J"
done
step packed_reward 200 "$PY" benchmarks/packed_reward.py "${PACKED[@]}"
grep -E "speed-up|packed|naive|device" "$OUT/packed_reward.log" | tail -8
if [ -z "${GPU_CHECK_DRY_RUN:-}" ]; then  # last, as it has never run: Accelerate enables FSDP only on an accelerator
  step fsdp2 200 "$PY" -m accelerate.commands.launch --config_file accelerate_configs/fsdp2.yaml --num_processes 1 \
    benchmarks/gpu_check.py "${MODEL[@]}" --reward adapter --steps 2 --out "$J"
fi
exit $FAILED

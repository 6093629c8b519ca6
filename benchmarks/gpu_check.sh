#!/usr/bin/env bash
# The GPU check of issue #5, for an offline H100/H200 lent through the device tool. From the repository root, after
# benchmarks/gpu_wheels.sh has filled .whl/ on a machine with PyPI access:
#
#     run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=540)
#
# Steps, in order (GPU_CHECK_STEPS="..." runs a subset, e.g. a rerun of the failed ones):
#   adapter        a GPT-J-6B-shaped GFlowNet step (random weights, bf16, LoRA r=64, 64 latents of <= 25 tokens)
#                  with the adapter-disabled reward
#   reward_8bit    the same with a separate 8-bit reward LM
#   zero2, zero3   DeepSpeed ZeRO-2 / ZeRO-3 single-GPU launches of the adapter case
#   packed_reward  the packed reward against the naive loop at GPT-J shapes
#   fsdp2          an FSDP2 single-GPU launch: last, as a CPU cannot rehearse it
# The whole run keeps within GPU_CHECK_BUDGET seconds (default 500, install included): each step's time limit is
# cut to what is left, and a step with under 30 s left is skipped. $OUT gets three files (the device tool returns at
# most 8): install.log, steps.log (every step's full output) and gpu_check.jsonl (one result line per GFlowNet step).
#
# GPU_CHECK_DRY_RUN=1 rehearses every step but fsdp2 on a CPU with a tiny GPT-J (DeepSpeed on its CPU accelerator,
# gloo, fp32); tests/test_gpu_check.py runs it that way. GPU_CHECK_WHEELS names the wheel directory (default .whl);
# where it does not exist the installed packages are used as they are.
set -uo pipefail
cd "$(dirname "$0")/.."
START=$SECONDS
BUDGET=${GPU_CHECK_BUDGET:-500}
OUT=${OUT:-/tmp/gpu_check}; mkdir -p "$OUT"
PY=$(command -v "${PYTHON:-python3}")
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
FAILED=0

if [ -n "${GPU_CHECK_DRY_RUN:-}" ]; then
  MODEL=(--preset tiny --device cpu --samples 8 --steps 2)
  LAUNCH=(--mixed_precision no)  # bf16 needs the GPU: transformers refuses it on a CPU unless use_cpu, which turns
                                 # DeepSpeed off; on the GPU the configs' bf16 and GFlowNetConfig's (unset: on) agree
  PACKED=(--preset tiny --batch 4 --repeats 1)
  STEPS=${GPU_CHECK_STEPS:-adapter reward_8bit zero2 zero3 packed_reward}
  export DS_ACCELERATOR=cpu
else
  MODEL=(--preset gptj6b --device cuda)
  LAUNCH=()
  PACKED=(--preset gptj6b --device cuda --dtype bfloat16 --repeats 2)
  STEPS=${GPU_CHECK_STEPS:-adapter reward_8bit zero2 zero3 packed_reward fsdp2}
fi

WHEELS=$(realpath -m "${GPU_CHECK_WHEELS:-.whl}")
if [ -d "$WHEELS" ]; then  # the wheels the GPU machine lacks (benchmarks/gpu_wheels.sh), installed ahead of its own
  SITE=${SITE:-/tmp/site}
  timeout 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    "$WHEELS"/*.whl > "$OUT/install.log" 2>&1 || { FAILED=1; echo "wheel install failed:"; tail -20 "$OUT/install.log"; }
  (cd /tmp && rm -rf deepspeed-*/ && tar xzf "$WHEELS"/deepspeed-*.tar.gz && cd deepspeed-*/ && DS_BUILD_OPS=0 \
    timeout 120 "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --upgrade --target "$SITE" .) \
    >> "$OUT/install.log" 2>&1 || { FAILED=1; echo "deepspeed install failed:"; tail -20 "$OUT/install.log"; }
  export PYTHONPATH=$SITE:$PWD
  echo "install: $((SECONDS - START)) s"
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
"$PY" -c "import sys, torch, transformers, peft, accelerate, trl
print('python', sys.version.split()[0], '| torch', torch.__version__, 'cuda', torch.version.cuda, '| transformers',
      transformers.__version__, '| peft', peft.__version__, '| accelerate', accelerate.__version__, '| trl', trl.__version__)" \
  2>&1 | tail -3

step() {  # [SHOW=regex] step NAME LIMIT CMD...: output appended to $OUT/steps.log; prints the lines matching SHOW
          # (default: the GPU_CHECK result line), and the output's tail on failure
  local name=$1 limit=$2; shift 2
  case " $STEPS " in *" $name "*) ;; *) return ;; esac
  local left=$((BUDGET - (SECONDS - START)))
  if [ "$left" -lt 30 ]; then echo "== $name: skipped, ${left} s of the budget left"; FAILED=1; return; fi
  [ "$left" -lt "$limit" ] && limit=$left
  local log=/tmp/gpu_check_step.log t0=$SECONDS
  timeout "$limit" "$@" > "$log" 2>&1
  local rc=$?
  echo "== $name: rc $rc, $((SECONDS - t0)) s (limit $limit s)"
  { echo "===== $name: rc $rc, $((SECONDS - t0)) s"; cat "$log"; } >> "$OUT/steps.log"
  grep -E "${SHOW:-^GPU_CHECK }" "$log" | tail -8
  if [ $rc -ne 0 ]; then FAILED=1; grep -vE "^\s*$" "$log" | tail -12; fi
}

J=$OUT/gpu_check.jsonl
step adapter 200 "$PY" benchmarks/gpu_check.py "${MODEL[@]}" --reward adapter --out "$J"
step reward_8bit 200 "$PY" benchmarks/gpu_check.py "${MODEL[@]}" --reward 8bit --steps 2 --out "$J"
for z in 2 3; do
  step "zero$z" 200 "$PY" -m accelerate.commands.launch --config_file "accelerate_configs/deepspeed_zero$z.yaml" \
    --num_processes 1 "${LAUNCH[@]}" benchmarks/gpu_check.py "${MODEL[@]}" --reward adapter --steps 2 --out "$J"
done
SHOW="speed-up|packed|naive|device" step packed_reward 150 "$PY" benchmarks/packed_reward.py "${PACKED[@]}"
step fsdp2 200 "$PY" -m accelerate.commands.launch --config_file accelerate_configs/fsdp2.yaml --num_processes 1 \
  benchmarks/gpu_check.py "${MODEL[@]}" --reward adapter --steps 2 --out "$J"
echo "total: $((SECONDS - START)) s"
exit $FAILED

#!/usr/bin/env bash
# Fetch, on a machine with PyPI access, what the offline GPU machines lack, into ./.whl (git-ignored), for
# benchmarks/gpu_check.sh. Those machines have Python 3.12, torch 2.11 (CUDA 13), transformers 5.17, peft 0.21 and
# accelerate 1.15; gfn_trl needs transformers >= 5.19 (TrainingArguments.activation_checkpointing) and trl, datasets,
# bitsandbytes and deepspeed, which they do not have.
#
# The device tool carries at most 64 MiB, and the bitsandbytes wheel alone is 43 MB, almost all of it CUDA 11/12 and
# ROCm kernels. We keep its CPU and CUDA 13 libraries only (the wheel is rebuilt without the others and their RECORD
# lines); the result is about 27 MB in all. (Those machines have huggingface_hub 1.33, tokenizers 0.23 and
# safetensors 0.8, which transformers 5.24 accepts.)
#
#   benchmarks/gpu_wheels.sh            # then: run(command="bash benchmarks/gpu_check.sh", carry=[".whl"])
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
rm -rf .whl && mkdir -p .whl
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${plat[@]}" -d .whl \
  trl==1.16.0 datasets==5.2.0 bitsandbytes==0.50.2 dill==0.4.0 multiprocess==0.70.18 hjson \
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types typing-inspection \
  transformers==5.24.0
"$PY" -m pip download -q --no-deps --no-binary=:all: -d .whl deepspeed==0.19.8

"$PY" - <<'EOF'
import glob, os, zipfile

[src] = glob.glob(".whl/bitsandbytes-*.whl")
dropped = lambda name: "/libbitsandbytes_" in name and not any(k in name for k in ("_cpu", "_cuda13"))
tmp = src + ".tmp"
with zipfile.ZipFile(src) as zin, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zout:
    for item in zin.infolist():
        if dropped(item.filename):
            continue
        data = zin.read(item.filename)
        if item.filename.endswith(".dist-info/RECORD"):
            data = "".join(l for l in data.decode().splitlines(True) if not dropped(l.split(",")[0])).encode()
        zout.writestr(item, data)
os.replace(tmp, src)
EOF
ls -la .whl && du -sh .whl

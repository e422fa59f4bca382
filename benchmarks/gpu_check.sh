#!/usr/bin/env bash
# The real-architecture check on a CUDA machine without network (the `device` tool's GPU machine,
# or any offline box): reference settings (batch 2 x 4, 512 tokens, paged_adamw_8bit, bf16), 8-bit and
# 4-bit, tokens/s, samples/s, peak GPU memory, MFU. Needs ../shared/tokenizers/qwen2 copied into the
# repo as shared/ (it does not travel otherwise).
#
#   benchmarks/gpu_check.sh download   # here, with network: wheels the GPU image lacks -> .whl/
#   benchmarks/gpu_check.sh run        # there: install .whl/ offline, run the check
set -euo pipefail
cd "$(dirname "$0")/.."
# What the GPU image lacks (it has torch, transformers, peft, accelerate, pandas, pyarrow, safetensors),
# at requirements.txt's pins.
LACKS="trl bitsandbytes dvclive datasets sacrebleu"
SDIST_ONLY="rouge_score"  # no wheel on PyPI: built here (pure Python, so one wheel fits any CPython 3)
case "${1:-}" in
  download)
    MISSING=""
    for name in $LACKS; do
      pin=$(grep -iE "^${name}==" requirements.txt) || { echo "$0: $name is not pinned in requirements.txt" >&2; exit 1; }
      MISSING="$MISSING ${pin%%[ #]*}"
    done
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 --platform any -d .whl $MISSING
    for name in $SDIST_ONLY; do
      python3 -m pip wheel -q --no-deps -w .whl "$(grep -iE "^${name}==" requirements.txt | cut -d' ' -f1)"
    done
    # --no-deps: what these need in turn is not fetched; check each against the image's `pip list`.
    for wheel in .whl/*.whl; do echo "$wheel:"; unzip -p "$wheel" '*/METADATA' | grep '^Requires-Dist' | grep -v extra; done ;;
  run)
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PWD" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PIPELINE_SKIP_ENV_CHECK=1
    nvidia-smi --query-gpu=name,memory.total --format=csv
    python3 -m benchmarks.check_real --gpu --bf16-peak-tflops "${BF16_PEAK_TFLOPS:-989}" ;;
  *) echo "usage: $0 download|run" >&2; exit 2 ;;
esac

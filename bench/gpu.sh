#!/usr/bin/env bash
# tunesmith vs TRL SFTTrainer (with and without Liger kernels) on a GPU, in one short run.
#
# On a lent GPU machine (device tool), after `bash bench/gpu_prepare.sh` here:
#   run(command="bash bench/gpu.sh", carry=[".whl", ".gpudata"], timeout_s=540)
# It installs the carried wheels into /tmp/site (nothing from a registry), builds
# SmolLM2-360M-shaped weights (seed 0; bench/gpu_init_model.py says why they are not the
# pretrained ones), then runs bench/sft_lora.py for LoRA and for full fine-tuning: tokens/s,
# peak device memory, held-out loss, MFU against the bf16 matmul peak measured on the spot,
# and the ratios. Results land in $OUT (the device tool brings them back).
# On a CPU, to check the script itself (tiny shape, 3 steps, this checkout's .venv):
#   bash bench/gpu.sh --cpu
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$(mktemp -d)}
if [[ "${1:-}" == "--cpu" ]]; then
  PY=.venv/bin/python SHAPE=tiny STEPS=3 BATCH=4 MAXLEN=256 HELDOUT=4
else
  PY=python3 SHAPE=${SHAPE:-smollm2-360m} STEPS=${STEPS:-40} BATCH=${BATCH:-16}
  MAXLEN=${MAXLEN:-1024} HELDOUT=${HELDOUT:-64}
  [[ -d .whl && -d .gpudata ]] || { echo "Error: .whl/ or .gpudata/ missing. Fix: run" \
    "'bash bench/gpu_prepare.sh' here and pass carry=[\".whl\", \".gpudata\"]" >&2; exit 2; }
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
fi
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
"$PY" - <<'PYEOF' | tee "$OUT/versions.txt"
import importlib.metadata as m, torch
print("torch", torch.__version__, "cuda", torch.cuda.is_available())
for name in ("transformers", "peft", "accelerate", "trl", "liger-kernel", "datasets",
             "pyarrow"):
    try:
        print(name, m.version(name))
    except m.PackageNotFoundError:
        print(name, "missing")
PYEOF
MODEL=/tmp/tunesmith-gpu-bench-$SHAPE
"$PY" bench/gpu_init_model.py --shape "$SHAPE" --tokenizer .gpudata/tokenizer --out "$MODEL"
VARIANTS=defaults,liger
"$PY" -c "import liger_kernel" 2>/dev/null || VARIANTS=defaults
COMMON=(--model-dir "$MODEL" --data .gpudata/dolly.jsonl --steps "$STEPS" --batch "$BATCH"
        --max-length "$MAXLEN" --heldout "$HELDOUT" --trl-variants "$VARIANTS")
for method in lora full; do
  echo "== $method"
  "$PY" bench/sft_lora.py --method "$method" "${COMMON[@]}" --json "$OUT/$method.json" \
    2>&1 | tee "$OUT/$method.log"
done
rm -rf "$MODEL"
echo "results in $OUT"

#!/usr/bin/env bash
# Prepare what bench/gpu.sh needs on a lent GPU machine, which reaches no registry or hub:
#   .whl/      wheels for Python 3.12 (the GPU image's) of the packages its image lacks:
#              TRL and Liger kernels (the peers), and tunesmith's own dependencies not there
#   .gpudata/  the SmolLM2 tokenizer (from the embedded model) and Dolly open_qa rows
# Both are git-ignored and travel with the device tool's `carry: [".whl", ".gpudata"]`
# (64 MiB per call in all: this prepares about 25 MiB). Run here, after `make setup`:
#   bash bench/gpu_prepare.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
rm -rf .whl .gpudata
mkdir -p .whl .gpudata/tokenizer
# versions: those the CPU suite runs with (pyproject.toml's ranges, .venv's pins), for what the
# GPU image (torch 2.11, transformers 5.17, peft, accelerate, pyarrow, pandas, ... already
# there: see the device tool's KINDS.md) does not hold
WHEELS=(trl==1.16.0 liger-kernel datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
        pydantic==2.14.4 pydantic-core==2.50.5 annotated-types typing-inspection
        gguf==0.19.0 datasketch==2.0.0 ftfy==6.3.1 wcwidth==0.9.4 bm25s==0.3.16 nltk==3.10.4)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
  -d .whl "${WHEELS[@]}"
# rouge-score is published as a source archive only: build its (pure-Python) wheel here
"$PY" -m pip wheel -q --no-deps -w .whl rouge-score==0.1.2
# the embedded SmolLM2's tokenizer files (the model itself is 98 MiB: it cannot travel, so
# bench/gpu_init_model.py builds SmolLM2-shaped weights on the GPU machine)
MODEL=$("$PY" -c "from tunesmith.models.registry import pull; print(pull('smollm2-135m-instruct'))")
for f in tokenizer.json tokenizer_config.json chat_template.jinja generation_config.json; do
  cp "$MODEL/$f" .gpudata/tokenizer/
done
# Dolly open_qa rows: training rows and held-out rows for the loss
head -n 4000 ../shared/data/dolly_open_qa/train.jsonl > .gpudata/dolly.jsonl
du -sh .whl .gpudata

#!/usr/bin/env bash
# Model benchmark on one CUDA GPU, about five minutes in all: every length, fp32 and bf16 autocast,
# ReforBERT lsh/full with reversible layers on and off, and the BERT / reformer-pytorch / Hugging Face
# Reformer peers. Nothing is downloaded. Results go to $OUT/model_throughput/ (JSON, Markdown, PNG).
#
#   OUT=/some/folder bash benchmarks/gpu_check.sh
#
# Lengths run longest first: if the time budget ends the run early, the configurations left over
# (recorded as "not run") are the short ones, which the CPU results already cover.
set -uo pipefail
cd "$(dirname "$0")/.."

OUT="${OUT:-benchmarks/results/gpu}"
PYTHON="$(command -v python || command -v python3)"

"$PYTHON" -c 'import torch,transformers; print(torch.__version__, torch.cuda.is_available())'
"$PYTHON" -m pip list 2>/dev/null | grep -i -E '^(torch|transformers|reformer-pytorch) '
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null

# Install the package only when its dependencies are already there; without build isolation pip
# needs no download. The src/ path keeps it importable even if the install is refused.
if "$PYTHON" -c 'import transformers, safetensors, tokenizers, tqdm, matplotlib' 2>/dev/null; then
    "$PYTHON" -m pip install --quiet --no-deps --no-build-isolation -e . || echo "pip install -e . failed; using src/ on PYTHONPATH"
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
"$PYTHON" -c 'import reformer_pytorch' 2>/dev/null || echo "reformer-pytorch is not installed: its rows will read 'error: ... ModuleNotFoundError'"

mkdir -p "$OUT"
# 240 s for starting configurations, at most 40 s each: the run ends within about 290 s.
timeout 295 "$PYTHON" benchmarks/model_throughput.py \
    --device cuda \
    --lengths 65536,16384,8192,2048,512 \
    --dtypes fp32,bf16 \
    --backends lsh,full \
    --reversible on,off \
    --peers bert,reformer-pytorch,hf-reformer \
    --warmup 2 --steps 3 \
    --timeout 40 --total-budget 240 \
    --output-dir "$OUT/model_throughput" --overwrite
status=$?
cat "$OUT/model_throughput/model_throughput.md" 2>/dev/null
exit $status

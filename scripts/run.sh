#!/usr/bin/env bash
# run.sh [--leg floor|latest] [--port N]
# Starts the ComfyUI that setup.sh prepared, on 127.0.0.1, with --cpu when torch sees no CUDA device.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LEG=floor PORT=8188
while [ $# -gt 0 ]; do
  case "$1" in
    --leg) LEG="$2"; shift 2 ;;
    --port) PORT="$2"; shift 2 ;;
    *) echo "run.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
case "$LEG" in
  floor)  PY="$ROOT/.venv/bin/python";        COMFY="${COMFYUI_PATH:-$ROOT/.comfyui}" ;;
  latest) PY="$ROOT/.venv-latest/bin/python"; COMFY="${COMFYUI_PATH:-$ROOT/.comfyui-latest}" ;;
  *) echo "run.sh: --leg is floor or latest, not '$LEG'" >&2; exit 2 ;;
esac
flags=()
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || flags+=(--cpu)
echo "Selective Control: ComfyUI at http://127.0.0.1:$PORT (Ctrl+C stops it)"
cd "$COMFY"
exec "$PY" main.py --listen 127.0.0.1 --port "$PORT" --disable-auto-launch "${flags[@]}"

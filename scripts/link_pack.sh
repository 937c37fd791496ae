#!/usr/bin/env bash
# link_pack.sh PACK_DIR CUSTOM_NODES_DIR NAME
# Makes the pack visible in ComfyUI's custom_nodes as NAME, the way a clone there would be.
# It never deletes or replaces anything: when the pack already sits in custom_nodes (a clone
# there), nothing is done; when NAME holds a folder, a file or a link to something else, it
# refuses with a message saying what to do.
set -euo pipefail
pack="$(cd "$1" && pwd -P)"
custom_nodes="$2"
name="$3"
link="$custom_nodes/$name"

mkdir -p "$custom_nodes"
custom_nodes="$(cd "$custom_nodes" && pwd -P)"
if [ "$(dirname "$pack")" = "$custom_nodes" ]; then
  echo "[link] the pack is already in $custom_nodes (as $(basename "$pack")): nothing to link"
  exit 0
fi
if [ -L "$link" ]; then
  if [ "$(cd "$link" 2>/dev/null && pwd -P)" = "$pack" ]; then
    exit 0
  fi
  echo "[link] refused: $link is a link to $(readlink "$link"), not to this checkout ($pack)." >&2
  echo "[link] Remove that link yourself if it is stale, or set COMFYUI_PATH to another ComfyUI." >&2
  exit 1
fi
if [ -e "$link" ]; then
  echo "[link] refused: $link already exists and is not a link to this checkout ($pack)." >&2
  echo "[link] Nothing was changed. Move it away yourself, or run ComfyUI from there instead." >&2
  exit 1
fi
ln -s "$pack" "$link"
echo "[link] linked $link -> $pack"

# Two commands: `make run` serves ComfyUI with the pack at http://127.0.0.1:8188,
# `make test` runs the whole suite. Both build .venv and .comfyui first (idempotent).
# Set COMFYUI_PATH to use your own ComfyUI checkout instead of .comfyui.
PY := .venv/bin/python
PORT ?= 8188

.PHONY: setup run test bench readme

setup:
	@bash scripts/setup.sh

run: setup
	@bash scripts/run.sh $(PORT)

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) benchmarks/run_all.py

readme: setup
	$(PY) scripts/node_docs.py --write

# `make run` serves ComfyUI with the pack at http://127.0.0.1:8188 (installs only what a user needs).
# `make test` runs the whole suite on the floor leg: ComfyUI 0.3.75 with the oldest supported
# dependency versions. `make test-latest` runs it on the latest leg: the newest ComfyUI in
# ../shared/comfyui (or COMFYUI_PATH) with whatever pip resolves today. CI runs both.
# `make test-repeat` runs the suite REPEAT times (default 3) on each leg from a clean clone of the last
# commit and reports every failure (PYTEST_ARGS selects tests, LEGS="floor" or "latest" one leg).
# Every target builds its environment first (idempotent). LEG=latest makes `make run` use the latest leg.
PORT ?= 8188
LEG ?= floor
REPEAT ?= 3
LATEST_COMFY := $(or $(COMFYUI_PATH),$(CURDIR)/.comfyui-latest)

.PHONY: setup run test test-latest test-repeat test-breaks mutate bench readme

setup:
	@bash scripts/setup.sh --leg $(LEG)

run:
	@bash scripts/setup.sh --leg $(LEG) --link
	@bash scripts/run.sh --leg $(LEG) --port $(PORT)

test:
	@bash scripts/setup.sh --leg floor --dev
	.venv/bin/python -m pytest -q

test-latest:
	@bash scripts/setup.sh --leg latest --dev
	COMFYUI_PATH=$(LATEST_COMFY) .venv-latest/bin/python -m pytest -q

test-repeat:
	@bash scripts/setup.sh --leg floor --dev
	@bash scripts/setup.sh --leg latest --dev
	@PYTEST_ARGS="$(PYTEST_ARGS)" LEGS="$(LEGS)" bash scripts/test_repeat.sh $(REPEAT)

# One-line breaks of the pack's promises (tests/breaks.py): every one must turn its tests red. On demand, not in CI.
test-breaks:
	@bash scripts/setup.sh --leg floor --dev
	@bash scripts/setup.sh --leg latest --dev
	.venv/bin/python tests/breaks.py

# Mutation testing (scripts/mutate.py, mutmut): score per module. MODULES="nodes/ops/masks.py ..." limits the run.
mutate:
	@bash scripts/setup.sh --leg floor --dev
	.venv/bin/python scripts/mutate.py $(MODULES)

bench:
	@bash scripts/setup.sh --leg floor --dev
	.venv/bin/python benchmarks/run_all.py

readme:
	@bash scripts/setup.sh --leg floor --dev
	.venv/bin/python scripts/node_docs.py --write

"""Boots ComfyUI once for the whole session, before test modules import pack code."""
from harness import comfy, tiny_dit, tiny_models


def pytest_configure(config) -> None:
    comfy.boot()
    tiny_models.register_test_nodes()
    tiny_dit.register_test_nodes()


def pytest_unconfigure(config) -> None:
    comfy.cleanup()

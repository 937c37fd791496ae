"""Boots ComfyUI once for the whole session, before test modules import pack code."""
from harness import comfy


def pytest_configure(config) -> None:
    comfy.boot()


def pytest_unconfigure(config) -> None:
    comfy.cleanup()

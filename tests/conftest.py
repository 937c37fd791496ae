"""Boots ComfyUI once for the whole session, before test modules import pack code."""
import pytest

from harness import comfy, pose_task, tiny_dit, tiny_models


def pytest_configure(config) -> None:
    comfy.boot()
    tiny_models.register_test_nodes()
    tiny_dit.register_test_nodes()
    pose_task.install_pose_task()  # mediapipe >= 0.10.30 reads its pose model from models/mediapipe


def pytest_unconfigure(config) -> None:
    comfy.cleanup()


@pytest.fixture(autouse=True)
def forget_dead_loaded_models():
    """After each test, as ComfyUI would after its prompt: no loaded-model entry outlives its patcher."""
    yield
    comfy.forget_dead_loaded_models()

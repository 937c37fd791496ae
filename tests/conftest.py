"""Boots ComfyUI once for the whole session, before test modules import pack code."""
import os

import pytest

from harness import comfy, pose_task, tiny_dit, tiny_models


def mutation_run() -> bool:
    """Under ``make mutate``: mutmut runs pytest many times in one process and picks mutants by module name."""
    return "MUTANT_UNDER_TEST" in os.environ


def pytest_configure(config) -> None:
    comfy.boot()
    tiny_models.register_test_nodes()
    tiny_dit.register_test_nodes()
    pose_task.install_pose_task()  # mediapipe >= 0.10.30 reads its pose model from models/mediapipe


def pytest_collection_finish(session) -> None:
    if mutation_run():  # after the test modules imported what they use of the pack
        comfy.name_pack_functions_by_path()


def pytest_unconfigure(config) -> None:
    if not mutation_run():  # the next run in this process still needs the workspace
        comfy.cleanup()


@pytest.fixture(autouse=True)
def forget_dead_loaded_models():
    """After each test, as ComfyUI would after its prompt: no loaded-model entry outlives its patcher."""
    yield
    comfy.forget_dead_loaded_models()

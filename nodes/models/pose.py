"""The pose detector the nodes use: mediapipe's offline ``mp.solutions`` where it exists, else the Tasks API.

mediapipe >= 0.10.30 has no ``mp.solutions`` and ships no pose model; its ``PoseLandmarker``
reads a ``.task`` file from ``models/mediapipe`` (the folder mediapipe packs use), registered
through ``folder_paths`` so extra_model_paths.yaml works. Nothing is downloaded.
"""
from __future__ import annotations

import numpy as np

import comfy.model_management
import comfy.utils
import folder_paths

from ..ops import pose as pose_ops
from . import ModelFileError, model_path

FOLDER = "mediapipe"
TASK_FILES = ("pose_landmarker_full.task", "pose_landmarker_heavy.task", "pose_landmarker_lite.task")
TASK_URL = ("https://storage.googleapis.com/mediapipe-models/pose_landmarker/pose_landmarker_full/float16/latest/"
            "pose_landmarker_full.task")
TASK_WHERE = (
    f"download {TASK_URL} and save it as models/{FOLDER}/{TASK_FILES[0]} (the installed mediapipe has no built-in "
    "pose model; the heavy or lite .task files work too, under their own names)"
)


def task_path() -> str:
    """The first pose_landmarker .task file found in models/mediapipe (full, then heavy, then lite)."""
    for name in TASK_FILES:
        path = folder_paths.get_full_path(FOLDER, name)
        if path is not None:
            return path
    return model_path(FOLDER, TASK_FILES[0], TASK_WHERE)  # raises the error that names folder, file and URL


def open_tasks_detector(path: str, min_confidence: float) -> pose_ops.TasksPoseDetector:
    try:
        return pose_ops.TasksPoseDetector(path, pose_ops.detection_confidence(min_confidence))
    except (RuntimeError, ValueError) as error:  # mediapipe reports unreadable bundles as either
        raise ModelFileError(
            f"mediapipe could not open {path}: {error}. The file is truncated or not a pose landmarker bundle. "
            f"Where to get it: {TASK_WHERE}"
        ) from error


def open_detector(min_confidence: float) -> pose_ops.PoseDetector:
    """A pose detector for keypoint threshold ``min_confidence`` (close it, or use it in ``with``)."""
    if pose_ops.has_solutions_pose():
        return pose_ops.SolutionsPoseDetector(pose_ops.detection_confidence(min_confidence))
    return open_tasks_detector(task_path(), min_confidence)


def detect_poses(frames: np.ndarray, people: list[list[np.ndarray | None]], min_confidence: float) -> list[np.ndarray]:
    """``ops.pose.detect_poses`` with ComfyUI's progress bar and cancel button."""
    progress = comfy.utils.ProgressBar(len(frames))

    def after_frame() -> None:
        progress.update(1)
        comfy.model_management.throw_exception_if_processing_interrupted()

    with open_detector(min_confidence) as detector:
        return pose_ops.detect_poses(detector, frames, people, min_confidence, after_frame)

"""Body pose with mediapipe, as OpenPose COCO-18 keypoints in pixels; the one detection loop.

Two mediapipe APIs, one result: ``SolutionsPoseDetector`` uses ``mp.solutions.pose`` (mediapipe
up to 0.10.2x; its detector and "full" landmark model ship inside the wheel, so it works
offline); ``TasksPoseDetector`` uses the Tasks API ``PoseLandmarker`` (the only one left in
mediapipe >= 0.10.30, which ships no model: it reads a ``pose_landmarker_*.task`` file).
Both find the most prominent person of an image. For several people, pass one region (mask)
per person: each is cropped (with padding), everything outside it is filled with grey, and
the person's pose is mapped back to full-image pixels.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
import numpy as np

from .optional import require

# mediapipe landmark index for each COCO-18 keypoint (neck, 1, is the shoulders' midpoint).
MEDIAPIPE_TO_COCO18: dict[int, int] = {
    0: 0, 2: 12, 3: 14, 4: 16, 5: 11, 6: 13, 7: 15, 8: 24, 9: 26, 10: 28, 11: 23, 12: 25, 13: 27,
    14: 5, 15: 2, 16: 8, 17: 7,
}
FEATURE = "Pose detection (Pose From Image, Pose Score, the openpose annotator)"


def landmarks_to_coco18(landmarks: np.ndarray, height: int, width: int) -> np.ndarray:
    """``[33, 4]`` mediapipe (x, y normalised, z, visibility) -> ``[18, 3]`` (x px, y px, conf).

    Keypoints outside the image get confidence 0; the neck is the midpoint of the shoulders
    with the lower of their confidences.
    """
    out = np.zeros((18, 3), dtype=np.float64)
    for coco, mp_index in MEDIAPIPE_TO_COCO18.items():
        x, y, _, visibility = landmarks[mp_index]
        px, py = x * width, y * height
        inside = 0 <= px < width and 0 <= py < height
        out[coco] = (px, py, float(visibility) if inside else 0.0)
    r, l = out[2], out[5]
    if r[2] > 0 and l[2] > 0:
        out[1] = ((r[0] + l[0]) / 2, (r[1] + l[1]) / 2, min(r[2], l[2]))
    return out


class PoseDetector:
    """A mediapipe pose backend for still images; use as a context manager (frees the graph)."""

    def landmarks(self, frame: np.ndarray) -> np.ndarray | None:
        """``[33, 4]`` (x, y normalised, z, visibility) of the most prominent person, or None."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> "PoseDetector":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def detect(self, frame: np.ndarray) -> np.ndarray | None:
        """``[18, 3]`` COCO-18 pose of the most prominent person in an RGB uint8 frame, or None."""
        marks = self.landmarks(np.ascontiguousarray(frame))
        return None if marks is None else landmarks_to_coco18(marks, frame.shape[0], frame.shape[1])


def detection_confidence(min_confidence: float) -> float:
    """mediapipe's person-detection threshold for a keypoint threshold: kept within 0.1..0.5 so a
    strict keypoint threshold does not hide the person and a loose one does not invent people."""
    return min(0.5, max(0.1, min_confidence))


def has_solutions_pose() -> bool:
    """Whether the installed mediapipe still has ``mp.solutions.pose`` (removed in 0.10.30)."""
    mp = require("mediapipe", FEATURE)
    return hasattr(getattr(mp, "solutions", None), "pose")


class SolutionsPoseDetector(PoseDetector):
    """A ``mp.solutions.pose`` graph for still images (model_complexity 1, the model in the wheel)."""

    def __init__(self, min_detection_confidence: float = 0.3) -> None:
        mp = require("mediapipe", FEATURE)
        self._pose = mp.solutions.pose.Pose(static_image_mode=True, model_complexity=1,
                                            min_detection_confidence=min_detection_confidence)

    def close(self) -> None:
        self._pose.close()

    def landmarks(self, frame: np.ndarray) -> np.ndarray | None:
        result = self._pose.process(frame)
        if result.pose_landmarks is None:
            return None
        return np.array([(p.x, p.y, p.z, p.visibility) for p in result.pose_landmarks.landmark])


class TasksPoseDetector(PoseDetector):
    """A Tasks-API ``PoseLandmarker`` (image mode, one person) on a ``.task`` model file."""

    def __init__(self, model_path: str, min_detection_confidence: float = 0.3) -> None:
        require("mediapipe", FEATURE)
        from mediapipe.tasks.python import vision
        from mediapipe.tasks.python.core.base_options import BaseOptions

        options = vision.PoseLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=model_path),
            running_mode=vision.RunningMode.IMAGE,
            num_poses=1,
            min_pose_detection_confidence=min_detection_confidence,
            min_pose_presence_confidence=min_detection_confidence,
        )
        self._landmarker = vision.PoseLandmarker.create_from_options(options)

    def close(self) -> None:
        self._landmarker.close()

    def landmarks(self, frame: np.ndarray) -> np.ndarray | None:
        import mediapipe as mp

        result = self._landmarker.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=frame))
        if not result.pose_landmarks:
            return None
        return np.array([(p.x, p.y, p.z or 0.0, p.visibility or 0.0) for p in result.pose_landmarks[0]])


def region_box(region: np.ndarray, padding: float = 0.15) -> tuple[int, int, int, int] | None:
    """(left, top, right, bottom) of a region's nonzero pixels padded by ``padding`` x its size."""
    ys, xs = np.nonzero(region > 0.5)
    if ys.size == 0:
        return None
    height, width = region.shape
    pad = int(round(padding * max(np.ptp(ys) + 1, np.ptp(xs) + 1)))
    return (max(0, xs.min() - pad), max(0, ys.min() - pad), min(width, xs.max() + 1 + pad), min(height, ys.max() + 1 + pad))


def detect_in_region(detector: PoseDetector, frame: np.ndarray, region: np.ndarray | None) -> np.ndarray:
    """Pose of the person inside ``region`` (a ``[H,W]`` 0..1 mask), in full-frame pixels;
    all zeros when nobody is found."""
    empty = np.zeros((18, 3))
    if region is None:
        found = detector.detect(frame)
        return empty if found is None else found
    box = region_box(region)
    if box is None:
        return empty
    left, top, right, bottom = box
    crop = frame[top:bottom, left:right].astype(np.float32)
    weight = np.clip(region[top:bottom, left:right], 0, 1)[..., None]
    crop = (crop * weight + 127.5 * (1 - weight)).round().astype(np.uint8)  # others hidden on grey
    found = detector.detect(crop)
    if found is None:
        return empty
    found[:, 0] += left
    found[:, 1] += top
    found[found[:, 2] <= 0] = 0
    return found


def detect_poses(
    detector: PoseDetector,
    frames: np.ndarray,
    people: Sequence[Sequence[np.ndarray | None]],
    min_confidence: float,
    after_frame: Callable[[], None] | None = None,
) -> list[np.ndarray]:
    """Poses per frame: a list of ``[P, 18, 3]`` arrays, keypoints below ``min_confidence`` zeroed.

    ``people[b]`` lists frame b's person regions (``[H,W]`` masks), ``None`` meaning "the most
    prominent person"; an empty list gives a ``[0, 18, 3]`` array. A person not found is an
    all-zero pose, so P stays fixed. ``after_frame`` runs after each frame (progress, cancel).
    """
    out = []
    for frame, regions in zip(frames, people, strict=True):
        poses = np.stack([detect_in_region(detector, frame, r) for r in regions]) if len(regions) else np.zeros((0, 18, 3))
        poses[poses[..., 2] < min_confidence] = 0
        out.append(poses)
        if after_frame is not None:
            after_frame()
    return out

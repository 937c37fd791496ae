"""Body pose with mediapipe, as OpenPose COCO-18 keypoints in pixels.

mediapipe 0.10.14 ships the pose detector and the "full" landmark model inside its wheel
(``model_complexity=1``; the lite and heavy models would be downloaded, so they are not used),
so this works offline. mediapipe finds one person per image; for several people, pass one
region (mask) per person: each is cropped (with padding), everything outside it is filled
with grey, and the person's pose is mapped back to full-image pixels.
"""
from __future__ import annotations

import numpy as np

# mediapipe landmark index for each COCO-18 keypoint (neck, 1, is the shoulders' midpoint).
MEDIAPIPE_TO_COCO18: dict[int, int] = {
    0: 0, 2: 12, 3: 14, 4: 16, 5: 11, 6: 13, 7: 15, 8: 24, 9: 26, 10: 28, 11: 23, 12: 25, 13: 27,
    14: 5, 15: 2, 16: 8, 17: 7,
}


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
    """A mediapipe Pose graph for still images; use as a context manager (closes the graph)."""

    def __init__(self, min_detection_confidence: float = 0.3) -> None:
        import mediapipe as mp

        self._pose = mp.solutions.pose.Pose(static_image_mode=True, model_complexity=1,
                                            min_detection_confidence=min_detection_confidence)

    def __enter__(self) -> "PoseDetector":
        return self

    def __exit__(self, *exc) -> None:
        self._pose.close()

    def detect(self, frame: np.ndarray) -> np.ndarray | None:
        """``[18, 3]`` COCO-18 pose of the most prominent person in an RGB uint8 frame, or None."""
        result = self._pose.process(np.ascontiguousarray(frame))
        if result.pose_landmarks is None:
            return None
        marks = np.array([(p.x, p.y, p.z, p.visibility) for p in result.pose_landmarks.landmark])
        return landmarks_to_coco18(marks, frame.shape[0], frame.shape[1])


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


def detect_poses(frames: np.ndarray, min_confidence: float = 0.3, regions: np.ndarray | None = None) -> list[np.ndarray]:
    """Poses per frame: a list of ``[P, 18, 3]`` arrays.

    ``regions`` is ``None`` (one person per frame), ``[P, H, W]`` (P people, the same for every
    frame) or ``[B, P, H, W]`` (per frame). A person not found is an all-zero pose, so P stays fixed.
    """
    out = []
    with PoseDetector(min_detection_confidence=min(0.5, max(0.1, min_confidence))) as detector:
        for b, frame in enumerate(frames):
            if regions is None:
                people = [None]
            else:
                people = list(regions[b] if regions.ndim == 4 else regions)
            out.append(np.stack([detect_in_region(detector, frame, region) for region in people]))
    return out

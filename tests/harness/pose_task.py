"""A real ``pose_landmarker_full.task`` for the Tasks-API tests, built from mediapipe 0.10.14's wheel.

Google's ``.task`` file cannot be downloaded here, but mediapipe 0.10.14 ships the same two
networks (pose detector, "full" landmark model) inside its wheel. The Tasks API refuses them
as they are: a float32 image input needs NormalizationOptions metadata. This writes that
metadata (the TFLite metadata flatbuffer, with the input ranges the legacy graphs used:
detector -1..1, landmarks 0..1) into each model with the flatbuffer classes mediapipe
itself ships, and zips both, uncompressed, under the names PoseLandmarker looks for.

The wheel comes from ``pip download --no-deps mediapipe==0.10.14`` (``scripts/setup.sh --dev``
puts it in ``.test-assets/``).
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

from .comfy import REPO_ROOT, workspace

WHEEL_GLOB = "mediapipe-0.10.14-*.whl"
# (name inside the wheel, name inside the .task bundle, normalisation mean, std)
_NETWORKS = (
    ("mediapipe/modules/pose_detection/pose_detection.tflite", "pose_detector.tflite", 127.5, 127.5),
    ("mediapipe/modules/pose_landmark/pose_landmark_full.tflite", "pose_landmarks_detector.tflite", 0.0, 255.0),
)


def mediapipe_wheel() -> Path | None:
    found = sorted((REPO_ROOT / ".test-assets").glob(WHEEL_GLOB))
    return found[-1] if found else None


def _with_normalization(model_bytes: bytes, name: str, mean: float, std: float) -> bytes:
    import flatbuffers
    from mediapipe.tasks.metadata import metadata_schema_py_generated as md
    from mediapipe.tasks.metadata import schema_py_generated as tfl

    model = tfl.ModelT.InitFromPackedBuf(bytearray(model_bytes), 0)
    graph = model.subgraphs[0]
    image = md.TensorMetadataT()
    image.name = "image"
    image.content = md.ContentT()
    image.content.contentPropertiesType = md.ContentProperties.ImageProperties
    image.content.contentProperties = md.ImagePropertiesT()
    image.content.contentProperties.colorSpace = md.ColorSpaceType.RGB
    norm = md.ProcessUnitT()
    norm.optionsType = md.ProcessUnitOptions.NormalizationOptions
    norm.options = md.NormalizationOptionsT()
    norm.options.mean, norm.options.std = [mean], [std]
    image.processUnits = [norm]
    subgraph = md.SubGraphMetadataT()
    subgraph.inputTensorMetadata = [image]
    subgraph.outputTensorMetadata = [md.TensorMetadataT() for _ in graph.outputs]
    metadata = md.ModelMetadataT()
    metadata.name, metadata.version, metadata.minParserVersion = name, "1", "1.0.0"
    metadata.subgraphMetadata = [subgraph]
    builder = flatbuffers.Builder(1024)
    builder.Finish(metadata.Pack(builder), file_identifier=b"M001")

    buffer = tfl.BufferT()
    buffer.data = list(builder.Output())
    model.buffers.append(buffer)
    entry = tfl.MetadataT()
    entry.name, entry.buffer = "TFLITE_METADATA", len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if m.name != b"TFLITE_METADATA"] + [entry]
    builder = flatbuffers.Builder(len(model_bytes) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def build_pose_task(destination: Path, wheel: Path) -> Path:
    """Write ``destination`` (a .task bundle) from the networks inside ``wheel``."""
    with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(destination, "w", zipfile.ZIP_STORED) as bundle:
        for inside_wheel, inside_task, mean, std in _NETWORKS:
            bundle.writestr(inside_task, _with_normalization(source.read(inside_wheel), inside_task, mean, std))
    return destination


def cached_pose_task() -> Path | None:
    """``.test-assets/pose_landmarker_full.task``, built once from the wheel; None without the wheel."""
    wheel = mediapipe_wheel()
    if wheel is None:
        return None
    cached = wheel.parent / "pose_landmarker_full.task"
    if not cached.is_file():
        partial = cached.with_name(f"{cached.name}.{os.getpid()}.partial")
        build_pose_task(partial, wheel)
        os.replace(partial, cached)  # atomic: parallel test runs never see half a file
    return cached


def install_pose_task() -> Path | None:
    """Link the built .task into the test ComfyUI's models/mediapipe, where the nodes look for it."""
    cached = cached_pose_task()
    if cached is None:
        return None
    target = workspace().models / "mediapipe" / cached.name
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        target.symlink_to(cached)
    return target

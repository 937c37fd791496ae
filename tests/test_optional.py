"""ops.optional: a missing optional package is a MissingPackageError whose pip line names the package
that provides the module (checked against the installed distributions), and a present one is imported.

The pack without these packages, end to end, is tests/test_bare_install.py (its own ComfyUI process).
"""
import importlib.metadata
import importlib.util
import json
import re

import pytest

from harness import pack_import

optional = pack_import("nodes.ops.optional")


def _pip_names(hint: str) -> set[str]:
    return {re.sub(r"[-_.]+", "-", name).lower() for name in re.findall(r"python -m pip install (\S+)", hint)}


@pytest.mark.parametrize("module", ["cv2", "mediapipe", "controlnet_aux", "rembg", "onnxruntime"])
def test_each_pip_line_names_a_distribution_that_provides_the_module(module):
    installed = {re.sub(r"[-_.]+", "-", name).lower() for name in importlib.metadata.packages_distributions()[module]}
    assert _pip_names(optional.INSTALL[module]) & installed


def test_the_alternative_builds_are_named_with_what_they_are_for():
    assert _pip_names(optional.INSTALL["cv2"]) == {"opencv-python-headless"}
    assert "(any OpenCV build you already have works: opencv-python, opencv-contrib-python, ...)" in optional.INSTALL["cv2"]
    assert optional.INSTALL["rembg"] == "python -m pip install rembg  (plus one onnxruntime build, see below)"
    builds = re.findall(r"python -m pip install (\S+)  \(([^)]+)\)", optional.INSTALL["onnxruntime"])
    assert builds == [("onnxruntime-gpu", "NVIDIA CUDA"), ("onnxruntime-directml", "Windows DirectML"),
                      ("onnxruntime-rocm", "AMD ROCm"), ("onnxruntime-openvino", "Intel"), ("onnxruntime", "CPU only")]
    assert optional.INSTALL["onnxruntime"].endswith(". Install one of them, not several: they share the module name")


def test_a_missing_module_is_an_import_error_that_says_what_to_install(monkeypatch):
    monkeypatch.setitem(optional.INSTALL, "sc_not_a_module", "python -m pip install sc-not-a-package")
    with pytest.raises(optional.MissingPackageError) as raised:
        optional.require("sc_not_a_module", "The frobnicator")
    assert isinstance(raised.value, ImportError)
    assert str(raised.value) == ("The frobnicator needs the Python package 'sc_not_a_module', which is not installed in "
                                 "ComfyUI's Python environment. Install it with: python -m pip install "
                                 "sc-not-a-package. Then restart ComfyUI.")


def test_a_present_module_is_imported_and_returned():
    assert optional.require("json", "Reading") is json


def test_onnxruntime_check_asks_for_onnxruntime_by_name(monkeypatch):
    asked = []
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: asked.append(name) or (None if name == "onnxruntime" else real(name, *a)))
    with pytest.raises(optional.MissingPackageError, match="Background removal needs the Python package 'onnxruntime'.*"
                                                           "onnxruntime-gpu"):
        optional.require_onnxruntime("Background removal")
    assert asked == ["onnxruntime"]

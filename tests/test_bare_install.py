"""The pack without its optional packages: it loads, lists every node, the core nodes work, the others say what to install.

A real second environment, made cheaply: a fresh venv (same interpreter) whose site-packages
links every package of the test environment except the optional ones (mediapipe,
controlnet-aux, rembg, onnxruntime, OpenCV) and the packages only they bring (scikit-image,
timm, pymatting, pooch, jax). Nothing is installed or downloaded (~1 s to build). A subprocess of
that venv's python boots ComfyUI in-process exactly as the other tests do (``harness.comfy``)
and runs prompts through its executor.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from harness import COMFYUI_DIR, REPO_ROOT
from harness.node_docs import pack_node_classes

# Distribution / module name prefixes (lower case, "-" as "_") left out of the bare environment.
OPTIONAL_PREFIXES = ("mediapipe", "controlnet_aux", "rembg", "onnxruntime", "cv2", "opencv", "skimage",
                     "scikit_image", "timm", "pymatting", "pooch", "jax", "jaxlib")
OPTIONAL_MODULES = ("mediapipe", "controlnet_aux", "rembg", "onnxruntime", "cv2")

SCRIPT = r'''
import importlib.util, json, sys
sys.path.insert(0, sys.argv[1])
from harness import comfy, tiny_models
from harness.comfy import node_error_message, run_prompt

comfy.boot()
tiny_models.register_test_nodes()
import nodes

out = {"python": sys.executable, "listed": sorted(k for k in nodes.NODE_CLASS_MAPPINGS if k.startswith("SC")),
       "importable": {m: importlib.util.find_spec(m) is not None for m in json.loads(sys.argv[2])}}
solid = lambda value, w=64, h=64: {"class_type": "SolidMask", "inputs": {"value": value, "width": w, "height": h}}
prompt = {
    "ckpt": {"class_type": "TinyCheckpointLoader", "inputs": {"architecture": "sd15"}},
    "pos": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": "a garden"}},
    "neg": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": "blurry"}},
    "cat": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": "a cat"}},
    "half": solid(1.0, 32, 64), "bg": solid(0.0),
    "left": {"class_type": "MaskComposite", "inputs": {"destination": ["bg", 0], "source": ["half", 0],
                                                      "x": 0, "y": 0, "operation": "add"}},
    "feather": {"class_type": "SCFeatherMask", "inputs": {"mask": ["left", 0], "radius": 4, "direction": "inward",
                                                          "falloff": "linear"}},
    "region": {"class_type": "SCRegion", "inputs": {"conditioning": ["cat", 0], "mask": ["feather", 0],
                                                    "weight": 1.0, "control_strength": 1.0}},
    "apply": {"class_type": "SCApplyRegions", "inputs": {"model": ["ckpt", 0], "positive": ["pos", 0],
              "negative": ["neg", 0], "regions": ["region", 0], "mode": "attention", "feather": 8,
              "self_attention_locality": 0.0}},
    "empty": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
    "sample": {"class_type": "KSampler", "inputs": {"model": ["apply", 0], "positive": ["apply", 1],
               "negative": ["apply", 2], "latent_image": ["empty", 0], "seed": 3, "steps": 2, "cfg": 5.0,
               "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
    "blend": {"class_type": "SCLatentBlend", "inputs": {"samples_a": ["empty", 0], "samples_b": ["sample", 0],
                                                        "mask": ["left", 0], "feather": 0.0}},
    "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["blend", 0], "vae": ["ckpt", 2]}},
    "plain": {"class_type": "VAEDecode", "inputs": {"samples": ["empty", 0], "vae": ["ckpt", 2]}},
    "right": {"class_type": "InvertMask", "inputs": {"mask": ["left", 0]}},
    "paste": {"class_type": "SCPasteBack", "inputs": {"image": ["decode", 0], "source_image": ["plain", 0],
              "mask": ["right", 0], "feather": 0.0, "falloff": "smoothstep", "colour_match": False}},
    "score": {"class_type": "SCPreservationScore", "inputs": {"source": ["plain", 0], "result": ["paste", 0],
                                                              "mask": ["left", 0], "mask_marks": "edited area"}},
}
result = run_prompt(prompt, outputs=["score", "feather", "blend"])
feathered = result.output("feather", 0)
out["feather_row"] = [float(feathered[0, 32, x]) for x in (16, 31, 40)]
blended = result.output("blend", 0)["samples"]
out["blend_right_half_is_empty_latent"] = bool((blended[..., 4:] == 0).all())
out["blend_left_half_changed"] = bool((blended[..., :4] != 0).any())
out["preservation_max_diff_outside"] = float(result.output("score", 2))
out["preservation_mean_change_inside"] = float(result.output("score", 3))

image = {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}}
needs = {
    "pose": {"img": image, "n": {"class_type": "SCPoseFromImage", "inputs": {"image": ["img", 0],
             "min_confidence": 0.3, "mask_margin": 4}}},
    "canny": {"img": image, "m": solid(1.0), "n": {"class_type": "SCMaskedControlImage", "inputs": {
              "image": ["img", 0], "mask": ["m", 0], "annotator": "canny", "mode": "mask_then_annotate",
              "feather": 0, "fill": "grey", "resolution": 512, "canny_low": 100, "canny_high": 200}}},
    "lineart": {"img": image, "m": solid(1.0), "n": {"class_type": "SCMaskedControlImage", "inputs": {
                "image": ["img", 0], "mask": ["m", 0], "annotator": "lineart", "mode": "mask_then_annotate",
                "feather": 0, "fill": "grey", "resolution": 512, "canny_low": 100, "canny_high": 200}}},
}
out["errors"] = {name: node_error_message(p, ["n"]) for name, p in needs.items()}
from harness.comfy import pack_import
rembg_models = pack_import("nodes.models.rembg_models")
try:
    rembg_models.new_session("u2netp.onnx")
except Exception as error:
    out["errors"]["rembg"] = f"{type(error).__name__}: {error}"
print("RESULT" + json.dumps(out))
'''


def _hidden(name: str) -> bool:
    return name.lower().replace("-", "_").startswith(OPTIONAL_PREFIXES)


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory) -> tuple[Path, Path]:
    """The bare venv's python and its site-packages."""
    venv = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    source = Path(sysconfig.get_paths()["purelib"])
    target = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                 check=True, capture_output=True, text=True).stdout.strip())
    for entry in source.iterdir():
        if not _hidden(entry.name) and not (target / entry.name).exists():
            (target / entry.name).symlink_to(entry)
    return venv / "bin" / "python", target


@pytest.fixture(scope="module")
def bare(bare_python) -> dict:
    python, _ = bare_python
    env = dict(os.environ, COMFYUI_PATH=str(COMFYUI_DIR))
    done = subprocess.run([str(python), "-c", SCRIPT, str(REPO_ROOT / "tests"), json.dumps(OPTIONAL_MODULES)],
                          capture_output=True, text=True, env=env, timeout=600, cwd=REPO_ROOT)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT")]
    assert done.returncode == 0 and lines, done.stderr[-4000:]
    return json.loads(lines[-1][len("RESULT"):])


def test_the_bare_environment_is_made_cheaply_and_lacks_the_optional_packages(bare_python, bare):
    _, site_packages = bare_python
    entries = list(site_packages.iterdir())
    assert entries and all(entry.is_symlink() for entry in entries)  # linked, nothing installed or copied
    assert bare["python"] != sys.executable
    assert not any(bare["importable"].values()), bare["importable"]


def test_every_node_is_listed_without_the_optional_packages(bare):
    expected = {cls.GET_SCHEMA().node_id for cls in pack_node_classes()}
    assert len(expected) > 20 and expected <= set(bare["listed"])  # core 0.33 has SC-prefixed nodes of its own


def test_mask_region_blending_and_evaluation_nodes_work_without_them(bare):
    middle, edge, outside = bare["feather_row"]  # the left half, feathered inwards over 4 px
    assert middle == 1.0 and 0.0 < edge < 1.0 and outside == 0.0
    assert bare["blend_right_half_is_empty_latent"] and bare["blend_left_half_changed"]
    # Paste Back restored the source outside the mask; Preservation Score measures exactly that
    assert bare["preservation_max_diff_outside"] == 0.0 and bare["preservation_mean_change_inside"] > 0.01


def test_nodes_that_need_an_optional_package_name_it_and_the_pip_line(bare):
    errors = bare["errors"]
    assert "'mediapipe'" in errors["pose"] and "python -m pip install mediapipe" in errors["pose"]
    assert "'cv2'" in errors["canny"] and "python -m pip install opencv-python-headless" in errors["canny"]
    assert "'controlnet_aux'" in errors["lineart"] and "python -m pip install controlnet-aux" in errors["lineart"]
    rembg = errors["rembg"]
    assert rembg.startswith("MissingPackageError") and "'onnxruntime'" in rembg
    for flavour in ("onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-rocm", "onnxruntime "):
        assert f"python -m pip install {flavour}" in rembg

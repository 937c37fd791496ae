"""Test-only custom nodes for ComfyUI servers started by the catalog tests and benchmark: the
harness's tiny-model loaders, and a per-image 'found' flag for Filter By Found."""
import importlib.util
import sys
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "catalog_test_tiny_models", Path(__file__).resolve().parents[1] / "harness" / "tiny_models.py")
tiny_models = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = tiny_models  # its dataclass looks itself up there
_spec.loader.exec_module(tiny_models)


class TestFoundIfBright:
    """Per image: found when its mean brightness is above the threshold (stands in for Find Objects)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",), "threshold": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0})}}

    RETURN_TYPES = ("SC_FOUND",)
    FUNCTION = "find"
    CATEGORY = "testing"

    def find(self, image, threshold):
        return ([bool(v) for v in image.mean(dim=(1, 2, 3)) > threshold],)


NODE_CLASS_MAPPINGS = {**tiny_models.TEST_NODES, "TestFoundIfBright": TestFoundIfBright}

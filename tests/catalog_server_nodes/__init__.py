"""Test-only custom nodes for ComfyUI servers started by the catalog tests and benchmark: the
harness's tiny-model loaders, and a per-image 'found' flag for Filter By Found."""
import importlib
import importlib.util
import sys
from pathlib import Path

# The harness folder as a package of its own name, without running its __init__ (which boots an
# in-process ComfyUI): tiny_models imports its sibling fixture_nodes relatively.
_harness = importlib.util.module_from_spec(importlib.util.spec_from_loader("catalog_test_harness", None, is_package=True))
_harness.__path__ = [str(Path(__file__).resolve().parents[1] / "harness")]
sys.modules[_harness.__name__] = _harness
tiny_models = importlib.import_module("catalog_test_harness.tiny_models")


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

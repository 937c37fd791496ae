"""One rule for the pack's hook objects that ComfyUI deep-copies along with their holder."""
from __future__ import annotations


class SharedByCopies:
    """A deep copy of this object is the object itself.

    ``ModelPatcher.clone`` deep-copies ``model_options`` (where patches, wrappers and attention
    extensions live), and some nodes deep-copy conditioning options. The pack's hook objects are
    immutable or hold only caches derived from immutable inputs, so every clone shares the one
    object: no copies of masks and latents per clone, and identity checks (a wrapper already
    installed, the instance group an entry belongs to) keep working across clones.
    """

    def __deepcopy__(self, memo):
        return self

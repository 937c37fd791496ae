"""Mask operation nodes (thin V3 wrappers over mask_ops.masks): validate, convert, call."""
from __future__ import annotations

from comfy_api.latest import io

from .ops import masks as mask_ops
from .types import CropInfoType

CATEGORY = "selective_control/masks"

_RESIZE_RULE = "A mask of another size is first resized to the image (bilinear)."
_BATCH_RULE = "A batch of 1 applies to every item of the other batch; other batch mismatches are an error."


class SCFeatherMask(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SCFeatherMask",
            display_name="Feather Mask (SC)",
            category=CATEGORY,
            description=(
                "Soft edge by exact Euclidean distance to the mask's edge (mask >= 0.5). inward: ramps from 0 at "
                "the edge to 1 at `radius` inside; outward: 1 inside falling to 0 at `radius` outside; centred: "
                "half the ramp on each side. The image border is not an edge. Radius 0 passes the mask through."
            ),
            inputs=[
                io.Mask.Input("mask", tooltip="The mask to feather; its shape is the part >= 0.5."),
                io.Int.Input("radius", default=16, min=0, max=4096, step=1,
                             tooltip="Width of the soft ramp in pixels. 0 = unchanged."),
                io.Combo.Input("direction", options=list(mask_ops.DIRECTIONS), default="centred",
                               tooltip="inward: never grows the mask; outward: never shrinks it; "
                                       "centred: the ramp straddles the edge."),
                io.Combo.Input("falloff", options=list(mask_ops.FALLOFFS), default="smoothstep",
                               tooltip="Ramp shape: linear, smoothstep (3t^2-2t^3) or gaussian (sigma = radius/3)."),
            ],
            outputs=[io.Mask.Output(display_name="mask", tooltip="The feathered mask, same shape as the input.")],
        )

    @classmethod
    def execute(cls, mask, radius: int, direction: str, falloff: str) -> io.NodeOutput:
        return io.NodeOutput(mask_ops.feather(mask, radius, direction, falloff))


class SCGrowMask(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SCGrowMask",
            display_name="Grow / Shrink Mask (SC)",
            category=CATEGORY,
            description=(
                "Grow (positive) or shrink (negative) the mask's shape (mask >= 0.5) by exactly N pixels with a "
                "round brush. The result is binary; feather it afterwards for a soft edge."
            ),
            inputs=[
                io.Mask.Input("mask", tooltip="The mask to grow or shrink; its shape is the part >= 0.5."),
                io.Int.Input("pixels", default=8, min=-4096, max=4096, step=1,
                             tooltip="Pixels to grow by (negative shrinks). 0 = unchanged."),
            ],
            outputs=[io.Mask.Output(display_name="mask", tooltip="The grown or shrunk binary mask.")],
        )

    @classmethod
    def execute(cls, mask, pixels: int) -> io.NodeOutput:
        return io.NodeOutput(mask_ops.grow(mask, pixels))


class SCCombineMasks(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SCCombineMasks",
            display_name="Combine Masks (SC)",
            category=CATEGORY,
            description=(
                "Set operations that also work on soft masks: union = max, intersection = min, "
                "difference = clamp(a - b), xor = |a - b|. mask_b is resized to mask_a (bilinear). " + _BATCH_RULE
            ),
            inputs=[
                io.Mask.Input("mask_a", tooltip="First mask; the result has its size."),
                io.Mask.Input("mask_b", tooltip="Second mask; resized to mask_a's size (bilinear) if it differs."),
                io.Combo.Input("operation", options=list(mask_ops.COMBINE_OPS), default="union",
                               tooltip="union, intersection, difference (a minus b) or xor."),
            ],
            outputs=[io.Mask.Output(display_name="mask", tooltip="The combined mask.")],
        )

    @classmethod
    def execute(cls, mask_a, mask_b, operation: str) -> io.NodeOutput:
        return io.NodeOutput(mask_ops.combine(mask_a, mask_b, operation))


class SCMaskCleanup(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SCMaskCleanup",
            display_name="Mask Cleanup (SC)",
            category=CATEGORY,
            description=(
                "Make a clean binary mask: threshold, fill holes (regions of 0 enclosed by the mask), and drop "
                "islands smaller than a pixel count. Runs on the CPU (connected components) and returns the mask "
                "to its device."
            ),
            inputs=[
                io.Mask.Input("mask", tooltip="The mask to clean up (e.g. from a segmenter)."),
                io.Float.Input("threshold", default=0.5, min=0.0, max=1.0, step=0.01,
                               tooltip="Pixels at or above this value are in the mask."),
                io.Boolean.Input("fill_holes", default=True,
                                 tooltip="Fill regions of 0 that do not touch the image border (4-connected)."),
                io.Int.Input("min_island_px", default=64, min=0, max=1 << 24, step=1,
                             tooltip="Remove 8-connected islands smaller than this many pixels. 0 keeps all."),
            ],
            outputs=[io.Mask.Output(display_name="mask", tooltip="The cleaned binary mask.")],
        )

    @classmethod
    def execute(cls, mask, threshold: float, fill_holes: bool, min_island_px: int) -> io.NodeOutput:
        return io.NodeOutput(mask_ops.cleanup(mask, threshold, fill_holes, min_island_px))


class SCCropToMask(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SCCropToMask",
            display_name="Crop To Mask (SC)",
            category=CATEGORY,
            description=(
                "Crop an image (and mask) to the mask's bounding box plus padding, to work on the object at full "
                "detail; paste it back with Uncrop. One box for the whole batch (the union of its masks); an "
                "empty mask crops to the whole image. " + _RESIZE_RULE
            ),
            inputs=[
                io.Image.Input("image", tooltip="The image to crop."),
                io.Mask.Input("mask", tooltip="Its nonzero pixels (over the whole batch) set the box. "
                                              "Resized to the image (bilinear) if its size differs."),
                io.Int.Input("padding", default=32, min=0, max=4096, step=1,
                             tooltip="Pixels added around the box on each side (clipped at the image border)."),
                io.Boolean.Input("round_to_8", default=True,
                                 tooltip="Widen the box so both sides are multiples of 8 (what VAEs need)."),
                io.Int.Input("target_size", default=0, min=0, max=16384, step=8,
                             tooltip="Resize the crop so its longest side is this many pixels (bilinear). 0 = keep."),
            ],
            outputs=[
                io.Image.Output(display_name="image", tooltip="The cropped image."),
                io.Mask.Output(display_name="mask", tooltip="The mask cropped the same way."),
                CropInfoType.Output(display_name="crop_info", tooltip="Where the crop came from; connect to Uncrop."),
            ],
        )

    @classmethod
    def execute(cls, image, mask, padding: int, round_to_8: bool, target_size: int) -> io.NodeOutput:
        crop, crop_mask, info = mask_ops.crop_to_mask(image, mask, padding, round_to_8, target_size)
        return io.NodeOutput(crop, crop_mask, info)


class SCUncrop(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SCUncrop",
            display_name="Uncrop (SC)",
            category=CATEGORY,
            description=(
                "Paste a processed crop back into the image it came from: the crop is resized back to its box "
                "(bilinear, only if its size changed) and blended in through the mask (feathered inward if asked). "
                "Pixels outside the mask and the box are the original's exactly."
            ),
            inputs=[
                io.Image.Input("original", tooltip="The image that went into Crop To Mask."),
                io.Image.Input("crop", tooltip="The (processed) crop to paste back."),
                CropInfoType.Input("crop_info", tooltip="crop_info from the Crop To Mask node."),
                io.Mask.Input("mask", optional=True,
                              tooltip="Where to paste, in crop coordinates (e.g. the crop's mask). "
                                      "Not connected = paste the whole box."),
                io.Int.Input("feather", default=0, min=0, max=1024, step=1,
                             tooltip="Feather the paste mask inward by this many pixels to hide the seam. 0 = as is."),
            ],
            outputs=[io.Image.Output(display_name="image", tooltip="The original with the crop pasted back.")],
        )

    @classmethod
    def execute(cls, original, crop, crop_info, feather: int, mask=None) -> io.NodeOutput:
        if not isinstance(crop_info, mask_ops.CropInfo):
            raise ValueError("crop_info must come from a Crop To Mask (SC) node")
        if mask is not None and feather > 0:
            mask = mask_ops.feather(mask, feather, "inward", "smoothstep")
        return io.NodeOutput(mask_ops.uncrop(original, crop, crop_info, mask))


class SCMaskToLatent(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SCMaskToLatent",
            display_name="Mask To Latent Size (SC)",
            category=CATEGORY,
            description=(
                "Fit a mask to a latent's grid by area averaging (a half-covered latent cell gets 0.5), and set it "
                "as the latent's noise_mask so the sampler only changes the masked area."
            ),
            inputs=[
                io.Latent.Input("latent", tooltip="The latent whose grid (height x width) the mask is fitted to."),
                io.Mask.Input("mask", tooltip="A mask at image resolution (or any size)."),
            ],
            outputs=[
                io.Latent.Output(display_name="latent", tooltip="The latent with this mask as its noise_mask."),
                io.Mask.Output(display_name="mask", tooltip="The mask at the latent's grid size [B,h,w]."),
            ],
        )

    @classmethod
    def execute(cls, latent, mask) -> io.NodeOutput:
        samples = latent.get("samples") if isinstance(latent, dict) else None
        if samples is None or samples.ndim < 4:
            raise ValueError("latent must be a LATENT with 'samples' of shape [B,C,h,w]; connect a latent output")
        grid = mask_ops.mask_to_latent(mask, samples.shape[-2], samples.shape[-1])
        if grid.shape[0] not in (1, samples.shape[0]):
            raise ValueError(
                f"mask batch {tuple(grid.shape)} does not match latent batch {tuple(samples.shape)}; "
                "use one mask for all or one per latent"
            )
        out = dict(latent)
        out["noise_mask"] = grid.unsqueeze(1)
        return io.NodeOutput(out, grid)


MASK_NODES: list[type[io.ComfyNode]] = [
    SCFeatherMask,
    SCGrowMask,
    SCCombineMasks,
    SCMaskCleanup,
    SCCropToMask,
    SCUncrop,
    SCMaskToLatent,
]

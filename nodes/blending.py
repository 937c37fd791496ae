"""Blending nodes (thin V3 wrappers): latent blend, region preservation, paste-back, reference
and cross-frame attention. The logic lives in ``ops.blending`` and ``sampling.*``."""
from __future__ import annotations

from comfy_api.latest import io

from .ops import blending
from .ops.masks import FALLOFFS
from .sampling.cross_frame import patch_cross_frame
from .sampling.preserve import patch_preserve_region
from .sampling.reference_attention import patch_reference_attention

CATEGORY = "selective_control/blending"
SAMPLING_CATEGORY = "selective_control/sampling"


def _percent(id_: str, default: float, tooltip: str) -> io.Float.Input:
    return io.Float.Input(id_, default=default, min=0.0, max=1.0, step=0.01, tooltip=tooltip)


class SCLatentBlend(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SCLatentBlend",
            display_name="Blend Latents by Mask (SC)",
            category=CATEGORY,
            description=(
                "Blends two latents with a mask in latent space: samples_b where the mask is white, samples_a "
                "where it is black. Works on UNet and DiT latents (SD, Flux, Flux.2, Z-Image, Qwen-Image). The mask is area-averaged to the latent grid and feathered there, so "
                "foreground and background fuse without a pixel seam. Keeps samples_a's noise_mask and a "
                "batch_index that fits the output batch."
            ),
            inputs=[
                io.Latent.Input("samples_a", tooltip="Latent used where the mask is 0 (e.g. the background)."),
                io.Latent.Input("samples_b", tooltip="Latent used where the mask is 1 (e.g. the foreground); same size as samples_a."),
                io.Mask.Input("mask", tooltip="Where samples_b goes; any size (area-averaged to the latent grid), batch 1 or one per latent."),
                io.Float.Input("feather", default=16.0, min=0.0, max=512.0, step=1.0,
                               tooltip="Width of the soft edge in image pixels, applied on the latent grid: 8 px per cell (SD, Flux.1, Z-Image, Qwen-Image), 16 for Flux.2's 128-channel latents; 0 keeps the mask as is."),
            ],
            outputs=[io.Latent.Output(display_name="latent", tooltip="The blended latent.")],
        )

    @classmethod
    def execute(cls, samples_a, samples_b, mask, feather) -> io.NodeOutput:
        return io.NodeOutput(blending.blend_latent_dicts(samples_a, samples_b, mask, feather))


class SCPreserveRegion(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SCPreserveRegion",
            display_name="Keep Region While Sampling (SC)",
            category=SAMPLING_CATEGORY,
            description=(
                "Patches the model so that during sampling the picture inside the mask is replaced "
                "by the source (blended over a feathered band outside the mask), so the kept area stays "
                "the source while the rest is generated around it, with any sampler and any model family (SD, Flux, Flux.2, Z-Image, Qwen-Image). Pair with Paste Back for "
                "exact pixels. The sampled latent's own noise_mask still applies."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The model to patch (it is cloned, never changed)."),
                io.Latent.Input("source", tooltip="Latent of the image to keep (VAE Encode of it), same size as the latent you sample."),
                io.Mask.Input("mask", tooltip="White = keep the source here. Any size; batch 1 or one per latent."),
                io.Float.Input("feather", default=16.0, min=0.0, max=512.0, step=1.0,
                               tooltip="Band outside the mask, in image pixels (the model's own pixels per latent cell: 8, or 16 for Flux.2), over which the source fades into the generated part."),
                _percent("start_percent", 0.0, "Sampling progress (0 = first step) at which preservation starts."),
                _percent("end_percent", 1.0, "Sampling progress at which preservation ends; 1 keeps it to the last step (exact source)."),
                io.Combo.Input("falloff", options=list(blending.SCHEDULE_FALLOFFS), default="none",
                               tooltip="How the preservation strength changes from start to end: none = full throughout, linear or cosine = fades to 0 at end."),
            ],
            outputs=[io.Model.Output(display_name="model", tooltip="The patched model; connect it to your sampler.")],
        )

    @classmethod
    def execute(cls, model, source, mask, feather, start_percent, end_percent, falloff) -> io.NodeOutput:
        return io.NodeOutput(patch_preserve_region(model, source["samples"], mask, feather, start_percent, end_percent, falloff))


class SCPasteBack(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SCPasteBack",
            display_name="Paste Back Original (SC)",
            category=CATEGORY,
            description=(
                "Restores the source pixels exactly inside the mask and blends them into the generated image over "
                "a feathered band outside it; pixels beyond the band are left untouched. Optionally matches the "
                "band's colours to the source."
            ),
            inputs=[
                io.Image.Input("image", tooltip="The generated image. Scaled (bilinear) to the original's size if they "
                                                "differ (a VAE rounds sides down to a multiple of 8)."),
                io.Image.Input("source_image", tooltip="The original image whose pixels are kept; the output has its size."),
                io.Mask.Input("mask", tooltip="White = restore the source here. Resized to the image (bilinear) if needed."),
                io.Float.Input("feather", default=8.0, min=0.0, max=512.0, step=1.0,
                               tooltip="Width in pixels of the blend band outside the mask; 0 uses the mask as given."),
                io.Combo.Input("falloff", options=list(FALLOFFS), default="smoothstep", tooltip="Shape of the blend across the band."),
                io.Boolean.Input("colour_match", default=False,
                                 tooltip="Shift the generated image's colours in the band towards the source's (mean and contrast per channel)."),
            ],
            outputs=[io.Image.Output(display_name="image", tooltip="The image with the source restored.")],
        )

    @classmethod
    def execute(cls, image, source_image, mask, feather, falloff, colour_match) -> io.NodeOutput:
        return io.NodeOutput(blending.paste_back(image, source_image, mask, feather, falloff, colour_match))


class SCReferenceAttention(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SCReferenceAttention",
            display_name="Identity From Reference (SC)",
            category=SAMPLING_CATEGORY,
            description=(
                "Carries a person's identity and style over from a reference picture: while sampling, the model "
                "also looks at the reference (noised to the same step) and copies its look, while the prompts and "
                "pose or edge controls decide the rest. Works with any sampler, with and without a negative prompt. "
                "SD1.5 and SDXL models."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The model to patch (it is cloned, never changed)."),
                io.Latent.Input("reference", tooltip="VAE-encoded reference image; batch 1 or one per latent. Resized to the sampled latent (bilinear) if its size differs."),
                io.Float.Input("strength", default=1.0, min=0.0, max=2.0, step=0.05,
                               tooltip="How much the image attends to the reference; 0 returns the plain model."),
                io.Float.Input("style_fidelity", default=0.5, min=0.0, max=1.0, step=0.05,
                               tooltip="How much the negative prompt is kept free of the reference (1 = fully), which pushes the result harder towards the reference's look."),
                _percent("start_percent", 0.0, "Sampling progress at which reference attention starts."),
                _percent("end_percent", 1.0, "Sampling progress at which reference attention ends."),
                io.Mask.Input("mask", optional=True, tooltip="Where the reference applies (white); any size, batch 1 or one per latent. Empty = everywhere."),
            ],
            outputs=[io.Model.Output(display_name="model", tooltip="The patched model; connect it to your sampler.")],
        )

    @classmethod
    def execute(cls, model, reference, strength, style_fidelity, start_percent, end_percent, mask=None) -> io.NodeOutput:
        return io.NodeOutput(patch_reference_attention(
            model, reference["samples"], strength, style_fidelity, mask, start_percent, end_percent))


class SCCrossFrameAttention(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SCCrossFrameAttention",
            display_name="Keep Frames Consistent (SC)",
            category=SAMPLING_CATEGORY,
            description=(
                "Keeps a person and background the same across the frames of a batch: while sampling, every frame "
                "also looks at the anchor frames and copies their look. With one frame it does nothing. SD1.5 and "
                "SDXL models."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The model to patch (it is cloned, never changed)."),
                io.String.Input("anchor_frames", default="0",
                                tooltip="Indices of the anchor frames in the batch, comma separated (e.g. '0' or '0, 8'); negative counts from the end."),
                io.Float.Input("strength", default=1.0, min=0.0, max=1.0, step=0.05,
                               tooltip="How much each frame copies the anchor frames: 0 = not at all, 1 = fully."),
            ],
            outputs=[io.Model.Output(display_name="model", tooltip="The patched model; connect it to your sampler.")],
        )

    @classmethod
    def execute(cls, model, anchor_frames, strength) -> io.NodeOutput:
        return io.NodeOutput(patch_cross_frame(model, anchor_frames, strength))


BLENDING_NODES: list[type[io.ComfyNode]] = [
    SCLatentBlend, SCPreserveRegion, SCPasteBack, SCReferenceAttention, SCCrossFrameAttention,
]

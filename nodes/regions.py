"""Regional conditioning nodes (thin V3 wrappers): per-region prompts and per-instance control."""
from __future__ import annotations

from comfy_api.latest import io, ui

from .ops import regions as region_ops
from .ops.shapes import as_mask
from .sampling import regions as regional
from .types import Regions

CATEGORY = "selective_control/regions"
MODES = ("attention", "instances")


class SCRegion(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SCRegion",
            display_name="Region Prompt (SC)",
            category=CATEGORY,
            description=(
                "One region: a prompt that applies where the mask is, with a weight and optionally its own "
                "ControlNet / T2I-Adapter (image, strength, mask). Chain Region Prompt nodes through 'regions' to build the "
                "list for Apply Regions; the incoming list is never changed (a new list is returned)."
            ),
            inputs=[
                io.Conditioning.Input("conditioning", tooltip="The region's prompt (CLIP Text Encode of the same model)."),
                io.Mask.Input("mask", tooltip="Where the prompt applies; any size (resized to the latent), soft "
                                              "values weight the prompt."),
                io.Float.Input("weight", default=1.0, min=0.0, max=10.0, step=0.05,
                               tooltip="How strongly the region prompt counts where regions overlap or against the "
                                       "base prompt."),
                Regions.Input("regions", optional=True, tooltip="Regions so far (from another Region Prompt node) to "
                                                                "add this one to."),
                io.ControlNet.Input("control_net", optional=True,
                                    tooltip="Optional ControlNet or T2I-Adapter just for this region."),
                io.Image.Input("control_image", optional=True, tooltip="The control image for this region's "
                                                                       "ControlNet (e.g. its pose)."),
                io.Float.Input("control_strength", default=1.0, min=0.0, max=10.0, step=0.01,
                               tooltip="Strength of this region's ControlNet."),
                io.Mask.Input("control_mask", optional=True,
                              tooltip="Where this region's ControlNet acts. Default: the region mask in attention mode; "
                                      "the whole image in instances mode (the region's own path is blended in "
                                      "by its mask anyway, so its ControlNet sees the full pose)."),
                io.Vae.Input("control_vae", optional=True,
                             tooltip="The model's VAE, for ControlNets that read the control image through it (Flux "
                                     "InstantX / Union, Qwen-Image ControlNets); others ignore it."),
            ],
            outputs=[Regions.Output("regions_out", display_name="regions",
                                    tooltip="The region list with this region appended.")],
        )

    @classmethod
    def execute(cls, conditioning, mask, weight, regions=None, control_net=None, control_image=None,
                control_strength=1.0, control_mask=None, control_vae=None) -> io.NodeOutput:
        if (control_net is None) != (control_image is None):
            raise ValueError("a region's control needs both control_net and control_image; connect both or neither")
        region = regional.Region(
            conditioning=conditioning, mask=as_mask(mask, "mask"), weight=float(weight), control_net=control_net,
            control_image=control_image, control_strength=float(control_strength),
            control_mask=None if control_mask is None else as_mask(control_mask, "control_mask"),
            control_vae=control_vae,
        )
        return io.NodeOutput((*(regions or ()), region))


COMBINE_SLOTS = 8  # the frontend extension shows the connected slots plus one free one


class SCCombineRegions(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SCCombineRegions",
            display_name="Combine Regions (SC)",
            category=CATEGORY,
            description=(
                f"Join up to {COMBINE_SLOTS} region lists, in slot order, into a new list for Apply Regions. "
                "A new slot appears when the last one is connected."
            ),
            inputs=[
                Regions.Input(f"regions_{i}", optional=i > 1,
                              tooltip="Regions (from Region Prompt or Combine Regions nodes); joined in slot order.")
                for i in range(1, COMBINE_SLOTS + 1)
            ],
            outputs=[Regions.Output("regions", display_name="regions", tooltip="All connected lists, slot 1 first.")],
        )

    @classmethod
    def execute(cls, **lists) -> io.NodeOutput:
        ordered = (lists.get(f"regions_{i}") for i in range(1, COMBINE_SLOTS + 1))
        return io.NodeOutput(tuple(region for regions in ordered if regions for region in regions))


class SCApplyRegions(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SCApplyRegions",
            display_name="Apply Regions (SC)",
            category=CATEGORY,
            description=(
                "Give each region its own prompt (and control) inside one ordinary sampler run: connect the outputs "
                "to any core sampler (KSampler, KSamplerAdvanced, SamplerCustomAdvanced). attention: one model pass; "
                "each part of the picture reads the base prompt plus the prompts of the regions covering it. "
                "instances: each region (a person, an object) is drawn as its own picture with its own prompt and "
                "control, and the pictures are joined by the masks at every step, so prompts cannot mix; areas "
                "outside every region follow the base prompt."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The model to sample with: SD1.x, SD2.x, SDXL, or on ComfyUI "
                                                "0.33+ Flux, Chroma, Qwen-Image or Z-Image."),
                io.Conditioning.Input("positive", tooltip="The base prompt: applies everywhere (attention) or "
                                                          "where no region is (instances). In attention mode name only "
                                                          "what the regions share (scene, light, style): every region "
                                                          "reads it, so an object named here can appear in any region."),
                io.Conditioning.Input("negative", tooltip="Negative prompt, passed on (used for every region)."),
                Regions.Input("regions", tooltip="The regions, from Region Prompt / Combine Regions nodes."),
                io.Combo.Input("mode", options=list(MODES), default="attention",
                               tooltip="attention: one pass where each area reads its own prompt (fast). instances: each "
                                       "region drawn separately with its own prompt and control and joined every step "
                                       "(slower, no mixing; for several people)."),
                io.Int.Input("feather", default=16, min=0, max=512, step=1,
                             tooltip="Soften the region mask edges over this many pixels (mask pixels)."),
                io.Float.Input("self_attention_locality", default=0.0, min=0.0, max=1.0, step=0.05,
                               tooltip="Attention mode: how much regions are kept from looking at each other, to stop "
                                       "one region's prompt leaking into another (0 = off, 1 = fully apart)."),
                io.Image.Input("image", optional=True, tooltip="Optional picture to draw the region preview over."),
            ],
            outputs=[
                io.Model.Output("model_out", display_name="model", tooltip="The patched model; connect to the sampler."),
                io.Conditioning.Output("positive_out", display_name="positive", tooltip="Positive conditioning for the sampler."),
                io.Conditioning.Output("negative_out", display_name="negative", tooltip="Negative conditioning for the sampler."),
                io.Image.Output("preview", display_name="preview",
                                tooltip="Region colours over the image (or a grey canvas); also shown on the node."),
            ],
        )

    @classmethod
    def execute(cls, model, positive, negative, regions, mode, feather, self_attention_locality,
                image=None) -> io.NodeOutput:
        regions = list(regions or ())
        model, positive, negative, masks = regional.apply_regions(
            model, positive, negative, regions, mode, feather, self_attention_locality)
        preview = region_ops.mask_overlay(masks, image)
        return io.NodeOutput(model, positive, negative, preview, ui=ui.PreviewImage(preview, cls=cls))


REGION_NODES: list[type[io.ComfyNode]] = [SCRegion, SCCombineRegions, SCApplyRegions]

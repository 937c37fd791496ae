"""Training nodes (thin V3 wrappers): a local-control adapter trained with the mask in the loop."""
from __future__ import annotations

import json
import logging
import os
import time

import torch

import comfy.utils
import folder_paths
from comfy.weight_adapter import adapter_maps
from comfy_api.latest import io
from tqdm.auto import tqdm

from .ops.charts import loss_plot
from .ops.files import MAX_NAME_BYTES, check_text, inside_folder, read_dataset_folder
from .sampling import adapters, compat
from .sampling import training as loop
from .sampling.control_lora import control_lora_state_dict

CATEGORY = "selective_control/training"
FROM_CONTROL_NET, FRESH_T2I_ADAPTER, FRESH_CONTROLNET = INIT_OPTIONS = (
    "from control_net", "fresh standard T2I-Adapter", "fresh ControlNet from the model")
FULL_WEIGHTS, CONTROL_LORA = SAVE_FORMATS = ("full weights", "Control-LoRA (difference to the model)")
SAVE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_LOG = logging.getLogger(__name__)
TEXT_INTERVAL_S = 0.25  # the node's progress text is refreshed at most this often (and at the last step)


class _Progress:
    """Training progress where ComfyUI users look: the node's progress bar (``comfy.utils.ProgressBar``),
    the current losses as the node's progress text (``PromptServer.send_progress_text``, as API nodes
    do) and a console bar with the loss (tqdm, like core Train LoRA), plus a log line every 10 steps."""

    def __init__(self, steps: int):
        self.steps = steps
        self.node_id = compat.executing_node_id()
        self.bar = comfy.utils.ProgressBar(steps, node_id=self.node_id)
        self.console = tqdm(total=steps, desc="Training local control", disable=not comfy.utils.PROGRESS_BAR_ENABLED)
        self.last_text = float("-inf")

    def __call__(self, step: int, noise_loss: float, sobel_loss: float) -> None:
        text = f"step {step}/{self.steps}\nnoise loss {noise_loss:.4f}\nsobel loss {sobel_loss:.4f}"
        self.console.update(step - self.console.n)
        self.console.set_postfix({"noise": f"{noise_loss:.4f}", "sobel": f"{sobel_loss:.4f}"})
        now = time.monotonic()
        if step == self.steps or now - self.last_text >= TEXT_INTERVAL_S:
            self.last_text = now
            self.send_text(text)
        if step % 10 == 0 or step == self.steps:
            _LOG.info("local control step %d/%d: noise loss %.4f, sobel loss %.4f", step, self.steps, noise_loss,
                      sobel_loss)
        compat.report_every_step(self.bar, step, self.steps)  # last: ComfyUI's hook raises here on cancel

    def send_text(self, text: str) -> None:
        compat.send_progress_text(text, self.node_id)

    def close(self) -> None:
        self.console.close()


def dataset_root(folder: str) -> str:
    """``folder`` inside ComfyUI's input directory (relative, or absolute but inside it)."""
    path = inside_folder(folder.strip(), [folder_paths.get_input_directory()], "dataset_folder",
                         "ComfyUI's input folder")
    if not path.is_dir():
        raise ValueError(f"dataset_folder {folder!r}: there is no such folder in ComfyUI's input folder; put the "
                         "dataset there (with images/, controls/ and masks/ in it) and give its name")
    return str(path)


def encode_captions(clip, captions: list[str]) -> list:
    """One CONDITIONING per caption (equal captions encoded once)."""
    encoded: dict[str, list] = {}
    for text in captions:
        if text not in encoded:
            encoded[text] = clip.encode_from_tokens_scheduled(clip.tokenize(text))
    return [encoded[text] for text in captions]


def _one(value):
    """A single-valued input of a list node (widget, model, VAE): ComfyUI wraps it in a list."""
    return value[0] if isinstance(value, list) else value


def joined_batch(values: list[torch.Tensor] | None, name: str) -> torch.Tensor | None:
    """IMAGE or MASK items of a list input (each a batch) joined into one batch; one size only."""
    if values is None:
        return None
    sizes = sorted({tuple(v.shape[1:3]) for v in values})
    if len(sizes) > 1:
        raise ValueError(f"{name}: the {len(values)} items have different sizes {sizes} (height, width); training "
                         "needs one size: resize or crop them first (or use dataset_folder, which crops to a multiple "
                         "of 8)")
    return torch.cat(values) if len(values) > 1 else values[0]


def starting_adapter(model, init: str, control_net, seed: int):
    """The adapter training starts from: the connected control_net, or a fresh one made for ``model``."""
    if init == FRESH_T2I_ADAPTER:
        return adapters.fresh_adapter(model, seed)
    if init == FRESH_CONTROLNET:
        return adapters.fresh_controlnet(model, seed)
    if control_net is None:
        raise ValueError("connect a control_net (a T2I-Adapter or ControlNet) or set init to a fresh option")
    return control_net


def training_dataset(dataset_folder: str, vae, clip, positive, latents, images, control_images, masks):
    """``(latents, control images, masks, positive)`` from dataset_folder (VAE-encoded, captions
    through the clip when one is connected) or from the connected inputs; a clear error for
    every missing or conflicting input."""
    captions = None
    if dataset_folder and dataset_folder.strip():
        connected = [name for name, value in (("latents", latents), ("images", images),
                                              ("control_images", control_images), ("masks", masks))
                     if value is not None]
        if connected:
            raise ValueError(f"dataset_folder is set and {', '.join(connected)} connected too: disconnect "
                             "them (the folder provides the dataset) or clear dataset_folder")
        data = read_dataset_folder(dataset_root(dataset_folder))
        if vae is None:
            raise ValueError(f"dataset_folder {dataset_folder!r} holds images: connect the VAE that encodes them")
        samples = vae.encode(data.images)
        control_images, masks, captions = data.controls, data.masks, data.captions
        _LOG.info("local control dataset %s: %d images, %s", dataset_folder, len(data.names),
                  "captions per image" if captions else "no captions")
    else:
        if control_images is None or masks is None:
            raise ValueError("connect control_images and masks, or set dataset_folder")
        if latents is not None:
            samples = latents["samples"]
        elif images is not None and vae is not None:
            samples = vae.encode(images[..., :3])
        else:
            raise ValueError("connect training latents, or training images and a VAE (or set dataset_folder)")
    if captions is not None and clip is not None:
        positive = encode_captions(clip, captions)
    elif positive is None:
        raise ValueError("connect a positive prompt" + (" or a clip to encode the dataset folder's captions"
                                                        if captions is not None else ""))
    elif captions is not None:
        _LOG.info("dataset captions ignored: no clip connected, using positive for every image")
    return samples, control_images, masks, positive


class SCTrainLocalControl(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SCTrainLocalControl",
            display_name="Train Local Control Adapter (SC)",
            category=CATEGORY,
            is_experimental=True,
            is_input_list=True,
            description=(
                "Train a T2I-Adapter or a ControlNet (every weight, or a LoRA on it) so its control acts only inside a "
                "mask: the adapter only acts inside the mask while training (as in Apply ControlNet With Mask), "
                "and it learns to predict the noise and to keep the edges of the picture right inside the mask "
                "(details in docs/training.md). The dataset comes from the inputs or "
                "from dataset_folder (images/, controls/, masks/ matched by file name, optional captions). The node "
                "shows the step and both losses while it runs; cancelling keeps the weights of the last finished step. "
                "Use the trained adapter through Apply ControlNet With Mask (SC): without the mask it also acts outside."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The (frozen) diffusion model the adapter is trained for (eps or v models)."),
                io.Image.Input("control_images", optional=True,
                               tooltip="Control images (edges, depth, ...), 8x the latent size, one per training "
                                       "image or a batch of 1 (or use dataset_folder)."),
                io.Mask.Input("masks", optional=True,
                              tooltip="Where each control applies (image space); features are multiplied by it and "
                                      "the Sobel loss is measured inside it (or use dataset_folder)."),
                io.Conditioning.Input("positive", optional=True,
                                      tooltip="Prompt conditioning used for every training image (unless "
                                              "dataset_folder has captions and a clip is connected)."),
                io.Combo.Input("init", options=list(INIT_OPTIONS), default=FROM_CONTROL_NET,
                               tooltip="Train the connected control_net; or start from a fresh random T2I-Adapter "
                                       "sized from the model (SD1.5- or SDXL-layout UNets); or from a fresh "
                                       "ControlNet copied from the model's encoder with zero convolutions (no "
                                       "effect until trained), as the ControlNet paper starts."),
                io.ControlNet.Input("control_net", optional=True,
                                    tooltip="A T2I-Adapter or an SD1.5/SDXL ControlNet from Load ControlNet Model to "
                                            "fine-tune (not modified)."),
                io.Latent.Input("latents", optional=True, tooltip="Training latents; or connect images and a VAE."),
                io.Image.Input("images", optional=True, tooltip="Training images, VAE-encoded here when no latents "
                                                                "are connected."),
                io.Vae.Input("vae", optional=True, tooltip="VAE that encodes the training images."),
                io.Int.Input("steps", default=200, min=1, max=100000, tooltip="Number of optimiser steps."),
                io.Float.Input("learning_rate", default=1e-4, min=1e-7, max=1.0, step=1e-6,
                               tooltip="AdamW learning rate for the adapter's weights."),
                io.Int.Input("batch_size", default=1, min=1, max=256, tooltip="Training images per step."),
                io.Float.Input("sobel_weight", default=1.0, min=0.0, max=100.0, step=0.01,
                               tooltip="How much the edges inside the mask count in the training loss (0 = only the usual noise loss)."),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Timestep range start, as in ControlNet start_percent (0 = noisiest)."),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Timestep range end (1 = least noisy); sigmas are drawn uniformly in between."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF,
                             tooltip="Seed for batches, noise, timesteps and a fresh adapter's weights."),
                io.Boolean.Input("gradient_checkpointing", default=False,
                                 tooltip="Recompute UNet and adapter activations in the backward pass: less memory, "
                                         "slower."),
                io.String.Input("dataset_folder", default="", optional=True,
                                tooltip="Instead of the image/control/mask inputs: a folder inside ComfyUI's input "
                                        "directory with images/, controls/ and masks/ holding files of the same "
                                        "names (cat.png in each), and optionally a caption images/cat.txt per image. "
                                        "Needs a VAE. Empty = use the inputs."),
                io.Clip.Input("clip", optional=True,
                              tooltip="Encodes the dataset folder's captions (one prompt per image); without it, or "
                                      "without captions, positive is used for every image."),
                io.Int.Input("lora_rank", default=0, min=0, max=1024, optional=True,
                             tooltip="0 = train every weight of the adapter. Above 0 = train a low-rank adapter of "
                                     "this rank on each conv/linear weight instead (far fewer trainable weights "
                                     "and optimiser memory: fine-tuning a ControlNet on a small GPU); a "
                                     "ControlNet's hint block and zero convolutions still train fully. It is merged "
                                     "in, so the result saves and loads like any adapter; a fresh ControlNet "
                                     "trained this way saves as a small Control-LoRA file (Save Adapter)."),
                io.Combo.Input("lora_algorithm", options=list(adapter_maps), default=next(iter(adapter_maps)),
                               optional=True,
                               tooltip="The low-rank kind when lora_rank > 0 (ComfyUI's own, as in Train LoRA)."),
            ],
            outputs=[
                io.ControlNet.Output("trained_control_net", display_name="trained_control_net",
                                     tooltip="The trained T2I-Adapter or ControlNet; save it with Save Adapter."),
                io.String.Output("loss_history", display_name="loss_history", tooltip="JSON: noise_loss and sobel_loss per step, steps_done, "
                                                         "interrupted, diverged_at_step."),
                io.Image.Output("loss_plot", display_name="loss_plot", tooltip="Both losses against the step."),
            ],
        )

    @classmethod
    def execute(cls, model, init, control_images=None, masks=None, positive=None, control_net=None, lora_rank=0,
                lora_algorithm="LoRA", latents=None, images=None, vae=None, steps=200, learning_rate=1e-4,
                batch_size=1, sobel_weight=1.0, start_percent=0.0, end_percent=1.0, seed=0,
                gradient_checkpointing=False, dataset_folder="", clip=None) -> io.NodeOutput:
        # is_input_list: every input arrives as a list, so lists from core's dataset nodes (one item per
        # image: Load Image Dataset from Folder, Make Training Dataset) make one dataset, not one run each.
        model, init, control_net, lora_rank, lora_algorithm, vae, steps, learning_rate, batch_size, sobel_weight, \
            start_percent, end_percent, seed, gradient_checkpointing, dataset_folder, clip = map(
                _one, (model, init, control_net, lora_rank, lora_algorithm, vae, steps, learning_rate, batch_size,
                       sobel_weight, start_percent, end_percent, seed, gradient_checkpointing, dataset_folder, clip))
        control_images, masks, images = (joined_batch(v, name) for v, name in (
            (control_images, "control_images"), (masks, "masks"), (images, "images")))
        if latents is not None:
            latents = {"samples": joined_batch([latent["samples"] for latent in latents], "latents")}
        if positive is not None and len(positive) == 1:
            positive = positive[0]  # one prompt for every image; a longer list is one prompt per image
        samples, control_images, masks, positive = training_dataset(
            dataset_folder, vae, clip, positive, latents, images, control_images, masks)
        adapter = starting_adapter(model, init, control_net, seed)
        config = loop.TrainConfig(steps, learning_rate, batch_size, sobel_weight, start_percent, end_percent, seed,
                                  gradient_checkpointing, lora_rank=lora_rank, lora_algorithm=lora_algorithm)
        progress = _Progress(steps)
        try:
            result = loop.train_local_control(model, adapter, samples, control_images, masks, positive, config,
                                              progress)
        finally:
            progress.close()
        if result.interrupted:
            progress.send_text(f"cancelled after step {len(result.noise_loss)}/{steps}: returning those weights")
        elif result.diverged_at_step is not None:
            progress.send_text(f"diverged at step {result.diverged_at_step} (loss not finite): returning the weights "
                               f"of step {result.diverged_at_step - 1}; lower the learning rate")
        history = result.history()
        plot = loss_plot({"noise loss": result.noise_loss, "sobel loss": result.sobel_loss})
        return io.NodeOutput(result.adapter, json.dumps(history), plot)


class SCSaveAdapter(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SCSaveAdapter",
            display_name="Save Adapter (SC)",
            category=CATEGORY,
            is_output_node=True,
            description=(
                "Save a T2I-Adapter or ControlNet as safetensors into models/controlnet, where Load ControlNet Model "
                "finds it (refresh the node list), ready for Apply ControlNet With Mask (SC): as full weights, or a "
                "ControlNet as a Control-LoRA (differences to the model's UNet, a few % of the size)."
            ),
            inputs=[
                io.ControlNet.Input("control_net",
                                    tooltip="A T2I-Adapter or ControlNet, e.g. from Train Local Control Adapter (SC)."),
                io.String.Input("filename_prefix", default="local_control/adapter",
                                tooltip="File name prefix inside models/controlnet; a counter is appended."),
                io.Combo.Input("dtype", options=list(SAVE_DTYPES), default="float32", optional=True,
                               tooltip="Precision of the saved weights: float16 halves the file (how most published "
                                       "ControlNets ship); float32 keeps the trained values exactly."),
                io.Combo.Input("save_as", options=list(SAVE_FORMATS), default=FULL_WEIGHTS, optional=True,
                               tooltip="full weights: the whole adapter. Control-LoRA: a ControlNet stored as "
                                       "low-rank differences to the model's UNet plus its own hint block and zero "
                                       "convolutions, a file a few % of the size that core Load ControlNet Model "
                                       "reads (it rebuilds the rest from the model you sample with). Exact for a "
                                       "fresh ControlNet trained with lora_rank <= control_lora_rank."),
                io.Model.Input("model", optional=True,
                               tooltip="Control-LoRA only: the model the ControlNet was trained against."),
                io.Int.Input("control_lora_rank", default=16, min=1, max=1024, optional=True,
                             tooltip="Control-LoRA only: rank of the stored differences (use the training's "
                                     "lora_rank; lower ranks approximate, see truncation_error)."),
            ],
            outputs=[io.String.Output("filename", display_name="filename", tooltip="The saved file, relative to models/controlnet."),
                     io.Float.Output("truncation_error", display_name="truncation_error",
                                     tooltip="Control-LoRA: the worst relative error of a stored difference (0 = "
                                             "exact); 0 for full weights.")],
        )

    @classmethod
    def execute(cls, control_net, filename_prefix, dtype="float32", save_as=FULL_WEIGHTS, model=None,
                control_lora_rank=16) -> io.NodeOutput:
        root = folder_paths.get_folder_paths("controlnet")[0]
        inside_folder(filename_prefix, [root], "filename_prefix", "models/controlnet")  # before any work
        check_text(os.path.basename(filename_prefix), "filename_prefix", MAX_NAME_BYTES - len("_00000_.safetensors"))
        error = 0.0
        if save_as == CONTROL_LORA:
            if model is None:
                raise ValueError("save_as Control-LoRA stores differences to the model's UNet: connect the model the "
                                 "ControlNet was trained against")
            weights, error = control_lora_state_dict(control_net, model, control_lora_rank)
            if error > 1e-3:
                _LOG.warning("Control-LoRA at rank %d leaves out %.1f%% of a weight difference; raise "
                             "control_lora_rank to the training's lora_rank for an exact file", control_lora_rank,
                             100 * error)
        else:
            weights = adapters.adapter_state_dict(control_net)
        state = {k: v.to(SAVE_DTYPES[dtype]) if v.is_floating_point() else v for k, v in weights.items()}
        folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(filename_prefix, root)
        os.makedirs(folder, exist_ok=True)
        file = f"{name}_{counter:05}_.safetensors"
        path = inside_folder(os.path.join(subfolder, file), [root], "filename_prefix", "models/controlnet")
        comfy.utils.save_torch_file(state, str(path), metadata={"format": "pt"})
        return io.NodeOutput(os.path.join(subfolder, file).replace(os.sep, "/"), error)


TRAINING_NODES: list[type[io.ComfyNode]] = [SCTrainLocalControl, SCSaveAdapter]

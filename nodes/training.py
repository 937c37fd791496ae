"""Training nodes (thin V3 wrappers): a local-control adapter trained with the mask in the loop."""
from __future__ import annotations

import json
import logging
import os

import comfy.controlnet
import comfy.utils
import folder_paths
from comfy_api.latest import io

from .ops import training as ops
from .sampling import training as loop

CATEGORY = "selective_control/training"
INIT_OPTIONS = ("from control_net", "fresh standard T2I-Adapter")
_LOG = logging.getLogger(__name__)


class SCTrainLocalControl(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SCTrainLocalControl",
            display_name="Train Local Control Adapter",
            category=CATEGORY,
            is_experimental=True,
            description=(
                "Train a T2I-Adapter so its control acts only inside a mask: at every step the adapter's features are "
                "multiplied by the mask (the same code as Apply ControlNet (Masked)), the frozen UNet predicts the "
                "noise, and the loss is the noise MSE plus sobel_weight x the Sobel-edge difference between the "
                "predicted clean latent z0' and the true latent inside the mask. Cancelling keeps the weights of the "
                "last finished step."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The (frozen) diffusion model the adapter is trained for (eps or v models)."),
                io.Image.Input("control_images", tooltip="Control images (edges, depth, ...), 8x the latent size, "
                                                         "one per training image or a batch of 1."),
                io.Mask.Input("masks", tooltip="Where each control applies (image space); features are multiplied "
                                               "by it and the Sobel loss is measured inside it."),
                io.Conditioning.Input("positive", tooltip="Prompt conditioning used for every training image."),
                io.Combo.Input("init", options=list(INIT_OPTIONS), default=INIT_OPTIONS[0],
                               tooltip="Train the connected control_net, or start from a fresh random T2I-Adapter "
                                       "sized from the model (SD1.5-layout UNets)."),
                io.ControlNet.Input("control_net", optional=True,
                                    tooltip="A T2I-Adapter from Load ControlNet Model to fine-tune (not modified)."),
                io.Latent.Input("latents", optional=True, tooltip="Training latents; or connect images and a VAE."),
                io.Image.Input("images", optional=True, tooltip="Training images, VAE-encoded here when no latents "
                                                                "are connected."),
                io.Vae.Input("vae", optional=True, tooltip="VAE that encodes the training images."),
                io.Int.Input("steps", default=200, min=1, max=100000, tooltip="Number of optimiser steps."),
                io.Float.Input("learning_rate", default=1e-4, min=1e-7, max=1.0, step=1e-6,
                               tooltip="AdamW learning rate for the adapter's weights."),
                io.Int.Input("batch_size", default=1, min=1, max=256, tooltip="Training images per step."),
                io.Float.Input("sobel_weight", default=1.0, min=0.0, max=100.0, step=0.01,
                               tooltip="Lambda: weight of the masked Sobel loss on z0' (0 = plain noise loss)."),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Timestep range start, as in ControlNet start_percent (0 = noisiest)."),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Timestep range end (1 = least noisy); sigmas are drawn uniformly in between."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF,
                             tooltip="Seed for batches, noise, timesteps and a fresh adapter's weights."),
                io.Boolean.Input("gradient_checkpointing", default=False,
                                 tooltip="Recompute UNet activations in the backward pass: less memory, slower."),
            ],
            outputs=[
                io.ControlNet.Output("trained_control_net", tooltip="The trained T2I-Adapter; save it with Save Adapter."),
                io.String.Output("loss_history", tooltip="JSON: noise_loss and sobel_loss per step, steps_done, "
                                                         "interrupted."),
                io.Image.Output("loss_plot", tooltip="Both losses against the step."),
            ],
        )

    @classmethod
    def execute(cls, model, control_images, masks, positive, init, control_net=None, latents=None, images=None,
                vae=None, steps=200, learning_rate=1e-4, batch_size=1, sobel_weight=1.0, start_percent=0.0,
                end_percent=1.0, seed=0, gradient_checkpointing=False) -> io.NodeOutput:
        if init == INIT_OPTIONS[1]:
            adapter = loop.fresh_adapter(model, seed)
        elif control_net is None:
            raise ValueError("connect a control_net (a T2I-Adapter) or set init to 'fresh standard T2I-Adapter'")
        else:
            adapter = control_net
        if latents is not None:
            samples = latents["samples"]
        elif images is not None and vae is not None:
            samples = vae.encode(images[..., :3])
        else:
            raise ValueError("connect training latents, or training images and a VAE")
        config = loop.TrainConfig(steps, learning_rate, batch_size, sobel_weight, start_percent, end_percent, seed,
                                  gradient_checkpointing)
        bar = comfy.utils.ProgressBar(steps)

        def on_step(step: int, noise_loss: float, sobel_loss: float) -> None:
            bar.update_absolute(step, steps)
            if step % 10 == 0 or step == steps:
                _LOG.info("local control step %d/%d: noise loss %.4f, sobel loss %.4f", step, steps, noise_loss,
                          sobel_loss)

        result = loop.train_local_control(model, adapter, samples, control_images, masks, positive, config, on_step)
        history = result.history()
        plot = ops.loss_plot({"noise loss": result.noise_loss, "sobel loss": result.sobel_loss})
        return io.NodeOutput(result.adapter, json.dumps(history), plot)


class SCSaveAdapter(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SCSaveAdapter",
            display_name="Save Adapter",
            category=CATEGORY,
            is_output_node=True,
            description=(
                "Save a T2I-Adapter as safetensors into models/controlnet, where Load ControlNet Model finds it "
                "(refresh the node list), ready for Apply ControlNet (Masked)."
            ),
            inputs=[
                io.ControlNet.Input("control_net", tooltip="A T2I-Adapter, e.g. from Train Local Control Adapter."),
                io.String.Input("filename_prefix", default="local_control/adapter",
                                tooltip="File name prefix inside models/controlnet; a counter is appended."),
            ],
            outputs=[io.String.Output("filename", tooltip="The saved file, relative to models/controlnet.")],
        )

    @classmethod
    def execute(cls, control_net, filename_prefix) -> io.NodeOutput:
        if not isinstance(control_net, comfy.controlnet.T2IAdapter):
            raise ValueError(f"Save Adapter writes T2I-Adapters; got {type(control_net).__name__}")
        root = folder_paths.get_folder_paths("controlnet")[0]
        folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(filename_prefix, root)
        os.makedirs(folder, exist_ok=True)
        file = f"{name}_{counter:05}_.safetensors"
        state = {k: v.detach().cpu().contiguous() for k, v in control_net.t2i_model.state_dict().items()}
        comfy.utils.save_torch_file(state, os.path.join(folder, file), metadata={"format": "pt"})
        return io.NodeOutput(os.path.join(subfolder, file).replace(os.sep, "/"))


TRAINING_NODES: list[type[io.ComfyNode]] = [SCTrainLocalControl, SCSaveAdapter]

"""Train the toy ControlNet (object outlines -> objects) with the pack's own Train Local Control node.

The graph runs through ComfyUI's executor, as a user's would: the toy model (model.py) and a
dataset node feed ``SCTrainLocalControl`` (init: a fresh ControlNet copied from the model's encoder
with zero convolutions), whose result ``SCSaveAdapter`` writes. Dataset: ``--scenes`` world scenes
(1-4 objects), each captioned with its objects, its control image the objects' outlines
(``world.outlines``) and its mask all ones (a whole-image control, so the sanity bar can be asked
without a mask).

Training goes in chunks of ``--chunk`` steps, each one prompt run: a chunk starts from the last
saved ControlNet (``ToyWorldControlNetLoader`` -> init "from control_net"; AdamW restarts per chunk), draws
its batches with its own seed, and appends the node's loss history to ``--history``. The node's
loss chart of the whole run (its own ``loss_plot`` of the joined history) is written beside the
weights. Never run by CI.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/toyworld/train_control.py   # the committed run's settings
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "tests"))
sys.path.insert(0, str(HERE.parent))
from harness import boot, pack_import, run_prompt, workspace  # noqa: E402
from toyworld import model as toy, world  # noqa: E402

WEIGHTS = toy.CONTROLNET
SEED = 20261207


def dataset(scenes: int, seed: int = SEED):
    """(LATENT, outline images, all-ones masks, captions) of ``scenes`` seeded world scenes."""
    rng = random.Random(seed)
    drawn = [world.random_scene(rng) for _ in range(scenes)]
    latents = torch.stack([world.scene_latent(s, toy.LATENT_CELLS) for s in drawn]) / world.SD15_SCALE_FACTOR
    pixels = toy.LATENT_CELLS * world.DOWNSCALE
    controls = torch.stack([world.outlines(s, pixels) for s in drawn])
    return {"samples": latents}, controls, torch.ones(scenes, pixels, pixels), [s.caption() for s in drawn]


class ToyWorldControlSet:
    """Test-only node: the outline dataset, its captions as a list (one CLIP Text Encode each)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"scenes": ("INT", {"default": 2048, "min": 1, "max": 100000})}}

    RETURN_TYPES = ("LATENT", "IMAGE", "MASK", "STRING")
    OUTPUT_IS_LIST = (False, False, False, True)
    FUNCTION = "run"
    CATEGORY = "testing"

    def run(self, scenes):
        return dataset(scenes)


def training_prompt(args, chunk: int, resume: bool) -> dict:
    prompt = {
        "toy": {"class_type": "ToyWorldLoader", "inputs": {}},
        "data": {"class_type": "ToyWorldControlSet", "inputs": {"scenes": args.scenes}},
        "captions": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["toy", 1], "text": ["data", 3]}},
        "train": {"class_type": "SCTrainLocalControl", "inputs": {
            "model": ["toy", 0], "latents": ["data", 0], "control_images": ["data", 1], "masks": ["data", 2],
            "positive": ["captions", 0], "init": "from control_net" if resume else "fresh ControlNet from the model",
            "steps": args.chunk, "learning_rate": args.lr, "batch_size": args.batch, "sobel_weight": args.sobel,
            "start_percent": 0.0, "end_percent": 1.0, "seed": SEED + chunk, "gradient_checkpointing": False}},
        "save": {"class_type": "SCSaveAdapter", "inputs": {
            "control_net": ["train", 0], "filename_prefix": "toy_controlnet", "dtype": "float16",
            "save_as": "full weights"}},
    }
    if resume:
        prompt["start"] = {"class_type": "ToyWorldControlNetLoader", "inputs": {}}
        prompt["train"]["inputs"]["control_net"] = ["start", 0]
    return prompt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5500, help="train until this many steps in all")
    parser.add_argument("--chunk", type=int, default=500)
    parser.add_argument("--scenes", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--sobel", type=float, default=1.0, help="the node's sobel_weight")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--history", type=Path, default=WEIGHTS.with_name("toy_controlnet_log.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    boot(pytorch_attention=True)
    toy.register_loader_node()
    import nodes

    nodes.NODE_CLASS_MAPPINGS["ToyWorldControlSet"] = ToyWorldControlSet
    controlnet_dir = workspace().models / "controlnet"
    history = json.loads(args.history.read_text()) if args.history.exists() else {
        "noise_loss": [], "sobel_loss": [], "seconds": 0.0, "chunks": []}
    while len(history["noise_loss"]) < args.steps:
        chunk = len(history["chunks"])
        resume = WEIGHTS.exists() and chunk > 0
        start = time.time()
        result = run_prompt(training_prompt(args, chunk, resume), outputs=["save", "train"])
        seconds = time.time() - start
        losses = json.loads(result.output("train", 1))
        saved = controlnet_dir / result.output("save", 0)
        shutil.copy(saved, WEIGHTS)
        saved.unlink()
        history["noise_loss"] += [round(v, 6) for v in losses["noise_loss"]]
        history["sobel_loss"] += [round(v, 6) for v in losses["sobel_loss"]]
        history["seconds"] += seconds
        history["chunks"].append({"steps": losses["steps_done"], "seconds": round(seconds, 1), "lr": args.lr,
                                  "batch": args.batch, "scenes": args.scenes, "sobel_weight": args.sobel})
        args.history.write_text(json.dumps(history))
        tail = history["noise_loss"][-50:]
        print(f"step {len(history['noise_loss'])}: noise loss (last 50) {sum(tail) / len(tail):.4f}, "
              f"{seconds / losses['steps_done']:.2f} s/step, {history['seconds'] / 60:.1f} min in all", flush=True)
    chart = pack_import("nodes.ops.charts").loss_plot({"noise loss": history["noise_loss"],
                                                       "sobel loss": history["sobel_loss"]})
    from PIL import Image

    Image.fromarray((chart[0].numpy() * 255).round().astype("uint8")).save(WEIGHTS.with_suffix(".loss.png"))
    digest = toy.sha256(WEIGHTS)
    WEIGHTS.with_suffix(".sha256").write_text(f"{digest}  {WEIGHTS.name}\n")
    print(f"{WEIGHTS.name} after {len(history['noise_loss'])} steps, sha256 {digest}")


if __name__ == "__main__":
    main()

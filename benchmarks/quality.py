"""Benchmark: what lands where. Regional prompts on a model trained here, judged without a neural net.

Model: the toy SD1.5-architecture text-to-image model of ``benchmarks/toyworld`` (ComfyUI's own UNet
and CLIP classes, trained on the synthetic world; 128 px pictures, 16x16 latent), so the numbers are
about a toy model, not Stable Diffusion. Every picture is sampled through ComfyUI's executor with
the real nodes (CLIPTextEncode, ConditioningSetMask / SetArea / Combine, the pack's Region Prompt
and Apply Regions, KSampler euler), then decoded by the world's fixed latent mapping and judged by
``toyworld/judge.py``.

Layouts: halves (2 regions), thirds (3), quadrants (4) and random boxes (2 and 4). Every region asks
for "a <colour> <shape>" (distinct colours); the seeds are split in groups, each group its own
random colours and shapes (and boxes), the same for every method. Methods:
- ``no_control``: one prompt listing every object, no spatial control;
- ``core_mask``: core ConditioningSetMask per region prompt, combined with that listing prompt;
- ``core_area``: core ConditioningSetArea per region prompt, combined with it;
- ``attention_l0`` / ``attention_l05``: Apply Regions (SC), attention mode, locality 0 / 0.5;
- ``instances``: Apply Regions (SC), instances mode.
The pack's methods get the listing prompt as their base prompt, as the core ones do.

Figures per (layout, method):
- success: share of asked instances found in their region (MIG-style: an object of the asked
  colour with more than half of its area inside the region);
- shape: share found there with the asked shape too;
- leak: share of a region colour's pixels that lie outside its region (mean over regions whose
  colour appears);
- seam: the pack's seam ratio (``ops.metrics.seam_score``, the SCSeamScore node's op) along every
  region's edge (1 = no more edge energy along the region border than around it).

Other controls (``--controls all``). Keeping a region: a source picture of one object is kept by its grown silhouette
while a new object is asked for beside it; core SetLatentNoiseMask inpainting, core "generate then
ImageCompositeMasked", the pack's Keep Region While Sampling alone and followed by Paste Back
Original. Figures: kept pixels bit-identical to the source, seam along the mask, new object found.
ControlNet: the toy ControlNet (``toyworld/train_control.py``, trained with the pack's Train Local
Control) on world outlines: one outline (core Apply ControlNet against no control), two outlines
with a mask on one (core, the pack's Apply ControlNet With Mask with and without exact_outside, no
control; IoU of the drawn objects with each outline), three regions each with its own outline and
prompt (instances mode with a ControlNet per region, without, and core SetMask + core ControlNet).

Run: ``.venv/bin/python benchmarks/quality.py [--seeds 64 --layouts halves,quadrants --controls all]``. Last stdout
line: JSON with ``unet_<method>_l<N>_success`` (N the regions of the fixed layouts) and more.
The model families (``FAMILIES``) and methods (``METHODS``) are tables, so the next controls and a
DiT slot in beside them.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import boot, box_mask_nodes, pack_import, run_prompt  # noqa: E402
from toyworld import judge, model as toy, world  # noqa: E402

SIZE = toy.LATENT_CELLS * world.DOWNSCALE  # 128 px
CELL = world.DOWNSCALE
STEPS, CFG, SAMPLER, SCHEDULER = 10, 5.0, "euler", "normal"
FEATHER = 8  # px: one latent cell (the node's default 16 is for 512 px pictures)
SEED = 1000
GROUP = 32  # seeds per group; every group its own colours, shapes (and random boxes)

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in latent cells


def _fixed(boxes: list[Box]):
    return lambda rng: boxes


def _random_boxes(count: int):
    """``count`` boxes of 6-10 cells a side, apart (the world's objects fit in 4.5)."""
    def make(rng: random.Random) -> list[Box]:
        while True:
            boxes = []
            for _ in range(count):
                w, h = rng.randint(6, 10), rng.randint(6, 10)
                x, y = rng.randint(0, 16 - w), rng.randint(0, 16 - h)
                boxes.append((x, y, x + w, y + h))
            if all(a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]
                   for i, a in enumerate(boxes) for b in boxes[i + 1:]):
                return boxes
    return make


LAYOUTS = {  # name -> (regions, boxes for a group's rng)
    "halves": (2, _fixed([(0, 0, 8, 16), (8, 0, 16, 16)])),
    "thirds": (3, _fixed([(0, 0, 5, 16), (5, 0, 11, 16), (11, 0, 16, 16)])),
    "quadrants": (4, _fixed([(0, 0, 8, 8), (8, 0, 16, 8), (0, 8, 8, 16), (8, 8, 16, 16)])),
    "random4": (4, _random_boxes(4)),
    "random2": (2, _random_boxes(2)),
}
FIXED_LAYOUT_OF_COUNT = {2: "halves", 3: "thirds", 4: "quadrants"}


@dataclass(frozen=True)
class Group:
    seed: int
    boxes: list[Box]
    asks: list[tuple[str, str]]  # (colour, shape) per region

    def listing(self) -> str:
        return world.caption([f"a {c} {s}" for c, s in self.asks])


def groups(layout: str, seeds: int) -> list[Group]:
    count, boxes_of = LAYOUTS[layout]
    out = []
    for g in range(max(1, seeds // GROUP)):
        rng = random.Random(f"{layout}-{g}")
        asks = list(zip(rng.sample(list(world.COLOURS), count), rng.choices(world.SHAPES, k=count)))
        out.append(Group(SEED + g * GROUP, boxes_of(rng), asks))
    return out


def _encode(node: str, text: str) -> dict:
    return {node: {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["toy", 1]}}}


def _masks(group: Group) -> dict:
    nodes = {}
    for i, (x0, y0, x1, y1) in enumerate(group.boxes):
        nodes.update(box_mask_nodes(f"mask{i}", SIZE, SIZE, (x0 * CELL, y0 * CELL, (x1 - x0) * CELL, (y1 - y0) * CELL)))
    return nodes


def _combined(nodes: dict, conds: list[str]) -> str:
    last = conds[0]
    for i, cond in enumerate(conds[1:]):
        nodes[f"combine{i}"] = {"class_type": "ConditioningCombine",
                                "inputs": {"conditioning_1": [last, 0], "conditioning_2": [cond, 0]}}
        last = f"combine{i}"
    return last


def _set_mask(index: int, mask: list) -> dict:
    """Core ConditioningSetMask of prompt ``region<index>`` to ``mask`` (a node output)."""
    return {"class_type": "ConditioningSetMask", "inputs": {
        "conditioning": [f"region{index}", 0], "mask": mask, "strength": 1.0, "set_cond_area": "default"}}


def _core(kind: str):
    def build(nodes: dict, group: Group) -> tuple[list, list, list]:
        conds = ["base"]
        for i, (x0, y0, x1, y1) in enumerate(group.boxes):
            if kind == "mask":
                nodes[f"set{i}"] = _set_mask(i, [f"mask{i}", 0])
            else:
                nodes[f"set{i}"] = {"class_type": "ConditioningSetArea", "inputs": {
                    "conditioning": [f"region{i}", 0], "width": (x1 - x0) * CELL, "height": (y1 - y0) * CELL,
                    "x": x0 * CELL, "y": y0 * CELL, "strength": 1.0}}
            conds.append(f"set{i}")
        return ["toy", 0], [_combined(nodes, conds), 0], ["negative", 0]
    return build


def _apply_regions(nodes: dict, masks: list[list], mode: str, locality: float = 0.0,
                   controls: list[dict] | None = None) -> tuple[list, list, list]:
    """Region (SC) per region prompt ``region<i>`` with ``masks[i]`` (and ``controls[i]``'s inputs),
    chained into Apply Regions (SC) on the base prompt; (model, positive, negative) it gives."""
    previous = None
    for i, mask in enumerate(masks):
        inputs = {"conditioning": [f"region{i}", 0], "mask": mask, "weight": 1.0, "control_strength": 1.0,
                  **(controls[i] if controls else {})}
        if previous:
            inputs["regions"] = [previous, 0]
        nodes[f"sc_region{i}"] = {"class_type": "SCRegion", "inputs": inputs}
        previous = f"sc_region{i}"
    nodes["apply"] = {"class_type": "SCApplyRegions", "inputs": {
        "model": ["toy", 0], "positive": ["base", 0], "negative": ["negative", 0], "regions": [previous, 0],
        "mode": mode, "feather": FEATHER, "self_attention_locality": locality}}
    return ["apply", 0], ["apply", 1], ["apply", 2]


def _pack(mode: str, locality: float = 0.0):
    return lambda nodes, group: _apply_regions(nodes, [[f"mask{i}", 0] for i in range(len(group.boxes))], mode,
                                                locality)


def _no_control(nodes: dict, group: Group) -> tuple[list, list, list]:
    return ["toy", 0], ["base", 0], ["negative", 0]


METHODS = {
    "no_control": _no_control,
    "core_mask": _core("mask"),
    "core_area": _core("area"),
    "attention_l0": _pack("attention", 0.0),
    "attention_l05": _pack("attention", 0.5),
    "instances": _pack("instances"),
}
FAMILIES = {"unet": toy.register_loader_node}  # issue 27 adds a DiT here


def _sampler(model: list, positive: list, negative: list, latent: list, seed: int) -> dict:
    """KSampler with the bench's settings (euler, 10 steps, cfg 5, full denoise)."""
    return {"class_type": "KSampler", "inputs": {
        "model": model, "positive": positive, "negative": negative, "latent_image": latent, "seed": seed,
        "steps": STEPS, "cfg": CFG, "sampler_name": SAMPLER, "scheduler": SCHEDULER, "denoise": 1.0}}


# The base prompt the spatial methods get: "scene" names only what every region shares (how regional
# prompting is meant to be used), "listing" names every region's object (MIG's global prompt), so every
# pixel that reads it reads every object. The one-prompt method always gets the listing.
SCENE_PROMPT = f"on a {world.BACKGROUND_NAME} background"
FAMILY_OF_BASE = {"scene": "unet", "listing": "unet_listing"}


def base_prompt(method: str, group: Group, base: str) -> str:
    return group.listing() if base == "listing" or method == "no_control" else SCENE_PROMPT


def prompt_nodes(base: str, batch: int, regions: list[str] = ()) -> dict:
    """The nodes a sampled cell starts from: the toy model, the base prompt ``base``, the empty negative,
    a prompt ``region<i>`` per text of ``regions``, an empty latent of ``batch`` pictures and the decode
    of the ``sampler`` node (see ``sampled``)."""
    nodes = {"toy": {"class_type": "ToyWorldLoader", "inputs": {}}, **_encode("base", base), **_encode("negative", ""),
             "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": batch}},
             "decoded": {"class_type": "ToyWorldDecode", "inputs": {"samples": ["sampler", 0]}}}
    for i, text in enumerate(regions):
        nodes.update(_encode(f"region{i}", text))
    return nodes


def sampled(nodes: dict, model: list, positive: list, negative: list, seed: int) -> torch.Tensor:
    """[batch, 128, 128, 3] pictures of ``prompt_nodes`` plus a method's nodes, through ComfyUI's executor."""
    nodes["sampler"] = _sampler(model, positive, negative, ["latent", 0], seed)
    return run_prompt(nodes, outputs=["decoded"]).output("decoded").float()


def sample(method: str, group: Group, batch: int = GROUP, text: str | None = None, base: str = "scene") -> torch.Tensor:
    """[batch, 128, 128, 3] pictures of ``group`` by ``method`` (``text``: the base prompt, by default
    the one ``base`` names)."""
    nodes = {**prompt_nodes(text or base_prompt(method, group, base), batch, [f"a {c} {s}" for c, s in group.asks]),
             **_masks(group)}
    return sampled(nodes, *METHODS[method](nodes, group), group.seed)


def region_mask(box: Box) -> np.ndarray:
    x0, y0, x1, y1 = box
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    mask[y0 * CELL:y1 * CELL, x0 * CELL:x1 * CELL] = True
    return mask


@dataclass
class Cell:
    success: list
    shape: list
    leak: list
    seam: list
    seconds: float = 0.0

    def figures(self) -> dict[str, float]:
        mean = lambda values: float(np.mean(values)) if values else float("nan")  # noqa: E731
        return {"success": mean(self.success), "shape": mean(self.shape), "leak": mean(self.leak),
                "seam": mean(self.seam), "instances": len(self.success), "seconds": self.seconds}


def score(images: torch.Tensor, group: Group, cell: Cell) -> None:
    metrics = pack_import("nodes.ops.metrics")
    for image in images:
        found = judge.find_objects(image.numpy())
        for box, (colour, shape) in zip(group.boxes, group.asks):
            region = region_mask(box)
            verdict = judge.judge_instance(found, colour, shape, region)
            cell.success.append(verdict.success)
            cell.shape.append(verdict.shape_right)
            leak = judge.colour_leak(image.numpy(), colour, region)
            if leak is not None:
                cell.leak.append(leak)
    for box in group.boxes:
        mask = torch.from_numpy(region_mask(box)).float()[None]
        cell.seam.extend(metrics.seam_score(images, mask.expand(len(images), -1, -1))["seam_ratio"])


def run_cell(method: str, layout: str, seeds: int, base: str = "scene") -> Cell:
    cell = Cell([], [], [], [])
    start = time.perf_counter()
    for group in groups(layout, seeds):
        score(sample(method, group, batch=min(GROUP, seeds), base=base), group, cell)
    cell.seconds = time.perf_counter() - start
    return cell


def sanity(seeds: int) -> dict[str, float]:
    """The bar before any other figure counts: "a <colour> <shape>" alone gives that colour in >= 95 %
    of the seeds and that shape in >= 80 % (the largest object of that colour is judged). ``seeds``
    per colour, the three shapes taking turns."""
    colour_hits, shape_hits, rows = 0, 0, []
    for colour in world.COLOURS:
        right_colour = right_shape = 0
        for index, shape in enumerate(world.SHAPES):
            batch = len(range(index, seeds, len(world.SHAPES)))
            group = Group(SEED + index, [(0, 0, 16, 16)], [(colour, shape)])
            images = sample("no_control", group, batch=batch, text=f"a {colour} {shape}")
            found = [[o for o in judge.find_objects(image.numpy()) if o.colour == colour] for image in images]
            right_colour += sum(bool(f) for f in found)
            right_shape += sum(bool(f) and f[0].shape == shape for f in found)
        colour_hits, shape_hits = colour_hits + right_colour, shape_hits + right_shape
        rows.append(f"{colour:8} colour {right_colour / seeds:.3f} shape {right_shape / seeds:.3f}")
    print("\n".join(rows), flush=True)
    total = seeds * len(world.COLOURS)
    return {"sanity_colour": round(colour_hits / total, 4), "sanity_shape": round(shape_hits / total, 4),
            "sanity_seeds_per_colour": seeds}


# Keeping a region (issue 27): a source picture holds one object; the keep mask is that object's own
# silhouette grown by KEEP_GROW px (a user's mask, not aligned to the 8 px latent cells); the prompt
# lists the kept object and a new one, asked for in the right half. Methods, same seeds:
KEEP_GROW = 4
NEW_OBJECT_BOX: Box = (8, 0, 16, 16)


@dataclass(frozen=True)
class KeepGroup:
    seed: int
    kept: world.WorldObject
    new: tuple[str, str]  # (colour, shape) asked for in NEW_OBJECT_BOX

    def listing(self) -> str:
        return world.caption([self.kept.phrase(), "a {} {}".format(*self.new)])


def keep_groups(seeds: int) -> list[KeepGroup]:
    out = []
    for g in range(max(1, seeds // GROUP)):
        rng = random.Random(f"keep-{g}")
        kept_colour, new_colour = rng.sample(list(world.COLOURS), 2)
        kept = world.random_object(rng, kept_colour, rng.choice(world.SHAPES), box=(0.0, 0.0, 0.5, 1.0), max_size=0.4)
        out.append(KeepGroup(SEED + g * GROUP, kept, (new_colour, rng.choice(world.SHAPES))))
    return out


def keep_mask(obj: world.WorldObject) -> torch.Tensor:
    """[1, SIZE, SIZE] float: the object's silhouette grown by ``KEEP_GROW`` px."""
    import scipy.ndimage

    grown = scipy.ndimage.binary_dilation(world.shape_mask(obj, SIZE).numpy(), iterations=KEEP_GROW)
    return torch.from_numpy(grown).float()[None]


def register_world_nodes() -> None:
    """Test-only nodes for the control cells: the source scene and keep mask, object outlines, and the world's fixed
    latent mapping in place of VAE Encode / Decode."""
    import nodes
    from harness.fixture_nodes import fixture_node

    def scene(spec: str):
        obj = world.WorldObject(**json.loads(spec))
        return world.render(world.Scene((obj,)))[None], keep_mask(obj)

    for name, description, outputs, make, inputs in (
        ("ToyWorldScene", "A world render of one object and its grown silhouette.", ("IMAGE", "MASK"), scene,
         {"object": ("STRING", {"default": "{}"})}),
        ("ToyWorldOutlines", "The outlines of a list of objects and the grown box of one of them.", ("IMAGE", "MASK"),
         lambda spec, mask_of: outlines_and_mask(spec, mask_of),
         {"objects": ("STRING", {"default": "[]"}), "mask_of": ("INT", {"default": 0})}),
        ("ToyWorldEncode", "Images to a LATENT by the world's mapping.", ("LATENT",),
         lambda images: {"samples": world.encode(images) / world.SD15_SCALE_FACTOR}, {"images": ("IMAGE",)}),
        ("ToyWorldDecode", "A LATENT to images by the world's mapping.", ("IMAGE",),
         lambda latent: world.decode_samples(latent["samples"].float()), {"samples": ("LATENT",)}),
    ):
        nodes.NODE_CLASS_MAPPINGS[name] = fixture_node(name, description, outputs, make, inputs)


def outlines_and_mask(spec: str, mask_of: int) -> tuple[torch.Tensor, torch.Tensor]:
    objects = tuple(world.WorldObject(**o) for o in json.loads(spec))
    return world.outlines(world.Scene(objects), SIZE)[None], grown_box(objects[mask_of])


def scene_node(obj: world.WorldObject) -> dict:
    """The ToyWorldScene prompt node of ``obj`` (IMAGE: its render, MASK: its grown silhouette)."""
    return {"class_type": "ToyWorldScene", "inputs": {"object": json.dumps(asdict(obj))}}


def _keep_core_inpaint(nodes: dict, group: KeepGroup) -> str:
    nodes["edit_area"] = {"class_type": "InvertMask", "inputs": {"mask": ["scene", 1]}}
    nodes["masked"] = {"class_type": "SetLatentNoiseMask", "inputs": {"samples": ["source", 0], "mask": ["edit_area", 0]}}
    nodes["sampler"] = _sampler(["toy", 0], ["base", 0], ["negative", 0], ["masked", 0], group.seed)
    return "decoded"


def _keep_composite(nodes: dict, group: KeepGroup) -> str:
    nodes["sampler"] = _sampler(["toy", 0], ["base", 0], ["negative", 0], ["empty", 0], group.seed)
    nodes["result"] = {"class_type": "ImageCompositeMasked", "inputs": {
        "destination": ["decoded", 0], "source": ["scene", 0], "x": 0, "y": 0, "resize_source": False,
        "mask": ["scene", 1]}}
    return "result"


def _keep_pack(paste_back: bool):
    def build(nodes: dict, group: KeepGroup) -> str:
        nodes["keep"] = {"class_type": "SCPreserveRegion", "inputs": {
            "model": ["toy", 0], "source": ["source", 0], "mask": ["scene", 1], "feather": FEATHER,
            "start_percent": 0.0, "end_percent": 1.0, "falloff": "none"}}
        nodes["sampler"] = _sampler(["keep", 0], ["base", 0], ["negative", 0], ["empty", 0], group.seed)
        if not paste_back:
            return "decoded"
        nodes["result"] = {"class_type": "SCPasteBack", "inputs": {
            "image": ["decoded", 0], "source_image": ["scene", 0], "mask": ["scene", 1], "feather": 6.0,
            "falloff": "smoothstep", "colour_match": False}}
        return "result"
    return build


KEEP_METHODS = {
    "core_inpaint": _keep_core_inpaint,  # core SetLatentNoiseMask inpainting of the rest
    "composite": _keep_composite,  # generate freely, then paste the kept pixels on top (core ImageCompositeMasked)
    "preserve": _keep_pack(paste_back=False),  # the pack's Keep Region While Sampling
    "preserve_paste": _keep_pack(paste_back=True),  # ... followed by its Paste Back Original
}


def keep_sample(method: str, group: KeepGroup, batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(results [B, H, W, 3], source [1, H, W, 3], keep mask [1, H, W]) through ComfyUI's executor."""
    nodes = {"toy": {"class_type": "ToyWorldLoader", "inputs": {}}, **_encode("base", group.listing()),
             **_encode("negative", ""),
             "scene": scene_node(group.kept),
             "one_source": {"class_type": "ToyWorldEncode", "inputs": {"images": ["scene", 0]}},
             "source": {"class_type": "RepeatLatentBatch", "inputs": {"samples": ["one_source", 0], "amount": batch}},
             "empty": {"class_type": "EmptyLatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": batch}},
             "decoded": {"class_type": "ToyWorldDecode", "inputs": {"samples": ["sampler", 0]}}}
    output = KEEP_METHODS[method](nodes, group)
    result = run_prompt(nodes, outputs=[output, "scene"])
    return result.output(output).float(), result.output("scene").float(), result.output("scene", 1)


@dataclass
class KeepCell:
    new_object: list  # the new object found in its half
    identical: list  # per picture: share of kept pixels bit-identical to the source
    near: list  # ... within 1/255 (what an 8-bit PNG can show)
    seam: list
    seconds: float = 0.0

    def figures(self) -> dict[str, float]:
        return {"new_object": float(np.mean(self.new_object)), "identical": float(np.mean(self.identical)),
                "all_identical": float(np.mean([share == 1.0 for share in self.identical])),
                "near": float(np.mean(self.near)), "seam": float(np.mean(self.seam)),
                "pictures": len(self.identical), "seconds": self.seconds}


def run_keep_cell(method: str, seeds: int) -> KeepCell:
    metrics = pack_import("nodes.ops.metrics")
    cell = KeepCell([], [], [], [])
    start = time.perf_counter()
    for group in keep_groups(seeds):
        images, source, mask = keep_sample(method, group, batch=min(GROUP, seeds))
        kept = mask[0].bool()
        for image in images:
            found = judge.find_objects(image.numpy())
            cell.new_object.append(judge.judge_instance(found, *group.new, region_mask(NEW_OBJECT_BOX)).success)
            difference = (image - source[0]).abs().amax(-1)[kept]
            cell.identical.append(float((difference == 0).float().mean()))
            cell.near.append(float((difference <= 1 / 255).float().mean()))
        cell.seam.extend(metrics.seam_score(images, mask.expand(len(images), -1, -1))["seam_ratio"])
    cell.seconds = time.perf_counter() - start
    return cell


# Identity From Reference and Keep Frames Consistent (issue 27): the prompt names no colour or shape
# (the empty prompt), so what is drawn comes from the reference picture / the anchor frame alone.
REFERENCE_SIZE = 0.45
FRAMES = 8  # frames per batch ("video") for Keep Frames Consistent


def largest_object(image: torch.Tensor) -> tuple[str, str] | None:
    found = judge.find_objects(image.numpy())
    return (found[0].colour, found[0].shape) if found else None


def look_sample(model: list, nodes: dict, seed: int, batch: int) -> torch.Tensor:
    """[batch, H, W, 3] pictures from the empty prompt by ``model`` (a node output in ``nodes``), at cfg 1:
    with nothing asked, guidance would only multiply the patch's own effect by the cfg."""
    sampler = _sampler(model, ["empty_prompt", 0], ["empty_prompt", 0], ["empty", 0], seed)
    sampler["inputs"]["cfg"] = 1.0
    nodes.update({"toy": {"class_type": "ToyWorldLoader", "inputs": {}}, **_encode("empty_prompt", ""),
                  "empty": {"class_type": "EmptyLatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": batch}},
                  "sampler": sampler,
                  "decoded": {"class_type": "ToyWorldDecode", "inputs": {"samples": ["sampler", 0]}}})
    return run_prompt(nodes, outputs=["decoded"]).output("decoded").float()


def run_reference_cell(with_reference: bool, seeds: int) -> dict[str, float]:
    """transfer: share of pictures whose largest object has the reference's colour and shape."""
    hits, start = [], time.perf_counter()
    for g in range(max(1, seeds // GROUP)):
        rng = random.Random(f"reference-{g}")
        reference = world.WorldObject(rng.choice(list(world.COLOURS)), rng.choice(world.SHAPES), 0.5, 0.5, REFERENCE_SIZE)
        nodes, model = {}, ["toy", 0]
        if with_reference:
            nodes = {"scene": scene_node(reference),
                     "reference": {"class_type": "ToyWorldEncode", "inputs": {"images": ["scene", 0]}},
                     "patched": {"class_type": "SCReferenceAttention", "inputs": {
                         "model": ["toy", 0], "reference": ["reference", 0], "strength": 1.0, "style_fidelity": 0.5,
                         "start_percent": 0.0, "end_percent": 1.0}}}
            model = ["patched", 0]
        images = look_sample(model, nodes, SEED + g * GROUP, min(GROUP, seeds))
        hits += [largest_object(image) == (reference.colour, reference.shape) for image in images]
    return {"transfer": float(np.mean(hits)), "pictures": len(hits), "seconds": time.perf_counter() - start}


def run_frames_cell(cross_frame: bool, seeds: int) -> dict[str, float]:
    """consistent: share of frame batches whose every frame's largest object has frame 0's colour and
    shape; frames: share of frames 1.. that match frame 0."""
    batches, frames, start = [], [], time.perf_counter()
    for b in range(max(1, seeds // FRAMES)):
        nodes, model = {}, ["toy", 0]
        if cross_frame:
            nodes = {"patched": {"class_type": "SCCrossFrameAttention", "inputs": {
                "model": ["toy", 0], "anchor_frames": "0", "strength": 1.0}}}
            model = ["patched", 0]
        looks = [largest_object(image) for image in look_sample(model, nodes, SEED + b * FRAMES, FRAMES)]
        matches = [look is not None and look == looks[0] for look in looks[1:]]
        batches.append(all(matches))
        frames += matches
    return {"consistent": float(np.mean(batches)), "frames": float(np.mean(frames)), "batches": len(batches),
            "seconds": time.perf_counter() - start}


# ControlNet (issue 27): the toy ControlNet (toyworld/train_control.py, trained by the pack's Train Local
# Control node) turns object outlines into objects. A group is a world scene of 1-3 objects with its own
# seeds; the prompt lists the objects (or, per region, names its own); masks are object boxes grown by
# OUTLINE_MASK_GROW px. Hit: the drawn object of the asked colour covers its outline's filled shape at
# IoU >= IOU_HIT.
CN_GROUP = 8
OUTLINE_MASK_GROW = 8
IOU_HIT = 0.7


@dataclass(frozen=True)
class OutlineGroup:
    seed: int
    objects: tuple[world.WorldObject, ...]


def outline_groups(count: int, seeds: int) -> list[OutlineGroup]:
    return [OutlineGroup(SEED + g * CN_GROUP, world.random_scene(random.Random(f"outlines{count}-{g}"), count).objects)
            for g in range(max(1, seeds // CN_GROUP))]


def outlines_node(objects, mask_of: int = 0) -> dict:
    """The ToyWorldOutlines prompt node (IMAGE: the objects' outlines, MASK: object ``mask_of``'s grown box)."""
    return {"class_type": "ToyWorldOutlines", "inputs": {"objects": json.dumps([asdict(o) for o in objects]),
                                                         "mask_of": mask_of}}


def grown_box(obj: world.WorldObject, pixels: int = SIZE) -> torch.Tensor:
    """[1, pixels, pixels] MASK: ``obj``'s bounding box grown by OUTLINE_MASK_GROW px."""
    x0, y0, x1, y1 = (round(v * pixels) for v in obj.box())
    mask = torch.zeros(1, pixels, pixels)
    grow = OUTLINE_MASK_GROW
    mask[:, max(0, y0 - grow):y1 + grow, max(0, x0 - grow):x1 + grow] = 1.0
    return mask


def object_iou(image: torch.Tensor, obj: world.WorldObject) -> float:
    """IoU of ``obj``'s filled shape with the drawn object of its colour overlapping it most (0: none)."""
    target = world.shape_mask(obj, image.shape[0]).numpy()
    found = [o.mask for o in judge.find_objects(image.numpy()) if o.colour == obj.colour]
    return max((float((m & target).sum()) / float((m | target).sum()) for m in found), default=0.0)


def _outline_control(kind: str):
    """Core Apply ControlNet (the whole control image) or the pack's masked one, on the listing prompt."""
    def build(nodes: dict, group: OutlineGroup) -> tuple[list, list]:
        nodes["cn"] = {"class_type": "ToyWorldControlNetLoader", "inputs": {}}
        nodes["outlines"] = outlines_node(group.objects)
        inputs = {"positive": ["base", 0], "negative": ["negative", 0], "control_net": ["cn", 0],
                  "image": ["outlines", 0], "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0}
        if kind == "core":
            nodes["control"] = {"class_type": "ControlNetApplyAdvanced", "inputs": inputs}
        else:
            nodes["control"] = {"class_type": "SCApplyControlNetMasked", "inputs": {
                **inputs, "mask": ["outlines", 1], "exact_outside": kind == "masked_exact"}}
        return ["control", 0], ["control", 1]
    return build


OUTLINE_METHODS = {
    "no_control": lambda nodes, group: (["base", 0], ["negative", 0]),
    "core_cn": _outline_control("core"),  # core Apply ControlNet: every outline acts
    "masked_cn": _outline_control("masked"),  # Apply ControlNet With Mask (SC): only the first object's
    "masked_cn_exact": _outline_control("masked_exact"),  # ... with exact_outside
}


def outline_sample(method: str, group: OutlineGroup, batch: int) -> torch.Tensor:
    nodes = prompt_nodes(world.Scene(group.objects).caption(), batch)
    return sampled(nodes, ["toy", 0], *OUTLINE_METHODS[method](nodes, group), group.seed)


def run_outline_cell(method: str, count: int, seeds: int) -> dict[str, float]:
    """One object (the sanity bar): its IoU and hit rate. Two: the first inside the mask, the second outside."""
    ious: list[list[float]] = [[] for _ in range(count)]
    start = time.perf_counter()
    for group in outline_groups(count, seeds):
        for image in outline_sample(method, group, min(CN_GROUP, seeds)):
            for i, obj in enumerate(group.objects):
                ious[i].append(object_iou(image, obj))
    names = ["iou"] if count == 1 else ["inside_iou", "outside_iou"]
    figures = {name: float(np.mean(values)) for name, values in zip(names, ious)}
    figures[names[0].replace("iou", "hit")] = float(np.mean([v >= IOU_HIT for v in ious[0]]))
    return {**figures, "pictures": len(ious[0]), "seconds": time.perf_counter() - start}


def _per_region(control: bool):
    """Apply Regions (SC) instances mode: per object a region (its grown box) with its own prompt and,
    with ``control``, its own outline through the toy ControlNet (the FineControlNet case)."""
    def build(nodes: dict, group: OutlineGroup) -> tuple[list, list, list]:
        nodes["cn"] = {"class_type": "ToyWorldControlNetLoader", "inputs": {}}
        for i, obj in enumerate(group.objects):
            nodes[f"outline{i}"] = outlines_node([obj])
        controls = [{"control_net": ["cn", 0], "control_image": [f"outline{i}", 0]} for i in range(len(group.objects))]
        return _apply_regions(nodes, [[f"outline{i}", 1] for i in range(len(group.objects))], "instances",
                              controls=controls if control else None)
    return build


def _core_mask_with_cn(nodes: dict, group: OutlineGroup) -> tuple[list, list, list]:
    """Core: ConditioningSetMask per object prompt (combined with the base) and one core Apply
    ControlNet with every outline."""
    conds = ["base"]
    for i, obj in enumerate(group.objects):
        nodes[f"outline{i}"] = outlines_node([obj])
        nodes[f"set{i}"] = _set_mask(i, [f"outline{i}", 1])
        conds.append(f"set{i}")
    nodes["cn"] = {"class_type": "ToyWorldControlNetLoader", "inputs": {}}
    nodes["outlines"] = outlines_node(group.objects)
    nodes["control"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
        "positive": [_combined(nodes, conds), 0], "negative": ["negative", 0], "control_net": ["cn", 0],
        "image": ["outlines", 0], "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0}}
    return ["toy", 0], ["control", 0], ["control", 1]


REGION_CN_METHODS = {"instances": _per_region(False), "instances_cn": _per_region(True),
                     "core_mask_cn": _core_mask_with_cn}
REGION_CN_COUNT = 3


def run_region_cn_cell(method: str, seeds: int) -> dict[str, float]:
    """success: the asked colour found in its region (MIG-style); right: ... with the asked shape too;
    iou: its IoU with the region's outline."""
    success, right, ious, start = [], [], [], time.perf_counter()
    for group in outline_groups(REGION_CN_COUNT, seeds):
        nodes = prompt_nodes(SCENE_PROMPT, min(CN_GROUP, seeds), [obj.phrase() for obj in group.objects])
        for image in sampled(nodes, *REGION_CN_METHODS[method](nodes, group), group.seed):
            found = judge.find_objects(image.numpy())
            for obj in group.objects:
                verdict = judge.judge_instance(found, obj.colour, obj.shape, grown_box(obj)[0].bool().numpy())
                success.append(verdict.success)
                right.append(verdict.shape_right)
                ious.append(object_iou(image, obj))
    return {"success": float(np.mean(success)), "right": float(np.mean(right)), "iou": float(np.mean(ious)),
            "instances": len(success), "seconds": time.perf_counter() - start}


CONTROLS = {  # --controls: name -> (title, run(seeds) -> figures); issue 27's controls on the UNet
    **{f"keep_{method}": (title, lambda seeds, method=method: run_keep_cell(method, seeds).figures())
       for method, title in {"core_inpaint": "core SetLatentNoiseMask inpainting",
                             "composite": "core: generate, then ImageCompositeMasked",
                             "preserve": "Keep Region While Sampling (SC)",
                             "preserve_paste": "Keep Region + Paste Back Original (SC)"}.items()},
    "no_reference": ("no reference", lambda seeds: run_reference_cell(False, seeds)),
    "reference": ("Identity From Reference (SC)", lambda seeds: run_reference_cell(True, seeds)),
    "frames_apart": ("frames sampled apart", lambda seeds: run_frames_cell(False, seeds)),
    "frames_cross": ("Keep Frames Consistent (SC)", lambda seeds: run_frames_cell(True, seeds)),
    "cn_sanity_none": ("one outline: no control", lambda seeds: run_outline_cell("no_control", 1, seeds)),
    "cn_sanity_core": ("one outline: core Apply ControlNet", lambda seeds: run_outline_cell("core_cn", 1, seeds)),
    **{f"outlines_{method}": (f"two outlines, mask on the first: {title}",
                              lambda seeds, method=method: run_outline_cell(method, 2, seeds))
       for method, title in {"no_control": "no control", "core_cn": "core Apply ControlNet",
                             "masked_cn": "Apply ControlNet With Mask (SC)",
                             "masked_cn_exact": "Apply ControlNet With Mask (SC), exact_outside"}.items()},
    **{f"region_cn_{method}": (f"3 regions with their own outline: {title}",
                               lambda seeds, method=method: run_region_cn_cell(method, seeds))
       for method, title in {"instances": "instances mode, no ControlNet",
                             "instances_cn": "instances mode, a ControlNet per region (SC)",
                             "core_mask_cn": "core SetMask + core Apply ControlNet"}.items()},
}
COUNTS = ("pictures", "batches", "seconds", "instances")  # figures that say how much was measured, not how well


FIGURE_METHODS = {"no_control": "one prompt", "core_mask": "core SetMask", "attention_l0": "Apply Regions: attention",
                  "instances": "Apply Regions: instances"}


def draw_grid(path: Path, header: list[str], rows: list[tuple[str, torch.Tensor]],
              boxes: list[list[tuple[int, int, int, int]]]) -> None:
    """A PNG grid for the README: a labelled row of pictures per method, ``boxes[column]`` (pixels)
    drawn in white on every picture of that column."""
    from PIL import Image, ImageDraw

    columns = max(len(images) for _, images in rows)
    label_width, tile, gap, top = 180, 96, 4, 6 + 14 * len(header)
    canvas = Image.new("RGB", (label_width + columns * (tile + gap), top + len(rows) * (tile + gap)), "white")
    draw = ImageDraw.Draw(canvas)
    for line, text in enumerate(header):
        draw.text((4, 2 + 14 * line), text, fill="black")
    scale = tile / SIZE
    for row, (label, images) in enumerate(rows):
        y = top + row * (tile + gap)
        draw.text((4, y + tile // 2 - 6), label, fill="black")
        for col, image in enumerate(images):
            x = label_width + col * (tile + gap)
            pixels = Image.fromarray((image.numpy() * 255).round().astype(np.uint8)).resize((tile, tile), Image.NEAREST)
            canvas.paste(pixels, (x, y))
            for x0, y0, x1, y1 in boxes[col]:
                draw.rectangle([x + x0 * scale, y + y0 * scale, x + x1 * scale - 1, y + y1 * scale - 1], outline="white")
    canvas.save(path, optimize=True)


def figure(path: Path, layout: str = "quadrants", columns: int = 8) -> None:
    """The regions figure: a row per method, the same seeds in every column, region boxes drawn."""
    group = groups(layout, GROUP)[0]
    asks = "; ".join(f"{c} {s}" for c, s in group.asks)
    header = [f"Toy model trained here (128 px), same seeds per column. Regions (TL, TR, BL, BR): {asks}",
              f"Boxes: the regions. One prompt lists all four objects; the others: base \"{SCENE_PROMPT}\" + a prompt per region."]
    rows = [(label, sample(method, group, batch=columns)) for method, label in FIGURE_METHODS.items()]
    boxes = [(x0 * CELL, y0 * CELL, x1 * CELL, y1 * CELL) for x0, y0, x1, y1 in group.boxes]
    draw_grid(path, header, rows, [boxes] * columns)


CN_FIGURE_METHODS = {"no_control": "no control", "core_cn": "core Apply ControlNet",
                     "masked_cn": "With Mask (SC)", "masked_cn_exact": "With Mask, exact_outside"}


def cn_figure(path: Path, columns: int = 8) -> None:
    """The masked ControlNet figure: a column per two-object scene (its own seed), its control image on
    top, a row per method; the box is the mask (the first object's, grown)."""
    picked = outline_groups(2, CN_GROUP * columns)
    rows = [("control image", torch.cat([outlines_and_mask(outlines_node(g.objects)["inputs"]["objects"], 0)[0]
                                         for g in picked]))]
    rows += [(label, torch.cat([outline_sample(method, g, 1) for g in picked]))
             for method, label in CN_FIGURE_METHODS.items()]
    boxes = []
    for g in picked:
        ys, xs = torch.nonzero(grown_box(g.objects[0])[0], as_tuple=True)
        boxes.append([(int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)])
    header = ["Toy model and toy ControlNet trained here (128 px; the ControlNet by Train Local Control (SC)).",
              "Prompt: both objects. Control image: both outlines. Box: the mask (first object). A column per scene."]
    draw_grid(path, header, rows, boxes)


def json_figures(results: dict) -> dict:
    out = {}
    for (family, method, layout), figures in results.items():
        count = LAYOUTS[layout][0]
        key = f"{family}_{method}_l{count}" if FIXED_LAYOUT_OF_COUNT.get(count) == layout else f"{family}_{method}_{layout}"
        for name in ("success", "shape", "leak", "seam"):
            out[f"{key}_{name}"] = round(figures[name], 4)
    aliases = {"unet_attention_l0": "unet_attention", "unet_core_mask": "core_mask", "unet_no_control": "no_control"}
    for method, alias in aliases.items():  # the names the goals use
        for count in (2, 3, 4):
            if f"{method}_l{count}_success" in out:
                out[f"{alias}_l{count}_success"] = out[f"{method}_l{count}_success"]
    return out


METHOD_TITLES = {"no_control": "no control", "core_mask": "core SetMask", "core_area": "core SetArea",
                 "attention_l0": "attention, locality 0", "attention_l05": "attention, locality 0.5",
                 "instances": "instances"}
DOCS_START, DOCS_END = "<!-- quality:start -->", "<!-- quality:end -->"
MODEL_NOTE = (
    "Generated by `benchmarks/quality.py --write-docs`. The model is a toy: ComfyUI's own SD1.5 UNet and CLIP "
    "classes (a 1.1 M-parameter UNet, a 3-layer 64-wide CLIP text encoder) (`benchmarks/toyworld/model.py`), trained on this machine by "
    "`benchmarks/toyworld/train.py` on a synthetic world of 1-4 flat objects (6 hues x circle / square / triangle) "
    "on grey, 128 px, a fixed latent mapping instead of a VAE (weights, checksum and training log beside it). "
    "The judge has no neural network (`benchmarks/toyworld/judge.py`: hue classes, bounding-box corners, "
    "connected components); on the world's own renders it reads 100 % of colours and 96 % of shapes. "
    "**success**: share of asked instances found MIG-style (an object of the asked colour with more than half "
    "of its area inside its region); **shape**: found there with the asked shape too; **leak**: share of a "
    "region colour's pixels outside its region (lower is better); **seam**: the pack's seam ratio along the "
    "region edges (`SCSeamScore`'s op; 1 = no more edge energy at the border than around it). Each cell: "
    "64 seeds in 2 groups of 32, each group its own colours and shapes, the same seeds and asks for every "
    "method; the pack's methods and core's get the same base prompt (the listing of all objects).")


def control_json_figures(control_results: dict) -> dict:
    out = {f"{name}_{figure}": round(value, 4) for name, figures in control_results.items()
           for figure, value in figures.items() if figure not in COUNTS}
    aliases = {"keep_preserve_paste_identical": "preserve_outside_identical",  # the names the goals use
               "outlines_masked_cn_inside_iou": "masked_cn_inside_iou",
               "outlines_masked_cn_outside_iou": "masked_cn_outside_iou",
               "outlines_no_control_outside_iou": "no_control_outside_iou"}
    out.update({alias: out[name] for name, alias in aliases.items() if name in out})
    return out


CONTROLS_NOTE = (
    "**Other controls** (issue 27). *Keeping a region*: a source picture of one object, kept by its silhouette "
    f"grown by {KEEP_GROW} px (not aligned to the 8 px latent cells, as a user's mask is not); the prompt lists it "
    "and a new object asked for in the right half. **identical**: share of kept pixels bit-identical to the source "
    "(mean per picture); **all_identical**: share of pictures where every kept pixel is; **near**: within 1/255; "
    "**seam**: seam ratio along the keep mask's edge; **new_object**: the new object found in its half. No VAE "
    "here: with a real VAE, every method without a paste back also loses the VAE round trip in the kept area. "
    "*Identity From Reference* and *Keep Frames Consistent*: the empty prompt (cfg 1), so only the reference or "
    "the anchor frame can say what to draw. **transfer**: share of pictures whose largest object has the "
    f"reference's colour and shape; **consistent**: share of batches of {FRAMES} frames whose every frame's largest "
    "object has frame 0's colour and shape; **frames**: share of frames that do. "
    "*ControlNet*: the toy ControlNet (`toyworld/train_control.py`: trained by Train Local Control (SC) through "
    "ComfyUI's executor) draws objects into world outlines; groups of "
    f"{CN_GROUP} seeds, each its own world scene. **iou**: IoU of an outline's filled shape with the drawn object of "
    f"its colour that overlaps it most; **hit**: share with IoU >= {IOU_HIT}. *One outline*: the prompt names the "
    "object (the sanity bar: hit >= 0.8 with core Apply ControlNet). *Two outlines*: the prompt lists both objects, "
    f"the control image holds both outlines, the mask is the first object's box grown by {OUTLINE_MASK_GROW} px: "
    "**inside_iou** is the first object's, **outside_iou** the second's. *Three regions*: Apply Regions (SC) "
    "instances mode, each region (an object's grown box) with its own prompt and, with a ControlNet, its own outline; "
    "**success**: the asked colour found in its region (MIG-style), **right**: with the asked shape too.")


def control_markdown(control_results: dict) -> str:
    if not control_results:
        return ""
    lines = ["", "", CONTROLS_NOTE, "", "| control | figures |", "|---|---|"]
    for name, figures in control_results.items():
        values = ", ".join(f"{figure} {value:.4g}" for figure, value in figures.items() if figure not in COUNTS)
        lines.append(f"| {CONTROLS[name][0]} | {values} |")
    figures = control_json_figures(control_results)
    goals = [  # (goal, value key, the goal as a test on it and the other figures, the core / no-control figure)
        ("ControlNet sanity: one outline, core Apply ControlNet, hit rate >= 0.8", "cn_sanity_core_hit",
         lambda v, f: v >= 0.8, "cn_sanity_none_hit"),
        ("masked ControlNet: inside IoU >= 0.7", "masked_cn_inside_iou", lambda v, f: v >= 0.7,
         "outlines_core_cn_inside_iou"),
        ("masked ControlNet: outside IoU <= no control + 0.05", "masked_cn_outside_iou",
         lambda v, f: v <= f["no_control_outside_iou"] + 0.05, "outlines_core_cn_outside_iou"),
        ("masked ControlNet, exact_outside: outside IoU <= no control + 0.05", "outlines_masked_cn_exact_outside_iou",
         lambda v, f: v <= f["no_control_outside_iou"] + 0.05, "no_control_outside_iou"),
        ("instances + a ControlNet per region: right shape and colour >= 0.9 at 3 regions",
         "region_cn_instances_cn_right", lambda v, f: v >= 0.9, "region_cn_core_mask_cn_right"),
    ]
    rows = []
    for label, key, test, other in goals:
        try:
            rows.append((label, figures[key], test(figures[key], figures), figures.get(other, float("nan")), other))
        except KeyError:  # a cell (or the no-control one its goal needs) not measured in this run
            continue
    if rows:
        lines += ["", "| goal | value | met? | compared with |", "|---|---|---|---|"]
        lines += [f"| {label} | {value:.3f} | {'yes' if met else 'no'} | {other_value:.3f} ({other}) |"
                  for label, value, met, other_value, other in rows]
    return "\n".join(lines)


BASE_TITLES = {"unet": f"base prompt \"{SCENE_PROMPT}\" (the scene only)",
               "unet_listing": "base prompt listing every object (MIG's global prompt; every pixel reading it reads every object)"}


def markdown(results: dict, sanity_figures: dict | None, header: str) -> str:
    methods = [m for m in METHODS if any(key[1] == m for key in results)]
    layouts = [name for name in LAYOUTS if any(key[2] == name for key in results)]
    lines = [header, "", MODEL_NOTE]
    for family, title in BASE_TITLES.items():
        if not any(key[0] == family for key in results):
            continue
        lines += ["", f"Spatial methods with the {title}; *no control* is the listing alone.", "",
                  "| layout (regions) | figure | " + " | ".join(METHOD_TITLES[m] for m in methods) + " |",
                  "|---|---|" + "---|" * len(methods)]
        for layout in layouts:
            for name in ("success", "shape", "leak", "seam"):
                values = [results.get((family, m, layout), {}).get(name, float("nan")) for m in methods]
                label = f"{layout} ({LAYOUTS[layout][0]})" if name == "success" else ""
                lines.append(f"| {label} | {name} | " + " | ".join(f"{v:.3f}" for v in values) + " |")
    figures = json_figures(results)
    goals = [("attention mode (locality 0), 2 regions", "unet_attention_l2_success", 0.90),
             ("attention mode (locality 0), 4 regions", "unet_attention_l4_success", 0.80),
             ("instances mode, 2 regions", "unet_instances_l2_success", 0.95),
             ("instances mode, 4 regions", "unet_instances_l4_success", 0.90)]
    lines += ["", "| goal (instance success, scene base prompt) | value | goal | met? | core SetMask | no control | "
              "value, listing base | core SetMask, listing base |", "|---|---|---|---|---|---|---|---|"]
    for label, key, goal in goals:
        count = key[-9]
        if key in figures:
            listing = key.replace("unet_", "unet_listing_", 1).replace("_attention_", "_attention_l0_")
            lines.append(f"| {label} | {figures[key]:.3f} | ≥ {goal:g} | {'yes' if figures[key] >= goal else 'no'} | "
                         f"{figures.get(f'core_mask_l{count}_success', float('nan')):.3f} | "
                         f"{figures.get(f'no_control_l{count}_success', float('nan')):.3f} | "
                         f"{figures.get(listing, float('nan')):.3f} | "
                         f"{figures.get(f'unet_listing_core_mask_l{count}_success', float('nan')):.3f} |")
    if sanity_figures:
        lines += ["", f"Sanity bar (\"a <colour> <shape>\" alone, {sanity_figures['sanity_seeds_per_colour']} seeds "
                  f"per colour, the three shapes taking turns): right colour {sanity_figures['sanity_colour']:.3f} (goal 0.95), "
                  f"right shape {sanity_figures['sanity_shape']:.3f} (goal 0.80)."]
    return "\n".join(lines)


def write_docs(section: str, path: Path = Path(__file__).resolve().parents[1] / "docs" / "performance.md") -> None:
    """Replace the quality section of docs/performance.md (``run_all.py`` keeps it when it rewrites the file)."""
    text = path.read_text()
    start, end = text.find(DOCS_START), text.find(DOCS_END)
    if start < 0 or end < 0:
        raise SystemExit(f"{path} has no {DOCS_START} ... {DOCS_END} section to replace")
    path.write_text(text[:start + len(DOCS_START)] + "\n" + section + "\n" + text[end:])


def row_text(layout: str, method: str, figures: dict, base: str) -> str:
    return (f"{layout:10} {method:14} {base:8} {figures['success']:8.3f} {figures['shape']:6.3f} {figures['leak']:6.3f} "
            f"{figures['seam']:6.3f} {figures['instances']:5d} {figures['seconds']:5.0f}")


def control_row_text(name: str, figures: dict) -> str:
    return f"{name:25} " + " ".join(f"{figure} {value:.4g}" for figure, value in figures.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=64, help=f"seeds per cell (groups of {GROUP})")
    parser.add_argument("--layouts", default=",".join(LAYOUTS))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--base", default="scene", help=f"base prompts of the spatial methods: {','.join(FAMILY_OF_BASE)}")
    parser.add_argument("--weights", type=Path, default=toy.WEIGHTS)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sanity", action="store_true",
                        help='also the sanity bar: "a <colour> <shape>" alone, --seeds per colour')
    parser.add_argument("--no-cells", action="store_true", help="no layout cells (e.g. with --sanity alone)")
    parser.add_argument("--controls", default="", help=f"other controls, comma separated: {','.join(CONTROLS)} or all")
    parser.add_argument("--figure", type=Path, help="only draw the README regions figure to this PNG")
    parser.add_argument("--cn-figure", type=Path, help="only draw the README masked ControlNet figure to this PNG")
    parser.add_argument("--save", type=Path, help="also write the figures to this JSON file (for --merge)")
    parser.add_argument("--merge", type=Path, nargs="+", help="no sampling: join runs saved with --save")
    parser.add_argument("--write-docs", action="store_true", help="write the table into docs/performance.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    header = (f"Toy SD1.5-architecture model `{args.weights.name}` (sha256 {toy.sha256(args.weights)[:12]}), "
              f"{SIZE} px, KSampler {SAMPLER} {STEPS} steps cfg {CFG}, {args.seeds} seeds per cell, feather {FEATHER} px.")
    print(header)
    print(f"{'layout':10} {'method':14} {'base':8} {'success':>8} {'shape':>6} {'leak':>6} {'seam':>6} {'inst':>5} {'s':>5}")
    results, sanity_figures, control_results = {}, {}, {}
    if args.merge:
        for path in args.merge:
            saved = json.loads(path.read_text())
            sanity_figures.update(saved["sanity"])
            results.update({tuple(key.split("|")): figures for key, figures in saved["cells"].items()})
            control_results.update(saved.get("controls", {}))
        for (family, method, layout), figures in results.items():
            print(row_text(layout, method, figures, {f: b for b, f in FAMILY_OF_BASE.items()}[family]))
        for name, figures in control_results.items():
            print(control_row_text(name, figures))
    else:
        boot()
        import comfy.utils

        comfy.utils.set_progress_bar_enabled(False)
        for register in FAMILIES.values():
            register(args.weights)
        register_world_nodes()
        if args.figure or args.cn_figure:
            for path, draw in ((args.figure, figure), (args.cn_figure, cn_figure)):
                if path:
                    draw(path)
            return
        if args.sanity:
            sanity_figures = sanity(args.seeds)
        for base in [] if args.no_cells else args.base.split(","):
            for layout in args.layouts.split(","):
                for method in args.methods.split(","):
                    figures = run_cell(method, layout, args.seeds, base).figures()
                    results[(FAMILY_OF_BASE[base], method, layout)] = figures
                    print(row_text(layout, method, figures, base), flush=True)
        for name in list(CONTROLS) if args.controls == "all" else [c for c in args.controls.split(",") if c]:
            control_results[name] = CONTROLS[name][1](args.seeds)
            print(control_row_text(name, control_results[name]), flush=True)
    if args.save:
        args.save.write_text(json.dumps({"sanity": sanity_figures, "controls": control_results,
                                         "cells": {"|".join(key): value for key, value in results.items()}}))
    if args.write_docs:
        write_docs(markdown(results, sanity_figures, header) + control_markdown(control_results))
    print(json.dumps({**json_figures(results), **control_json_figures(control_results), **sanity_figures}))


if __name__ == "__main__":
    main()

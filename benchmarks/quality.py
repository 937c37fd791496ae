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

Run: ``.venv/bin/python benchmarks/quality.py [--seeds 64 --layouts halves,quadrants]``. Last stdout
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
from dataclasses import dataclass
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


def _core(kind: str):
    def build(nodes: dict, group: Group) -> tuple[list, list, list]:
        conds = ["base"]
        for i, (x0, y0, x1, y1) in enumerate(group.boxes):
            if kind == "mask":
                nodes[f"set{i}"] = {"class_type": "ConditioningSetMask", "inputs": {
                    "conditioning": [f"region{i}", 0], "mask": [f"mask{i}", 0], "strength": 1.0,
                    "set_cond_area": "default"}}
            else:
                nodes[f"set{i}"] = {"class_type": "ConditioningSetArea", "inputs": {
                    "conditioning": [f"region{i}", 0], "width": (x1 - x0) * CELL, "height": (y1 - y0) * CELL,
                    "x": x0 * CELL, "y": y0 * CELL, "strength": 1.0}}
            conds.append(f"set{i}")
        return ["toy", 0], [_combined(nodes, conds), 0], ["negative", 0]
    return build


def _pack(mode: str, locality: float = 0.0):
    def build(nodes: dict, group: Group) -> tuple[list, list, list]:
        previous = None
        for i in range(len(group.boxes)):
            inputs = {"conditioning": [f"region{i}", 0], "mask": [f"mask{i}", 0], "weight": 1.0,
                      "control_strength": 1.0}
            if previous:
                inputs["regions"] = [previous, 0]
            nodes[f"sc_region{i}"] = {"class_type": "SCRegion", "inputs": inputs}
            previous = f"sc_region{i}"
        nodes["apply"] = {"class_type": "SCApplyRegions", "inputs": {
            "model": ["toy", 0], "positive": ["base", 0], "negative": ["negative", 0], "regions": [previous, 0],
            "mode": mode, "feather": FEATHER, "self_attention_locality": locality}}
        return ["apply", 0], ["apply", 1], ["apply", 2]
    return build


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


def sample(method: str, group: Group, batch: int = GROUP, text: str | None = None) -> torch.Tensor:
    """[batch, 128, 128, 3] pictures of ``group`` by ``method``, through ComfyUI's executor
    (``text``: the base prompt, by default the listing of the group's objects)."""
    nodes = {"toy": {"class_type": "ToyWorldLoader", "inputs": {}}, **_encode("base", text or group.listing()),
             **_encode("negative", ""), **_masks(group),
             "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": batch}}}
    for i, (colour, shape) in enumerate(group.asks):
        nodes.update(_encode(f"region{i}", f"a {colour} {shape}"))
    model, positive, negative = METHODS[method](nodes, group)
    nodes["sampler"] = {"class_type": "KSampler", "inputs": {
        "model": model, "positive": positive, "negative": negative, "latent_image": ["latent", 0], "seed": group.seed,
        "steps": STEPS, "cfg": CFG, "sampler_name": SAMPLER, "scheduler": SCHEDULER, "denoise": 1.0}}
    result = run_prompt(nodes, outputs=["sampler"])
    return world.decode_samples(result.output("sampler")["samples"].float())


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


def run_cell(method: str, layout: str, seeds: int) -> Cell:
    cell = Cell([], [], [], [])
    start = time.perf_counter()
    for group in groups(layout, seeds):
        score(sample(method, group, batch=min(GROUP, seeds)), group, cell)
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


FIGURE_METHODS = {"no_control": "one prompt", "core_mask": "core SetMask", "attention_l0": "Apply Regions: attention",
                  "instances": "Apply Regions: instances"}


def figure(path: Path, layout: str = "quadrants", columns: int = 8) -> None:
    """A grid for the README: a row per method, the same seeds in every column, region boxes drawn."""
    from PIL import Image, ImageDraw

    group = groups(layout, GROUP)[0]
    label_width, tile, gap, header = 180, 96, 4, 34
    canvas = Image.new("RGB", (label_width + columns * (tile + gap), header + len(FIGURE_METHODS) * (tile + gap)),
                       "white")
    draw = ImageDraw.Draw(canvas)
    asks = "; ".join(f"{c} {s}" for c, s in group.asks)
    draw.text((4, 2), f"Toy model trained here (128 px), same seeds per column. Regions (TL, TR, BL, BR): {asks}",
                fill="black")
    draw.text((4, 16), "Boxes: the regions. One prompt lists all four objects.", fill="black")
    scale = tile / SIZE
    for row, (method, label) in enumerate(FIGURE_METHODS.items()):
        images = sample(method, group, batch=columns)
        y = header + row * (tile + gap)
        draw.text((4, y + tile // 2 - 6), label, fill="black")
        for col, image in enumerate(images):
            x = label_width + col * (tile + gap)
            pixels = Image.fromarray((image.numpy() * 255).round().astype(np.uint8)).resize((tile, tile), Image.NEAREST)
            canvas.paste(pixels, (x, y))
            for x0, y0, x1, y1 in group.boxes:
                draw.rectangle([x + x0 * CELL * scale, y + y0 * CELL * scale, x + x1 * CELL * scale - 1,
                                y + y1 * CELL * scale - 1], outline="white")
    canvas.save(path, optimize=True)


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


def markdown(results: dict, sanity_figures: dict | None, header: str) -> str:
    methods = [m for m in METHODS if any(key[1] == m for key in results)]
    layouts = [name for name in LAYOUTS if any(key[2] == name for key in results)]
    lines = [header, "", MODEL_NOTE, "", "| layout (regions) | figure | " + " | ".join(METHOD_TITLES[m] for m in methods) + " |",
             "|---|---|" + "---|" * len(methods)]
    for layout in layouts:
        for name in ("success", "shape", "leak", "seam"):
            values = [results.get(("unet", m, layout), {}).get(name, float("nan")) for m in methods]
            label = f"{layout} ({LAYOUTS[layout][0]})" if name == "success" else ""
            lines.append(f"| {label} | {name} | " + " | ".join(f"{v:.3f}" for v in values) + " |")
    figures = json_figures(results)
    goals = [("attention mode (locality 0), 2 regions", "unet_attention_l2_success", 0.90),
             ("attention mode (locality 0), 4 regions", "unet_attention_l4_success", 0.80),
             ("instances mode, 2 regions", "unet_instances_l2_success", 0.95),
             ("instances mode, 4 regions", "unet_instances_l4_success", 0.90)]
    lines += ["", "| goal (instance success) | value | goal | met? | core SetMask | no control |", "|---|---|---|---|---|---|"]
    for label, key, goal in goals:
        count = key[-9]
        if key in figures:
            lines.append(f"| {label} | {figures[key]:.3f} | ≥ {goal:g} | {'yes' if figures[key] >= goal else 'no'} | "
                         f"{figures.get(f'core_mask_l{count}_success', float('nan')):.3f} | "
                         f"{figures.get(f'no_control_l{count}_success', float('nan')):.3f} |")
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


def row_text(layout: str, method: str, figures: dict) -> str:
    return (f"{layout:10} {method:14} {figures['success']:8.3f} {figures['shape']:6.3f} {figures['leak']:6.3f} "
            f"{figures['seam']:6.3f} {figures['instances']:5d} {figures['seconds']:5.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=64, help=f"seeds per cell (groups of {GROUP})")
    parser.add_argument("--layouts", default=",".join(LAYOUTS))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--weights", type=Path, default=toy.WEIGHTS)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sanity", action="store_true",
                        help='also the sanity bar: "a <colour> <shape>" alone, --seeds per colour')
    parser.add_argument("--no-cells", action="store_true", help="no layout cells (e.g. with --sanity alone)")
    parser.add_argument("--figure", type=Path, help="only draw the README figure to this PNG")
    parser.add_argument("--save", type=Path, help="also write the figures to this JSON file (for --merge)")
    parser.add_argument("--merge", type=Path, nargs="+", help="no sampling: join runs saved with --save")
    parser.add_argument("--write-docs", action="store_true", help="write the table into docs/performance.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    header = (f"Toy SD1.5-architecture model `{args.weights.name}` (sha256 {toy.sha256(args.weights)[:12]}), "
              f"{SIZE} px, KSampler {SAMPLER} {STEPS} steps cfg {CFG}, {args.seeds} seeds per cell, feather {FEATHER} px.")
    print(header)
    print(f"{'layout':10} {'method':14} {'success':>8} {'shape':>6} {'leak':>6} {'seam':>6} {'inst':>5} {'s':>5}")
    results, sanity_figures = {}, {}
    if args.merge:
        for path in args.merge:
            saved = json.loads(path.read_text())
            sanity_figures.update(saved["sanity"])
            results.update({tuple(key.split("|")): figures for key, figures in saved["cells"].items()})
        for (_, method, layout), figures in results.items():
            print(row_text(layout, method, figures))
    else:
        boot()
        import comfy.utils

        comfy.utils.set_progress_bar_enabled(False)
        for register in FAMILIES.values():
            register(args.weights)
        if args.figure:
            figure(args.figure)
            return
        if args.sanity:
            sanity_figures = sanity(args.seeds)
        for layout in [] if args.no_cells else args.layouts.split(","):
            for method in args.methods.split(","):
                figures = run_cell(method, layout, args.seeds).figures()
                results[("unet", method, layout)] = figures
                print(row_text(layout, method, figures), flush=True)
    if args.save:
        args.save.write_text(json.dumps({"sanity": sanity_figures,
                                         "cells": {"|".join(key): value for key, value in results.items()}}))
    if args.write_docs:
        write_docs(markdown(results, sanity_figures, header))
    print(json.dumps({**json_figures(results), **sanity_figures}))


if __name__ == "__main__":
    main()

"""One-line breaks of the pack's promises; each must turn the tests named with it red.

Run on demand (``make test-breaks``), not in CI: ``python tests/breaks.py [--only name,...] [--no-baseline]``.
pytest does not collect this file (its name does not start with ``test_``), and importing it runs nothing.

The checkout (tracked and untracked files, ignored ones left out) is copied once to a scratch folder.
For each break, the named line is replaced there, the break's test files run with its leg's venv
(floor: ``.venv`` + ComfyUI 0.3.75; latest: ``.venv-latest`` + the newest ComfyUI), and the file is
restored. A break is *caught* when pytest reports failed tests (exit code 1). First, each distinct
test selection runs once unbroken (the baseline), so a red that was there already does not count.
The table lists every break; the exit code is non-zero if any break survived, did not apply or
could not be checked.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Break:
    name: str
    promise: str  # what users would get with the break
    path: str  # file in the checkout
    old: str  # text that occurs exactly once in it (context lines allowed; the break changes one line)
    new: str
    tests: tuple[str, ...]
    select: str = ""  # pytest -k expression
    leg: str = "floor"  # "floor" or "latest" (DiT and model-patch tests need ComfyUI 0.33)


BREAKS: list[Break] = [
    # ----------------------------------------------------------------- the four from issue 29
    Break("background ones", "instances mode applies the base prompt inside every region too",
          "nodes/ops/regions.py",
          "    return (1.0 - covered).clamp(min=0.0)\n\n\ndef blend_paths",
          "    return torch.ones_like(covered)\n\n\ndef blend_paths",
          ("tests/test_regions.py",), "instances"),
    Break("sobel loss unmasked", "the Sobel loss covers the whole latent, not the mask",
          "nodes/sampling/training.py", "            if not mask_sobel:", "            if True:",
          ("tests/test_training.py",), "sobel_term or lowers_both"),
    Break("locality strength fixed", "the self_attention_locality slider does nothing between 0 and 1",
          "nodes/sampling/regions.py", "        self.strength = float(strength)", "        self.strength = 1.0",
          ("tests/test_regions.py",), "locality"),
    Break("masked ControlNet end ignored", "end_percent of Apply ControlNet (Masked) is ignored",
          "nodes/sampling/masked_control.py",
          "set_cond_hint(hint, strength, (start_percent, end_percent), vae=vae)",
          "set_cond_hint(hint, strength, (start_percent, 1.0), vae=vae)",
          ("tests/test_masked_controlnet.py",), "start_end"),
    # ----------------------------------------------------------------- one per capability
    Break("regions: mask ignored", "each region prompt acts on the whole image (attention mode)",
          "nodes/ops/regions.py",
          "    for group in region_groups.query_groups(membership, weights, shared_rows):",
          "    for group in region_groups.query_groups(torch.ones_like(membership), weights, shared_rows):",
          ("tests/test_regions.py", "tests/test_unet_groups.py", "tests/test_quality.py"),
          "hard_masks or soft_masks or never_reads or regions_slice"),
    Break("regions: first mask for every latent", "one mask per latent: every latent gets the first latent's mask",
          "nodes/ops/regions.py",
          "return torch.stack([match_batch(m, items, f\"region {index + 1}'s mask\")",
          "return torch.stack([match_batch(m[:1], items, f\"region {index + 1}'s mask\")",
          ("tests/test_regions.py",), "other_size"),
    Break("instances: weight ignored", "instances mode gives every region weight 1",
          "nodes/sampling/instances.py",
          'options.update({"strength": region.weight, GROUP_KEY: group, ROLE_KEY: index})',
          'options.update({"strength": 1.0, GROUP_KEY: group, ROLE_KEY: index})',
          ("tests/test_regions.py",), "instances"),
    Break("masked ControlNet: mask ignored", "Apply ControlNet (Masked) acts on the whole image",
          "nodes/sampling/masked_control.py",
          "done[id(x)] = x * self._weights(x, tuple(x_noisy.shape), batched_number)", "done[id(x)] = x",
          ("tests/test_masked_controlnet.py", "tests/test_quality.py")),
    Break("training: latents unscaled", "Train Local Control learns on latents 5.5x larger than the model sees",
          "nodes/sampling/training.py",
          "    latents = step.base.process_latent_in(latents.to(device, torch.float32))",
          "    latents = latents.to(device, torch.float32)",
          ("tests/test_training.py",), "space"),
    Break("preservation: no-op", "Preserve Region lets the sampler repaint the kept area",
          "nodes/sampling/preserve.py", "        return blending.preserve(denoised, source, weight, strength)",
          "        return denoised", ("tests/test_blending_nodes.py",), "preserve"),
    Break("paste back: band inside the kept area", "Paste Back blends over the kept area's edge, so kept pixels change",
          "nodes/ops/blending.py", 'weight = feather(mask, feather_px, "outward", falloff) if feather_px > 0 else mask',
          'weight = feather(mask, feather_px, "inward", falloff) if feather_px > 0 else mask',
          ("tests/test_blending_ops.py", "tests/test_quality.py"), "paste_back or keep_slice"),
    Break("finding: negatives ignored", "a mask that looks like a negative name (background) counts as found",
          "nodes/ops/finding.py",
          "beats_negatives = best == probs.argmax(1) if probs.shape[1] > n_positive else "
          "torch.ones_like(best, dtype=torch.bool)",
          "beats_negatives = torch.ones_like(best, dtype=torch.bool)",
          ("tests/test_finding_ops.py",)),
    Break("feather: centred acts inward", "a centred feather shrinks the mask by half its radius",
          "nodes/ops/masks.py", '{"inward": 0.0, "outward": 1.0, "centred": 0.5}.get(direction)',
          '{"inward": 0.0, "outward": 1.0, "centred": 0.0}.get(direction)',
          ("tests/test_mask_ops.py", "tests/test_mask_properties.py")),
    Break("DiT routing: every image token sees every region", "region prompts leak over the whole image on DiTs",
          "nodes/ops/dit_regions.py",
          "    for group in query_groups(values, weights, shared_rows):",
          "    for group in query_groups(torch.ones_like(values), weights, shared_rows):",
          ("tests/test_dit_regions.py",), "hard_masks", "latest"),
    Break("model-patch masking: mask ignored", "Limit Model Patch ControlNet To Mask changes nothing",
          "nodes/sampling/model_patch_control.py",
          "        blended = blend_by_weight(before, after, self._weights_for(after, kwargs))",
          "        blended = after", ("tests/test_model_patch_control.py",), "", "latest"),
    Break("path containment: every path counts as inside", "any file on the disk can be read or written through a "
          "path-like input", "nodes/ops/files.py",
          "    return any(path == base or path.startswith(base.rstrip(os.sep) + os.sep) for base in bases)",
          "    return True", ("tests/test_security.py",)),
    Break("catalog manifest: numbered stems collide", "source `cat` with two outputs and source `cat_1` write the "
          "same file", "catalog/manifest.py",
          '"OR family = ?1 COLLATE NOCASE LIMIT 1", (stem, _family(stem))).fetchone() is None',
          '"LIMIT 1", (stem, _family(stem))).fetchone() is None',
          ("tests/test_catalog.py",), "no_two_sources or same_stem"),
]


def scratch_copy(destination: Path) -> None:
    """The checkout's tracked and untracked (not ignored) files, copied to ``destination``."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file() and not source.is_symlink():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def leg_command(leg: str) -> tuple[list[str], dict]:
    """The python and environment of a test leg (the ComfyUI folders of the real checkout)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    if leg == "floor":
        python, comfy = REPO / ".venv" / "bin" / "python", REPO / ".comfyui"
    elif leg == "latest":
        python = REPO / ".venv-latest" / "bin" / "python"
        comfy = Path(os.environ.get("COMFYUI_PATH") or REPO / ".comfyui-latest")
    else:
        raise ValueError(f"unknown leg {leg!r}")
    if not python.exists() or not (comfy / "main.py").exists():
        raise FileNotFoundError(f"the {leg} leg is not set up ({python}, {comfy}): run `make setup LEG={leg}`")
    env["COMFYUI_PATH"] = str(comfy.resolve())
    return [str(python), "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider"], env


def run_tests(root: Path, leg: str, tests: tuple[str, ...], select: str) -> tuple[int, str]:
    command, env = leg_command(leg)
    command = command + list(tests) + (["-k", select] if select else [])
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    return done.returncode, lines[-1] if lines else done.stderr.strip()[-200:]


def check(breaks: list[Break], baseline: bool) -> list[tuple[Break, str, str]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="sc-breaks-") as folder:
        root = Path(folder) / "selective_control"  # pytest imports the root __init__.py: a valid package name
        scratch_copy(root)
        green: dict[tuple, str | None] = {}
        for b in breaks:
            key = (b.leg, b.tests, b.select)
            if baseline and key not in green:
                code, summary = run_tests(root, b.leg, b.tests, b.select)
                green[key] = None if code == 0 else f"not green unbroken: {summary}"
            if green.get(key):
                rows.append((b, "ERROR", green[key]))
                continue
            path = root / b.path
            original = path.read_text()
            count = original.count(b.old)
            if count != 1:
                rows.append((b, "ERROR", f"the line to break occurs {count} times in {b.path}"))
                continue
            path.write_text(original.replace(b.old, b.new))
            started = time.monotonic()
            try:
                code, summary = run_tests(root, b.leg, b.tests, b.select)
            finally:
                path.write_text(original)
            result = {0: "SURVIVED", 1: "caught", 5: "ERROR"}.get(code, "ERROR")
            rows.append((b, result, f"{summary} ({time.monotonic() - started:.0f} s)"))
            print(f"{result:8} {b.name}: {summary}", flush=True)
    return rows


def table(rows: list[tuple[Break, str, str]]) -> str:
    lines = ["| break | leg | file | tests | result | pytest |", "|---|---|---|---|---|---|"]
    for b, result, detail in rows:
        tests = " ".join(Path(t).name for t in b.tests) + (f" -k '{b.select}'" if b.select else "")
        lines.append(f"| {b.name} | {b.leg} | {b.path} | {tests} | {result} | {detail} |")
    caught = sum(result == "caught" for _, result, _ in rows)
    lines.append(f"\n{caught} of {len(rows)} breaks caught")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated break names (default: all)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unbroken run of each test selection")
    args = parser.parse_args(argv)
    wanted = {n.strip() for n in args.only.split(",") if n.strip()}
    unknown = wanted - {b.name for b in BREAKS}
    if unknown:
        parser.error(f"unknown break(s): {', '.join(sorted(unknown))}")
    rows = check([b for b in BREAKS if not wanted or b.name in wanted], baseline=not args.no_baseline)
    print(table(rows))
    return 0 if all(result == "caught" for _, result, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Run every benchmark of the pack and report one table of results against their goals.

Each benchmark (``benchmarks/<name>.py``) runs in its own subprocess of this Python (the same
venv), so one benchmark's threads, caches and booted ComfyUI cannot skew the next; its last
stdout line is the JSON it reports. The table (benchmark, measure, value, goal, met?) is printed
with the machine's description, written to ``docs/performance.md`` and drawn to
``docs/performance.png``; ``--write-readme`` also replaces the README's performance section
(between ``<!-- performance:start -->`` and ``<!-- performance:end -->``) with it. A value that
misses its goal is shown as "no", a benchmark that fails as "failed": nothing is hidden.

Run from the repo root: ``.venv/bin/python benchmarks/run_all.py [--only masks,blending] [--quick]
[--write-readme]``. ``--quick`` passes smaller sizes to the benchmarks that accept them (masks,
blending); the others always run at their full size.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README_START, README_END = "<!-- performance:start -->", "<!-- performance:end -->"


@dataclass(frozen=True)
class Measure:
    key: str  # dotted path into the benchmark's JSON
    label: str
    goal: float | None = None
    higher_is_better: bool = True  # True: value >= goal meets it; False: value <= goal

    def met(self, value: float) -> bool | None:
        if self.goal is None:
            return None
        return value >= self.goal if self.higher_is_better else value <= self.goal

    def goal_text(self) -> str:
        if self.goal is None:
            return "—"
        return f"{'≥' if self.higher_is_better else '≤'} {self.goal:g}"


@dataclass(frozen=True)
class Benchmark:
    name: str
    setup: str  # what is measured, on which model sizes
    measures: tuple[Measure, ...] = ()
    quick_args: tuple[str, ...] = ()
    file: str = ""
    leg: str = "floor"  # "latest": run with .venv-latest on .comfyui-latest (the DiT models need ComfyUI 0.33)

    @property
    def path(self) -> Path:
        return ROOT / "benchmarks" / (self.file or f"{self.name}.py")


# Goals as the issues state them; benchmarks not listed here are still run and reported generically.
BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark("masks", "feather 16 masks of 2048×2048 px (radius 32): pack vs scipy EDT ×2 + falloff",
              (Measure("ratio", "feather speed-up vs scipy (×)", 5.0),
               Measure("max_abs_diff", "max abs difference to scipy")),
              quick_args=("--size", "1024", "--count", "4", "--repeats", "1")),
    Benchmark("finding", "guided finder vs SAM automatic generator (32×32 points), random SAM vit_b + CLIP "
              "ViT-B/32 sizes, 400×600 photo",
              (Measure("ratio", "guided vs automatic speed-up (×)", 4.0),
               Measure("masks_guided", "masks scored, guided"), Measure("masks_amg", "masks scored, automatic"))),
    Benchmark("control", "lineart ×16 @128 px (cached vs controlnet_aux per-call load); tiny SD1.5 UNet + "
              "ControlNet @256 px per step",
              (Measure("annotator_speedup_cached_vs_controlnet_aux", "cached annotator speed-up (×)"),
               Measure("masked_vs_unmasked_step_time_ratio", "masked ControlNet step / plain", 1.05, False))),
    Benchmark("regions", "sampler step time for N regions (attention / instances mode) vs core "
              "ConditioningSetMask + a core ControlNet per cond, mid-size random SD1.5-architecture UNet (64 ch, "
              "mult 1/2/4) + same-shape ControlNet; attention goal at 512 px (64×64 latent), the rest at 128 px",
              (Measure("attention_n4_ratio", "attention mode N=4 step / single prompt, 512 px", 1.15, False),
               Measure("attention_n4_ratio_latent16", "attention mode N=4 step / single prompt, 128 px"),
               Measure("instances_n3_vs_core", "instances N=3 + ControlNets vs core", 1.0, False)),
              quick_args=("--repeats", "1")),
    Benchmark("unet_groups", "UNet attention mode (grouped routing) N=2/4/8 vs single prompt, former dense bias "
              "and a per-prompt blend (attention-couple's way), random SD1.5 / SDXL block layouts (64 ch), "
              "512 and 1024 px, one euler step at cfg 5, torch SDPA, 1 thread, process CPU time, median of 3",
              (Measure("unet_attention_n4_ratio_512", "attention mode N=4 step / single prompt, SD1.5, 512 px",
                       1.03, False),
               Measure("unet_attention_n4_ratio_1024", "attention mode N=4 step / single prompt, SD1.5, 1024 px",
                       1.03, False),
               Measure("per_prompt_blend_n4_ratio_512", "per-prompt blend N=4 step / single prompt, SD1.5, 512 px"),
               Measure("former_dense_n4_ratio_512", "former dense bias N=4 step / single prompt, SD1.5, 512 px")),
              quick_args=("--sizes", "512", "--rounds", "1")),
    Benchmark("blending", "per-step cost of the blending patches, random SD1.5-architecture UNet (64 ch, "
              "mult 1/2/4) at 128×128 px, 1 thread, process CPU time",
              (Measure("ratios.preserve_region", "SCPreserveRegion step / plain", 1.03, False),
               Measure("ratios.reference_attention", "reference attention step / plain", 1.6, False),
               Measure("ratios.cross_frame_2", "cross-frame (2 frames) step / plain"),
               Measure("ratios.cross_frame_8", "cross-frame (8 frames) step / plain")),
              quick_args=("--steps", "1", "--repeats", "2")),
    Benchmark("dit_regions", "Flux-shaped model (24 heads × 128, 1 double + 1 single block, random), 1024 px, one "
              "euler step at cfg 1, 1 thread, process CPU time, pytorch attention, median of 3 after a warm-up; "
              "Apply Regions N=4 attention mode vs the single prompt vs core masked conds (N + 1 passes)",
              (Measure("flux_n4_ratio", "attention mode N=4 step / single prompt, 256-token T5 prompts, feather 16",
                       1.25, False),
               Measure("flux_n4_hard_ratio", "attention mode N=4 step / single prompt, 256-token T5 prompts, no feather"),
               Measure("short_prompts_n4_ratio", "attention mode N=4 step / single prompt, unpadded prompts"),
               Measure("core_n4_ratio", "core masked conds N=4 step / single prompt")), leg="latest"),
    Benchmark("dit_control", "masked ControlNet and instances mode on tiny Flux / Qwen-Image models vs core "
              "(see benchmarks/dit_control.py)", leg="latest"),
    Benchmark("train_local", "masked adapter training step with vs without the Sobel term, micro SD1.5-layout "
              "UNet + T2I-Adapter and ControlNet (see benchmarks/train_local.py)",
              (Measure("ratio", "training step with Sobel / without (the worse adapter kind)", 1.15, False),)),
)


@dataclass
class Row:
    benchmark: str
    measure: str
    value: float | str
    goal: str = "—"
    met: bool | None = None
    spec: Measure | None = None


@dataclass
class Outcome:
    benchmark: Benchmark
    seconds: float = 0.0
    result: dict = field(default_factory=dict)
    error: str = ""


def machine() -> str:
    """CPU model, cores, torch version (and accelerator, if any) in one line."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    parts = [f"CPU {cpu}", f"{os.cpu_count()} cores", f"torch {torch.__version__}", f"Python {platform.python_version()}"]
    if torch.accelerator.is_available():
        parts.append(f"accelerator {torch.accelerator.current_accelerator()}")
    else:
        parts.append("no GPU")
    try:
        parts.append(f"load average {os.getloadavg()[0]:.1f} at start")
    except OSError:
        pass
    return ", ".join(parts)


def run(benchmark: Benchmark, quick: bool, timeout: float) -> Outcome:
    """Run one benchmark in a subprocess; its last stdout line must be its JSON."""
    python, env = sys.executable, None
    if benchmark.leg == "latest":
        python, comfy = ROOT / ".venv-latest" / "bin" / "python", os.environ.get("COMFYUI_PATH", ROOT / ".comfyui-latest")
        if not python.exists():
            return Outcome(benchmark, error="needs the latest leg's environment: run scripts/setup.sh --leg latest --dev")
        env = {**os.environ, "COMFYUI_PATH": str(comfy)}
    command = [str(python), str(benchmark.path), *(benchmark.quick_args if quick else ())]
    print(f"--- {benchmark.name}: {' '.join(command[1:])}", flush=True)
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return Outcome(benchmark, time.perf_counter() - start, error=f"timed out after {timeout:g} s")
    seconds = time.perf_counter() - start
    sys.stdout.write(done.stdout)
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return Outcome(benchmark, seconds, error=f"exit code {done.returncode}: {tail}")
    try:
        result = json.loads(lines[-1])
    except json.JSONDecodeError:
        return Outcome(benchmark, seconds, error=f"last line is not JSON: {lines[-1][:80]}")
    return Outcome(benchmark, seconds, result if isinstance(result, dict) else {"value": result})


def lookup(result: dict, key: str):
    value = result
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _generic_measures(result: dict) -> list[Measure]:
    """For a benchmark without a spec: its ratios / top-level numbers; a "goals" entry is an upper bound
    (as benchmarks/blending.py writes it) unless given as {"min": x} or {"max": x}."""
    goals = result.get("goals") if isinstance(result.get("goals"), dict) else {}
    measures = []
    numbers = {f"ratios.{k}": v for k, v in result.get("ratios", {}).items()} if isinstance(result.get("ratios"), dict) else {}
    numbers.update({k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    for key in numbers:
        goal = goals.get(key.removeprefix("ratios."))
        if isinstance(goal, dict):
            higher = "min" in goal
            measures.append(Measure(key, key, float(goal.get("min", goal.get("max"))), higher))
        else:
            measures.append(Measure(key, key, float(goal) if isinstance(goal, (int, float)) else None, False))
    return measures


def rows_of(outcome: Outcome) -> list[Row]:
    name = outcome.benchmark.name
    if outcome.error:
        return [Row(name, "(benchmark)", f"failed: {outcome.error}", met=False)]
    measures = list(outcome.benchmark.measures) or _generic_measures(outcome.result)
    rows = []
    for spec in measures:
        value = lookup(outcome.result, spec.key)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            rows.append(Row(name, spec.label, "missing from its JSON", spec.goal_text(), False if spec.goal else None, spec))
            continue
        rows.append(Row(name, spec.label, float(value), spec.goal_text(), spec.met(float(value)), spec))
    return rows


def _value_text(value: float | str) -> str:
    if isinstance(value, str):
        return value
    return f"{value:.3g}" if math.isfinite(value) and abs(value) < 1000 else f"{value:g}"


def _met_text(met: bool | None) -> str:
    return {True: "yes", False: "**no**", None: "—"}[met]


def table(rows: list[Row]) -> str:
    lines = ["| benchmark | measure | value | goal | met? |", "|---|---|---|---|---|"]
    lines += [f"| {r.benchmark} | {r.measure} | {_value_text(r.value)} | {r.goal} | {_met_text(r.met)} |" for r in rows]
    return "\n".join(lines)


def plain_table(rows: list[Row]) -> str:
    header = ("benchmark", "measure", "value", "goal", "met?")
    cells = [header] + [(r.benchmark, r.measure, _value_text(r.value), r.goal,
                         {True: "yes", False: "NO", None: "-"}[r.met]) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(5)]
    return "\n".join("  ".join(c[i].ljust(widths[i]) for i in range(5)) for c in cells)


def plot(rows: list[Row], path: Path, title: str) -> None:
    """Horizontal bars of how far each measure is from its goal (>= 1 = met), value written on each bar."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    scored = [r for r in rows if r.spec is not None and r.spec.goal is not None and isinstance(r.value, float)]
    failed = [r for r in rows if r.met is False and not isinstance(r.value, float)]
    labels = [f"{r.benchmark}: {r.spec.label}" for r in scored] + [f"{r.benchmark}: {r.measure}" for r in failed]
    scores = [(r.value / r.spec.goal if r.spec.higher_is_better else r.spec.goal / r.value) if r.value > 0 else 0.0
              for r in scored] + [0.0] * len(failed)
    figure = Figure(figsize=(9, 0.55 * max(len(labels), 1) + 1.4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    colours = ["tab:green" if s >= 1 else "tab:red" for s in scores]
    bars = axes.barh(range(len(labels)), scores, color=colours)
    notes = [f"{_value_text(r.value)} (goal {r.goal})" for r in scored] + ["failed" for _ in failed]
    for bar, note in zip(bars, notes):
        axes.annotate(note, (bar.get_width(), bar.get_y() + bar.get_height() / 2), xytext=(4, 0),
                      textcoords="offset points", va="center", fontsize=8)
    axes.axvline(1.0, color="black", linestyle="--", linewidth=1)
    axes.set_yticks(range(len(labels)), labels, fontsize=8)
    axes.invert_yaxis()
    axes.set_xlim(0, max([1.2, *scores]) * 1.35)
    axes.set_xlabel("goal met by this factor (value/goal, or goal/value for time ratios); ≥ 1 = met")
    axes.set_title(textwrap.fill(title, 110), fontsize=8)
    figure.tight_layout()
    figure.savefig(path)


def report(rows: list[Row], outcomes: list[Outcome], machine_line: str, quick: bool) -> str:
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [
        "# Performance",
        "",
        f"Generated by `benchmarks/run_all.py{' --quick' if quick else ''}` on {when}.",
        "",
        f"Machine: {machine_line}.",
        "",
        table(rows),
        "",
        "![goal met by factor](performance.png)",
        "",
        "## What each benchmark measures",
        "",
    ]
    for outcome in outcomes:
        lines.append(f"- **{outcome.benchmark.name}** ({outcome.seconds:.0f} s): {outcome.benchmark.setup}.")
    lines += ["", "Random weights at real architecture sizes stand in for downloaded models, so the numbers are "
              "about cost, not quality. Each benchmark compares its runs within one process, so machine load moves "
              "the ratios less than the absolute times; absolute times on a loaded machine are pessimistic.", ""]
    return "\n".join(lines)


def readme_section(rows: list[Row], outcomes: list[Outcome], machine_line: str, quick: bool) -> str:
    setups = [f"- {o.benchmark.name}: {o.benchmark.setup}." for o in outcomes]
    return "\n".join([
        f"`.venv/bin/python benchmarks/run_all.py{' --quick' if quick else ''}` runs every benchmark in "
        "`benchmarks/` and writes this table, [docs/performance.md](docs/performance.md) (what each one "
        "measures, on which model sizes) and a plot. Values that miss their goal say so.",
        "",
        f"Measured on: {machine_line}.",
        "",
        table(rows),
        "",
        "Model sizes and settings:",
        "",
        *setups,
    ])


def write_readme(section: str, readme: Path = ROOT / "README.md") -> None:
    text = readme.read_text()
    pattern = re.compile(re.escape(README_START) + r".*?" + re.escape(README_END), re.DOTALL)
    if not pattern.search(text):
        raise SystemExit(f"{readme} has no {README_START} ... {README_END} section to replace")
    readme.write_text(pattern.sub(lambda _: f"{README_START}\n{section}\n{README_END}", text, count=1))


def main() -> None:
    known = [b.name for b in BENCHMARKS]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help=f"comma-separated benchmarks to run (of {', '.join(known)})")
    parser.add_argument("--quick", action="store_true", help="smaller sizes where a benchmark accepts them")
    parser.add_argument("--write-readme", action="store_true", help="replace the README's performance section")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds before a benchmark counts as failed")
    args = parser.parse_args()
    extra = sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py")
                   if p.stem not in known and p.stem != "run_all" and not p.stem.startswith("_"))
    benchmarks = [b for b in BENCHMARKS if b.path.exists()] + [Benchmark(n, f"see benchmarks/{n}.py") for n in extra]
    if args.only:
        wanted = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in {b.name for b in benchmarks}]
        if unknown:
            raise SystemExit(f"no benchmark {', '.join(unknown)}; choose from {', '.join(b.name for b in benchmarks)}")
        benchmarks = [b for b in benchmarks if b.name in wanted]
    machine_line = machine()
    outcomes = [run(b, args.quick, args.timeout) for b in benchmarks]
    rows = [row for outcome in outcomes for row in rows_of(outcome)]
    print(f"\nMachine: {machine_line}{' (quick sizes)' if args.quick else ''}")
    print(plain_table(rows))
    DOCS.mkdir(exist_ok=True)
    (DOCS / "performance.md").write_text(report(rows, outcomes, machine_line, args.quick))
    plot(rows, DOCS / "performance.png", f"Selective Control benchmarks — {machine_line}")
    if args.write_readme:
        write_readme(readme_section(rows, outcomes, machine_line, args.quick))
    missed = [f"{r.benchmark}: {r.measure}" for r in rows if r.met is False]
    print(json.dumps({"benchmarks": [o.benchmark.name for o in outcomes], "missed": missed,
                      "rows": [{"benchmark": r.benchmark, "measure": r.measure, "value": r.value, "goal": r.goal,
                                "met": r.met} for r in rows]}))


if __name__ == "__main__":
    main()

"""Mutation testing with mutmut: run it on chosen modules, then print the mutation score per module.

    python scripts/mutate.py                       # every mutant of [tool.mutmut]'s modules without a result yet
    python scripts/mutate.py nodes/ops/masks.py    # only these files' mutants
    python scripts/mutate.py --survivors nodes/ops/masks.py  # after adding tests: the survivors again
    python scripts/mutate.py --pending nodes/ops/masks.py    # finish an interrupted run
    python scripts/mutate.py --timeouts nodes/ops/masks.py   # the timeouts again, each in a fresh process
    python scripts/mutate.py --report              # the scores of the last runs, without running

mutmut copies the pack to ``mutants/``, changes one thing at a time (an operator, a constant, a
call argument) and runs the tests that reach the changed function (``make mutate`` runs this with
the floor leg). A mutant is *killed* when a test fails, *survives* when all pass. Results are kept in
``mutants/`` between runs; a function whose code or tests changed is tested again. One worker
process: the machine is shared.

Score = killed (timeouts included) / (killed + survived). "no tests" mutants (functions no selected
test reaches) and "crashed" ones (the test process died of a signal) are listed apart: the first
need a test, the second a look by hand.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = {36, 24, -24, 152, 255}  # mutmut's codes for a mutant whose tests ran out of time
KILLED = {1, 3} | TIMEOUT  # test failure, pytest error, timeout
SURVIVED, NO_TESTS = {0}, {5, 33}
# A test process that died of a signal (-6 SIGABRT, -9, -11) is not counted as a kill: a library
# that aborts in a forked process (mediapipe did) would look like one. Run such a mutant's tests by
# hand (`mutmut tests-for-mutant <name>`, MUTANT_UNDER_TEST=<name> in mutants/) to judge it.


def module_name(path: str) -> str:
    return path.removesuffix(".py").replace("/", ".")


def mutmut_env() -> dict[str, str]:
    """The environment mutmut and its test processes run in: one torch thread, the floor leg's ComfyUI."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.setdefault("COMFYUI_PATH", str((REPO / ".comfyui").resolve()))
    return env


def run_mutmut(paths: list[str], only: set | None = None) -> int:
    """Run mutmut on the files' mutants; ``only``: just those whose last result is in it (None = not run yet)."""
    env = mutmut_env()
    patterns = [f"{module_name(p)}.*" for p in paths]  # named mutants run again even if they have a result
    if only is not None:
        wanted = {module_name(p) for p in paths}
        patterns = [name for module, codes in results().items() if not wanted or module in wanted
                    for name, code in codes.items() if code in only]
        if not patterns:
            return 0
    return subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", "1", *patterns],
                          cwd=REPO, env=env).returncode


def rerun_timeouts(paths: list[str]) -> None:
    """Run each timed-out mutant's tests again in a fresh pytest process (not forked) and keep that result.

    A process mutmut forks after threaded torch work can hang in libgomp (a oneDNN convolution); mutmut
    then reports a timeout, which counts as a kill even when the mutant would survive."""
    wanted = {module_name(p) for p in paths}
    env = mutmut_env()
    for meta in sorted((REPO / "mutants").rglob("*.py.meta")):
        if wanted and module_name(meta.relative_to(REPO / "mutants").as_posix().removesuffix(".meta")) not in wanted:
            continue
        data = json.loads(meta.read_text())
        for name, code in data["exit_code_by_key"].items():
            if code not in TIMEOUT:
                continue
            tests = subprocess.run([sys.executable, "-m", "mutmut", "tests-for-mutant", name], cwd=REPO, env=env,
                                   capture_output=True, text=True, check=True).stdout.split("\n")
            try:
                run = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                                      *[t for t in tests if t]], cwd=REPO / "mutants", capture_output=True,
                                     env={**env, "MUTANT_UNDER_TEST": name}, timeout=600)
            except subprocess.TimeoutExpired:
                continue
            data["exit_code_by_key"][name] = run.returncode
            print(f"{name}: {'killed' if run.returncode in KILLED else 'survived' if run.returncode == 0 else run.returncode}")
        meta.write_text(json.dumps(data))


def results() -> dict[str, dict[str, int | None]]:
    """``{module: {mutant: exit code}}`` from mutmut's result files."""
    out = {}
    for meta in sorted((REPO / "mutants").rglob("*.py.meta")):
        source = meta.relative_to(REPO / "mutants").as_posix().removesuffix(".meta")
        out[module_name(source)] = json.loads(meta.read_text())["exit_code_by_key"]
    return out


def report(only: list[str]) -> str:
    wanted = {module_name(p) for p in only}
    lines = ["| module | mutants | killed | survived | no tests | crashed | not run | score |",
             "|---|---|---|---|---|---|---|---|"]
    survivors, crashed = [], []
    totals = Counter()
    for module, codes in results().items():
        if wanted and module not in wanted:
            continue
        count = Counter("killed" if c in KILLED else "survived" if c in SURVIVED else "no tests" if c in NO_TESTS
                        else "not run" if c is None else "crashed" for c in codes.values())
        tested = count["killed"] + count["survived"]
        score = f"{100 * count['killed'] / tested:.1f} %" if tested else "-"
        lines.append(f"| {module} | {len(codes)} | {count['killed']} | {count['survived']} | {count['no tests']} | "
                     f"{count['crashed']} | {count['not run']} | {score} |")
        totals.update(count)
        survivors += [name for name, c in codes.items() if c in SURVIVED]
        crashed += [f"{name} ({c})" for name, c in codes.items()
                    if c is not None and c not in KILLED | SURVIVED | NO_TESTS]
    tested = totals["killed"] + totals["survived"]
    if tested:
        lines.append(f"| all | {sum(totals.values())} | {totals['killed']} | {totals['survived']} | "
                     f"{totals['no tests']} | {totals['crashed']} | {totals['not run']} | "
                     f"{100 * totals['killed'] / tested:.1f} % |")
    lines.append(f"\nsurviving mutants ({len(survivors)}): `mutmut show <name>` prints the change")
    lines += [f"  {name}" for name in survivors]
    if crashed:
        lines.append(f"\ncrashed ({len(crashed)}): the test process died of a signal; not counted as killed")
        lines += [f"  {name}" for name in crashed]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", help="source files to mutate (default: all in [tool.mutmut])")
    parser.add_argument("--report", action="store_true", help="only print the scores of earlier runs")
    parser.add_argument("--survivors", action="store_true", help="run only the mutants that survived the last run")
    parser.add_argument("--pending", action="store_true", help="run only the mutants not run yet (an interrupted run)")
    parser.add_argument("--timeouts", action="store_true",
                        help="run the timed-out mutants' tests again, each in a fresh process: a process mutmut "
                             "forks after threaded torch work can hang, which mutmut counts as a timeout (a kill)")
    args = parser.parse_args(argv)
    code = 0
    if not args.report:
        try:
            import mutmut  # noqa: F401
        except ImportError:
            parser.error("mutmut is not installed: `make setup LEG=floor` installs requirements-dev.txt")
        if args.timeouts:
            rerun_timeouts(args.paths)
        else:
            code = run_mutmut(args.paths, SURVIVED if args.survivors else {None} if args.pending else None)
    print(report(args.paths))
    return code


if __name__ == "__main__":
    sys.exit(main())

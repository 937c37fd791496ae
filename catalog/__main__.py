"""`python -m catalog WORKFLOW INPUT... --out FOLDER (--server URL... | --local N) [--address RAY]`."""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from pathlib import Path

from .convert import WorkflowError
from .items import DEFAULT_MAX_PIXELS, BadInput, discover
from .local import LocalServerError, local_servers
from .manifest import ManifestMismatch, OutputInUse, check_free
from .runner import Job, RunError, run

log = logging.getLogger("catalog")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m catalog",
        description="Run one ComfyUI workflow over every image of a catalog on several ComfyUI servers, with Ray. "
        "Resumable: run the same command again to finish what is not done; nothing is redone.")
    parser.add_argument("workflow", type=Path, help="workflow JSON, UI format (as saved by ComfyUI) or API format")
    parser.add_argument("inputs", nargs="+", help="folders, glob patterns or CSV files of image paths")
    parser.add_argument("--out", type=Path, required=True,
                        help="output folder: one file per output named after its source, and catalog.sqlite")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--server", nargs="+", metavar="URL", help="ComfyUI servers, e.g. http://10.0.0.5:8188")
    where.add_argument("--local", type=int, metavar="N", help="start N ComfyUI servers on 127.0.0.1 from the pack's own ComfyUI")
    parser.add_argument("--address", help="Ray cluster to join (as `ray start --head` printed, or 'auto'); "
                        "default: a local Ray")
    parser.add_argument("--target", help="node that receives each item: its id or title, optionally .input "
                        "(default: the workflow's only LoadImage, input 'image')")
    parser.add_argument("--attempts", type=int, default=3, help="tries per item before it is marked failed (default 3)")
    parser.add_argument("--per-server", type=int, default=2,
                        help="prompts in flight per server (2 keeps a server busy while the next item uploads)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds one prompt may take (default 600)")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                        help=f"larger images are skipped as bad input (default {DEFAULT_MAX_PIXELS})")
    parser.add_argument("--stop-after-failures", type=int, default=10,
                        help="stop when this many items in a row fail on every try (0: never; default 10)")
    parser.add_argument("--new-workflow", action="store_true",
                        help="go on in an output folder that holds a run of another workflow")
    parser.add_argument("--comfyui", type=Path, help="ComfyUI folder for --local (default: the pack's own)")
    parser.add_argument("--python", type=Path, help="Python for --local servers (default: the venv beside it)")
    parser.add_argument("--cpu", action="store_true", help="start --local servers with --cpu")
    parser.add_argument("--json", type=Path, help="also write the final report as JSON to this file")
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    args = parser.parse_args(argv)
    if args.local is not None and args.local < 1:
        parser.error("--local needs at least 1 server")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        workflow = json.loads(args.workflow.read_text(encoding="utf-8"))
        sources = discover(args.inputs)
        check_free(args.out)
        with contextlib.ExitStack() as stack:
            servers = args.server
            if args.local:
                log.info("starting %d local ComfyUI server(s)...", args.local)
                started = stack.enter_context(local_servers(args.local, args.comfyui, args.python, cpu=args.cpu))
                servers = [server.url for server in started]
            job = Job(workflow, sources, args.out, servers, workflow_name=str(args.workflow), target=args.target,
                      attempts=args.attempts, per_server=args.per_server, timeout=args.timeout,
                      max_pixels=args.max_pixels, stop_after_failures=args.stop_after_failures,
                      new_workflow=args.new_workflow, progress=None if args.quiet else sys.stderr,
                      address=args.address)
            report = run(job)
    except (OSError, ValueError, BadInput, WorkflowError, RunError, ManifestMismatch, OutputInUse,
            LocalServerError) as error:
        log.error("catalog: %s", error)
        return 2
    sys.stdout.write(report.text() + "\n")
    if args.json:
        args.json.write_text(json.dumps(report.as_dict(), indent=2))
    return 0 if not (report.failed or report.bad or report.pending) else 1


if __name__ == "__main__":
    sys.exit(main())

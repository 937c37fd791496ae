"""Make the README's workflow pictures (docs/workflows/<name>.png) from the real ComfyUI frontend.

Runs tests/test_browser.py's screenshot test (a real server, Debian's chromium, every shipped workflow
opened as a user opens a file) in a 2400x1500 window and keeps its screenshots, so the pictures always
show the workflows as they ship: `.venv/bin/python scripts/workflow_pictures.py`. At that size the
fitted view draws every node's title and widgets (check_workflows.mjs: focus mode, no banner).
"""
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "docs" / "workflows"
VIEWPORT = "2400x1500"
MAX_BYTES = 300_000  # README budget per picture (tests/test_pack.py)


def main() -> None:
    with tempfile.TemporaryDirectory() as artifacts:
        env = {**os.environ, "SC_BROWSER_ARTIFACTS": artifacts, "SC_BROWSER_VIEWPORT": VIEWPORT}
        subprocess.run([sys.executable, "-m", "pytest", "-q", "tests/test_browser.py", "-k", "screenshot"],
                       cwd=ROOT, env=env, check=True)
        TARGET.mkdir(parents=True, exist_ok=True)
        for workflow in sorted((ROOT / "workflows").glob("*.json")):
            shot = Path(artifacts) / f"{workflow.stem}.png"
            with Image.open(shot) as image:
                picture = image.convert("RGB")
            target = TARGET / shot.name
            # UI colours survive a 256-colour palette unharmed, at about 40% of the bytes
            picture.quantize(256).save(target, optimize=True)
            size = target.stat().st_size
            if size > MAX_BYTES:
                sys.exit(f"{target} is {size // 1000} KB, over the README budget of {MAX_BYTES // 1000} KB")
            print(f"wrote {target} ({picture.width}x{picture.height}, {size // 1000} KB)")


if __name__ == "__main__":
    main()

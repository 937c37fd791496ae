"""Make the README's workflow pictures (docs/workflows/<name>.png) from the real ComfyUI frontend.

Runs tests/test_browser.py's screenshot test (a real server, Debian's chromium, every shipped workflow
opened as a user opens a file) and keeps its screenshots, scaled to the README's width, so the
pictures always show the workflows as they ship: `.venv/bin/python scripts/workflow_pictures.py`.
"""
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "docs" / "workflows"
WIDTH = 960
MAX_BYTES = 150_000  # README budget per picture (tests/test_pack.py)


def main() -> None:
    with tempfile.TemporaryDirectory() as artifacts:
        env = {**os.environ, "SC_BROWSER_ARTIFACTS": artifacts}
        subprocess.run([sys.executable, "-m", "pytest", "-q", "tests/test_browser.py", "-k", "screenshot"],
                       cwd=ROOT, env=env, check=True)
        TARGET.mkdir(parents=True, exist_ok=True)
        for workflow in sorted((ROOT / "workflows").glob("*.json")):
            shot = Path(artifacts) / f"{workflow.stem}.png"
            with Image.open(shot) as image:
                height = round(image.height * WIDTH / image.width)
                picture = image.convert("RGB").resize((WIDTH, height), Image.LANCZOS)
            target = TARGET / shot.name
            picture.save(target, optimize=True)
            if target.stat().st_size > MAX_BYTES:  # UI colours survive a 256-colour palette unharmed
                picture.quantize(256).save(target, optimize=True)
            print(f"wrote {target} ({target.stat().st_size // 1000} KB)")


if __name__ == "__main__":
    main()

"""Regenerate (--write) or check the README's node reference from the node schemas."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from harness.node_docs import README, readme_with_reference, render_reference  # noqa: E402

if __name__ == "__main__":
    current = README.read_text()
    wanted = readme_with_reference(current, render_reference())
    if "--write" in sys.argv:
        README.write_text(wanted)
        print(f"wrote the node reference into {README}")
    elif current != wanted:
        sys.exit("README.md's node reference is out of date: run `make readme`")

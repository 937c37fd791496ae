"""Regenerate (--write) or check the node reference in docs/nodes.md from the node schemas."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from harness.node_docs import REFERENCE_DOC, doc_with_reference, render_reference  # noqa: E402

if __name__ == "__main__":
    current = REFERENCE_DOC.read_text()
    wanted = doc_with_reference(current, render_reference())
    if "--write" in sys.argv:
        REFERENCE_DOC.write_text(wanted)
        print(f"wrote the node reference into {REFERENCE_DOC}")
    elif current != wanted:
        sys.exit("docs/nodes.md's node reference is out of date: run `make readme`")

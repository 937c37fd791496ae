"""Layer guards: which pack module may touch what (docs/ARCHITECTURE.md draws the layers).

- ComfyUI internals (names outside its public API, which change between releases) only in
  ``nodes/sampling/compat.py``.
- Node modules (``nodes/<area>.py``) import ops, sampling, models and ``nodes/types.py``, never
  another node module.
- In ``nodes/ops/`` only ``files.py`` reads or writes files.
"""
import re

import pytest

from harness import REPO_ROOT

NODES = REPO_ROOT / "nodes"
COMPAT = NODES / "sampling" / "compat.py"
PACK_SOURCES = sorted(NODES.rglob("*.py"))

# Not ComfyUI's public API: private names, core nodes' helper functions, executor and server hooks.
COMFY_INTERNALS = {
    r"\bget_area_and_mult\b": "comfy.samplers.get_area_and_mult",
    r"\bcomfy_extras\b": "core nodes' modules (comfy_extras.nodes_train's patch/unpatch, ...)",
    r"\bfind_all_highest_child_module_with_forward\b": "comfy_extras.nodes_train",
    r"\b_create_png_metadata\b": "ui.ImageSaveHelper._create_png_metadata",
    r"\bget_executing_context\b|\bcomfy_execution\.utils\b": "the executor's context",
    r"\bsend_progress_text\b|\bPromptServer\b|^\s*(from|import)\s+server\b": "the server's progress hooks",
    r"\bPROGRESS_BAR_HOOK\b|\bset_progress_bar_global_hook\b": "the progress-bar hook",
    r"\bupdate_absolute\b": "ProgressBar.update_absolute (0.33 throttles it: compat.report_every_step)",
    r"\bmultigpu_clones\b|(?<!def )\bdeepclone_multigpu\b": "ControlBase's MultiGPU copies (defining one is fine)",
    r"\bcomfy\.[\w.]*\._(?!_)\w+|\bui\.\w+\._(?!_)\w+": "a private ComfyUI name",
}


def _code(path) -> str:
    """The module's code without comments, docstrings and calls into compat (``compat.name``), so
    prose may name what code may not call."""
    text = re.sub(r'"""[\s\S]*?"""|\bcompat\.\w+', "", path.read_text())
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))


@pytest.mark.parametrize("path", [p for p in PACK_SOURCES if p != COMPAT], ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_comfyui_internals_only_through_compat(path):
    code = _code(path)
    for pattern, what in COMFY_INTERNALS.items():
        found = re.search(pattern, code, re.MULTILINE)
        assert found is None, (f"{path.relative_to(REPO_ROOT)} uses {found.group(0)!r} ({what}): call it through "
                               "nodes/sampling/compat.py, where ComfyUI's version differences are handled")


def test_the_guard_sees_what_it_forbids():
    """Each pattern matches the internal use it names (a guard that matches nothing cannot fail)."""
    samples = ["comfy.samplers.get_area_and_mult(c, x, t)", "from comfy_extras.nodes_train import patch",
               "find_all_highest_child_module_with_forward(m)", "ui.ImageSaveHelper._create_png_metadata(cls)",
               "from comfy_execution.utils import get_executing_context", "from server import PromptServer",
               "comfy.utils.PROGRESS_BAR_HOOK", "bar.update_absolute(1, 2)", "control.multigpu_clones",
               "comfy.model_management._private()"]
    for sample, pattern in zip(samples, COMFY_INTERNALS):
        assert re.search(pattern, sample, re.MULTILINE), (pattern, sample)
    assert COMPAT.is_file()


NODE_MODULES = sorted(p for p in NODES.glob("*.py") if p.name not in ("__init__.py", "types.py"))
NODE_MODULE_NAMES = {p.stem for p in NODE_MODULES}


def _imported_siblings(text: str) -> set[str]:
    """Names of ``nodes/`` modules a node module imports relatively (``from .x import``, ``from . import x``)."""
    found = set(re.findall(r"^\s*from \.(\w+)[\w.]* import", text, re.MULTILINE))
    for names in re.findall(r"^\s*from \. import ([\w, ()]+)", text, re.MULTILINE):
        found |= {n.strip(" ()").split(" as ")[0] for n in names.split(",")}
    return found


@pytest.mark.parametrize("path", NODE_MODULES, ids=lambda p: p.name)
def test_no_node_module_imports_another(path):
    imported = _imported_siblings(path.read_text()) & NODE_MODULE_NAMES
    assert not imported, (f"nodes/{path.name} imports the node module(s) {sorted(imported)}: move what they share "
                          "(a custom io type to nodes/types.py, logic to ops/ or sampling/)")


def test_the_node_import_guard_sees_sibling_imports():
    assert _imported_siblings("from .control import PoseKeypoint\nfrom . import finding, masks as m\n") == {
        "control", "finding", "masks"}
    assert _imported_siblings("from .ops import masks\nfrom .types import Regions\n") == {"ops", "types"}


FILE_IO = r"\bopen\(|\bos\.(listdir|scandir|walk|remove|makedirs)\b|\bos\.path\.(isfile|isdir|exists)\b|" \
          r"\.(iterdir|glob|read_text|read_bytes|write_text|write_bytes)\(|\btorch\.(load|save)\(|" \
          r"\bnp\.(load|save)\w*\(|\bImage\.open\(|\.save\("


@pytest.mark.parametrize("path", sorted(p for p in (NODES / "ops").glob("*.py") if p.name != "files.py"),
                         ids=lambda p: p.name)
def test_file_io_in_ops_only_in_its_files_module(path):
    found = re.search(FILE_IO, _code(path))
    assert found is None, (f"nodes/ops/{path.name} does file I/O ({found.group(0)!r}): put it in nodes/ops/files.py "
                           "and pass tensors in")


def test_the_file_io_guard_sees_reads_and_writes():
    for sample in ("with open(p) as f:", "os.listdir(folder)", "Image.open(path)", "image.save(path)",
                   "folder.iterdir()", "torch.load(f)", "np.save(p, a)"):
        assert re.search(FILE_IO, sample), sample

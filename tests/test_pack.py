"""The pack as ComfyUI and the Comfy Registry see it: schemas, metadata, hygiene, README."""
import ast
import re
import tomllib

import pytest

from harness import REPO_ROOT
from harness.node_docs import REFERENCE_DOC, doc_with_reference, pack_node_classes, render_reference

SCHEMAS = [cls.GET_SCHEMA() for cls in pack_node_classes()]


def test_comfyui_registered_every_pack_node():
    import nodes

    assert SCHEMAS, "the pack registers no nodes"
    for schema in SCHEMAS:
        assert nodes.NODE_CLASS_MAPPINGS.get(schema.node_id) is not None, schema.node_id


@pytest.mark.parametrize("schema", SCHEMAS, ids=lambda s: s.node_id)
def test_node_schema_follows_the_conventions(schema):
    assert re.fullmatch(r"SC[A-Z][A-Za-z0-9]+", schema.node_id)
    assert schema.category.startswith("selective_control/")
    assert schema.display_name and schema.display_name != schema.node_id
    assert len(schema.description) > 20
    for item in schema.inputs:
        assert item.tooltip and len(item.tooltip) > 10, f"{schema.node_id}.{item.id} has no useful tooltip"
    for item in schema.outputs:  # without one the frontend labels the slot with its type (FLOAT, FLOAT, ...)
        assert item.display_name and item.tooltip, f"{schema.node_id} has an output without a display name or tooltip"
    assert schema.display_name.endswith(" (SC)"), "one naming pattern: '<what it does> (SC)'"


def test_node_ids_are_unique():
    ids = [schema.node_id for schema in SCHEMAS]
    assert len(ids) == len(set(ids))


def test_node_reference_matches_the_schemas():
    current = REFERENCE_DOC.read_text()
    assert current == doc_with_reference(current, render_reference()), "run `make readme`"


def test_pyproject_has_the_registry_fields():
    project_file = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    project, comfy = project_file["project"], project_file["tool"]["comfy"]
    assert project["name"] == "comfyui-selective-control"
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["version"])
    assert project["description"]
    assert (REPO_ROOT / project["license"]["file"]).is_file()
    assert project_file["project"]["urls"]["Repository"].startswith("https://")
    assert comfy["PublisherId"] and comfy["DisplayName"]
    assert "Icon" in comfy
    pinned = {re.split(r"[<>=!~ ;\[]", dep)[0].lower() for dep in project["dependencies"]}
    assert not pinned & {"torch", "numpy", "pillow", "transformers", "safetensors"}, "ComfyUI provides these"
    requirements = [line.strip() for line in (REPO_ROOT / "requirements.txt").read_text().splitlines()
                    if line.strip() and not line.startswith("#")]
    assert project["dependencies"] == requirements, "pyproject.toml and requirements.txt must list the same"


PACK_SOURCES = sorted(p for p in [REPO_ROOT / "__init__.py", *(REPO_ROOT / "nodes").rglob("*.py")])
FORBIDDEN = {
    r"\bsys\.path\b": "no sys.path edits in the pack",
    r"os\.environ\[[^]]+\]\s*=|os\.environ\.(update|setdefault)": "no environment changes in the pack",
    r"^\s*print\(": "use logging, not print",
    r"\bsubprocess\b|\bpip\.main\b|\bpip\._internal\b|\bos\.system\b": "no installs or subprocesses from the pack",
    r"^\s*except\s*:": "no bare except",
    r"[\"']cuda[\"']": "no hard-coded cuda device; use comfy.model_management",
}


@pytest.mark.parametrize("path", PACK_SOURCES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_pack_source_hygiene(path):
    text = path.read_text()
    for pattern, why in FORBIDDEN.items():
        assert not re.search(pattern, text, re.MULTILINE), f"{path.name}: {why}"


def global_state_changes(source: str) -> list[str]:
    """What a module does to state that is not its own: environment, sys.path/modules, other modules' attributes.

    Read from the syntax tree: writes to ``os.environ`` (item assignment, ``del``, ``update``,
    ``setdefault``, ``pop``, ``clear``, ``putenv``/``unsetenv``), any use of ``sys.path`` or writes to
    ``sys.modules``, ``unittest.mock`` (``patch``, ``patch.dict``...) and ``monkeypatch``, and
    ``setattr``/attribute assignment on an imported module (``comfy.x.y = ...``).
    """
    tree = ast.parse(source)
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
    found = []

    def dotted(node) -> str:
        parts = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if isinstance(node, ast.Name):
            parts.append(node.id)
        return ".".join(reversed(parts))

    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [getattr(node, "module", None) or ""] + [alias.name for alias in node.names]
            if any(name == "mock" or name.startswith("unittest.mock") or name == "unittest" for name in names):
                found.append(f"line {line}: imports unittest.mock")
        elif isinstance(node, ast.Attribute) and dotted(node) in ("sys.path", "sys.modules") and (
                dotted(node) == "sys.path" or isinstance(node.ctx, ast.Store)):
            found.append(f"line {line}: {dotted(node)}")
        elif isinstance(node, ast.Call):
            name = dotted(node.func)
            if name in ("os.putenv", "os.unsetenv") or re.fullmatch(
                    r"os\.environ\.(update|setdefault|pop|popitem|clear)|sys\.modules\.(update|setdefault)", name):
                found.append(f"line {line}: {name}()")
            elif name == "setattr" and node.args and dotted(node.args[0]).split(".")[0] in imported:
                found.append(f"line {line}: setattr on module {dotted(node.args[0])}")
            elif "monkeypatch" in name or name.split(".")[0] == "mock":
                found.append(f"line {line}: {name}()")
        elif isinstance(node, (ast.Assign, ast.AugAssign, ast.Delete)):
            targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
            for target in targets:
                if isinstance(target, ast.Subscript) and dotted(target.value) in ("os.environ", "sys.modules"):
                    found.append(f"line {line}: writes {dotted(target.value)}[...]")
                elif isinstance(target, ast.Attribute) and dotted(target).split(".")[0] in imported:
                    found.append(f"line {line}: assigns {dotted(target)} of another module")
    return found



# The annotators import controlnet_aux's network modules under the pack's own private package name
# (never the real controlnet_aux, whose __init__ fails on new mediapipe): a key of the pack's own.
OWN_MODULE_NAMES = {"nodes/models/annotators.py": ["writes sys.modules[...]"]}


@pytest.mark.parametrize("path", PACK_SOURCES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_pack_changes_no_global_state(path):
    found = [change.split(": ", 1)[1] for change in global_state_changes(path.read_text())]
    assert found == OWN_MODULE_NAMES.get(str(path.relative_to(REPO_ROOT)), [])


@pytest.mark.parametrize("snippet", [
    "import os\nos.environ['X'] = '1'", "import os\nos.environ.setdefault('X', '1')", "import os\ndel os.environ['X']",
    "import os\nos.putenv('X', '1')", "import sys\nsys.path.insert(0, 'x')", "import sys\nsys.modules['x'] = None",
    "from unittest import mock", "import comfy.samplers\ncomfy.samplers.KSampler = None",
    "import comfy.model_management as mm\nsetattr(mm, 'x', 1)", "import comfy.utils\ncomfy.utils.PROGRESS_BAR_ENABLED = False",
])
def test_the_global_state_scan_finds_each_kind(snippet):
    assert global_state_changes(snippet)


def test_the_global_state_scan_leaves_own_state_alone():
    own = "import os\nclass A:\n    x = 1\na = A()\na.x = 2\nsetattr(a, 'x', 3)\nvalue = os.environ.get('HOME')\n"
    assert global_state_changes(own) == []


def test_ops_do_not_import_comfyui():
    for path in (REPO_ROOT / "nodes" / "ops").rglob("*.py"):
        text = path.read_text()
        assert not re.search(r"^\s*(from|import)\s+(comfy|comfy_api|folder_paths|nodes)\b", text, re.MULTILINE), path.name


@pytest.mark.parametrize("workflow", sorted((REPO_ROOT / "workflows").glob("*.json")), ids=lambda p: p.name)
def test_every_workflow_has_its_picture_and_the_readme_shows_it(workflow):
    """docs/workflows/<name>.png comes from scripts/workflow_pictures.py (the real frontend); re-run it after
    adding or changing a workflow."""
    picture = REPO_ROOT / "docs" / "workflows" / f"{workflow.stem}.png"
    assert picture.is_file(), f"no {picture.relative_to(REPO_ROOT)}: run scripts/workflow_pictures.py"
    assert picture.stat().st_size <= 300_000, f"{picture.name} is {picture.stat().st_size} bytes (README budget 300 KB)"
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    assert f"](docs/workflows/{workflow.stem}.png)" in readme, f"README does not show {picture.name}"

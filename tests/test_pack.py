"""The pack as ComfyUI and the Comfy Registry see it: schemas, metadata, hygiene, README."""
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
    r"pip install|subprocess": "no installs or subprocesses from the pack",
    r"^\s*except\s*:": "no bare except",
    r"[\"']cuda[\"']": "no hard-coded cuda device; use comfy.model_management",
}


@pytest.mark.parametrize("path", PACK_SOURCES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_pack_source_hygiene(path):
    text = path.read_text()
    for pattern, why in FORBIDDEN.items():
        assert not re.search(pattern, text, re.MULTILINE), f"{path.name}: {why}"


def test_ops_do_not_import_comfyui():
    for path in (REPO_ROOT / "nodes" / "ops").rglob("*.py"):
        text = path.read_text()
        assert not re.search(r"^\s*(from|import)\s+(comfy|comfy_api|folder_paths|nodes)\b", text, re.MULTILINE), path.name

"""The node reference (docs/nodes.md), rendered from the nodes' own V3 schemas so it cannot drift."""
from __future__ import annotations

import asyncio
import re

from .comfy import REPO_ROOT, boot

REFERENCE_DOC = REPO_ROOT / "docs" / "nodes.md"
START, END = "<!-- node-reference:start -->", "<!-- node-reference:end -->"


def pack_node_classes() -> list[type]:
    """The node classes the pack's V3 extension registers, in its order."""
    extension = asyncio.run(boot().comfy_entrypoint())
    return asyncio.run(extension.get_node_list())


def _one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text or "").strip()


def render_reference() -> str:
    lines: list[str] = []
    current_category = None
    for cls in sorted(pack_node_classes(), key=lambda c: c.GET_SCHEMA().category):
        schema = cls.GET_SCHEMA()
        if schema.category != current_category:
            current_category = schema.category
            lines += [f"### `{current_category}`", ""]
        lines += [f"**{schema.display_name}** (`{schema.node_id}`): {_one_line(schema.description)}", ""]
        for item in schema.inputs:
            optional = ", optional" if item.optional else ""
            lines.append(f"- in `{item.id}` ({item.get_io_type()}{optional}): {_one_line(item.tooltip)}")
        for item in schema.outputs:
            name = item.display_name
            tip = f": {_one_line(item.tooltip)}" if item.tooltip else ""
            lines.append(f"- out `{name}` ({item.get_io_type()}){tip}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def doc_with_reference(doc: str, reference: str) -> str:
    head, rest = doc.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{reference}{END}{tail}"

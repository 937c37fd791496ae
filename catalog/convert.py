"""UI-format workflows (as the ComfyUI frontend saves them) to API prompts, from node definitions.

Needs only the node definitions ``GET /object_info`` returns, so it runs beside any ComfyUI
server without importing ComfyUI. ``ui_to_api`` reproduces what the frontend's
``graphToPrompt`` (ComfyUI_frontend 1.32, ``src/utils/executionUtil.ts`` and litegraph's
``ExecutableNodeDTO``) sends to ``POST /prompt``:

- every widget's value, keyed by input name: widgets are the inputs whose type is a combo
  list / ``COMBO`` or a widget type the frontend registers (INT, FLOAT, STRING, BOOLEAN, ...),
  unless ``forceInput``; ``widgetType`` overrides the type. ``widgets_values`` holds them in
  input order (required, then optional, by ``input_order``) plus values that are never
  sent: the "control after generate" value after an INT with ``control_after_generate``
  (or, when that option is absent, an INT named ``seed``/``noise_seed``), control + filter
  values after such a combo, and the upload button's value at the end for media uploads;
- STRING widgets with ``dynamicPrompts`` go through the frontend's comment stripping and
  ``{a|b}`` choice; list values are wrapped as ``{"__value__": [...]}``;
- links then override widgets: a PrimitiveNode pushes its value into the widgets it feeds
  directly; links are followed through Reroute (and other virtual) nodes and through
  bypassed nodes (mode 4: the input at the output's index if its type fits, else the first
  input of exactly the consumer's type, else the first compatible one); a link that ends
  at a muted node (mode 2) is dropped, widget value included, as the frontend does;
- widgets a core frontend extension adds without saving them (PreviewAny's ``preview`` on
  frontend 1.32) are sent with their value after loading;
- virtual nodes (Note, MarkdownNote, PrimitiveNode, Reroute, ...), muted and bypassed
  nodes are left out. Subgraphs and legacy group nodes are refused with a clear error.
"""
from __future__ import annotations

import json
import random
import re
from collections.abc import Iterable
from typing import Any

# Widget types the frontend itself registers (ComfyWidgets in frontend 1.32.9).
WIDGET_TYPES = frozenset(
    {"INT", "FLOAT", "BOOLEAN", "STRING", "MARKDOWN", "COMBO", "IMAGEUPLOAD", "COLOR",
     "IMAGECOMPARE", "CHART", "GALLERIA", "TEXTAREA"}
)
# Frontend-only node types: never sent to the server.
VIRTUAL_NODE_TYPES = frozenset({"PrimitiveNode", "Reroute", "Note", "MarkdownNote"})
# Widgets a core frontend extension adds that are not saved in widgets_values (serialize: false)
# but are sent with the prompt; the value is the one they have after loading the workflow.
# Frontend 1.32 (ComfyUI 0.3.7x) sends Comfy.PreviewAny's read-only MARKDOWN widget "preview";
# frontend 1.49 (ComfyUI 0.33) replaced it with "preview_text"/"preview_mode", which are not
# sent. Both servers' /object_info define PreviewAny with the one input "source", so the
# difference is the frontend's: see prompt_only_widgets().
_LEGACY_PROMPT_ONLY_WIDGETS = {"PreviewAny": {"preview": ""}}
_LAST_FRONTEND_WITH_LEGACY_WIDGETS = (1, 32)
MODE_MUTED = 2  # LGraphEventMode.NEVER
MODE_BYPASS = 4  # LGraphEventMode.BYPASS
_MEDIA_UPLOAD_OPTIONS = ("image_upload", "video_upload", "animated_image_upload")


class WorkflowError(ValueError):
    """The workflow cannot be converted; the message names the node and the workflow."""


# ---------------------------------------------------------------------------------------
# Widgets of a node definition
# ---------------------------------------------------------------------------------------

def _ordered_inputs(info: dict) -> list[tuple[str, list, bool]]:
    """(name, spec, optional) in the frontend's order (getOrderedInputSpecs)."""
    sections = info.get("input", {})
    specs: dict[str, tuple[list, bool]] = {}
    for section, optional in (("required", False), ("optional", True)):
        for name, spec in (sections.get(section) or {}).items():
            specs[name] = (list(spec) if isinstance(spec, (list, tuple)) else [spec], optional)
    order = info.get("input_order")
    if not order:
        return [(name, spec, opt) for name, (spec, opt) in specs.items()]
    result = []
    for section, optional in (("required", False), ("optional", True)):
        for name in order.get(section) or []:
            if name in specs and specs[name][1] == optional:
                result.append((name, specs[name][0], optional))
    seen = {name for name, _, _ in result}
    result += [(name, spec, opt) for name, (spec, opt) in specs.items() if name not in seen]
    return result


def _widget_kind(spec: list, extra_widget_types: frozenset) -> str | None:
    """The widget type of an input spec, or None when the input is a plain socket."""
    kind, options = spec[0], (spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {})
    if options.get("forceInput"):
        return None
    if isinstance(kind, (list, tuple)):
        return "COMBO"
    kind = options.get("widgetType") or kind
    return kind if isinstance(kind, str) and (kind in WIDGET_TYPES or kind in extra_widget_types) else None


def _widget_slots(info: dict, extra_widget_types: frozenset = frozenset()) -> list[tuple[str | None, dict]]:
    """The node's widgets in ``widgets_values`` order: (input name or None for values that are
    never serialized, the input's options)."""
    slots: list[tuple[str | None, dict]] = []
    upload_added = False
    for name, spec, optional in _ordered_inputs(info):
        kind = _widget_kind(spec, extra_widget_types)
        if kind is None:
            continue
        options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
        slots.append((name, options))
        if kind == "INT":
            control = options.get("control_after_generate")
            if control is None:
                control = name in ("seed", "noise_seed")
            if control:
                slots.append((None, {"control_for": name}))
        elif kind == "COMBO" and options.get("control_after_generate"):
            slots += [(None, {"control_for": name}), (None, {"filter_for": name})]
        # Comfy.UploadImage appends an "upload" button widget (serialize: false) after all
        # inputs, for the first required combo with a media upload option.
        if (not upload_added and not optional and kind == "COMBO"
                and any(options.get(key) is True for key in _MEDIA_UPLOAD_OPTIONS)):
            upload_added = True
    if upload_added:
        slots.append((None, {"upload": True}))
    return slots


def _migrate_force_input_values(info: dict, values: list) -> list:
    """migrateWidgetsValues: old workflows also stored values for forceInput inputs; drop them."""
    widget_names = {name for name, _ in _widget_slots(info) if name}
    entries = [(name, spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {})
               for name, spec, _ in _ordered_inputs(info)]
    entries = [(name, opts) for name, opts in entries if name in widget_names or opts.get("forceInput")]
    if not any(opts.get("forceInput") for _, opts in entries):
        return values
    expected = sum(2 if opts.get("control_after_generate") or name in ("seed", "noise_seed") else 1
                   for name, opts in entries)
    if expected != len(values):
        return values
    kept, index = [], 0
    for name, opts in entries:
        width = 2 if opts.get("control_after_generate") or name in ("seed", "noise_seed") else 1
        if not opts.get("forceInput"):
            kept += values[index:index + width]
        index += width
    return kept


def process_dynamic_prompt(text: str, rng: random.Random | None = None) -> str:
    """The frontend's processDynamicPrompt: strip comments, resolve ``{a|b|c}`` choices."""
    rng = rng or random
    text = re.sub(r"/\*[\s\S]*?\*/|//.*", "", text)
    pos = 0

    def escape() -> str:
        nonlocal pos
        char = text[pos] if pos < len(text) else ""
        pos += 1
        return "\\" + char

    def choice_block() -> str:
        nonlocal pos
        options, current, depth = [], "", 0
        while pos < len(text):
            char = text[pos]
            pos += 1
            if char == "\\":
                current += escape()
                continue
            if char == "{":
                depth += 1
            elif char == "}":
                if not depth:
                    break
                depth -= 1
            elif char == "|" and not depth:
                options.append(current)
                current = ""
                continue
            current += char
        options.append(current)
        return process_dynamic_prompt(rng.choice(options), rng)

    out = ""
    while pos < len(text):
        char = text[pos]
        pos += 1
        if char == "\\":
            out += escape()
        elif char == "{":
            out += choice_block()
        else:
            out += char
    return re.sub(r"\\([{}|])", r"\1", out)


# ---------------------------------------------------------------------------------------
# UI -> API
# ---------------------------------------------------------------------------------------

def _is_valid_connection(type_a: Any, type_b: Any) -> bool:
    """LiteGraph.isValidConnection."""
    type_a = 0 if type_a in ("", "*") else type_a
    type_b = 0 if type_b in ("", "*") else type_b
    if not type_a or not type_b or type_a == type_b:
        return True
    a, b = str(type_a).lower(), str(type_b).lower()
    if "," not in a and "," not in b:
        return a == b
    return any(_is_valid_connection(x, y) for x in a.split(",") for y in b.split(","))


class _Converter:
    def __init__(self, workflow: dict, info: dict, source: str, extra_widget_types: frozenset,
                 prompt_only: dict[str, dict[str, Any]]):
        self.info = info
        self.prompt_only = prompt_only
        self.source = source
        self.extra_widget_types = extra_widget_types
        if not isinstance(workflow, dict) or "nodes" not in workflow:
            if isinstance(workflow, dict) and workflow and all(
                    isinstance(v, dict) and "class_type" in v for v in workflow.values()):
                raise WorkflowError(f"{source} is already an API-format prompt, not a UI workflow")
            raise WorkflowError(f"{source} is not a UI-format workflow (no 'nodes' list)")
        subgraphs = (workflow.get("definitions") or {}).get("subgraphs") or []
        if subgraphs:
            names = ", ".join(str(s.get("name") or s.get("id")) for s in subgraphs)
            raise WorkflowError(f"{source} uses subgraphs ({names}); the converter does not expand subgraphs")
        if (workflow.get("extra") or {}).get("groupNodes"):
            raise WorkflowError(f"{source} uses legacy group nodes; the converter does not expand them")
        self.nodes = {str(node["id"]): node for node in workflow["nodes"]}
        self.links: dict[int, tuple[str, int, str, int, Any]] = {}
        for link in workflow.get("links") or []:
            if isinstance(link, dict):
                self.links[int(link["id"])] = (str(link["origin_id"]), int(link["origin_slot"]),
                                               str(link["target_id"]), int(link["target_slot"]), link.get("type"))
            else:
                self.links[int(link[0])] = (str(link[1]), int(link[2]), str(link[3]), int(link[4]),
                                            link[5] if len(link) > 5 else None)

    def describe(self, node: dict) -> str:
        title = node.get("title")
        return f"node {node.get('id')} ({node.get('type')}{f', {title!r}' if title else ''}) in {self.source}"

    def definition(self, node: dict) -> dict:
        kind = node.get("type")
        if kind not in self.info:
            if isinstance(kind, str) and re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", kind):
                raise WorkflowError(f"{self.describe(node)} is a subgraph instance; the converter does not expand subgraphs")
            raise WorkflowError(
                f"unknown node type {kind!r} ({self.describe(node)}): no such node is registered in this "
                "ComfyUI (is its pack installed and did it import without errors?)"
            )
        return self.info[kind]

    def is_virtual(self, node: dict) -> bool:
        return node.get("type") in VIRTUAL_NODE_TYPES or str(node.get("type", "")).startswith("workflow>")

    # -- widgets ------------------------------------------------------------------------
    def widget_values(self, node: dict, info: dict) -> dict[str, Any]:
        slots = _widget_slots(info, self.extra_widget_types)
        names = [name for name, _ in slots if name is not None]
        values = node.get("widgets_values")
        if values is None:
            values = []
        if isinstance(values, dict):  # some nodes save a name -> value mapping
            unknown = [key for key in values if key not in names]
            if unknown:
                raise WorkflowError(f"{self.describe(node)}: unknown widget(s) {unknown}; the node has {names}")
            missing = [n for n in names if n not in values]
            if missing:
                raise WorkflowError(f"{self.describe(node)}: widgets_values lacks {missing}")
            return {n: values[n] for n in names}
        if len(values) != len(slots):
            values = _migrate_force_input_values(info, values)
        if len(values) != len(slots):
            shown = [name or f"<{next(iter(options))}>" for name, options in slots]
            raise WorkflowError(
                f"{self.describe(node)}: widgets_values has {len(values)} values {values!r} but the node "
                f"definition has {len(slots)} widget slots {shown}. The node's inputs changed since the "
                "workflow was saved: update the workflow (open and re-save it in ComfyUI, or fix widgets_values)."
            )
        result = {}
        for (name, options), value in zip(slots, values):
            if name is None:
                continue
            if options.get("dynamicPrompts") and isinstance(value, str):
                value = process_dynamic_prompt(value)
            result[name] = value
        return result

    # -- link resolution (ExecutableNodeDTO.resolveInput / resolveOutput) ----------------
    def resolve_input(self, node: dict, slot: int, visited: set, type_: Any = None):
        key = f"{node['id']}[I]{slot}"
        if key in visited:
            raise WorkflowError(f"{self.describe(node)}: circular link through input {slot}")
        visited.add(key)
        inputs = node.get("inputs") or []
        if slot >= len(inputs):
            raise WorkflowError(f"{self.describe(node)}: no input slot {slot}")
        entry = inputs[slot]
        link_id = entry.get("link")
        if link_id is None:
            return None
        if int(link_id) not in self.links:
            raise WorkflowError(f"{self.describe(node)}: input {entry.get('name')!r} uses link {link_id}, which is not in 'links'")
        origin_id, origin_slot, _, _, _ = self.links[int(link_id)]
        origin = self.nodes.get(origin_id)
        if origin is None:
            raise WorkflowError(f"{self.describe(node)}: input {entry.get('name')!r} links from missing node {origin_id}")
        return self.resolve_output(origin, origin_slot, type_ if type_ is not None else entry.get("type"), visited)

    def resolve_output(self, node: dict, slot: int, type_: Any, visited: set):
        key = f"{node['id']}[O]{slot}"
        if key in visited:
            raise WorkflowError(f"{self.describe(node)}: circular link through output {slot}")
        visited.add(key)
        if node.get("mode") == MODE_BYPASS:
            index = self.bypass_slot_index(node, slot, type_)
            return None if index == -1 else self.resolve_input(node, index, visited)
        if self.is_virtual(node):
            if slot < len(node.get("inputs") or []):
                return self.resolve_input(node, slot, visited, type_)
            return None
        return [str(node["id"]), int(slot)]

    def bypass_slot_index(self, node: dict, slot: int, type_: Any) -> int:
        inputs = node.get("inputs") or []
        if type_ in ("*", ""):
            return slot if len(inputs) > slot else 0
        outputs = node.get("outputs") or []
        output_type = outputs[slot].get("type") if slot < len(outputs) else None
        if slot < len(inputs):
            opposite = inputs[slot].get("type")
            if _is_valid_connection(opposite, output_type) and _is_valid_connection(opposite, type_):
                return slot
        for i, entry in enumerate(inputs):
            if entry.get("type") == type_:
                return i
        for i, entry in enumerate(inputs):
            if _is_valid_connection(entry.get("type"), output_type) and _is_valid_connection(entry.get("type"), type_):
                return i
        return -1

    # -- the whole graph ----------------------------------------------------------------
    def convert(self) -> dict:
        # Every node type must exist (the frontend reports missing ones on load).
        widgets: dict[str, dict[str, Any]] = {}
        for node_id, node in self.nodes.items():
            if self.is_virtual(node):
                if str(node.get("type", "")).startswith("workflow>"):
                    raise WorkflowError(f"{self.describe(node)} is a legacy group node; the converter does not expand them")
                continue
            info = self.definition(node)
            widgets[node_id] = self.widget_values(node, info)
        self.apply_primitives(widgets)

        output: dict[str, dict] = {}
        for node_id, node in self.nodes.items():
            if self.is_virtual(node) or node.get("mode") in (MODE_MUTED, MODE_BYPASS):
                continue
            info = self.info[node["type"]]
            known = {name for name, _, _ in _ordered_inputs(info)}
            inputs = {name: ({"__value__": value} if isinstance(value, list) else value)
                      for name, value in widgets[node_id].items()}
            inputs.update(self.prompt_only.get(node["type"], {}))
            for slot, entry in enumerate(node.get("inputs") or []):
                name = entry.get("name")
                if name not in known:
                    raise WorkflowError(
                        f"{self.describe(node)}: unknown input {name!r}; the node's inputs are {sorted(known)}. "
                        "The node's inputs changed since the workflow was saved: update the workflow."
                    )
                resolved = self.resolve_input(node, slot, set())
                if resolved is not None:
                    inputs[name] = resolved
            output[node_id] = {
                "inputs": inputs,
                "class_type": node["type"],
                "_meta": {"title": node.get("title") or info.get("display_name") or node["type"]},
            }
        # Inputs whose link ends at a node that is not sent (muted) are dropped.
        for entry in output.values():
            for name, value in list(entry["inputs"].items()):
                if isinstance(value, list) and len(value) == 2 and value[0] not in output:
                    del entry["inputs"][name]
        return output

    def apply_primitives(self, widgets: dict[str, dict[str, Any]]) -> None:
        """PrimitiveNode.applyToGraph: copy the primitive's value into each widget it feeds."""
        for node in self.nodes.values():
            if node.get("type") != "PrimitiveNode":
                continue
            values = node.get("widgets_values") or []
            links = ((node.get("outputs") or [{}])[0].get("links")) or []
            if not links or not values:
                continue
            value = values[0]
            if (node.get("properties") or {}).get("Run widget replace on values") and isinstance(value, str) and "%" in value:
                raise WorkflowError(f"{self.describe(node)}: 'Run widget replace on values' is not supported by the converter")
            for link_id in links:
                if int(link_id) not in self.links:
                    raise WorkflowError(f"{self.describe(node)}: output link {link_id} is not in 'links'")
                _, _, target_id, target_slot, _ = self.links[int(link_id)]
                target = self.nodes.get(target_id)
                if target is None or self.is_virtual(target):
                    continue  # the frontend only writes into widgets of the nodes it feeds directly
                slot_entry = (target.get("inputs") or [])[target_slot] if target_slot < len(target.get("inputs") or []) else {}
                widget_name = (slot_entry.get("widget") or {}).get("name")
                if not widget_name:
                    continue
                if widget_name not in widgets.get(target_id, {}):
                    raise WorkflowError(
                        f"{self.describe(target)}: PrimitiveNode {node['id']} feeds unknown widget {widget_name!r}; "
                        f"the node's widgets are {sorted(widgets.get(target_id, {}))}"
                    )
                widgets[target_id][widget_name] = value


def prompt_only_widgets(frontend_version: str | None) -> dict[str, dict[str, Any]]:
    """Widgets a core frontend extension adds without saving them but sends with the prompt, for
    the frontend version a server requires (``/system_stats``); None means the oldest known."""
    if frontend_version:
        parts = tuple(int(p) for p in re.findall(r"\d+", frontend_version)[:2])
        if parts > _LAST_FRONTEND_WITH_LEGACY_WIDGETS:
            return {}
    return _LEGACY_PROMPT_ONLY_WIDGETS


def ui_to_api(workflow: dict, object_info: dict, *, source: str = "<workflow>",
              extra_widget_types: Iterable[str] = (), frontend_version: str | None = None) -> dict:
    """The API prompt the frontend's graphToPrompt would queue for this UI-format workflow.

    ``object_info`` maps node type -> definition (``GET /object_info``); ``source`` names the
    workflow in errors; ``extra_widget_types`` adds widget types a frontend extension registers;
    ``frontend_version`` picks the frontend's prompt-only widgets (harmless to a server either way).
    """
    return _Converter(workflow, object_info, source, frozenset(extra_widget_types),
                      prompt_only_widgets(frontend_version)).convert()


def is_api_prompt(workflow: Any) -> bool:
    """True for an API-format prompt (node id -> {"class_type", "inputs"})."""
    return (isinstance(workflow, dict) and bool(workflow) and "nodes" not in workflow
            and all(isinstance(v, dict) and "class_type" in v for v in workflow.values()))


def to_api_prompt(workflow: dict, object_info: dict, *, source: str = "<workflow>",
                  frontend_version: str | None = None) -> dict:
    """An API prompt from either format: UI workflows are converted, API prompts are checked
    against ``object_info`` (every node type must exist on the server) and copied."""
    if not is_api_prompt(workflow):
        return ui_to_api(workflow, object_info, source=source, frontend_version=frontend_version)
    missing = sorted({node["class_type"] for node in workflow.values()} - set(object_info))
    if missing:
        raise WorkflowError(
            f"{source} uses node types this ComfyUI does not have: {missing} (is their pack installed "
            "and did it import without errors?)")
    return json.loads(json.dumps(workflow))

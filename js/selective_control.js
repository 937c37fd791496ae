// Selective Control frontend extension.
// - appearance: the pack's nodes get one recognisable colour so regional setups are easy to spot;
// - "Preview mask": on every pack node with MASK outputs, a context-menu entry wires the mask
//   through core MaskToImage into a PreviewImage next to the node (shows the mask after a run);
// - "Add region": on region nodes (SCRegion, SCCombineRegions, SCApplyRegions, when the pack
//   provides them) a new Region node is inserted into the chain feeding the `regions` input,
//   so regions grow one by one without rewiring by hand.
// Everything goes through app.registerExtension and per-node-type prototype hooks that call the
// previous hook; nothing global is replaced.
import { app } from "../../scripts/app.js";

const CATEGORY_PREFIX = "selective_control/";
const NODE_COLOR = "#2e4a3a";
const NODE_BGCOLOR = "#1f3328";
const REGION_NODE = "SCRegion";
const REGION_TYPE = "SC_REGIONS";
const GAP = 40;

function chain(prototype, name, extra) {
  const previous = prototype[name];
  prototype[name] = function (...args) {
    const result = previous?.apply(this, args);
    extra.apply(this, args);
    return result;
  };
}

function createNode(type, pos) {
  const node = globalThis.LiteGraph?.createNode(type);
  if (!node) return null;
  node.pos = [pos[0], pos[1]];
  app.graph.add(node);
  return node;
}

function previewMask(node, slot) {
  const x = node.pos[0] + node.size[0] + GAP;
  const y = node.pos[1] + slot * 60;
  const toImage = createNode("MaskToImage", [x, y]);
  const preview = toImage && createNode("PreviewImage", [x + 220, y]);
  if (!preview) return;
  preview.title = `Preview: ${node.outputs[slot].name}`;
  node.connect(slot, toImage, 0);
  toImage.connect(0, preview, 0);
  app.graph.setDirtyCanvas(true, true);
}

function addRegion(node) {
  const input = node.findInputSlot?.("regions") ?? (node.inputs || []).findIndex((i) => i.name === "regions");
  if (input < 0) return;
  const region = createNode(REGION_NODE, [node.pos[0] - 360, node.pos[1] + node.size[1] + GAP]);
  if (!region) return;
  const linkId = node.inputs[input].link;
  const link = linkId != null ? app.graph.links?.[linkId] ?? app.graph.links?.get?.(linkId) : null;
  if (link) {
    // the old chain now feeds the new region, which feeds this node
    const origin = app.graph.getNodeById(link.origin_id);
    const regionInput = region.findInputSlot?.("regions") ?? -1;
    if (origin && regionInput >= 0) origin.connect(link.origin_slot, region, regionInput);
  }
  const output = (region.outputs || []).findIndex((o) => o.type === REGION_TYPE);
  if (output >= 0) region.connect(output, node, input);
  app.graph.setDirtyCanvas(true, true);
}

app.registerExtension({
  name: "selective_control.nodes",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData.category?.startsWith(CATEGORY_PREFIX)) return;
    chain(nodeType.prototype, "onNodeCreated", function () {
      this.color ??= NODE_COLOR;
      this.bgcolor ??= NODE_BGCOLOR;
    });
    const outputs = nodeData.output || [];
    const names = nodeData.output_name || outputs;
    const maskSlots = outputs.map((type, slot) => (type === "MASK" ? slot : -1)).filter((slot) => slot >= 0);
    const takesRegions = Object.entries(nodeData.input?.required || {})
      .concat(Object.entries(nodeData.input?.optional || {}))
      .some(([name, spec]) => name === "regions" && spec?.[0] === REGION_TYPE);
    if (!maskSlots.length && !takesRegions) return;
    chain(nodeType.prototype, "getExtraMenuOptions", function (_canvas, options) {
      for (const slot of maskSlots) {
        options.push({ content: `Preview mask: ${names[slot]}`, callback: () => previewMask(this, slot) });
      }
      if (takesRegions && globalThis.LiteGraph?.registered_node_types?.[REGION_NODE]) {
        options.push({ content: "Add region", callback: () => addRegion(this) });
      }
    });
  },
});

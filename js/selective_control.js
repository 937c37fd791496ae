// Selective Control frontend extension.
// - appearance: the pack's nodes get one recognisable colour so regional setups are easy to spot;
// - "Preview mask": on every pack node with MASK outputs, a context-menu entry wires the mask
//   through core MaskToImage into a PreviewImage next to the node (shows the mask after a run);
// - "Preview regions": on nodes that take regions and make an IMAGE (Apply Regions: its preview,
//   the region colours laid over the picture), a context-menu entry wires it into a PreviewImage;
// - inputs that grow: Combine Regions shows regions_1 .. the last connected slot plus one free
//   slot (up to the backend's regions_8); connecting the free slot adds the next one,
//   disconnecting the last ones removes the trailing free slots again;
// - "Add region": on nodes with a `regions` input (Region Prompt, Apply Regions) a new Region
//   node is inserted into the chain feeding that input; on Combine Regions the new Region goes
//   into the free slot. Regions grow one by one without rewiring by hand. Inside a subgraph the
//   chain may come from another node of the subgraph or enter through the subgraph's input. If the
//   existing link cannot be read, nothing is changed (a chain is never dropped).
// Nodes are added to the node's own graph (node.graph), so all of this works inside subgraphs.
// Everything goes through app.registerExtension and per-node-type prototype hooks that call the
// previous hook; nothing global is replaced.
import { app } from "../../scripts/app.js";

const CATEGORY_PREFIX = "selective_control/";
const NODE_COLOR = "#2e4a3a";
const NODE_BGCOLOR = "#1f3328";
const REGION_NODE = "SCRegion";
const REGION_TYPE = "SC_REGIONS";
const GAP = 40;
const COMBINE_NODE = "SCCombineRegions";
const COMBINE_SLOT = /^regions_(\d+)$/;

function chain(prototype, name, extra) {
  const previous = prototype[name];
  prototype[name] = function (...args) {
    const result = previous?.apply(this, args);
    extra.apply(this, args);
    return result;
  };
}

// The graph a node lives in: a subgraph's own graph when it sits inside one, else the root graph.
function graphOf(node) {
  return node.graph ?? app.graph;
}

function createNode(graph, type, pos) {
  const node = globalThis.LiteGraph?.createNode(type);
  if (!node) return null;
  node.pos = [pos[0], pos[1]];
  graph.add(node);
  return node;
}

function getLink(graph, linkId) {
  const links = graph.links;
  return (typeof links?.get === "function" ? links.get(linkId) : links?.[linkId]) ?? null;
}

// Where the chain feeding a link comes from, as a function that connects it to `region`'s input
// `slot`: a node of the graph, or (inside a subgraph) the subgraph input it enters through; null
// when neither can be found.
function chainSource(graph, link) {
  const node = graph.getNodeById(link.origin_id);
  if (node) return (region, slot) => node.connect(link.origin_slot, region, slot);
  const input = graph.inputNode && link.origin_id === graph.inputNode.id ? graph.inputs?.[link.origin_slot] : null;
  if (typeof input?.connect === "function") return (region, slot) => input.connect(region.inputs[slot], region);
  return null;
}

function previewOutput(node, slot, throughMaskToImage) {
  const x = node.pos[0] + node.size[0] + GAP;
  const y = node.pos[1] + slot * 60;
  const graph = graphOf(node);
  const toImage = throughMaskToImage ? createNode(graph, "MaskToImage", [x, y]) : null;
  if (throughMaskToImage && !toImage) return;
  const preview = createNode(graph, "PreviewImage", [x + (toImage ? 220 : 0), y]);
  if (!preview) return;
  preview.title = `Preview: ${node.outputs[slot].name}`;
  if (toImage) {
    node.connect(slot, toImage, 0);
    toImage.connect(0, preview, 0);
  } else {
    node.connect(slot, preview, 0);
  }
  graph.setDirtyCanvas(true, true);
}

// Combine Regions: keep regions_1 .. (last connected + 1) of the slots the backend defines.
function growInputs(node, maxSlots) {
  const slots = (node.inputs || []).map((input, index) => ({ input, index, n: Number(COMBINE_SLOT.exec(input.name)?.[1]) }))
    .filter((s) => s.n > 0);
  const lastLinked = Math.max(0, ...slots.filter((s) => s.input.link != null).map((s) => s.n));
  const want = Math.min(maxSlots, lastLinked + 1);
  for (const s of slots.reverse()) {
    if (s.n > want && s.input.link == null) node.removeInput(s.index);
  }
  const have = new Set((node.inputs || []).map((i) => i.name));
  for (let n = 1; n <= want; n++) {
    if (!have.has(`regions_${n}`)) node.addInput(`regions_${n}`, REGION_TYPE);
  }
  node.setSize?.([node.size[0], node.computeSize()[1]]);
  node.graph?.setDirtyCanvas(true, true);
}

// The input a new region goes into: `regions`, or Combine Regions' first free regions_N slot.
function regionInputOf(node) {
  const inputs = node.inputs || [];
  const named = inputs.findIndex((i) => i.name === "regions");
  if (named >= 0) return named;
  return inputs.findIndex((i) => COMBINE_SLOT.test(i.name) && i.link == null);
}

function addRegion(node) {
  const graph = graphOf(node);
  const input = regionInputOf(node);
  if (input < 0) return;
  const linkId = node.inputs[input].link;
  const link = linkId != null ? getLink(graph, linkId) : null;
  const source = link ? chainSource(graph, link) : null;
  if (linkId != null && !source) {
    console.warn(`selective_control: link ${linkId} into ${node.title} not found; Add region left the graph unchanged`);
    return;
  }
  const region = createNode(graph, REGION_NODE, [node.pos[0] - 360, node.pos[1] + node.size[1] + GAP]);
  if (!region) return;
  if (source) {
    // the old chain now feeds the new region, which feeds this node
    source(region, (region.inputs || []).findIndex((i) => i.name === "regions"));
  }
  const output = (region.outputs || []).findIndex((o) => o.type === REGION_TYPE);
  region.connect(output, node, input);
  graph.setDirtyCanvas(true, true);
}

app.registerExtension({
  name: "selective_control.nodes",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData.category?.startsWith(CATEGORY_PREFIX)) return;
    chain(nodeType.prototype, "onNodeCreated", function () {
      this.color ??= NODE_COLOR;
      this.bgcolor ??= NODE_BGCOLOR;
    });
    if (nodeData.name === COMBINE_NODE) {
      const inputs = { ...(nodeData.input?.required || {}), ...(nodeData.input?.optional || {}) };
      const maxSlots = Object.keys(inputs).filter((name) => COMBINE_SLOT.test(name)).length;
      chain(nodeType.prototype, "onNodeCreated", function () { growInputs(this, maxSlots); });
      chain(nodeType.prototype, "onConfigure", function () { growInputs(this, maxSlots); });
      chain(nodeType.prototype, "onConnectionsChange", function (kind) {
        if (kind === globalThis.LiteGraph?.INPUT) growInputs(this, maxSlots);
      });
    }
    const outputs = nodeData.output || [];
    const names = nodeData.output_name || outputs;
    const maskSlots = outputs.map((type, slot) => (type === "MASK" ? slot : -1)).filter((slot) => slot >= 0);
    const takesRegions = Object.entries(nodeData.input?.required || {})
      .concat(Object.entries(nodeData.input?.optional || {}))
      .some(([name, spec]) => (name === "regions" || COMBINE_SLOT.test(name)) && spec?.[0] === REGION_TYPE);
    const previewSlot = takesRegions ? outputs.indexOf("IMAGE") : -1;  // Apply Regions' preview
    if (!maskSlots.length && previewSlot < 0 && !takesRegions) return;
    chain(nodeType.prototype, "getExtraMenuOptions", function (_canvas, options) {
      for (const slot of maskSlots) {
        options.push({ content: `Preview mask: ${names[slot]}`, callback: () => previewOutput(this, slot, true) });
      }
      if (previewSlot >= 0) {
        options.push({ content: "Preview regions", callback: () => previewOutput(this, previewSlot, false) });
      }
      if (takesRegions && globalThis.LiteGraph?.registered_node_types?.[REGION_NODE]) {
        options.push({ content: "Add region", callback: () => addRegion(this) });
      }
    });
  },
});

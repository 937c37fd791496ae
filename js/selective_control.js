// Selective Control frontend extension: gives the pack's nodes one recognisable colour so
// regional setups are easy to spot in a large graph. Later parts add previews here.
import { app } from "../../scripts/app.js";

const CATEGORY_PREFIX = "selective_control/";
const NODE_COLOR = "#2e4a3a";
const NODE_BGCOLOR = "#1f3328";

app.registerExtension({
  name: "selective_control.appearance",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData.category?.startsWith(CATEGORY_PREFIX)) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      this.color ??= NODE_COLOR;
      this.bgcolor ??= NODE_BGCOLOR;
      return result;
    };
  },
});

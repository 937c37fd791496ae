// Loads UI-format workflows into the real ComfyUI frontend (Debian's chromium driven by
// playwright-core) the way a user opens a file, and prints one JSON report on stdout.
//
//   node check_workflows.mjs --url http://127.0.0.1:8188 --artifacts DIR [--queue NAME]
//        [--chain NAME] [--combine NAME] [--model-dialogs] [--viewport 1600x1000]
//        [--timeout-ms 30000] [--chromium /usr/bin/chromium] WORKFLOW.json...
//
// The server must run with its own --user-directory whose default/comfy.settings.json has
// "Comfy.TutorialCompleted": true (a fresh user folder opens the Templates dialog over
// everything). Per workflow the report gives: missing node types (app.showMissingNodesError
// and a comparison with LiteGraph.registered_node_types), missing models
// (app.showMissingModelsError), console errors (known harmless offline ones listed apart,
// see HARMLESS), dialogs left open, toasts (read, then closed), widget values that break the node definitions from
// /object_info, the frontend's own (await app.graphToPrompt()).output and a screenshot taken once
// the fitted view has settled and been drawn (waitForSettledView).
// With --queue NAME the workflow whose file name is NAME is queued through app.queuePrompt;
// the prompt id comes from the /api/prompt response and /api/history is polled.
// With --chain NAME (a workflow whose Apply Regions is fed by a chain of Region nodes) and
// --combine NAME (one with a Combine Regions node) the pack's "Add region" menu entry is taken
// from the canvas's own node menu and run: at the root graph, inside a subgraph made from the
// chain with the frontend's Comfy.Graph.ConvertToSubgraph command, on a node whose chain comes
// in through the subgraph's input, on a link the graph does not hold, and on Combine Regions;
// each reports the links gained and lost (report.add_region).
// With --model-dialogs (a server whose models folder is empty, as on a fresh install) the
// frontend shows what it shows a user and each workflow's entry gets `model_dialog`: what the
// frontend offers for the models the workflow lacks (readModelDialog).
// Requests to any other origin than --url are aborted (the page runs offline).
import { chromium } from 'playwright-core';
import { mkdirSync, readFileSync } from 'node:fs';
import { basename, join, resolve } from 'node:path';

function parseArgs(argv) {
  const opts = { url: null, artifacts: 'browser-artifacts', queue: null, chain: null, combine: null, modelDialogs: false, viewport: [1600, 1000], timeoutMs: 30000,
    chromium: process.env.CHROMIUM_PATH || '/usr/bin/chromium', files: [] };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '--url') opts.url = argv[++i].replace(/\/$/, '');
    else if (arg === '--artifacts') opts.artifacts = argv[++i];
    else if (arg === '--queue') opts.queue = argv[++i];
    else if (arg === '--chain') opts.chain = argv[++i];
    else if (arg === '--combine') opts.combine = argv[++i];
    else if (arg === '--model-dialogs') opts.modelDialogs = true;
    else if (arg === '--viewport') opts.viewport = argv[++i].split('x').map(Number);
    else if (arg === '--timeout-ms') opts.timeoutMs = Number(argv[++i]);
    else if (arg === '--chromium') opts.chromium = argv[++i];
    else if (arg.startsWith('--')) throw new Error(`unknown option ${arg}`);
    else opts.files.push(arg);
  }
  if (!opts.url) throw new Error('--url is required');
  return opts;
}

// Console errors a healthy offline start produces in frontend 1.32.9. Each rule names why.
const HARMLESS = [
  { why: '404 for optional user files (user.css, favicon, templates index) and empty userdata folders',
    test: (e, base) => /status of 404/.test(e.text) && e.url.startsWith(base) &&
      /^\/(user\.css|favicon\.ico|api\/userdata\/(user\.css|comfy\.templates\.json)|api\/userdata\?dir=(workflows|subgraphs)\b)/
        .test(e.url.slice(base.length)) },
  { why: 'requests to other origins (hosted registry api.comfy.org and the like) blocked offline',
    test: (e, base) => (e.url && !e.url.startsWith(base) && /^Failed to load resource/.test(e.text)) ||
      /^Connecting to '[^']+' violates the following Content Security Policy directive/.test(e.text) &&
        !e.text.includes(`'${base}`) },
  { why: "the Missing Models dialog fetches each file's size from its download URL: blocked offline",
    test: (e, base) => { const url = /^Fetch API cannot load (\S+?)\.? Refused to connect because it violates the document's Content Security Policy\.$/.exec(e.text)?.[1];
      return (url && !url.startsWith(base)) || (/^Error fetching file size: TypeError: Failed to fetch\n\s+at fetchFileSize /.test(e.text)); } },
  { why: 'frontend 1.49.6 logs this at start-up with no custom node loaded at all (verified)',
    test: (e) => e.phase === 'startup' && /^ComfyApp graph accessed before initialization/.test(e.text) },
  { why: 'frontend 1.32.9 useRenderModeSetting stores an unregistered setting at startup (TypeError in onChange)',
    test: (e) => e.phase === 'startup' &&
      e.text.startsWith("TypeError: Cannot read properties of undefined (reading 'id')\n    at onChange (") &&
      /\n\s+at Proxy\.set \(/.test(e.text) && /\n\s+at load \([^)]*GraphView-/.test(e.text) },
  { why: 'frontend 1.32.9 GraphView removes per-graph node listeners it never set up when the canvas switches between root graph and subgraph',
    test: (e) => e.phase === 'add_region' && e.text === 'Attempted to cleanup event listeners for graph that was never set up' &&
      /\/assets\/GraphView-/.test(e.url) },
];

function classify(entries, base) {
  const unexpected = [], harmless = [];
  for (const entry of entries) {
    const rule = HARMLESS.find((r) => r.test(entry, base));
    (rule ? harmless : unexpected).push(rule ? { ...entry, why: rule.why } : entry);
  }
  return { unexpected, harmless };
}

// Text of the dialogs on screen (templates browser, load warnings, error dialogs).
const openDialogs = () => [...document.querySelectorAll('.p-dialog')]
  .filter((d) => d.getClientRects().length > 0)
  .map((d) => d.innerText.slice(0, 300));

// Text of the toasts on screen (e.g. the frontend's schema validation alert on load); they are
// closed after reading so the next workflow starts without them.
const takeToasts = () => {
  const toasts = [...document.querySelectorAll('.p-toast-message')].filter((t) => t.getClientRects().length > 0);
  const texts = toasts.map((t) => t.innerText.slice(0, 300));
  toasts.forEach((t) => t.querySelector('.p-toast-close-button')?.click());
  return texts;
};

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// A fitted view is drawn on a later animation frame; under load those frames come late. The screenshot waits until the view has
// not moved for two drawn frames and the last draw saw every node, instead of a fixed delay.
async function waitForSettledView(page, timeoutMs) {
  await page.evaluate(() => { window.__scView = null; });
  await page.waitForFunction(() => {
    const canvas = window.app.canvas;
    const view = [canvas.ds.scale, ...canvas.ds.offset].join();
    const last = window.__scView;
    if (!last || last.view !== view) { window.__scView = { view, frame: canvas.frame }; return false; }
    return canvas.frame >= last.frame + 2 && !canvas.dirty_canvas;
  }, null, { polling: 'raf', timeout: timeoutMs });
  return page.evaluate(() => ({ frame: window.app.canvas.frame, scale: window.app.canvas.ds.scale,
    visible_nodes: window.app.canvas.visible_nodes.length, graph_nodes: window.app.graph.nodes.length }));
}

// What the frontend offers a user for the models the open workflow lacks, then closes it.
// 1.32.9 shows the Missing Models dialog: its list, where an entry it can download has a
// Download button and any other shows why not. 1.49.6 shows no dialog but keeps its findings in
// the missingModel store: the candidates it found missing, each judged by the frontend's own
// isModelDownloadable (imported from the served module that exports it); its missingMedia
// store holds input files it found missing.
async function readModelDialog(page, timeoutMs) {
  return page.evaluate(async (timeoutMs) => {
    const deadline = Date.now() + timeoutMs;
    const pause = (ms) => new Promise((r) => setTimeout(r, ms));
    const pinia = document.querySelector('#vue-app')?.__vue_app__?.config?.globalProperties?.$pinia;
    const store = pinia?._s?.get('missingModel');
    if (store) {
      const missing = (store.missingModelCandidates ?? []).filter((c) => c.isMissing === true);
      let isModelDownloadable = null;
      while (missing.length && !isModelDownloadable) {
        const modules = performance.getEntriesByType('resource').map((e) => e.name)
          .filter((url) => /\/missingModelMetadata-[\w-]+\.js$/.test(url));
        for (const url of modules) {
          const alias = /\bisModelDownloadable as (\w+)/.exec(await (await fetch(url)).text())?.[1];
          if (alias) { isModelDownloadable = (await import(url))[alias]; break; }
        }
        if (isModelDownloadable) break;
        if (Date.now() > deadline) throw new Error("no served missingModelMetadata module exports the frontend's isModelDownloadable");
        await pause(100);
      }
      return {
        source: 'missingModel store',
        entries: missing.map((c) => ({ name: c.name, directory: c.directory ?? null, url: c.url ?? null,
          node_type: c.nodeType, widget: c.widgetName, downloadable: !!c.url && isModelDownloadable(c) })),
        missing_media: (pinia._s.get('missingMedia')?.missingMediaCandidates ?? []).map((m) => ({ name: m.name ?? null, node_type: m.nodeType, widget: m.widgetName })),
      };
    }
    const expected = window.__sc.missingModels.length;
    let items = [];
    while (expected) {
      items = [...document.querySelectorAll('.comfy-missing-models li')];
      if (items.length >= expected) break;
      if (Date.now() > deadline) throw new Error(`the Missing Models dialog lists ${items.length} of ${expected} missing models`);
      await pause(50);
    }
    const entries = items.map((li) => {
      const label = li.querySelector('span[title]');
      const [directory, name] = (label?.innerText ?? '').split(' / ');
      const download = [...li.querySelectorAll('button')].find((b) => /^Download/.test(b.getAttribute('aria-label') ?? ''));
      return { name: name ?? null, directory: directory ?? null, url: label?.title ?? null,
        downloadable: !!download && !download.disabled, shown: li.innerText.trim().replace(/\s+/g, ' ') };
    });
    const dialog = document.querySelector('.comfy-missing-models')?.closest('.p-dialog');
    dialog?.querySelector('.p-dialog-close-button')?.click();
    for (; dialog?.isConnected && dialog.getClientRects().length && Date.now() < deadline; ) await pause(50);
    return { source: 'Missing Models dialog', entries, missing_media: [] };
  }, timeoutMs);
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const base = opts.url;
  const t0 = Date.now();
  mkdirSync(opts.artifacts, { recursive: true });
  const report = { url: base, frontend_version: null, timings_ms: {}, startup: null, workflows: [], queue: null };

  const browser = await chromium.launch({
    executablePath: opts.chromium,
    args: ['--no-sandbox', '--headless', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--no-first-run'],
    timeout: opts.timeoutMs,
  });
  try {
    const context = await browser.newContext({ viewport: { width: opts.viewport[0], height: opts.viewport[1] } });
    // The "Introducing Nodes 2.0" banner (its dismissal lives in localStorage) would cover the screenshots.
    await context.addInitScript(() => localStorage.setItem('vueNodesBannerDismissed', 'true'));
    await context.route((u) => !u.href.startsWith(base + '/') && u.href !== base, (route) => route.abort());
    const page = await context.newPage();
    page.setDefaultTimeout(opts.timeoutMs);

    let phase = 'startup';
    const events = [];
    page.on('console', (m) => {
      if (m.type() === 'error') events.push({ phase, kind: 'console', text: m.text(), url: m.location().url || '' });
    });
    page.on('pageerror', (e) => events.push({ phase, kind: 'pageerror', text: String(e.stack || e), url: '' }));
    // The console errors since the last phase go to `target`, with the time it took.
    const closePhase = (target, started) => {
      const { unexpected, harmless } = classify(events.splice(0), base);
      return Object.assign(target, { console_errors: unexpected, harmless_console: harmless, ms: Date.now() - started });
    };

    await page.goto(base + '/', { waitUntil: 'domcontentloaded' });
    await page.waitForFunction(() => window.app?.graph && window.app?.canvas &&
      Object.keys(window.LiteGraph?.registered_node_types ?? {}).length > 0 &&
      window.app.extensionManager?.workflow?.activeWorkflow, null, { timeout: opts.timeoutMs });
    report.timings_ms.ready = Date.now() - t0;

    // Record instead of showing the dialogs (they would cover the screenshots); with
    // --model-dialogs the Missing Models dialog is recorded and shown.
    await page.evaluate((modelDialogs) => {
      const app = window.app;
      window.__sc = { missingNodes: [], missingModels: [], fileErrors: [] };
      app.showMissingNodesError = (types) => { window.__sc.missingNodes.push(...types.map((t) => (typeof t === 'string' ? t : t.type))); };
      const showMissingModels = app.showMissingModelsError?.bind(app);  // 1.49.6 has none (readModelDialog)
      app.showMissingModelsError = (models, paths) => {
        window.__sc.missingModels.push(...models.map((m) => ({ name: m.name, directory: m.directory, url: m.url, directory_invalid: !!m.directory_invalid })));
        if (modelDialogs) return showMissingModels?.(models, paths);
      };
      app.showErrorOnFileLoad = (file) => { window.__sc.fileErrors.push(`unable to find workflow in ${file.name}`); };
    }, opts.modelDialogs);
    report.frontend_version = await page.evaluate(() => window.__COMFYUI_FRONTEND_VERSION__ ?? null);
    const objectInfo = await page.evaluate(async () => (await fetch('/api/object_info')).json());
    await sleep(300); // let startup requests settle before their errors are attributed
    report.startup = classify(events.splice(0), base);
    report.startup.open_dialogs = await page.evaluate(openDialogs);
    // Screenshots show the graph alone: focus mode hides the menus, tabs and side bar.
    await page.evaluate(() => window.app.extensionManager.command.execute('Workspace.ToggleFocusMode'));

    for (const file of opts.files) {
      const name = basename(file);
      phase = name;
      const started = Date.now();
      const entry = { file: resolve(file), name };
      try {
        const text = readFileSync(file, 'utf8');
        const result = await page.evaluate(async ({ text, name, objectInfo }) => {
          const app = window.app, LiteGraph = window.LiteGraph;
          Object.assign(window.__sc, { missingNodes: [], missingModels: [], fileErrors: [] });
          let loadError = null;
          try {
            await app.handleFile(new File([text], name, { type: 'application/json' }));
          } catch (e) {
            loadError = String(e.stack || e);
          }
          await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
          const workflow = JSON.parse(text);
          const fileTypes = [...new Set((workflow.nodes || []).map((n) => n.type))];
          const unregistered = fileTypes.filter((t) => !(t in LiteGraph.registered_node_types));

          // Widget values against the server's node definitions.
          const invalid = [];
          const CONTROL = ['fixed', 'increment', 'decrement', 'randomize'];
          for (const node of app.graph.nodes) {
            const def = objectInfo[node.type];
            if (!def) continue;
            const specs = { ...(def.input?.required || {}), ...(def.input?.optional || {}) };
            for (const w of node.widgets || []) {
              const where = { node_id: String(node.id), type: node.type, title: node.title, widget: w.name, value: w.value };
              if (w.name === 'control_after_generate' || w.name === 'control_before_generate') {
                if (!CONTROL.includes(w.value)) invalid.push({ ...where, problem: `not one of ${CONTROL}` });
                continue;
              }
              const spec = specs[w.name];
              if (!spec) continue;
              // A linked widget input sends the link, not the value.
              if ((node.inputs || []).some((i) => i.widget?.name === w.name && i.link != null)) continue;
              const [kind, options = {}] = spec;
              const v = w.value;
              if (Array.isArray(kind) || kind === 'COMBO') {
                const values = Array.isArray(kind) ? kind : options.options;
                if (options.remote || options.multi_select || !Array.isArray(values)) continue;
                if (!values.includes(v)) invalid.push({ ...where, problem: values.length ? `not in options (${values.length}: ${JSON.stringify(values.slice(0, 8))}${values.length > 8 ? ', ...' : ''})` : 'not in options (the list is empty)' });
              } else if (kind === 'INT' || kind === 'FLOAT') {
                if (typeof v !== 'number' || !Number.isFinite(v)) invalid.push({ ...where, problem: 'not a finite number' });
                else if (kind === 'INT' && !Number.isInteger(v)) invalid.push({ ...where, problem: 'not an integer' });
                else if (options.min !== undefined && v < options.min) invalid.push({ ...where, problem: `below min ${options.min}` });
                else if (options.max !== undefined && v > options.max) invalid.push({ ...where, problem: `above max ${options.max}` });
              } else if (kind === 'BOOLEAN') {
                if (typeof v !== 'boolean') invalid.push({ ...where, problem: 'not a boolean' });
              } else if (kind === 'STRING') {
                if (typeof v !== 'string') invalid.push({ ...where, problem: 'not a string' });
              }
            }
          }
          const prompt = (await app.graphToPrompt()).output;
          // The screenshot shows the whole graph, not the view saved in the file, filling 95% of the
          // window (Comfy.Canvas.FitView leaves a quarter empty, which costs readable titles).
          app.canvas.deselectAll?.();
          const rects = [...app.graph.nodes.map((n) => n.boundingRect), ...(app.graph.groups || []).map((g) => g._bounding)];
          const [x0, y0] = [0, 1].map((k) => Math.min(...rects.map((r) => r[k])));
          const [x1, y1] = [0, 1].map((k) => Math.max(...rects.map((r) => r[k] + r[k + 2])));
          app.canvas.ds.fitToBounds([x0, y0, x1 - x0, y1 - y0], { zoom: 0.95 });
          app.canvas.setDirty(true, true);
          return {
            loadError, unregistered, invalid, prompt,
            missingNodes: [...new Set(window.__sc.missingNodes)],
            missingModels: window.__sc.missingModels, fileErrors: window.__sc.fileErrors,
            activeWorkflow: app.extensionManager.workflow.activeWorkflow?.path ?? null,
            graphNodes: app.graph.nodes.length,
          };
        }, { text, name, objectInfo });
        if (opts.modelDialogs) entry.model_dialog = await readModelDialog(page, opts.timeoutMs);
        result.dialogs = await page.evaluate(openDialogs);
        result.toasts = await page.evaluate(takeToasts);
        Object.assign(entry, {
          load_error: result.loadError, file_errors: result.fileErrors,
          missing_node_types: [...new Set([...result.missingNodes, ...result.unregistered])].sort(),
          missing_models: result.missingModels, invalid_widgets: result.invalid,
          open_dialogs: result.dialogs, toasts: result.toasts, active_workflow: result.activeWorkflow,
          graph_nodes: result.graphNodes, prompt: result.prompt,
        });
        entry.drawn = await waitForSettledView(page, opts.timeoutMs);
        const shot = join(opts.artifacts, name.replace(/\.json$/i, '') + '.png');
        await page.screenshot({ path: shot });
        entry.screenshot = resolve(shot);
      } catch (e) {
        entry.error = String(e.stack || e);
      }
      report.workflows.push(closePhase(entry, started));
    }

    // The pack's extension (js/selective_control.js): colour, "Preview mask", "Preview regions" and
    // Combine Regions' growing inputs.
    phase = 'extension';
    {
      const started = Date.now();
      const ext = {};
      try {
        Object.assign(ext, await page.evaluate(() => {
          const app = window.app, LiteGraph = window.LiteGraph;
          app.graph.clear();
          const feather = LiteGraph.createNode('SCFeatherMask');
          feather.pos = [100, 100];
          app.graph.add(feather);
          const options = [];
          feather.getExtraMenuOptions?.(app.canvas, options);
          const entry = options.find((o) => o?.content === 'Preview mask: mask');
          entry?.callback();
          const toImage = app.graph.nodes.find((n) => n.type === 'MaskToImage');
          const preview = app.graph.nodes.find((n) => n.type === 'PreviewImage');
          const linked = (from, slot, to) => (from?.outputs?.[slot]?.links || []).some((id) => {
            const link = app.graph.links?.[id] ?? app.graph.links?.get?.(id);
            return link?.target_id === to?.id;
          });
          const result = {
            color: feather.color ?? null,
            menu: options.filter(Boolean).map((o) => o.content).filter((c) => typeof c === 'string' && c.includes('mask')),
            preview_wired: !!(toImage && preview && linked(feather, 0, toImage) && linked(toImage, 0, preview)),
            region_node: 'SCRegion' in LiteGraph.registered_node_types,
          };
          app.graph.clear();

          // "Preview regions" on Apply Regions wires its preview IMAGE straight into a PreviewImage.
          const apply = LiteGraph.createNode('SCApplyRegions');
          apply.pos = [100, 100];
          app.graph.add(apply);
          const applyMenu = [];
          apply.getExtraMenuOptions?.(app.canvas, applyMenu);
          applyMenu.find((o) => o?.content === 'Preview regions')?.callback();
          const regionsPreview = app.graph.nodes.find((n) => n.type === 'PreviewImage');
          const previewSlot = (apply.outputs || []).findIndex((o) => o.type === 'IMAGE');
          result.regions_preview_wired = previewSlot >= 0 && linked(apply, previewSlot, regionsPreview);
          app.graph.clear();

          // Combine Regions: connected slots plus one free one, growing as the last is connected.
          const names = (node) => (node.inputs || []).map((i) => i.name);
          const combine = LiteGraph.createNode('SCCombineRegions');
          combine.pos = [600, 100];
          app.graph.add(combine);
          const grow = { created: names(combine), connected: [] };
          for (let k = 0; k < 9; k++) {
            const region = LiteGraph.createNode('SCRegion');
            region.pos = [100, 100 + 120 * k];
            app.graph.add(region);
            const free = (combine.inputs || []).findIndex((i) => i.link == null);
            if (free < 0) { grow.no_free_slot_after = k; break; }
            region.connect(0, combine, free);
            grow.connected.push(names(combine));
          }
          combine.disconnectInput(combine.inputs.length - 1);  // the 8th
          grow.after_disconnecting_last = names(combine);
          for (let k = 7; k >= 3; k--) combine.disconnectInput(k - 1);  // regions_7 .. regions_3
          grow.after_disconnecting_3_to_7 = names(combine);
          result.grow = grow;
          app.graph.clear();
          return result;
        }));
      } catch (e) {
        ext.error = String(e.stack || e);
      }
      report.extension = closePhase(ext, started);
    }

    if (opts.chain || opts.combine) {
      phase = 'add_region';
      const started = Date.now();
      const ar = {};
      const source = (name) => {
        const file = opts.files.find((f) => basename(f) === name);
        if (!file) throw new Error(`${name} is not among the workflow files`);
        return { text: readFileSync(file, 'utf8'), name };
      };
      try {
        Object.assign(ar, await page.evaluate(async ({ chain, combine }) => {
          const app = window.app;
          const frames = () => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
          let opened = 0;  // each open gets its own file name: 1.49.6 does not reopen a name already open
          const open = async ({ text, name }) => {
            // back to the root graph first, as the breadcrumb does (1.49.6 loads nothing over an open subgraph)
            if (app.canvas.subgraph) app.canvas.setGraph(app.canvas.subgraph.rootGraph);
            await app.handleFile(new File([text], `${++opened}_${name}`, { type: 'application/json' }));
            const want = JSON.parse(text).nodes.length;
            for (let i = 0; i < 100 && app.graph.nodes.length !== want; i++) await frames();
            if (app.graph.nodes.length !== want) throw new Error(`${name}: ${app.graph.nodes.length} nodes after opening, not ${want}; active workflow ${app.extensionManager.workflow.activeWorkflow?.path}`);
            return app.graph;
          };
          const linkOf = (graph, id) => (typeof graph.links?.get === 'function' ? graph.links.get(id) : graph.links?.[id]) ?? null;
          const originOf = (graph, node, name) => {
            const id = (node.inputs || []).find((i) => i.name === name)?.link;
            const link = id != null ? linkOf(graph, id) : null;
            return link ? link.origin_id : null;
          };
          // Every link into a node input, as "origin.output->target.input" (origin: a node id, or
          // the subgraph input node's negative id).
          const edges = (graph) => graph.nodes.flatMap((node) => (node.inputs || []).filter((i) => i.link != null).map((input) => {
            const link = linkOf(graph, input.link);
            if (!link) return `?(link ${input.link} not in graph)->${node.id}.${input.name}`;
            const output = graph.getNodeById(link.origin_id)?.outputs?.[link.origin_slot]?.name ?? link.origin_slot;
            return `${link.origin_id}.${output}->${node.id}.${input.name}`;
          })).sort();
          // "Add region" from the canvas's own node menu (what a right click shows), then the changes.
          const addRegion = async (graph, node) => {
            const root = app.graph;
            const before = { nodes: graph.nodes.length, root_nodes: root.nodes.length, edges: edges(graph),
              root_edges: edges(root), ids: new Set(graph.nodes.map((n) => n.id)),
              inputs: (node.inputs || []).map((i) => i.name), origin: originOf(graph, node, 'regions') };
            const menu = app.canvas.getNodeMenuOptions(node).filter(Boolean);
            const entry = menu.find((o) => o.content === 'Add region');
            entry?.callback?.(null, {}, null, null, node);
            await frames();
            const after = edges(graph);
            const added = graph.nodes.filter((n) => !before.ids.has(n.id));
            return {
              node: node.id, type: node.type, origin: before.origin, in_subgraph: graph !== root, canvas_shows_graph: app.canvas.graph === graph,
              offered: !!entry,
              nodes: [before.nodes, graph.nodes.length], root_nodes: [before.root_nodes, root.nodes.length],
              root_edges_unchanged: graph === root || JSON.stringify(before.root_edges) === JSON.stringify(edges(root)),
              added: added.map((n) => ({ id: n.id, type: n.type })),
              gained: after.filter((e) => !before.edges.includes(e)), lost: before.edges.filter((e) => !after.includes(e)),
              inputs: [before.inputs, (node.inputs || []).map((i) => i.name)],
            };
          };
          // The Region nodes feeding `node` through `regions` inputs, nearest first.
          const chainOf = (graph, node) => {
            const found = [];
            for (let id = originOf(graph, node, 'regions'); id != null; ) {
              const region = graph.getNodeById(id);
              if (region?.type !== 'SCRegion') break;
              found.push(region);
              id = originOf(graph, region, 'regions');
            }
            return found;
          };
          // The selected nodes become a subgraph (the frontend's command), which is then opened.
          const intoSubgraph = async (nodes) => {
            app.canvas.selectItems(nodes);
            await app.extensionManager.command.execute('Comfy.Graph.ConvertToSubgraph');
            const host = app.graph.nodes.find((n) => n.isSubgraphNode?.());
            if (!host) throw new Error('Comfy.Graph.ConvertToSubgraph made no subgraph node');
            app.canvas.openSubgraph(host.subgraph, host);
            await frames();
            return host.subgraph;
          };
          const find = (graph, type) => graph.nodes.find((n) => n.type === type) ??
            (() => { throw new Error(`no ${type} in the ${graph === app.graph ? 'root graph' : 'subgraph'} (${graph.nodes.map((n) => n.type)})`); })();
          // The Region chain feeding Apply Regions in the prompt the Run button would send
          // (subgraphs flattened): the class types, nearest first.
          const promptChain = async () => {
            const prompt = (await app.graphToPrompt()).output;
            const found = [];
            let id = Object.keys(prompt).find((k) => prompt[k].class_type === 'SCApplyRegions');
            for (let next = prompt[id]?.inputs?.regions; Array.isArray(next) && found.length < 20; next = prompt[next[0]]?.inputs?.regions) {
              found.push(prompt[next[0]]?.class_type ?? `missing ${next[0]}`);
            }
            return found;
          };
          const result = {};
          if (chain) {
            let graph = await open(chain);
            let apply = find(graph, 'SCApplyRegions');
            result.chain_length = chainOf(graph, apply).length;
            result.root = await addRegion(graph, apply);

            graph = await open(chain);
            apply = find(graph, 'SCApplyRegions');
            let subgraph = await intoSubgraph([apply, ...chainOf(graph, apply)]);
            apply = find(subgraph, 'SCApplyRegions');
            result.subgraph_chain_length = chainOf(subgraph, apply).length;
            result.subgraph = { ...(await addRegion(subgraph, apply)), prompt_chain: await promptChain() };

            // Only Apply Regions and its nearest Region move in: that Region's chain enters
            // through the subgraph's input (the link's origin is the subgraph input node).
            graph = await open(chain);
            apply = find(graph, 'SCApplyRegions');
            subgraph = await intoSubgraph([apply, chainOf(graph, apply)[0]]);
            const fedFromOutside = find(subgraph, 'SCRegion');
            result.boundary = { ...(await addRegion(subgraph, fedFromOutside)), prompt_chain: await promptChain() };

            // A link id the graph does not hold (as in a damaged file): the chain cannot be read.
            graph = await open(chain);
            apply = find(graph, 'SCApplyRegions');
            const unreadable = apply.inputs.find((i) => i.name === 'regions').link;
            if (typeof graph.links.delete === 'function') graph.links.delete(unreadable); else delete graph.links[unreadable];
            result.unreadable = { ...(await addRegion(graph, apply)),
              link_kept: apply.inputs.find((i) => i.name === 'regions').link === unreadable };
          }
          if (combine) {
            const graph = await open(combine);
            const node = find(graph, 'SCCombineRegions');
            result.combine = await addRegion(graph, node);
          }
          return result;
        }, { chain: opts.chain && source(opts.chain), combine: opts.combine && source(opts.combine) }));
      } catch (e) {
        ar.error = String(e.stack || e);
      }
      report.add_region = closePhase(ar, started);
    }

    if (opts.queue) {
      const file = opts.files.find((f) => basename(f) === opts.queue);
      phase = `queue:${opts.queue}`;
      const started = Date.now();
      const q = { name: opts.queue };
      try {
        if (!file) throw new Error(`--queue ${opts.queue} is not among the workflow files`);
        const text = readFileSync(file, 'utf8');
        await page.evaluate(async ({ text, name }) => {
          await window.app.handleFile(new File([text], name, { type: 'application/json' }));
        }, { text, name: opts.queue });
        const responseP = page.waitForResponse((r) => r.url() === `${base}/api/prompt` && r.request().method() === 'POST');
        q.queue_prompt_returned = await page.evaluate(async () => window.app.queuePrompt(0, 1));
        const response = await responseP;
        const body = await response.json();
        q.http_status = response.status();
        q.prompt_id = body.prompt_id ?? null;
        q.node_errors = body.node_errors ?? null;
        q.sent_prompt = JSON.parse(response.request().postData() || '{}').prompt ?? null;
        if (!q.prompt_id) throw new Error(`/api/prompt answered ${response.status()}: ${JSON.stringify(body).slice(0, 2000)}`);
        const deadline = Date.now() + opts.timeoutMs;
        for (;;) {
          const history = await page.evaluate(async (id) => (await fetch(`/api/history/${id}`)).json(), q.prompt_id);
          const item = history[q.prompt_id];
          if (item?.status?.completed || item?.status?.status_str === 'error') {
            q.status = item.status;
            q.output_nodes = Object.keys(item.outputs || {});
            break;
          }
          if (Date.now() > deadline) { q.status = { status_str: 'timeout', completed: false }; break; }
          await sleep(150);
        }
      } catch (e) {
        q.error = String(e.stack || e);
      }
      report.queue = closePhase(q, started);
    }
  } finally {
    await browser.close();
  }
  report.timings_ms.total = Date.now() - t0;
  report.harmless_rules = HARMLESS.map((r) => r.why);
  process.stdout.write(JSON.stringify(report, null, 1) + '\n');
}

main().catch((e) => {
  process.stderr.write(String(e.stack || e) + '\n');
  process.exit(2);
});

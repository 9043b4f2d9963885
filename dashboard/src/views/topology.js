// Topology page: workloads as nodes grouped by namespace (compound nodes), edges caller → callee
// with success rate, rps and p99; mTLS solid, plaintext dashed amber, denied red dashed. Layout by
// dagre (layered, left to right, with room reserved for every edge label), drawn by cytoscape:
// nodes where dagre put them, edges along dagre's routes (segments through its bends, the label
// on its label position), so an edge spanning several ranks goes around the nodes in between.
// Tables of workloads and edges underneath.
import cytoscape from 'cytoscape';
import * as dagre from '@dagrejs/dagre';

import { getJSON } from '../api.js';
import { routeSegments, weightDistance } from '../route.js';
import { h, td, table, emptyRow, link, workloadHref } from '../dom.js';
import { fmtRps, fmtPct, fmtMs, fmtCount, fmtBytesPerS, edgeLabel, nodeLabel, edgeClasses } from '../format.js';
import { remember, model, edgeTable } from './common.js';

const NODE_W = 170;
const NODE_H = 46;
const FONT_FAMILY = 'DejaVu Sans, system-ui, sans-serif';
const EDGE_FONT_SIZE = 12;
const EDGE_LABEL_PAD = 2; // text-background-padding
// Room reserved for a label beyond what it paints (text and background padding): some width to
// spare, so that numbers gaining a digit between refreshes still fit without a new layout.
const LABEL_SPARE_W = 12;
const LABEL_SPARE_H = 2;

const STYLE = [
  {
    selector: 'node.workload',
    style: {
      shape: 'round-rectangle', width: NODE_W, height: NODE_H, 'background-color': '#ffffff',
      'border-width': 1.5, 'border-color': '#4a5568', label: 'data(label)', 'text-wrap': 'wrap',
      'text-valign': 'center', 'text-halign': 'center', 'font-size': 13, color: '#1d2330',
      'font-family': FONT_FAMILY,
    },
  },
  { selector: 'node.workload.unhealthy', style: { 'border-color': '#c4320a', 'border-width': 3 } },
  { selector: 'node.workload.unserved', style: { 'border-style': 'dashed', 'background-color': '#f4f5f7' } },
  {
    selector: 'node.namespace',
    style: {
      shape: 'round-rectangle', 'background-color': '#eaf0f8', 'background-opacity': 1,
      'border-color': '#8d9bb3', 'border-width': 1, label: 'data(label)', 'text-valign': 'top',
      'text-halign': 'center', 'text-margin-y': -4, 'font-size': 13, 'font-weight': 'bold',
      color: '#2c3a52', padding: 16, 'font-family': FONT_FAMILY,
    },
  },
  {
    selector: 'edge',
    style: {
      'curve-style': 'bezier', 'target-arrow-shape': 'triangle', width: 2, 'line-color': '#3f6f52',
      'target-arrow-color': '#3f6f52', label: 'data(label)', 'font-size': EDGE_FONT_SIZE, 'z-compound-depth': 'top', 'text-wrap': 'wrap',
      'text-background-color': '#ffffff', 'text-background-opacity': 1, 'text-background-padding': EDGE_LABEL_PAD,
      color: '#1d2330', 'font-family': FONT_FAMILY,
    },
  },
  // An edge laid out by dagre: drawn through its route's bends (weights/distances relative to the
  // line between the two node centres, see src/route.js), label on the route's middle point
  // (for a straight route: one point on the line, where dagre reserved room for the label).
  {
    selector: 'edge[?routed]',
    style: { 'curve-style': 'segments', 'segment-weights': 'data(segW)', 'segment-distances': 'data(segD)', 'edge-distances': 'node-position' },
  },
  { selector: 'edge.plaintext', style: { 'line-style': 'dashed', 'line-color': '#b7791f', 'target-arrow-color': '#b7791f' } },
  { selector: 'edge.mixed', style: { 'line-style': 'dotted', 'line-color': '#b7791f', 'target-arrow-color': '#b7791f' } },
  { selector: 'edge.idle', style: { opacity: 0.55 } },
  {
    selector: 'edge.audit',
    style: { 'line-style': 'dashed', 'line-color': '#b7791f', 'target-arrow-color': '#b7791f', color: '#8a5a12', width: 2.5, opacity: 1 },
  },
  {
    selector: 'edge.denied',
    style: { 'line-style': 'dashed', 'line-color': '#c4320a', 'target-arrow-color': '#c4320a', color: '#c4320a', width: 2.5, opacity: 1 },
  },
];

let measureCtx = null;

/** Size of an edge label as cytoscape draws it: widest line × lines at the edge font size. */
function labelSize(text) {
  const lines = String(text).split('\n');
  if (!measureCtx) {
    measureCtx = document.createElement('canvas').getContext('2d');
    // The same font string cytoscape measures labels with (style, weight, size, family).
    if (measureCtx) measureCtx.font = `normal normal ${EDGE_FONT_SIZE}px ${FONT_FAMILY}`;
  }
  const width = (line) => (measureCtx ? Math.ceil(measureCtx.measureText(line).width) : Math.ceil(line.length * 0.62 * EDGE_FONT_SIZE));
  // Text plus the background padding on both sides: the box cytoscape paints.
  return { w: Math.max(0, ...lines.map(width)) + 2 * EDGE_LABEL_PAD, h: lines.length * EDGE_FONT_SIZE + 2 * EDGE_LABEL_PAD };
}

/** The room a label gets in the layout. */
const reservedSize = ({ w, h }) => ({ w: w + LABEL_SPARE_W, h: h + LABEL_SPARE_H });

/**
 * Dagre's layout of the model: node centres (`pos`, by node key) and, per edge of m.edges (by
 * index), the route to draw it along (`{weights, distances}` of its segment points, empty for a
 * loop) and the room reserved for its label (`reserved`).
 */
function layoutGraph(m) {
  const g = new dagre.graphlib.Graph({ compound: true, multigraph: true });
  // Compound layouts add border ranks on both sides of each namespace box, and edge labels a
  // rank of their own in the middle of each edge: ranksep is per sub-rank (dagre halves it when
  // edges have labels), the gap between a box's border and a label or node beside it.
  g.setGraph({ rankdir: 'LR', nodesep: 40, ranksep: 32, edgesep: 24, marginx: 16, marginy: 16 });
  g.setDefaultEdgeLabel(() => ({}));
  for (const ns of m.namespaces) g.setNode('ns:' + ns, {});
  for (const n of m.nodes.values()) {
    g.setNode(n.key, { width: NODE_W, height: NODE_H + 28 });
    g.setParent(n.key, 'ns:' + n.ns);
  }
  const reserved = m.edges.map(({ e }) => reservedSize(labelSize(edgeLabel(e))));
  m.edges.forEach(({ src, dst }, i) => {
    if (src !== dst) g.setEdge(src, dst, { width: reserved[i].w, height: reserved[i].h, labelpos: 'c' }, 'e' + i);
  });
  dagre.layout(g);
  const pos = {};
  for (const n of m.nodes.values()) {
    const p = g.node(n.key);
    pos[n.key] = { x: p.x, y: p.y };
  }
  const routes = m.edges.map(({ src, dst }, i) => {
    if (src === dst) return { weights: [], distances: [] };
    const de = g.edge({ v: src, w: dst, name: 'e' + i });
    const label = de.x != null ? { x: de.x, y: de.y } : null;
    const r = routeSegments(pos[src], pos[dst], de.points, label);
    // A straight route still gets one point, on the line where dagre put the label: cytoscape
    // draws the label there rather than halfway between the two nodes' borders.
    if (r.weights.length === 0 && label) return { weights: [weightDistance(pos[src], pos[dst], label).w], distances: [0] };
    return r;
  });
  return { pos, routes, reserved };
}

/** Edge element ids, in the order of m.edges (`e:src->dst`, `#k` for the k-th repeat). */
function edgeIds(m) {
  const seen = new Map();
  return m.edges.map(({ src, dst }) => {
    let id = `e:${src}->${dst}`;
    const k = seen.get(id) || 0;
    seen.set(id, k + 1);
    if (k) id += '#' + k;
    return id;
  });
}

function elements(m) {
  const els = m.namespaces.map((ns) => ({ group: 'nodes', data: { id: 'ns:' + ns, label: ns, namespace: ns }, classes: 'namespace' }));
  for (const n of m.nodes.values()) {
    const cls = ['workload'];
    if (!n.w) cls.push('unserved');
    else if (n.w.success_rate != null && n.w.success_rate < 0.95) cls.push('unhealthy');
    els.push({ group: 'nodes', data: { id: n.key, parent: 'ns:' + n.ns, label: nodeLabel(n.name, n.w), namespace: n.ns }, classes: cls.join(' ') });
  }
  const ids = edgeIds(m);
  m.edges.forEach(({ src, dst, e }, i) => {
    els.push({ group: 'edges', data: { id: ids[i], source: src, target: dst, src, dst, label: edgeLabel(e), denied: e.denied || 0 }, classes: edgeClasses(e).join(' ') });
  });
  return els;
}

/** What the graph shows, for tests: namespaces (groups), nodes and edges with labels/classes. */
export function graphSnapshot(cy) {
  if (!cy) return null;
  return {
    namespaces: cy.nodes('.namespace').map((n) => n.data('namespace')),
    nodes: cy.nodes('.workload').map((n) => ({ id: n.id(), namespace: n.data('namespace'), parent: n.data('parent'), label: n.data('label'), classes: n.classes() })),
    edges: cy.edges().map((e) => ({ id: e.id(), src: e.data('src'), dst: e.data('dst'), label: e.data('label'), classes: e.classes() })),
  };
}

const WORKLOAD_HEADERS = [
  'namespace', 'workload', { label: 'meshed', num: true }, { label: 'requests', num: true },
  { label: 'rps', num: true }, { label: 'success', num: true }, { label: 'p50 ms', num: true },
  { label: 'p95 ms', num: true }, { label: 'p99 ms', num: true }, { label: 'denied', num: true },
  { label: 'would deny', num: true }, { label: 'TCP open', num: true }, { label: 'read', num: true }, { label: 'written', num: true },
];

function workloadRow(w) {
  const key = `${w.namespace}/${w.workload}`;
  return h(
    'tr',
    { 'data-testid': 'workload-row', 'data-workload': key, 'data-namespace': w.namespace, title: w.identity || '' },
    td('namespace', w.namespace),
    td('workload', link(workloadHref(key), w.workload)),
    td('meshed', `${fmtCount(w.meshed)}/${fmtCount(w.instances)}`, 'num' + (w.meshed < w.instances ? ' warn' : '')),
    td('requests', fmtCount(w.requests), 'num'),
    td('rps', fmtRps(w.rps), 'num'),
    td('success_rate', fmtPct(w.success_rate), 'num' + (w.success_rate != null && w.success_rate < 0.95 ? ' bad' : '')),
    td('p50_ms', fmtMs(w.p50_ms), 'num'),
    td('p95_ms', fmtMs(w.p95_ms), 'num'),
    td('p99_ms', fmtMs(w.p99_ms), 'num'),
    td('denied', fmtCount(w.denied), 'num' + (w.denied > 0 ? ' bad' : '')),
    td('would_deny', fmtCount(w.would_deny || 0), 'num' + ((w.would_deny || 0) > 0 ? ' warn' : '')),
    td('tcp_open_connections', fmtCount(w.tcp_open_connections), 'num'),
    td('tcp_read_bytes_per_s', fmtBytesPerS(w.tcp_read_bytes_per_s), 'num'),
    td('tcp_write_bytes_per_s', fmtBytesPerS(w.tcp_write_bytes_per_s), 'num'),
  );
}

export function topologyView(main, ctx) {
  const graphEl = h('div', { class: 'graph', 'data-testid': 'topology-graph', role: 'img', 'aria-label': 'graph of workloads by namespace and who calls whom; the same numbers are in the tables below' });
  const emptyEl = h('p', { class: 'empty-graph', hidden: true }, 'No workloads seen yet: the control plane shows a workload once it has scraped its proxy. Send some traffic and wait a scrape interval.');
  const nsList = h('ul', { class: 'nslist', 'data-testid': 'namespace-list' });
  const wt = table('workload-table', WORKLOAD_HEADERS);
  const et = edgeTable('edge-table');
  const section = h(
    'section',
    { 'data-testid': 'topology', 'data-state': 'loading' },
    h('h1', {}, 'Topology'),
    h(
      'div',
      { class: 'legend' },
      h('span', { class: 'sw mtls' }), 'mTLS ',
      h('span', { class: 'sw plaintext' }), 'plaintext / mixed ',
      h('span', { class: 'sw denied' }), 'denied ',
      h('span', { class: 'sw audit' }), 'would deny (audit) ',
      h('span', { class: 'sw unhealthy' }), 'success < 95 % ',
      ' · edge labels: success · rps · p99 (caller\'s view) · node labels: success · rps served',
    ),
    h('div', { class: 'orgs' }, 'Organizations: ', nsList),
    graphEl,
    emptyEl,
    h('h2', {}, 'Workloads (inbound)'),
    wt.table,
    h('h2', {}, 'Edges (caller → callee)'),
    et.table,
  );
  main.append(section);

  let cy = null;
  let structure = '';
  let reserved = new Map(); // edge id -> the label room of the last layout

  function ensureCy() {
    if (cy) return cy;
    cy = cytoscape({ container: graphEl, style: STYLE, minZoom: 0.2, maxZoom: 3, boxSelectionEnabled: false, autoungrabify: false });
    cy.on('tap', 'node.workload', (ev) => {
      const key = ev.target.id();
      if (key.includes('/') && !key.startsWith('spiffe:')) location.hash = workloadHref(key);
    });
    window.__onemesh.cy = cy;
    window.__onemesh.graph = () => graphSnapshot(cy);
    return cy;
  }

  function render(ov) {
    const m = model(ov);
    graphEl.hidden = m.nodes.size === 0;
    emptyEl.hidden = m.nodes.size !== 0;
    const c = ensureCy();
    const els = elements(m);
    const key = JSON.stringify(els.map((e) => e.data.id + '|' + (e.data.parent || '')));
    // A new structure is laid out again; so is the same one when a label outgrew the room the
    // last layout gave it (a line more, an idle edge getting traffic).
    const ids = edgeIds(m);
    const outgrown =
      key === structure &&
      m.edges.some(({ e }, i) => {
        const r = reserved.get(ids[i]);
        const s = labelSize(edgeLabel(e));
        return !r || s.w > r.w || s.h > r.h;
      });
    const relayout = key !== structure || outgrown;
    let layout = null;
    if (relayout && m.nodes.size) {
      layout = layoutGraph(m);
      reserved = new Map(ids.map((id, i) => [id, layout.reserved[i]]));
      // The routes go with the edges' data (the `edge[?routed]` style reads them).
      const byId = new Map(els.map((e) => [e.data.id, e]));
      ids.forEach((id, i) => {
        const { weights, distances } = layout.routes[i];
        Object.assign(byId.get(id).data, { routed: weights.length > 0, segW: weights, segD: distances });
      });
    }
    c.batch(() => {
      if (key !== structure) {
        c.elements().remove();
        c.add(els);
      } else {
        for (const e of els) {
          const el = c.getElementById(e.data.id);
          el.data(e.data);
          el.classes(e.classes);
        }
      }
    });
    if (relayout) {
      structure = key;
      window.__onemesh.layouts += 1;
      const pos = layout ? layout.pos : {};
      c.layout({ name: 'preset', positions: (n) => pos[n.id()], fit: false }).run();
      // Give the graph the height its layout wants at a readable zoom, then fit.
      const bb = c.elements().boundingBox();
      const width = graphEl.clientWidth || 1200;
      const zoom = Math.min(1, (width - 48) / Math.max(bb.w, 1));
      graphEl.style.height = Math.round(Math.min(820, Math.max(280, bb.h * zoom + 56))) + 'px';
      c.resize();
      c.fit(undefined, 24);
      if (c.zoom() > 1.2) c.zoom({ level: 1.2, renderedPosition: { x: width / 2, y: graphEl.clientHeight / 2 } });
    }
    nsList.replaceChildren(
      ...m.namespaces.map((ns) => {
        const n = [...m.nodes.values()].filter((x) => x.ns === ns).length;
        return h('li', { 'data-testid': 'namespace', 'data-namespace': ns }, `${ns} (${n})`);
      }),
    );
    const ws = [...(ov.workloads || [])].sort((a, b) => `${a.namespace}/${a.workload}`.localeCompare(`${b.namespace}/${b.workload}`));
    if (ws.length === 0) emptyRow(wt.tbody, WORKLOAD_HEADERS.length, 'no workloads yet');
    else wt.tbody.replaceChildren(...ws.map(workloadRow));
    et.fill(m.edges, 'no edges yet: no workload has called another in this window');
    section.dataset.state = 'ready';
    section.dataset.nowUnix = String(ov.now_unix);
  }

  return {
    async refresh() {
      const ov = await getJSON('overview', { window: ctx.window });
      remember(ov, ctx);
      render(ov);
    },
    unmount() {
      if (cy) cy.destroy();
      cy = null;
      window.__onemesh.cy = null;
      window.__onemesh.graph = () => null;
    },
  };
}

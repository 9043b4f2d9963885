// Topology page: workloads as nodes grouped by namespace (compound nodes), edges caller → callee
// with success rate, rps and p99; mTLS solid, plaintext dashed amber, denied red dashed. Layout by
// dagre (layered, left to right), drawn by cytoscape. Tables of workloads and edges underneath.
import cytoscape from 'cytoscape';
import * as dagre from '@dagrejs/dagre';

import { getJSON } from '../api.js';
import { h, td, table, emptyRow, link, workloadHref } from '../dom.js';
import { fmtRps, fmtPct, fmtMs, fmtCount, fmtBytesPerS, edgeLabel, nodeLabel, edgeClasses } from '../format.js';
import { remember, model, edgeTable } from './common.js';

const NODE_W = 170;
const NODE_H = 46;

const STYLE = [
  {
    selector: 'node.workload',
    style: {
      shape: 'round-rectangle', width: NODE_W, height: NODE_H, 'background-color': '#ffffff',
      'border-width': 1.5, 'border-color': '#4a5568', label: 'data(label)', 'text-wrap': 'wrap',
      'text-valign': 'center', 'text-halign': 'center', 'font-size': 13, color: '#1d2330',
      'font-family': 'DejaVu Sans, system-ui, sans-serif',
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
      color: '#2c3a52', padding: 16, 'font-family': 'DejaVu Sans, system-ui, sans-serif',
    },
  },
  {
    selector: 'edge',
    style: {
      'curve-style': 'bezier', 'target-arrow-shape': 'triangle', width: 2, 'line-color': '#3f6f52',
      'target-arrow-color': '#3f6f52', label: 'data(label)', 'font-size': 12, 'z-compound-depth': 'top', 'text-wrap': 'wrap',
      'text-background-color': '#ffffff', 'text-background-opacity': 1, 'text-background-padding': 2,
      color: '#1d2330', 'font-family': 'DejaVu Sans, system-ui, sans-serif',
    },
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

function layoutPositions(m) {
  const g = new dagre.graphlib.Graph({ compound: true, multigraph: true });
  // Compound layouts add border ranks on both sides of each namespace box, so ranksep is per
  // sub-rank: three of them (plus padding) separate two boxes, room for an edge label.
  g.setGraph({ rankdir: 'LR', nodesep: 40, ranksep: 96, edgesep: 24, marginx: 16, marginy: 16 });
  g.setDefaultEdgeLabel(() => ({}));
  for (const ns of m.namespaces) g.setNode('ns:' + ns, {});
  for (const n of m.nodes.values()) {
    g.setNode(n.key, { width: NODE_W, height: NODE_H + 28 });
    g.setParent(n.key, 'ns:' + n.ns);
  }
  m.edges.forEach(({ src, dst }, i) => {
    if (src !== dst) g.setEdge(src, dst, { width: 10, height: 10 }, 'e' + i);
  });
  dagre.layout(g);
  const pos = {};
  for (const n of m.nodes.values()) {
    const p = g.node(n.key);
    pos[n.key] = { x: p.x, y: p.y };
  }
  return pos;
}

function elements(m) {
  const els = m.namespaces.map((ns) => ({ group: 'nodes', data: { id: 'ns:' + ns, label: ns, namespace: ns }, classes: 'namespace' }));
  for (const n of m.nodes.values()) {
    const cls = ['workload'];
    if (!n.w) cls.push('unserved');
    else if (n.w.success_rate != null && n.w.success_rate < 0.95) cls.push('unhealthy');
    els.push({ group: 'nodes', data: { id: n.key, parent: 'ns:' + n.ns, label: nodeLabel(n.name, n.w), namespace: n.ns }, classes: cls.join(' ') });
  }
  const seen = new Map();
  for (const { src, dst, e } of m.edges) {
    let id = `e:${src}->${dst}`;
    const k = seen.get(id) || 0;
    seen.set(id, k + 1);
    if (k) id += '#' + k;
    els.push({ group: 'edges', data: { id, source: src, target: dst, src, dst, label: edgeLabel(e), denied: e.denied || 0 }, classes: edgeClasses(e).join(' ') });
  }
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
    if (key !== structure) {
      structure = key;
      const pos = m.nodes.size ? layoutPositions(m) : {};
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

#!/usr/bin/env node
// Browser test of the onemesh dashboard (headless Chromium driven by playwright-core).
//
//   node dashboard/tests/browser.mjs --url http://127.0.0.1:PORT --token T --out DIR
//        [--tap-workload ns/name] [--expect-denied src->dst]... [--workload ns/name]
//        [--window 60s] [--tap-min-rows 1] [--timeout 110]
//
// It checks that the API answers 401 without a session and the page shows its login form, logs
// in through the form, then compares the topology (graph and edge/workload tables) with the
// overview JSON the page itself rendered (window.__onemesh.lastOverview, which must be < 15 s
// old) and with a fresh API answer fetched with the session cookie (every namespace a group,
// every edge present with the same rounded numbers, denied edges drawn as denied), checks the
// graph's geometry through cytoscape's API (no edge label on a workload node or on another label,
// no edge drawn through a workload node other than its own two ends), opens a
// workload page and checks its charts have points, the routes and authorization tables, and the
// tap view (prints `TAP_READY` on stdout once the stream is open, then waits up to 30 s for rows;
// no card number may show). Uncaught page errors and console errors fail it. Screenshots go to --out. Progress goes to stderr; the LAST line of
// stdout is one JSON object:
//   {"ok", "failures", "namespaces", "edges", "workloads", "tap_rows", "screenshots", "console_errors",
//    "warnings", "layout": {what the geometry check looked at, and how many overlaps it found}}
// Exit status 1 on any failure.
import { mkdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { chromium } from 'playwright-core';

import * as F from '../src/format.js';
import { cardNumbers } from './cards.mjs';

function parseArgs(argv) {
  const a = { expectDenied: [], window: '60s', tapMinRows: 1, timeout: 110 };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i];
    const v = () => {
      if (i + 1 >= argv.length) usage(`${k} needs a value`);
      return argv[++i];
    };
    if (k === '--url') a.url = v().replace(/\/+$/, '');
    else if (k === '--token') a.token = v();
    else if (k === '--out') a.out = v();
    else if (k === '--tap-workload') a.tapWorkload = v();
    else if (k === '--expect-denied') a.expectDenied.push(v());
    else if (k === '--workload') a.workload = v();
    else if (k === '--window') a.window = v();
    else if (k === '--tap-min-rows') a.tapMinRows = Number(v());
    else if (k === '--timeout') a.timeout = Number(v());
    else if (k === '-h' || k === '--help') usage();
    else usage(`unknown argument ${k}`);
  }
  if (!a.url || !a.token || !a.out) usage('--url, --token and --out are required');
  for (const d of a.expectDenied) if (!d.includes('->')) usage(`--expect-denied wants src->dst (e.g. order/order->bank/bank), got ${d}`);
  return a;
}

function usage(msg) {
  if (msg) console.error(`browser.mjs: ${msg}`);
  console.error('usage: node dashboard/tests/browser.mjs --url http://127.0.0.1:PORT --token T --out DIR [--tap-workload ns/name] [--expect-denied src->dst]... [--workload ns/name] [--window 60s] [--tap-min-rows N] [--timeout S]');
  process.exit(2);
}

const args = parseArgs(process.argv.slice(2));
const out = resolve(args.out);
mkdirSync(out, { recursive: true });

const failures = [];
const consoleErrors = [];
const result = { ok: false, failures, namespaces: [], edges: [], workloads: [], tap_rows: [], screenshots: [], console_errors: consoleErrors, warnings: [] };
const log = (...m) => console.error('[browser]', ...m);
const fail = (msg) => {
  failures.push(msg);
  log('FAIL', msg);
};
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

let browser;
let finished = false;
async function finish() {
  if (finished) return;
  finished = true;
  result.ok = failures.length === 0;
  try {
    if (browser) await browser.close();
  } catch {
    /* closing anyway */
  }
  console.log(JSON.stringify(result));
  process.exit(result.ok ? 0 : 1);
}
setTimeout(() => {
  fail(`the whole test took longer than --timeout ${args.timeout} s`);
  finish();
}, args.timeout * 1000).unref();

async function shot(page, name) {
  const path = join(out, `${name}.png`);
  try {
    await page.screenshot({ path, fullPage: true });
    result.screenshots.push(path);
  } catch (err) {
    fail(`screenshot ${name}: ${err.message}`);
  }
}

/** Waits for fn(arg) to be truthy in the page; records a failure and returns false on timeout. */
async function waitFor(page, what, fn, arg, timeoutMs) {
  try {
    await page.waitForFunction(fn, arg, { timeout: timeoutMs, polling: 250 });
    return true;
  } catch (err) {
    fail(`${what} (waited ${Math.round(timeoutMs / 1000)} s)`);
    return false;
  }
}

async function go(page, hash) {
  await page.evaluate((h) => {
    location.hash = h;
  }, hash);
}

// ---------- topology ----------

function topologySnapshot() {
  const o = window.__onemesh;
  const fields = (tr) => Object.fromEntries([...tr.querySelectorAll('td[data-field]')].map((td) => [td.dataset.field, td.textContent.trim()]));
  return {
    ov: o.lastOverview,
    at: o.lastOverviewAt,
    now: Date.now(),
    edgeRows: [...document.querySelectorAll('[data-testid=edge-table] [data-testid=edge-row]')].map((tr) => ({
      src: tr.dataset.src, dst: tr.dataset.dst, tls: tr.dataset.tls, denied: tr.dataset.denied === 'true', fields: fields(tr),
    })),
    workloadRows: [...document.querySelectorAll('[data-testid=workload-row]')].map((tr) => ({ workload: tr.dataset.workload, fields: fields(tr) })),
    nsList: [...document.querySelectorAll('[data-testid=namespace]')].map((li) => li.dataset.namespace),
    graph: o.graph ? o.graph() : null,
  };
}

const EDGE_FIELDS = ['tls', 'requests', 'rps', 'success_rate', 'p50_ms', 'p95_ms', 'p99_ms', 'denied', 'would_deny', 'tcp_read_bytes_per_s', 'tcp_write_bytes_per_s'];
const WORKLOAD_FIELDS = ['requests', 'rps', 'success_rate', 'p50_ms', 'p95_ms', 'p99_ms', 'denied', 'would_deny', 'tcp_open_connections', 'tcp_read_bytes_per_s', 'tcp_write_bytes_per_s'];

const edgeKey = (e) => `${F.edgeSrcKey(e)}->${F.edgeDstKey(e)}`;

/** Problems between what the page shows and (a) the JSON it rendered, (b) a fresh API answer. */
function compareTopology(snap, api) {
  const p = [];
  const ov = snap.ov;
  if (!ov) return ['the page has rendered no overview (window.__onemesh.lastOverview is empty)'];
  const age = (snap.now - snap.at) / 1000;
  if (age > 15) p.push(`the page's overview is ${age.toFixed(1)} s old (refresh should be every 5 s)`);
  if (Math.abs(api.now_unix - ov.now_unix) > 15) p.push(`the page's overview (now_unix ${ov.now_unix}) is more than 15 s behind the API's (${api.now_unix})`);
  if (!snap.graph) p.push('the topology graph is missing (window.__onemesh.graph())');
  const graph = snap.graph || { namespaces: [], nodes: [], edges: [] };

  // Namespaces: every namespace of the API (workloads and both ends of edges) is a group.
  const apiNs = new Set([
    ...(api.workloads || []).map((w) => w.namespace),
    ...(api.edges || []).flatMap((e) => [F.endpointNamespace(e.src_namespace, e.src_id), F.endpointNamespace(e.dst_namespace, e.dst_id)]),
  ]);
  for (const ns of apiNs) {
    if (!graph.namespaces.includes(ns)) p.push(`namespace ${ns} is not a group in the graph`);
    if (!snap.nsList.includes(ns)) p.push(`namespace ${ns} is missing from the organizations list`);
  }

  // Edges: every API edge is in what the page rendered; the DOM and the graph match that JSON.
  const pageEdges = new Map((ov.edges || []).map((e) => [edgeKey(e), e]));
  for (const e of api.edges || []) if (!pageEdges.has(edgeKey(e))) p.push(`API edge ${edgeKey(e)} is not on the page yet`);
  if (snap.edgeRows.length !== (ov.edges || []).length) p.push(`edge table has ${snap.edgeRows.length} rows, the page's overview ${(ov.edges || []).length} edges`);
  for (const [key, e] of pageEdges) {
    const row = snap.edgeRows.find((r) => `${r.src}->${r.dst}` === key);
    if (!row) {
      p.push(`edge ${key}: no edge-row in the table`);
      continue;
    }
    for (const f of EDGE_FIELDS) {
      const want = F.FIELD_FORMATS[f](e[f]);
      if (row.fields[f] !== want) p.push(`edge ${key}: ${f} shows "${row.fields[f]}", the API says ${JSON.stringify(e[f])} → "${want}"`);
    }
    const denied = (e.denied || 0) > 0;
    if (row.denied !== denied) p.push(`edge ${key}: table row data-denied=${row.denied}, API denied=${e.denied}`);
    const ge = graph.edges.find((g) => `${g.src}->${g.dst}` === key);
    if (!ge) p.push(`edge ${key}: not drawn in the graph`);
    else {
      if (ge.label !== F.edgeLabel(e)) p.push(`edge ${key}: graph label ${JSON.stringify(ge.label)}, expected ${JSON.stringify(F.edgeLabel(e))}`);
      if (ge.classes.includes('denied') !== denied) p.push(`edge ${key}: graph ${denied ? 'does not draw it as denied' : 'draws it as denied'} (API denied=${e.denied})`);
      const tlsClass = e.tls === 'mtls' ? 'mtls' : e.tls === 'plaintext' ? 'plaintext' : 'mixed';
      if (!ge.classes.includes(tlsClass)) p.push(`edge ${key}: graph does not mark it ${tlsClass}`);
    }
  }

  // Workloads: table rows and node labels.
  for (const w of ov.workloads || []) {
    const key = `${w.namespace}/${w.workload}`;
    const row = snap.workloadRows.find((r) => r.workload === key);
    if (!row) p.push(`workload ${key}: no workload-row`);
    else
      for (const f of WORKLOAD_FIELDS) {
        const want = F.FIELD_FORMATS[f](w[f]);
        if (row.fields[f] !== want) p.push(`workload ${key}: ${f} shows "${row.fields[f]}", the API says ${JSON.stringify(w[f])} → "${want}"`);
      }
    const node = graph.nodes.find((n) => n.id === key);
    if (!node) p.push(`workload ${key}: no node in the graph`);
    else {
      if (node.label !== F.nodeLabel(w.workload, w)) p.push(`workload ${key}: node label ${JSON.stringify(node.label)}, expected ${JSON.stringify(F.nodeLabel(w.workload, w))}`);
      if (node.parent !== 'ns:' + w.namespace) p.push(`workload ${key}: node not inside the ${w.namespace} group`);
    }
  }
  return p;
}

/**
 * The drawn graph's geometry, read through cytoscape's API in the page (model coordinates): the
 * box of every workload node and every edge label, and points sampled every 2 px along every
 * edge's drawn path (straight, bezier or segments, from its source endpoint to its target
 * endpoint). Returns what overlaps: an edge label on a workload node, two edge labels on each
 * other, an edge's path through a workload node other than its own two ends.
 */
function topologyGeometry() {
  const cy = window.__onemesh.cy;
  if (!cy || cy.destroyed()) return null;
  // cytoscape pads a body's box by 1 px (antialiasing) and a label's by 2 px ("margin of error")
  // beyond the label's background: take that off, so boxes are what is painted.
  const inset = (b, k) => ({ x1: b.x1 + k, y1: b.y1 + k, x2: b.x2 - k, y2: b.y2 - k });
  const overlaps = (a, b) => a.x1 < b.x2 && b.x1 < a.x2 && a.y1 < b.y2 && b.y1 < a.y2;
  const inside = (p, b) => p.x > b.x1 && p.x < b.x2 && p.y > b.y1 && p.y < b.y2;
  const round = (b) => [b.x1, b.y1, b.x2, b.y2].map((v) => Math.round(v));
  const nodes = cy.nodes('.workload').map((n) => ({
    id: n.id(),
    bb: inset(n.boundingBox({ includeLabels: false, includeOverlays: false, includeUnderlays: false, includeOutlines: false, useCache: false }), 1),
  }));
  const labels = [];
  const edges = [];
  let samples = 0;
  cy.edges().forEach((e) => {
    if (e.pstyle('label').strValue) {
      const bb = e.boundingBox({ includeNodes: false, includeEdges: false, includeLabels: true, includeMainLabels: true, includeSourceLabels: false, includeTargetLabels: false, includeOverlays: false, includeUnderlays: false, useCache: false });
      if (bb.w > 0 && bb.h > 0) labels.push({ id: e.id(), bb: inset(bb, 2) });
    }
    // The drawn path: segments are straight lines through segmentPoints(); a bezier edge is a
    // chain of quadratic curves through its controlPoints() (as cytoscape draws it: the joints
    // are the midpoints between consecutive control points); otherwise one straight line.
    const s = e.sourceEndpoint();
    const t = e.targetEndpoint();
    const seg = e.segmentPoints();
    const ctrl = e.controlPoints();
    const pts = [];
    const line = (a, b) => {
      const n = Math.max(1, Math.ceil(Math.hypot(b.x - a.x, b.y - a.y) / 2));
      for (let i = 0; i <= n; i++) pts.push({ x: a.x + ((b.x - a.x) * i) / n, y: a.y + ((b.y - a.y) * i) / n });
    };
    const quad = (a, c, b) => {
      const n = Math.max(1, Math.ceil((Math.hypot(c.x - a.x, c.y - a.y) + Math.hypot(b.x - c.x, b.y - c.y)) / 2));
      for (let i = 0; i <= n; i++) {
        const u = i / n;
        pts.push({ x: (1 - u) * (1 - u) * a.x + 2 * u * (1 - u) * c.x + u * u * b.x, y: (1 - u) * (1 - u) * a.y + 2 * u * (1 - u) * c.y + u * u * b.y });
      }
    };
    if (seg && seg.length) {
      const all = [s, ...seg, t];
      for (let i = 0; i + 1 < all.length; i++) line(all[i], all[i + 1]);
    } else if (ctrl && ctrl.length && e.source().id() !== e.target().id()) {
      const all = [s];
      ctrl.forEach((c, i) => {
        all.push(c);
        if (i + 1 < ctrl.length) all.push({ x: (c.x + ctrl[i + 1].x) / 2, y: (c.y + ctrl[i + 1].y) / 2 });
      });
      all.push(t);
      for (let i = 0; i + 2 < all.length; i += 2) quad(all[i], all[i + 1], all[i + 2]);
    } else line(s, t);
    samples += pts.length;
    edges.push({ id: e.id(), src: e.source().id(), dst: e.target().id(), pts, kind: seg && seg.length ? 'segments' : ctrl && ctrl.length ? 'bezier' : 'straight' });
  });
  const labelOnNode = [];
  for (const l of labels) for (const n of nodes) if (overlaps(l.bb, n.bb)) labelOnNode.push({ edge: l.id, node: n.id, label: round(l.bb), box: round(n.bb) });
  const labelOnLabel = [];
  for (let i = 0; i < labels.length; i++) for (let j = i + 1; j < labels.length; j++) if (overlaps(labels[i].bb, labels[j].bb)) labelOnLabel.push({ edges: [labels[i].id, labels[j].id], boxes: [round(labels[i].bb), round(labels[j].bb)] });
  const edgeThroughNode = [];
  for (const e of edges)
    for (const n of nodes) {
      if (n.id === e.src || n.id === e.dst) continue;
      const p = e.pts.find((q) => inside(q, n.bb));
      if (p) edgeThroughNode.push({ edge: e.id, node: n.id, at: [Math.round(p.x), Math.round(p.y)] });
    }
  return {
    layouts: window.__onemesh.layouts,
    zoom: Math.round(cy.zoom() * 100) / 100,
    nodes: nodes.length,
    edges: edges.length,
    labels: labels.length,
    path_samples: samples,
    kinds: edges.reduce((k, e) => ({ ...k, [e.kind]: (k[e.kind] || 0) + 1 }), {}),
    label_on_node: labelOnNode,
    label_on_label: labelOnLabel,
    edge_through_node: edgeThroughNode,
  };
}

/** Failures for what topologyGeometry() found. */
function geometryProblems(g) {
  if (!g) return ['topology layout: no graph to check (window.__onemesh.cy)'];
  const p = [];
  for (const o of g.label_on_node) p.push(`topology layout: the label of edge ${o.edge} covers workload node ${o.node} (label box ${o.label.join(',')}, node box ${o.box.join(',')})`);
  for (const o of g.label_on_label) p.push(`topology layout: the labels of edges ${o.edges[0]} and ${o.edges[1]} overlap (${o.boxes[0].join(',')} / ${o.boxes[1].join(',')})`);
  for (const o of g.edge_through_node) p.push(`topology layout: edge ${o.edge} is drawn through workload node ${o.node} (at ${o.at.join(',')})`);
  return p;
}

function deniedProblems(snap, api, spec) {
  const [src, dst] = spec.split('->');
  const match = (e) => (F.edgeSrcKey(e) === src || e.src_id === src) && (F.edgeDstKey(e) === dst || e.dst_id === dst);
  const p = [];
  const ae = (api.edges || []).find(match);
  if (!ae || !(ae.denied > 0)) p.push(`--expect-denied ${spec}: the API has ${ae ? `denied=${ae.denied}` : 'no such edge'}`);
  const pe = (snap.ov?.edges || []).find(match);
  if (!pe || !(pe.denied > 0)) {
    p.push(`--expect-denied ${spec}: the page's overview has ${pe ? `denied=${pe.denied}` : 'no such edge'}`);
    return p;
  }
  const key = edgeKey(pe);
  const row = snap.edgeRows.find((r) => `${r.src}->${r.dst}` === key);
  if (!row || !row.denied) p.push(`--expect-denied ${spec}: edge row not marked denied`);
  const ge = (snap.graph?.edges || []).find((g) => `${g.src}->${g.dst}` === key);
  if (!ge || !ge.classes.includes('denied')) p.push(`--expect-denied ${spec}: graph edge not drawn as denied`);
  else if (!ge.label.includes(`denied ${F.fmtCount(pe.denied)}`)) p.push(`--expect-denied ${spec}: graph label ${JSON.stringify(ge.label)} lacks "denied ${pe.denied}"`);
  return p;
}

// ---------- main ----------

async function main() {
  // 1. No session: the API refuses, a wrong token is refused.
  const anon = await fetch(`${args.url}/api/v1/overview`);
  if (anon.status !== 401) fail(`GET /api/v1/overview without a session answered ${anon.status}, expected 401`);
  const wrong = await fetch(`${args.url}/login`, { method: 'POST', body: new URLSearchParams({ token: args.token + 'x' }), redirect: 'manual' });
  if (wrong.status !== 401) fail(`POST /login with a wrong token answered ${wrong.status}, expected 401`);
  if ((wrong.headers.get('set-cookie') || '').includes('onemesh_session')) fail('POST /login with a wrong token set a session cookie');

  browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium', args: ['--no-sandbox', '--disable-gpu'] });
  const context = await browser.newContext({ viewport: { width: 1440, height: 900 } });
  const page = await context.newPage();
  page.on('pageerror', (err) => fail(`uncaught error in the page: ${err.message}`));
  page.on('console', (m) => {
    // A 401/404 answer logs "Failed to load resource"; anything else (a CSP violation, a library
    // complaining) is a failure.
    if (m.type() === 'error' && !/Failed to load resource/.test(m.text())) {
      consoleErrors.push(m.text());
      fail(`console error in the page: ${m.text()}`);
    }
  });

  // 2. Login form, then log in through it.
  await page.goto(`${args.url}/`);
  if (!(await waitFor(page, 'the page shows no login form without a session', () => document.querySelector('[data-testid=login-form]'), null, 15000))) return;
  await shot(page, 'login');
  await page.fill('[data-testid=login-token]', args.token);
  await Promise.all([page.waitForNavigation({ timeout: 15000 }).catch(() => null), page.click('[data-testid=login-submit]')]);
  const cookie = (await context.cookies()).find((c) => c.name === 'onemesh_session');
  if (!cookie) fail('logging in through the form set no onemesh_session cookie');
  else if (!cookie.httpOnly) fail('the onemesh_session cookie is not HttpOnly');
  if (!(await waitFor(page, 'the topology did not load after logging in', () => document.querySelector('[data-testid=topology][data-state=ready]'), null, 30000))) return;

  // 3. Window, then topology against the page's JSON and the API's.
  await page.selectOption('[data-testid=window-select]', args.window);
  await waitFor(page, `the page did not switch to the ${args.window} window`, (w) => window.__onemesh.lastOverviewWindow === w, args.window, 15000);

  let problems = [];
  let snap = null;
  const deadline = Date.now() + 40000;
  for (;;) {
    snap = await page.evaluate(topologySnapshot);
    const api = await page.evaluate(async (w) => {
      const r = await fetch('api/v1/overview?window=' + encodeURIComponent(w), { cache: 'no-store' });
      return { status: r.status, body: r.ok ? await r.json() : null };
    }, args.window);
    if (api.status !== 200) {
      problems = [`GET /api/v1/overview with the session cookie answered ${api.status}`];
    } else {
      problems = compareTopology(snap, api.body);
      for (const d of args.expectDenied) problems.push(...deniedProblems(snap, api.body, d));
    }
    if (problems.length === 0 || Date.now() > deadline) break;
    log(`topology not matching yet (${problems.length} problems, first: ${problems[0]}); waiting for a refresh`);
    await sleep(2500);
  }
  problems.forEach(fail);
  result.namespaces = snap?.graph?.namespaces || [];
  result.edges = (snap?.edgeRows || []).map((r) => ({ src: r.src, dst: r.dst, tls: r.tls, denied: r.denied, ...r.fields }));
  result.workloads = (snap?.workloadRows || []).map((r) => ({ workload: r.workload, ...r.fields }));
  log(`topology: ${result.namespaces.length} namespaces, ${result.edges.length} edges`);

  // 3b. Layout: no edge label on a workload node or on another label, no edge through a node.
  const geo = await page.evaluate(topologyGeometry);
  geometryProblems(geo).forEach(fail);
  if (geo) {
    const { label_on_node: a, label_on_label: b, edge_through_node: c, ...counts } = geo;
    result.layout = { ...counts, label_on_node: a.length, label_on_label: b.length, edge_through_node: c.length };
    log(`layout: ${geo.nodes} workload nodes, ${geo.labels} edge labels and ${geo.edges} edge paths (${geo.path_samples} points) checked; ${a.length} labels on nodes, ${b.length} overlapping label pairs, ${c.length} edges through nodes`);
  }
  await page.evaluate(() => window.__onemesh.cy && window.__onemesh.cy.fit(undefined, 24));
  await shot(page, 'topology');

  // 4. A workload page: charts with points, summary equal to the API's.
  const ov = snap?.ov || { workloads: [], edges: [] };
  const busy = (ov.workloads || []).filter((w) => w.requests > 0).sort((a, b) => b.rps - a.rps);
  const wl = args.workload || (args.tapWorkload && busy.some((w) => `${w.namespace}/${w.workload}` === args.tapWorkload) ? args.tapWorkload : busy[0] ? `${busy[0].namespace}/${busy[0].workload}` : null);
  if (!wl) fail('no workload served requests in the window: nothing to chart');
  else {
    await go(page, '#/workload/' + wl);
    if (await waitFor(page, `workload page ${wl} did not load`, (k) => document.querySelector(`[data-testid=workload][data-state=ready][data-workload="${k}"]`), wl, 20000)) {
      await waitFor(
        page,
        `workload ${wl}: the rps, success-rate and latency charts have no points`,
        () => ['rps', 'success_rate', 'latency'].every((c) => Number(document.querySelector(`[data-testid=chart][data-chart=${c}]`)?.dataset.points) > 0 && document.querySelector(`[data-testid=chart][data-chart=${c}] canvas`)),
        null,
        30000,
      );
      const w = await page.evaluate((k) => {
        const o = window.__onemesh.lastOverview;
        const s = window.__onemesh.lastSeries;
        const fields = Object.fromEntries([...document.querySelectorAll('[data-testid=workload-summary] [data-field]')].map((d) => [d.dataset.field, d.textContent.trim()]));
        const points = Object.fromEntries([...document.querySelectorAll('[data-testid=chart]')].map((d) => [d.dataset.chart, Number(d.dataset.points)]));
        return { w: (o.workloads || []).find((x) => `${x.namespace}/${x.workload}` === k), fields, points, seriesLen: s && s.t ? s.t.length : 0 };
      }, wl);
      if (!w.w) fail(`workload ${wl}: missing from the overview the page rendered`);
      else
        for (const f of ['rps', 'success_rate', 'p50_ms', 'p95_ms', 'p99_ms', 'requests']) {
          const want = F.FIELD_FORMATS[f](w.w[f]);
          if (w.fields[f] !== want) fail(`workload page ${wl}: ${f} shows "${w.fields[f]}", the API says ${JSON.stringify(w.w[f])} → "${want}"`);
        }
      result.workload_page = { workload: wl, chart_points: w.points, series_points: w.seriesLen };
      log(`workload ${wl}: chart points ${JSON.stringify(w.points)}`);
    }
    await shot(page, 'workload');
  }

  // 5. Routes and authorization tables: one row per API entry, numbers formatted alike.
  for (const [hash, name, rowSel, store] of [
    ['#/routes', 'routes', '[data-testid=route-row]', 'lastRoutes'],
    ['#/authz', 'authz', '[data-testid=authz-row]', 'lastAuthz'],
  ]) {
    await go(page, hash);
    if (await waitFor(page, `the ${name} page did not load`, (n) => document.querySelector(`[data-testid=${n}][data-state=ready]`), name, 20000)) {
      const t = await page.evaluate(
        ([sel, st]) => ({
          data: window.__onemesh[st],
          rows: [...document.querySelectorAll(sel)].map((tr) => Object.fromEntries([...tr.querySelectorAll('td[data-field]')].map((d) => [d.dataset.field, d.textContent.trim()]))),
        }),
        [rowSel, store],
      );
      if (!Array.isArray(t.data)) fail(`${name}: the page kept no API answer`);
      else {
        if (t.rows.length !== t.data.length) fail(`${name}: ${t.rows.length} rows for ${t.data.length} API entries`);
        const numeric = name === 'routes' ? ['requests', 'rps', 'success_rate', 'p50_ms', 'p99_ms', 'retries'] : ['allowed', 'denied'];
        t.data.forEach((d, i) => {
          for (const f of numeric) {
            const want = F.FIELD_FORMATS[f](d[f]);
            if (t.rows[i] && t.rows[i][f] !== want) fail(`${name} row ${i}: ${f} shows "${t.rows[i][f]}", the API says ${JSON.stringify(d[f])} → "${want}"`);
          }
        });
      }
    }
    await shot(page, name);
  }

  // 6. Tap.
  if (args.tapWorkload) {
    await go(page, '#/tap?workload=' + args.tapWorkload);
    if (await waitFor(page, `tap: workload ${args.tapWorkload} not offered`, (k) => [...document.querySelectorAll('[data-testid=tap-workload] option')].some((o) => o.value === k), args.tapWorkload, 20000)) {
      await page.selectOption('[data-testid=tap-workload]', args.tapWorkload);
      await page.click('[data-testid=tap-start]');
      // The stream counts as open when the answer's headers arrived. A relay that holds them back
      // until the first event would deadlock a caller waiting for TAP_READY before sending
      // traffic, so after 5 s of "connecting" TAP_READY is printed anyway, with a warning.
      const tapState = () => page.evaluate(() => {
        const s = document.querySelector('[data-testid=tap-status]');
        return { state: s.dataset.state, text: s.textContent };
      });
      let st = await tapState();
      for (let i = 0; i < 20 && st.state === 'connecting'; i++) {
        await sleep(250);
        st = await tapState();
      }
      if (st.state === 'connecting') {
        const w = 'tap: the control plane has not sent the answer\'s headers after 5 s; it should send them at once (printing TAP_READY anyway)';
        result.warnings.push(w);
        log('WARN', w);
      } else if (st.state !== 'streaming') fail(`tap did not start: ${st.text}`);
      if (st.state === 'streaming' || st.state === 'connecting') {
        process.stdout.write('TAP_READY\n');
        log('tap streaming; waiting for rows');
        await waitFor(page, `tap: fewer than ${args.tapMinRows} rows within 30 s`, (n) => document.querySelectorAll('[data-testid=tap-row]').length >= n, args.tapMinRows, 30000);
        await sleep(1500); // the rest of the payment's requests
        const after = await tapState();
        if (after.state !== 'streaming') fail(`tap stream not streaming after the wait: ${after.text}`);
        const tap = await page.evaluate(() => ({
          rows: [...document.querySelectorAll('[data-testid=tap-row]')].map((tr) => Object.fromEntries([...tr.querySelectorAll('td[data-field]')].map((d) => [d.dataset.field, d.textContent.trim()]))),
          dropped: Number(document.querySelector('[data-testid=tap-dropped]').dataset.dropped),
          errors: [...document.querySelectorAll('[data-testid=tap-error]')].map((li) => li.textContent),
          text: document.body.innerText,
          // Rendered widths (CSS px) of each row's headers cell and of the page.
          header_widths: [...document.querySelectorAll('[data-testid=tap-row] td[data-field=headers]')].map((d) => d.getBoundingClientRect().width),
          page_width: document.documentElement.clientWidth,
        }));
        result.tap_rows = tap.rows;
        // Readable: the headers column is not squeezed to a sliver (it once was one character wide).
        const narrow = tap.header_widths.filter((w) => w < 200);
        if (narrow.length) fail(`tap: the headers column is ${Math.round(Math.min(...narrow))} px wide (under 200 px) in a ${tap.page_width} px page`);
        result.tap_dropped = tap.dropped;
        result.tap_errors = tap.errors;
        const cards = cardNumbers(tap.text);
        if (cards.length) fail(`tap: the page shows card numbers (${cards.length}, e.g. one ending ${cards[0].slice(-4)})`);
        for (const r of tap.rows) {
          for (const hv of (r.headers || '').split('; ')) {
            const m = /^(authorization|cookie|x-merchant-key): (.*)$/i.exec(hv);
            if (m && m[2] !== '[masked]') fail(`tap: header ${m[1]} is shown unmasked`);
          }
        }
        log(`tap: ${tap.rows.length} rows, dropped ${tap.dropped}, ${tap.errors.length} error lines`);
      }
      await shot(page, 'tap');
      await page.click('[data-testid=tap-stop]').catch(() => null);
    } else await shot(page, 'tap');
  } else {
    await go(page, '#/tap');
    await sleep(500);
    await shot(page, 'tap');
  }
}

main()
  .catch((err) => fail(`test error: ${err.stack || err.message}`))
  .finally(finish);

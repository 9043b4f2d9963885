// Pieces shared by the topology and workload pages: the overview model and the edge table.
import { h, td, table, emptyRow, link, workloadHref } from '../dom.js';
import {
  fmtRps, fmtPct, fmtMs, fmtCount, fmtBytesPerS, fmtTls, fmtClock,
  edgeSrcKey, edgeDstKey, endpointNamespace, saFromId,
} from '../format.js';

/** Records a fresh overview where tests (and the status line) find it. */
export function remember(ov, ctx) {
  window.__onemesh.lastOverview = ov;
  window.__onemesh.lastOverviewWindow = ctx.window;
  window.__onemesh.lastOverviewAt = Date.now();
  ctx.setRetention(ov.retention_s);
  const t = ov.targets || {};
  ctx.setStatus(`updated ${fmtClock(ov.now_unix).slice(0, 8)} · targets ${fmtCount(t.up)}/${fmtCount(t.known)} up · window ${fmtCount(ov.window_s)} s`);
}

/**
 * Nodes (workloads and edge ends that serve nothing), namespaces and edges of an overview.
 * node: {key, ns, name, id, w (the API workload or null)}.
 */
export function model(ov) {
  const nodes = new Map();
  for (const w of ov.workloads || []) {
    const key = `${w.namespace}/${w.workload}`;
    nodes.set(key, { key, ns: w.namespace, name: w.workload, id: w.identity, w });
  }
  const add = (key, ns, workload, id) => {
    if (nodes.has(key)) return;
    nodes.set(key, { key, ns: endpointNamespace(ns, id), name: workload || saFromId(id) || id || 'unknown', id, w: null });
  };
  const edges = (ov.edges || []).map((e) => {
    const src = edgeSrcKey(e);
    const dst = edgeDstKey(e);
    add(src, e.src_namespace, e.src_workload, e.src_id);
    add(dst, e.dst_namespace, e.dst_workload, e.dst_id);
    return { src, dst, e };
  });
  const namespaces = [...new Set([...nodes.values()].map((n) => n.ns))].sort();
  return { nodes, namespaces, edges };
}

export const EDGE_HEADERS = [
  'source', 'destination', 'TLS',
  { label: 'requests', num: true }, { label: 'rps', num: true }, { label: 'success', num: true },
  { label: 'p50 ms', num: true }, { label: 'p95 ms', num: true }, { label: 'p99 ms', num: true },
  { label: 'denied', num: true }, { label: 'would deny', num: true }, { label: 'read', num: true },
  { label: 'written', num: true },
];

const endLink = (key) => (key.includes('/') && !key.startsWith('spiffe:') ? link(workloadHref(key), key) : key);

export function edgeRow({ src, dst, e }) {
  const denied = (e.denied || 0) > 0;
  return h(
    'tr',
    {
      'data-testid': 'edge-row',
      'data-src': src,
      'data-dst': dst,
      'data-tls': e.tls,
      'data-denied': denied ? 'true' : 'false',
      class: denied ? 'denied' : null,
      title: `${e.src_id || '?'} → ${e.dst_id || '?'}`,
    },
    td('src', endLink(src)),
    td('dst', endLink(dst)),
    td('tls', fmtTls(e.tls), e.tls === 'mtls' ? 'ok' : 'warn'),
    td('requests', fmtCount(e.requests), 'num'),
    td('rps', fmtRps(e.rps), 'num'),
    td('success_rate', fmtPct(e.success_rate), 'num' + (e.success_rate != null && e.success_rate < 0.95 ? ' bad' : '')),
    td('p50_ms', fmtMs(e.p50_ms), 'num'),
    td('p95_ms', fmtMs(e.p95_ms), 'num'),
    td('p99_ms', fmtMs(e.p99_ms), 'num'),
    td('denied', fmtCount(e.denied), 'num' + (denied ? ' bad' : '')),
    td('would_deny', fmtCount(e.would_deny || 0), 'num' + ((e.would_deny || 0) > 0 ? ' warn' : '')),
    td('tcp_read_bytes_per_s', fmtBytesPerS(e.tcp_read_bytes_per_s), 'num'),
    td('tcp_write_bytes_per_s', fmtBytesPerS(e.tcp_write_bytes_per_s), 'num'),
  );
}

export function edgeTable(testid) {
  const t = table(testid, EDGE_HEADERS);
  return {
    table: t.table,
    fill(edges, emptyText) {
      if (edges.length === 0) emptyRow(t.tbody, EDGE_HEADERS.length, emptyText);
      else t.tbody.replaceChildren(...edges.map(edgeRow));
    },
  };
}

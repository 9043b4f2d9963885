// Number and name formats shared by every view and by tests/browser.mjs (which imports this file
// to round the API's values exactly as the page does). Change a format here and both follow.
//
//   rps, per-second rates ....... 2 decimals            (1.5 -> "1.50")
//   success rate ................ percent, 1 decimal    (0.9956 -> "99.6%")
//   latencies (ms) .............. 1 decimal            (4.04 -> "4.0")
//   counts (requests, denied) ... integer              (60 -> "60")
//   bytes per second ............ B/s, kB/s, MB/s, GB/s with 1 decimal (1234 -> "1.2 kB/s")
//   missing value (null) ........ "-"

export const NONE = '-';

const isNum = (v) => typeof v === 'number' && Number.isFinite(v);

export const fmtRps = (v) => (isNum(v) ? v.toFixed(2) : NONE);
export const fmtPct = (v) => (isNum(v) ? (v * 100).toFixed(1) + '%' : NONE);
export const fmtMs = (v) => (isNum(v) ? v.toFixed(1) : NONE);
export const fmtCount = (v) => (isNum(v) ? String(Math.round(v)) : NONE);

export function fmtBytesPerS(v) {
  if (!isNum(v)) return NONE;
  const units = ['B/s', 'kB/s', 'MB/s', 'GB/s'];
  let i = 0;
  while (Math.abs(v) >= 1000 && i < units.length - 1) {
    v /= 1000;
    i += 1;
  }
  return v.toFixed(1) + ' ' + units[i];
}

/** `"mtls"` -> `"mTLS"`, `"plaintext"` -> `"plaintext"`, `"mixed"` -> `"mixed"`. */
export const fmtTls = (v) => (v === 'mtls' ? 'mTLS' : v == null ? NONE : String(v));

/** The format of each numeric field of an overview edge or workload, by API field name. */
export const FIELD_FORMATS = {
  requests: fmtCount,
  rps: fmtRps,
  success_rate: fmtPct,
  p50_ms: fmtMs,
  p95_ms: fmtMs,
  p99_ms: fmtMs,
  denied: fmtCount,
  would_deny: fmtCount,
  instances: fmtCount,
  meshed: fmtCount,
  tcp_open_connections: fmtCount,
  tcp_read_bytes_per_s: fmtBytesPerS,
  tcp_write_bytes_per_s: fmtBytesPerS,
  tls: fmtTls,
  allowed: fmtCount,
  retries: fmtCount,
  retries_refused: fmtCount,
};

/** Namespace from a SPIFFE id (`spiffe://td/ns/NS/sa/SA`), or null. */
export function nsFromId(id) {
  const m = /\/ns\/([^/]+)\/sa\/([^/]+)/.exec(id || '');
  return m ? decodeURIComponent(m[1]) : null;
}

/** Service account from a SPIFFE id, or null. */
export function saFromId(id) {
  const m = /\/ns\/([^/]+)\/sa\/([^/]+)/.exec(id || '');
  return m ? decodeURIComponent(m[2]) : null;
}

/**
 * The key the page gives one end of an edge: `namespace/workload` when both are known, else the
 * SPIFFE id, else `"unknown"`. Edge rows carry it in `data-src` / `data-dst`.
 */
export function endpointKey(ns, workload, id) {
  if (ns && workload) return `${ns}/${workload}`;
  return id || 'unknown';
}

/** The namespace (group) one end of an edge is drawn in. */
export function endpointNamespace(ns, id) {
  return ns || nsFromId(id) || '(unknown)';
}

export const edgeSrcKey = (e) => endpointKey(e.src_namespace, e.src_workload, e.src_id);
export const edgeDstKey = (e) => endpointKey(e.dst_namespace, e.dst_workload, e.dst_id);

/** Local wall-clock time `HH:MM:SS.mmm` of a unix time in seconds. */
export function fmtClock(unix) {
  if (!isNum(unix)) return NONE;
  const d = new Date(unix * 1000);
  const p = (n, w = 2) => String(n).padStart(w, '0');
  return `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}.${p(d.getMilliseconds(), 3)}`;
}

/** Edge label in the graph (also what tests read from the graph). */
export function edgeLabel(e) {
  const lines = [];
  if ((e.requests || 0) > 0 || e.rps > 0) {
    lines.push(`${fmtPct(e.success_rate)} · ${fmtRps(e.rps)} rps · p99 ${fmtMs(e.p99_ms)} ms`);
  }
  if ((e.denied || 0) > 0) lines.push(`denied ${fmtCount(e.denied)}`);
  if ((e.would_deny || 0) > 0) lines.push(`would deny ${fmtCount(e.would_deny)} (audit)`);
  if (lines.length === 0) lines.push('idle');
  lines.push(e.tls === 'mtls' ? 'mTLS' : e.tls === 'plaintext' ? 'plaintext' : e.tls === 'mixed' ? 'mixed TLS' : '');
  return lines.filter(Boolean).join('\n');
}

/** Workload node label in the graph. */
export function nodeLabel(name, w) {
  if (!w) return name;
  if (!(w.requests > 0) && !(w.rps > 0)) return `${name}\nno inbound requests`;
  return `${name}\n${fmtPct(w.success_rate)} · ${fmtRps(w.rps)} rps`;
}

/** The classes an edge gets in the graph: its TLS state, `denied` when denied > 0, `audit` when
 * policies in audit mode would deny some of its calls, `idle`. */
export function edgeClasses(e) {
  const c = [e.tls === 'mtls' ? 'mtls' : e.tls === 'plaintext' ? 'plaintext' : 'mixed'];
  if ((e.denied || 0) > 0) c.push('denied');
  else if ((e.would_deny || 0) > 0) c.push('audit');
  if ((e.requests || 0) === 0 && !(e.rps > 0)) c.push('idle');
  return c;
}

/** Windows offered by the selector: label and query value. */
export const WINDOWS = [
  { label: '1 m', value: '60s' },
  { label: '5 m', value: '5m' },
  { label: '15 m', value: '15m' },
  { label: '1 h', value: '1h' },
];

/** Seconds of a window query value (`60s`, `5m`, `1h`), or NaN. */
export function windowSeconds(w) {
  const m = /^(\d+)(s|m|h)$/.exec(w || '');
  return m ? Number(m[1]) * { s: 1, m: 60, h: 3600 }[m[2]] : NaN;
}

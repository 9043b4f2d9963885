// DEVELOPMENT TOOL ONLY — never used by the product or its tests. Serves the built dashboard
// (../crates/control/dashboard) plus canned JSON shaped like the control plane's API (issue 16
// contract) and a fake NDJSON tap stream, so the page and tests/browser.mjs can be tried without a
// mesh. Usage: node dev/fake-api-server.mjs [--port 0] [--token dev-token] [--denied-after 20]
// Prints `LISTENING http://127.0.0.1:PORT` when ready.
import http from 'node:http';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const args = Object.fromEntries(process.argv.slice(2).reduce((acc, a, i, all) => (a.startsWith('--') ? [...acc, [a.slice(2), all[i + 1]]] : acc), []));
const TOKEN = args.token || 'dev-token';
const DENIED_AFTER_S = Number(args['denied-after'] ?? 20);
const EMPTY_FOR_S = Number(args['empty-for'] ?? 0);
const RETENTION_S = Number(args.retention ?? 3600);
const started = Date.now() / 1000;
// The Content-Security-Policy the page is known to work under (suggested for the control plane).
const CSP = process.env.CSP ?? "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";
const assets = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'crates', 'control', 'dashboard');
const TD = 'spiffe://cluster.local';
const id = (ns, sa) => `${TD}/ns/${ns}/sa/${sa}`;

const ORGS = ['order', 'pg', 'appcard', 'card', 'bank'];
const CHAIN = [['order', 'pg', 2.0], ['pg', 'appcard', 1.0], ['appcard', 'card', 1.0], ['card', 'bank', 2.0], ['pg', 'card', 1.0]];

function parseWindow(w) {
  const m = /^(\d+)(s|m|h)$/.exec(w || '60s');
  if (!m) return null;
  return Number(m[1]) * { s: 1, m: 60, h: 3600 }[m[2]];
}

const wobble = (base, k) => Math.round(base * (1 + 0.1 * Math.sin(Date.now() / 7000 + k)) * 1000) / 1000;

function overview(windowS) {
  const now = Date.now() / 1000;
  if (now - started < EMPTY_FOR_S) return { now_unix: now, window_s: windowS, resolution_s: 10, retention_s: RETENTION_S, targets: { known: 0, up: 0 }, workloads: [], edges: [] };
  const edges = CHAIN.map(([s, d, rps], i) => {
    const r = wobble(rps, i);
    return {
      src_namespace: s, src_workload: s, dst_namespace: d, dst_workload: d, src_id: id(s, s), dst_id: id(d, d),
      tls: 'mtls', requests: Math.round(r * windowS), rps: r, success_rate: i === 3 ? 0.9875 : 1.0,
      p50_ms: 1.04 + i, p95_ms: 3.05 + i, p99_ms: 5.25 + i * 1.5, denied: 0, would_deny: 0,
      tcp_read_bytes_per_s: 1234.5 * (i + 1), tcp_write_bytes_per_s: 2345.6 * (i + 1),
    };
  });
  edges.push({
    src_namespace: 'order', src_workload: 'order', dst_namespace: 'legacy', dst_workload: 'ledger', src_id: id('order', 'order'), dst_id: null,
    tls: 'plaintext', requests: 30, rps: 0.5, success_rate: 1.0, p50_ms: 0.8, p95_ms: 1.2, p99_ms: 2.0, denied: 0, would_deny: 0,
    tcp_read_bytes_per_s: 100, tcp_write_bytes_per_s: 50,
  });
  if (now - started > DENIED_AFTER_S) {
    // As on the platform: the forbidden call counts as a failed request, so its label has three
    // lines ("0.0% · 0.02 rps · p99 10.0 ms", "denied 1", "mTLS").
    edges.push({
      src_namespace: 'order', src_workload: 'order', dst_namespace: 'bank', dst_workload: 'bank', src_id: id('order', 'order'), dst_id: id('bank', 'bank'),
      tls: 'mtls', requests: 1, rps: 0.017, success_rate: 0.0, p50_ms: 7.5, p95_ms: 9.8, p99_ms: 10.0, denied: 1, would_deny: 0,
      tcp_read_bytes_per_s: 0, tcp_write_bytes_per_s: 0,
    });
  }
  const workloads = ORGS.concat(['ledger']).map((ns, i) => {
    const inb = edges.filter((e) => e.dst_workload === ns && e.requests > 0);
    const rps = inb.reduce((a, e) => a + e.rps, 0);
    const wns = ns === 'ledger' ? 'legacy' : ns;
    return {
      namespace: wns, workload: ns, identity: id(wns, ns), instances: ns === 'pg' ? 2 : 1, meshed: ns === 'ledger' ? 0 : ns === 'pg' ? 2 : 1,
      requests: Math.round(rps * windowS), rps: Math.round(rps * 1000) / 1000, success_rate: rps > 0 ? (ns === 'bank' ? 0.9875 : 1.0) : null,
      p50_ms: rps > 0 ? 1.2 + i : null, p95_ms: rps > 0 ? 4.0 + i : null, p99_ms: rps > 0 ? 9.55 + i : null,
      denied: ns === 'bank' && now - started > DENIED_AFTER_S ? 1 : 0, would_deny: 0, tcp_open_connections: 3, tcp_read_bytes_per_s: 1234.0, tcp_write_bytes_per_s: 2345.0,
    };
  });
  // Sorted as the control plane sorts them (by namespace and workload, edges by source then
  // destination): the layout depends on the order.
  const cmp = (a, b) => (a < b ? -1 : a > b ? 1 : 0);
  workloads.sort((a, b) => cmp(a.namespace, b.namespace) || cmp(a.workload, b.workload));
  edges.sort((a, b) => cmp(a.src_namespace, b.src_namespace) || cmp(a.src_workload, b.src_workload) || cmp(a.dst_namespace, b.dst_namespace) || cmp(a.dst_workload, b.dst_workload));
  return { now_unix: now, window_s: windowS, resolution_s: 10, retention_s: RETENTION_S, targets: { known: 7, up: 7 }, workloads, edges };
}

function series(windowS) {
  const step = 10;
  const now = Math.floor(Date.now() / 1000 / step) * step;
  const t = [];
  for (let x = now - windowS + step; x <= now; x += step) t.push(x);
  const f = (fn) => t.map((x, i) => (i === 2 ? null : Math.round(fn(x, i) * 1000) / 1000));
  return {
    step_s: step, t,
    rps: f((x) => 2 + Math.sin(x / 60)), success_rate: f((x, i) => (i % 7 === 3 ? 0.95 : 1)),
    p50_ms: f((x) => 1 + 0.2 * Math.sin(x / 30)), p95_ms: f((x) => 3 + Math.sin(x / 30)), p99_ms: f((x) => 6 + 2 * Math.sin(x / 30)),
    denied_per_s: f(() => 0), tcp_read_bytes_per_s: f(() => 1200), tcp_write_bytes_per_s: f(() => 2400),
  };
}

const routes = () => [
  { namespace: 'pg', route: 'default', requests: 120, rps: 2.0, success_rate: 1.0, p50_ms: 1.1, p99_ms: 5.0, retries: 1, retries_refused: 0, by_backend: { 'pg/pg': 120 } },
  { namespace: 'card', route: 'canary', requests: 60, rps: 1.0, success_rate: 0.983, p50_ms: 2.1, p99_ms: 8.0, retries: 0, retries_refused: 0, by_backend: { 'card/card': 54, 'card/card-v2': 6 } },
];
const authz = () => [
  { namespace: 'bank', workload: 'bank', policy: 'bank-inbound', allowed: 120, denied: Date.now() / 1000 - started > DENIED_AFTER_S ? 1 : 0,
    callers: [{ id: id('card', 'card'), allowed: 120, denied: 0 }, { id: id('order', 'order'), allowed: 0, denied: 1 }] },
  { namespace: 'card', workload: 'card', policy: 'card-inbound', allowed: 120, denied: 0, callers: [{ id: id('appcard', 'appcard'), allowed: 60, denied: 0 }, { id: id('pg', 'pg'), allowed: 60, denied: 0 }] },
];

function tapEvent(ws, n) {
  const [ns, wl] = ws.split('/');
  const inbound = n % 2 === 0;
  const peer = inbound ? 'pg' : 'bank';
  return {
    time_unix: Date.now() / 1000, direction: inbound ? 'inbound' : 'outbound',
    proxy: { namespace: ns, workload: wl, id: id(ns, wl) },
    source: inbound ? { id: id(peer, peer), namespace: peer, workload: peer } : { id: id(ns, wl), namespace: ns, workload: wl },
    destination: inbound ? { id: id(ns, wl), namespace: ns, workload: wl } : { id: id(peer, peer), namespace: peer, workload: peer },
    tls: true, method: 'POST', authority: inbound ? `${wl}.${ns}:8080` : 'bank.bank:8080',
    path: '/v1/authorizations?card=****-****-****-1111', route: 'default', status: n % 11 === 5 ? 503 : 200,
    latency_ms: 1 + (n % 5) * 0.37, error: null, headers: { 'content-type': 'application/json', 'x-merchant-key': '[masked]' },
  };
}

function send(res, status, type, body, extra = {}) {
  res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store', ...extra });
  res.end(body);
}
const json = (res, status, obj) => send(res, status, 'application/json', JSON.stringify(obj));
const loginPage = (msg) => `<!doctype html><title>onemesh login</title><p>${msg}</p><form method="post" action="login"><input type="password" name="token"><button>Sign in</button></form>`;

function authed(req) {
  if ((req.headers.authorization || '') === `Bearer ${TOKEN}`) return true;
  return (req.headers.cookie || '').split(/;\s*/).includes(`onemesh_session=${TOKEN}`);
}

function login(res, token) {
  if (token !== TOKEN) return send(res, 401, 'text/html', loginPage('wrong token'));
  send(res, 303, 'text/plain', '', { location: '/', 'set-cookie': `onemesh_session=${TOKEN}; HttpOnly; SameSite=Strict; Path=/` });
}

const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://x');
  const p = url.pathname;
  if (p === '/' || p === '/index.html') return send(res, 200, 'text/html; charset=utf-8', readFileSync(join(assets, 'index.html')), { 'content-security-policy': CSP });
  const asset = /^\/assets\/(app\.js|app\.css|licenses\.txt)$/.exec(p);
  if (asset) {
    const type = { js: 'text/javascript', css: 'text/css', txt: 'text/plain' }[asset[1].split('.').pop()];
    return send(res, 200, type + '; charset=utf-8', readFileSync(join(assets, asset[1])));
  }
  if (p === '/login' && req.method === 'GET') return login(res, url.searchParams.get('token'));
  if (p === '/login' && req.method === 'POST') {
    let body = '';
    req.on('data', (c) => (body += c));
    req.on('end', () => login(res, new URLSearchParams(body).get('token')));
    return;
  }
  if (!p.startsWith('/api/')) return json(res, 404, { error: `no such page ${p}` });
  if (!authed(req)) return json(res, 401, { error: 'log in first: open the URL `onemesh up` printed, or send the token as a bearer token' });
  const windowS = parseWindow(url.searchParams.get('window'));
  if (windowS == null || windowS > RETENTION_S) return json(res, 400, { error: `window must be like 60s, 5m or 1h, at most the retention (${RETENTION_S} s)` });
  if (p === '/api/v1/overview') return json(res, 200, overview(windowS));
  if (p === '/api/v1/routes') return json(res, 200, routes());
  if (p === '/api/v1/authz') return json(res, 200, authz());
  const s = /^\/api\/v1\/workloads\/([^/]+)\/([^/]+)\/series$/.exec(p);
  if (s) return json(res, 200, series(windowS));
  if (p === '/api/v1/tap') {
    const wl = url.searchParams.get('workload') || '';
    if (!/^[^/]+\/[^/]+$/.test(wl)) return json(res, 400, { error: 'workload must be namespace/name' });
    if (wl === 'nope/nope') return json(res, 404, { error: `no workload ${wl}` });
    res.writeHead(200, { 'content-type': 'application/x-ndjson', 'cache-control': 'no-store' });
    res.flushHeaders();
    let n = 0;
    const timer = setInterval(() => {
      n += 1;
      res.write(JSON.stringify(tapEvent(wl, n)) + '\n');
      if (n % 15 === 0) res.write(JSON.stringify({ dropped: 4 }) + '\n');
      if (n === 10) res.write(JSON.stringify({ error: 'instance 10.0.0.9:4190: connection refused (fake)' }) + '\n');
    }, 250);
    req.on('close', () => clearInterval(timer));
    return;
  }
  json(res, 404, { error: `no such API ${p}` });
});

server.listen(Number(args.port || 0), '127.0.0.1', () => {
  console.log(`LISTENING http://127.0.0.1:${server.address().port} token=${TOKEN}`);
});

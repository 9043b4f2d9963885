// Routes (#/routes) and Authorization (#/authz) tables.
import { getJSON } from '../api.js';
import { h, td, table, emptyRow, link, workloadHref } from '../dom.js';
import { fmtRps, fmtPct, fmtMs, fmtCount, fmtClock } from '../format.js';

const ROUTE_HEADERS = [
  'namespace', 'route', { label: 'requests', num: true }, { label: 'rps', num: true }, { label: 'success', num: true },
  { label: 'p50 ms', num: true }, { label: 'p99 ms', num: true }, { label: 'retries', num: true },
  { label: 'retries refused', num: true }, 'by backend',
];

export function routesView(main, ctx) {
  const t = table('routes-table', ROUTE_HEADERS);
  const section = h('section', { 'data-testid': 'routes', 'data-state': 'loading' }, h('h1', {}, 'Routes'),
    h('p', { class: 'muted' }, 'Outbound routes by destination namespace, as the callers\' proxies saw them.'), t.table);
  main.append(section);
  return {
    async refresh() {
      const rows = await getJSON('routes', { window: ctx.window });
      window.__onemesh.lastRoutes = rows;
      ctx.setStatus(`updated ${fmtClock(Date.now() / 1000).slice(0, 8)} · ${rows.length} routes`);
      if (rows.length === 0) emptyRow(t.tbody, ROUTE_HEADERS.length, 'no routed requests in this window');
      else
        t.tbody.replaceChildren(
          ...rows.map((r) =>
            h(
              'tr',
              { 'data-testid': 'route-row', 'data-namespace': r.namespace, 'data-route': r.route },
              td('namespace', r.namespace),
              td('route', r.route),
              td('requests', fmtCount(r.requests), 'num'),
              td('rps', fmtRps(r.rps), 'num'),
              td('success_rate', fmtPct(r.success_rate), 'num' + (r.success_rate != null && r.success_rate < 0.95 ? ' bad' : '')),
              td('p50_ms', fmtMs(r.p50_ms), 'num'),
              td('p99_ms', fmtMs(r.p99_ms), 'num'),
              td('retries', fmtCount(r.retries), 'num'),
              td('retries_refused', fmtCount(r.retries_refused), 'num'),
              td(
                'by_backend',
                Object.entries(r.by_backend || {})
                  .sort()
                  .map(([b, n]) => `${b}: ${fmtCount(n)}`)
                  .join(', ') || '-',
              ),
            ),
          ),
        );
      section.dataset.state = 'ready';
    },
  };
}

const AUTHZ_HEADERS = [
  'workload', 'policy', 'caller', { label: 'allowed', num: true }, { label: 'denied', num: true },
  { label: 'would deny (audit)', num: true },
];

export function authzView(main, ctx) {
  const t = table('authz-table', AUTHZ_HEADERS);
  const section = h('section', { 'data-testid': 'authz', 'data-state': 'loading' }, h('h1', {}, 'Authorization'),
    h('p', { class: 'muted' }, 'Requests and connections each workload\'s inbound policy allowed and denied, per caller identity; "would deny": let through because the policies in force are in audit mode (`onemesh authz explain` tells why).'), t.table);
  main.append(section);
  return {
    async refresh() {
      const rows = await getJSON('authz', { window: ctx.window });
      window.__onemesh.lastAuthz = rows;
      ctx.setStatus(`updated ${fmtClock(Date.now() / 1000).slice(0, 8)} · ${rows.length} policies`);
      if (rows.length === 0) {
        emptyRow(t.tbody, AUTHZ_HEADERS.length, 'no authorization decisions in this window');
        section.dataset.state = 'ready';
        return;
      }
      const trs = [];
      for (const r of rows) {
        const key = `${r.namespace}/${r.workload}`;
        trs.push(
          h(
            'tr',
            { 'data-testid': 'authz-row', 'data-workload': key, 'data-policy': r.policy, class: 'group' + (r.denied > 0 ? ' denied' : '') },
            td('workload', link(workloadHref(key), key)),
            td('policy', r.policy == null ? '-' : r.policy),
            td('caller', 'all callers'),
            td('allowed', fmtCount(r.allowed), 'num'),
            td('denied', fmtCount(r.denied), 'num' + (r.denied > 0 ? ' bad' : '')),
            td('would_deny', fmtCount(r.would_deny || 0), 'num' + ((r.would_deny || 0) > 0 ? ' warn' : '')),
          ),
        );
        for (const c of r.callers || []) {
          trs.push(
            h(
              'tr',
              { 'data-testid': 'authz-caller-row', 'data-workload': key, 'data-caller': c.id, class: c.denied > 0 ? 'denied' : null },
              td('workload', ''),
              td('policy', ''),
              td('caller', c.id || '(no identity)', 'mono'),
              td('allowed', fmtCount(c.allowed), 'num'),
              td('denied', fmtCount(c.denied), 'num' + (c.denied > 0 ? ' bad' : '')),
              td('would_deny', fmtCount(c.would_deny || 0), 'num' + ((c.would_deny || 0) > 0 ? ' warn' : '')),
            ),
          );
        }
      }
      t.tbody.replaceChildren(...trs);
      section.dataset.state = 'ready';
    },
  };
}

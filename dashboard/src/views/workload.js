// Workload page (#/workload/<ns>/<name>): its numbers over the window, time-series charts (uPlot)
// of rps, success rate, latency p50/p95/p99 and TCP bytes, and tables of its callers and callees.
import uPlot from 'uplot';

import { getJSON } from '../api.js';
import { h } from '../dom.js';
import { fmtRps, fmtPct, fmtMs, fmtCount, fmtBytesPerS } from '../format.js';
import { remember, model, edgeTable } from './common.js';

const CHARTS = [
  {
    name: 'rps', title: 'Requests per second (served)', unit: 'req/s',
    series: [
      { key: 'rps', label: 'rps', stroke: '#2b6cb0' },
      { key: 'denied_per_s', label: 'denied/s', stroke: '#c4320a', dash: [6, 4] },
    ],
  },
  { name: 'success_rate', title: 'Success rate', unit: '%', scale: 100, series: [{ key: 'success_rate', label: 'success %', stroke: '#2f855a' }] },
  {
    name: 'latency', title: 'Latency', unit: 'ms',
    series: [
      { key: 'p50_ms', label: 'p50 ms', stroke: '#2b6cb0' },
      { key: 'p95_ms', label: 'p95 ms', stroke: '#b7791f' },
      { key: 'p99_ms', label: 'p99 ms', stroke: '#c4320a' },
    ],
  },
  {
    name: 'tcp', title: 'TCP bytes per second', unit: 'B/s',
    series: [
      { key: 'tcp_read_bytes_per_s', label: 'read B/s', stroke: '#6b46c1' },
      { key: 'tcp_write_bytes_per_s', label: 'written B/s', stroke: '#0f766e' },
    ],
  },
];

const HEIGHT = 190;

function seriesData(s, spec) {
  const t = s.t || [];
  const cols = spec.series.map(({ key }) => (s[key] || []).map((v) => (v == null ? null : spec.scale ? v * spec.scale : v)));
  return [t, ...cols.map((c) => t.map((_, i) => (i < c.length ? c[i] : null)))];
}

function countPoints(data) {
  // Points of the chart's first series that carry a value.
  return data[1] ? data[1].filter((v) => v != null).length : 0;
}

export function workloadView(main, ctx, route) {
  const key = `${route.ns}/${route.workload}`;
  const summary = h('dl', { class: 'summary', 'data-testid': 'workload-summary', 'data-workload': key });
  const chartBoxes = CHARTS.map((spec) => ({
    spec,
    box: h('div', { class: 'chart', 'data-testid': 'chart', 'data-chart': spec.name, 'data-points': '0' }),
    plot: null,
  }));
  const inbound = edgeTable('inbound-edges');
  const outbound = edgeTable('outbound-edges');
  const note = h('p', { class: 'note', hidden: true });
  const section = h(
    'section',
    { 'data-testid': 'workload', 'data-state': 'loading', 'data-workload': key },
    h('h1', {}, h('span', { class: 'muted' }, route.ns + ' / '), route.workload,
      h('a', { class: 'action', href: '#/tap?workload=' + encodeURIComponent(key), 'data-testid': 'workload-tap' }, 'Tap its requests')),
    summary,
    note,
    h('div', { class: 'charts' }, chartBoxes.map((c) => h('figure', {}, h('figcaption', {}, c.spec.title), c.box))),
    h('h2', {}, 'Callers (inbound edges)'),
    inbound.table,
    h('h2', {}, 'Callees (outbound edges)'),
    outbound.table,
  );
  main.append(section);

  const onResize = () => {
    for (const c of chartBoxes) if (c.plot) c.plot.setSize({ width: Math.max(200, c.box.clientWidth), height: HEIGHT });
  };
  window.addEventListener('resize', onResize);

  function renderSummary(w) {
    const items = w
      ? [
          ['rps', 'rps', fmtRps(w.rps)],
          ['success_rate', 'success', fmtPct(w.success_rate)],
          ['p50_ms', 'p50 ms', fmtMs(w.p50_ms)],
          ['p95_ms', 'p95 ms', fmtMs(w.p95_ms)],
          ['p99_ms', 'p99 ms', fmtMs(w.p99_ms)],
          ['requests', 'requests', fmtCount(w.requests)],
          ['denied', 'denied', fmtCount(w.denied)],
          ['would_deny', 'would deny (audit)', fmtCount(w.would_deny || 0)],
          ['meshed', 'meshed', `${fmtCount(w.meshed)}/${fmtCount(w.instances)}`],
          ['tcp_open_connections', 'TCP open', fmtCount(w.tcp_open_connections)],
          ['tcp_read_bytes_per_s', 'read', fmtBytesPerS(w.tcp_read_bytes_per_s)],
          ['tcp_write_bytes_per_s', 'written', fmtBytesPerS(w.tcp_write_bytes_per_s)],
        ]
      : [];
    summary.replaceChildren(...items.map(([f, label, v]) => h('div', {}, h('dt', {}, label), h('dd', { 'data-field': f }, v))));
    summary.title = w && w.identity ? w.identity : '';
  }

  function renderCharts(s) {
    for (const c of chartBoxes) {
      const data = seriesData(s, c.spec);
      c.box.dataset.points = String(countPoints(data));
      if (!c.plot) {
        c.plot = new uPlot(
          {
            width: Math.max(200, c.box.clientWidth || 560),
            height: HEIGHT,
            scales: { x: { time: true }, y: c.spec.name === 'success_rate' ? { range: (u, min) => [Math.min(90, Math.floor(min ?? 90)), 100] } : { range: (u, min, max) => [0, Math.max(max ?? 1, 1e-9) * 1.1] } },
            series: [{}, ...c.spec.series.map((x) => ({ label: x.label, stroke: x.stroke, width: 2, dash: x.dash, spanGaps: false, points: { show: true, size: 4 } }))],
            axes: [{}, { label: c.spec.unit, size: 60 }],
            legend: { live: true },
          },
          data,
          c.box,
        );
      } else {
        c.plot.setData(data);
      }
    }
  }

  return {
    async refresh() {
      const [ov, s] = await Promise.all([
        getJSON('overview', { window: ctx.window }),
        getJSON(`workloads/${encodeURIComponent(route.ns)}/${encodeURIComponent(route.workload)}/series`, { window: ctx.window }),
      ]);
      remember(ov, ctx);
      window.__onemesh.lastSeries = s;
      const m = model(ov);
      const w = (ov.workloads || []).find((x) => x.namespace === route.ns && x.workload === route.workload) || null;
      renderSummary(w);
      note.hidden = !!w;
      note.textContent = w ? '' : 'This workload served no requests in the window (it may still call others).';
      inbound.fill(m.edges.filter((x) => x.dst === key), 'no callers in this window');
      outbound.fill(m.edges.filter((x) => x.src === key), 'no callees in this window');
      renderCharts(s);
      section.dataset.state = 'ready';
    },
    unmount() {
      window.removeEventListener('resize', onResize);
      for (const c of chartBoxes) if (c.plot) c.plot.destroy();
    },
  };
}

// Tap page (#/tap[?workload=ns/name]): streams `api/v1/tap` (NDJSON) with fetch() and a reader,
// newest request first, at most MAX_ROWS rows; `{"dropped": n}` lines add to a counter and
// `{"error": "..."}` lines are listed. Stops when the page changes or Stop is pressed.
import { getJSON, streamNDJSON, AuthError } from '../api.js';
import { h, td, table } from '../dom.js';
import { fmtClock, fmtMs, fmtCount } from '../format.js';

export const MAX_ROWS = 500;

const HEADERS = ['time', 'dir', 'source', 'destination', 'method', 'authority', 'path', { label: 'status', num: true }, { label: 'ms', num: true }, 'TLS', 'headers'];

function tapRow(ev) {
  const src = ev.source || {};
  const dst = ev.destination || {};
  const bad = ev.error || (ev.status != null && ev.status >= 500);
  const headers = Object.entries(ev.headers || {}).map(([k, v]) => `${k}: ${v}`).join('; ');
  return h(
    'tr',
    { 'data-testid': 'tap-row', 'data-direction': ev.direction || '', class: bad ? 'denied' : null, title: ev.proxy ? `seen by ${ev.proxy.id || ''}${ev.route ? ' · route ' + ev.route : ''}` : '' },
    td('time', fmtClock(ev.time_unix), 'mono'),
    td('direction', ev.direction === 'inbound' ? 'in' : ev.direction === 'outbound' ? 'out' : ev.direction || '-'),
    td('source', src.id || '-', 'mono id'),
    td('destination', dst.id || '-', 'mono id'),
    td('method', ev.method || '-'),
    td('authority', ev.authority || '-', 'mono'),
    td('path', ev.path || '-', 'mono path'),
    td('status', ev.error ? ev.error : fmtCount(ev.status), 'num' + (bad ? ' bad' : '')),
    td('latency_ms', fmtMs(ev.latency_ms), 'num'),
    td('tls', ev.tls === true ? 'mTLS' : ev.tls === false ? 'plain' : '-', ev.tls ? 'ok' : 'warn'),
    td('headers', headers || '-', 'mono headers'),
  );
}

export function tapView(main, ctx, route) {
  const wanted = route.params.get('workload') || '';
  const select = h('select', { 'data-testid': 'tap-workload', name: 'workload', required: true }, h('option', { value: '' }, 'loading workloads…'));
  const direction = h('select', { 'data-testid': 'tap-direction', name: 'direction' },
    h('option', { value: '' }, 'both'), h('option', { value: 'inbound' }, 'inbound'), h('option', { value: 'outbound' }, 'outbound'));
  const to = h('input', { 'data-testid': 'tap-to', name: 'to', placeholder: 'ns/workload (outbound only)', size: 24 });
  const path = h('input', { 'data-testid': 'tap-path', name: 'path', placeholder: '/prefix', size: 14 });
  const method = h('input', { 'data-testid': 'tap-method', name: 'method', placeholder: 'GET', size: 6 });
  const start = h('button', { type: 'submit', 'data-testid': 'tap-start' }, 'Start');
  const stop = h('button', { type: 'button', 'data-testid': 'tap-stop', disabled: true }, 'Stop');
  const statusEl = h('span', { class: 'tapstatus', 'data-testid': 'tap-status', 'data-state': 'idle' }, 'not started');
  const droppedEl = h('span', { 'data-testid': 'tap-dropped', 'data-dropped': '0' }, '0');
  const countEl = h('span', { 'data-testid': 'tap-count' }, '0');
  const errors = h('ul', { class: 'taperrors', 'data-testid': 'tap-errors' });
  const t = table('tap-table', HEADERS);
  const form = h(
    'form',
    { class: 'tapform', 'data-testid': 'tap-form', onsubmit: (ev) => { ev.preventDefault(); begin(); } },
    h('label', {}, 'workload ', select),
    h('label', {}, 'direction ', direction),
    h('label', {}, 'to ', to),
    h('label', {}, 'path ', path),
    h('label', {}, 'method ', method),
    start,
    stop,
  );
  main.append(
    h('section', { 'data-testid': 'tap' }, h('h1', {}, 'Tap'),
      h('p', { class: 'muted' }, 'Live request metadata from the workload\'s proxies (no bodies; card numbers and secret headers are masked by the proxy). Newest first, at most ' + MAX_ROWS + ' rows.'),
      form,
      h('p', { class: 'tapinfo' }, statusEl, ' · rows ', countEl, ' · dropped by the rate limit ', droppedEl),
      errors,
      h('div', { class: 'tablewrap' }, t.table)),
  );

  let ctrl = null;
  let pending = [];
  let flushTimer = null;
  let rows = 0;
  let dropped = 0;

  function setState(state, text) {
    statusEl.dataset.state = state;
    statusEl.textContent = text;
    start.disabled = state === 'connecting' || state === 'streaming';
    stop.disabled = !(state === 'connecting' || state === 'streaming');
  }

  function flush() {
    flushTimer = null;
    if (pending.length === 0) return;
    const fresh = pending.reverse().map(tapRow);
    pending = [];
    t.tbody.prepend(...fresh);
    while (t.tbody.children.length > MAX_ROWS) t.tbody.lastElementChild.remove();
    rows = t.tbody.children.length;
    countEl.textContent = String(rows);
  }

  function onLine(obj) {
    if (obj && typeof obj.dropped === 'number' && obj.time_unix === undefined) {
      dropped += obj.dropped;
      droppedEl.textContent = String(dropped);
      droppedEl.dataset.dropped = String(dropped);
      return;
    }
    if (obj && obj.error && obj.time_unix === undefined) {
      errors.prepend(h('li', { 'data-testid': 'tap-error', class: 'bad' }, `${fmtClock(Date.now() / 1000)} ${obj.error}`));
      while (errors.children.length > 20) errors.lastElementChild.remove();
      return;
    }
    pending.push(obj);
    if (pending.length > MAX_ROWS) pending = pending.slice(-MAX_ROWS);
    if (!flushTimer) flushTimer = setTimeout(flush, 100);
  }

  async function begin() {
    if (!select.value) return;
    end();
    t.tbody.replaceChildren();
    errors.replaceChildren();
    rows = 0;
    dropped = 0;
    countEl.textContent = '0';
    droppedEl.textContent = '0';
    droppedEl.dataset.dropped = '0';
    const me = new AbortController();
    ctrl = me;
    setState('connecting', 'connecting…');
    const params = { workload: select.value, direction: direction.value, to: to.value.trim(), path: path.value.trim(), method: method.value.trim().toUpperCase() };
    try {
      await streamNDJSON('tap', params, {
        signal: me.signal,
        onOpen: () => setState('streaming', `streaming ${select.value}`),
        onLine,
      });
      if (ctrl === me) setState('stopped', me.signal.aborted ? 'stopped' : 'the control plane ended the stream');
    } catch (err) {
      if (ctrl !== me) return;
      if (err instanceof AuthError) return ctx.authFailed();
      setState('error', err.message);
    } finally {
      if (ctrl === me) ctrl = null;
      flush();
    }
  }

  function end() {
    if (ctrl) {
      const c = ctrl;
      ctrl = null;
      c.abort();
      setState('stopped', 'stopped');
    }
  }
  stop.addEventListener('click', end);

  let loaded = false;
  return {
    async refresh() {
      if (loaded) return;
      const ov = await getJSON('overview', { window: ctx.window });
      const keys = [...new Set((ov.workloads || []).map((w) => `${w.namespace}/${w.workload}`).concat(
        (ov.edges || []).filter((e) => e.src_namespace && e.src_workload).map((e) => `${e.src_namespace}/${e.src_workload}`),
      ))].sort();
      if (wanted && !keys.includes(wanted)) keys.unshift(wanted);
      select.replaceChildren(h('option', { value: '' }, 'choose a workload'), ...keys.map((k) => h('option', { value: k, selected: k === wanted }, k)));
      loaded = true;
    },
    unmount() {
      end();
      if (flushTimer) clearTimeout(flushTimer);
    },
  };
}

// onemesh dashboard: a single page app with hash routes
//   #/                      topology (workloads grouped by namespace, edges)
//   #/workload/<ns>/<name>  one workload: time series and its callers/callees
//   #/routes                routes table
//   #/authz                 authorization table
//   #/tap[?workload=ns/name] live tap
// It polls the control plane's JSON API every 5 s (tap streams instead). When the API answers
// 401 it shows a login form (POST login, field `token`). Tests read `window.__onemesh`.

import 'uplot/dist/uPlot.min.css';
import './app.css';

import { AuthError, ApiError } from './api.js';
import { h } from './dom.js';
import { WINDOWS, windowSeconds } from './format.js';
import { renderLogin } from './views/login.js';
import { topologyView } from './views/topology.js';
import { workloadView } from './views/workload.js';
import { routesView, authzView } from './views/tables.js';
import { tapView } from './views/tap.js';

const REFRESH_MS = 5000;

const state = {
  window: localStorage.getItem('onemesh.window') || '60s',
  view: null,
  route: null,
  busy: false,
  again: false,
};
if (!WINDOWS.some((w) => w.value === state.window)) state.window = '60s';

// What tests read. lastOverview is the raw JSON the topology/workload page last rendered,
// lastOverviewAt the time (ms since epoch) it arrived.
window.__onemesh = {
  lastOverview: null,
  lastOverviewAt: 0,
  lastSeries: null,
  lastRoutes: null,
  lastAuthz: null,
  cy: null,
  layouts: 0, // how many times the topology graph was laid out (dagre)
  refreshes: 0,
  window: () => state.window,
};

const nav = h(
  'nav',
  {},
  [
    ['#/', 'Topology', 'topology'],
    ['#/routes', 'Routes', 'routes'],
    ['#/authz', 'Authorization', 'authz'],
    ['#/tap', 'Tap', 'tap'],
  ].map(([href, text, id]) => h('a', { href, 'data-nav': id, 'data-testid': 'nav-' + id }, text)),
);
const windowSelect = h(
  'select',
  {
    'data-testid': 'window-select',
    title: 'time window of every number',
    onchange: (ev) => {
      state.window = ev.target.value;
      localStorage.setItem('onemesh.window', state.window);
      refresh();
    },
  },
  WINDOWS.map((w) => h('option', { value: w.value, selected: w.value === state.window }, w.label)),
);
const status = h('span', { class: 'status', 'data-testid': 'status' });
const errorBar = h('div', { class: 'errorbar', 'data-testid': 'error', hidden: true });
const main = h('main', { id: 'view' });

document.body.append(
  h('header', {}, h('a', { class: 'brand', href: '#/' }, 'onemesh'), nav, h('label', { class: 'win' }, 'window ', windowSelect), status),
  errorBar,
  main,
);

const ctx = {
  get window() {
    return state.window;
  },
  setStatus(text) {
    status.textContent = text;
  },
  setError(text) {
    errorBar.hidden = !text;
    errorBar.textContent = text || '';
  },
  authFailed() {
    showLogin();
  },
  // Windows longer than the control plane's retention are refused (400): disable them, and
  // fall back to the longest allowed one.
  setRetention(retentionS) {
    if (!(retentionS > 0)) return;
    let longest = null;
    for (const o of windowSelect.options) {
      o.disabled = windowSeconds(o.value) > retentionS;
      if (!o.disabled) longest = o.value;
    }
    if (windowSeconds(state.window) > retentionS && longest) {
      state.window = longest;
      windowSelect.value = longest;
      refresh();
    }
  },
  main,
};

function parseRoute() {
  const raw = location.hash.replace(/^#/, '') || '/';
  const [path, qs] = raw.split('?');
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  const params = new URLSearchParams(qs || '');
  if (parts[0] === 'workload' && parts.length >= 3) return { name: 'workload', ns: parts[1], workload: parts.slice(2).join('/'), params };
  if (parts[0] === 'routes') return { name: 'routes', params };
  if (parts[0] === 'authz') return { name: 'authz', params };
  if (parts[0] === 'tap') return { name: 'tap', params };
  return { name: 'topology', params };
}

function showLogin(message) {
  // The login answer redirects to the page's root: come back to this view afterwards.
  if (location.hash && location.hash !== '#/') sessionStorage.setItem('onemesh.after-login', location.hash);
  if (state.view && state.view.unmount) state.view.unmount();
  state.view = null;
  document.body.dataset.auth = 'required';
  ctx.setError('');
  renderLogin(main, message);
}

function mount() {
  if (state.view && state.view.unmount) state.view.unmount();
  const route = parseRoute();
  state.route = route;
  for (const a of nav.querySelectorAll('a')) a.classList.toggle('active', a.dataset.nav === route.name);
  main.replaceChildren();
  main.dataset.view = route.name;
  ctx.setStatus('');
  document.title = 'onemesh · ' + ({ topology: 'topology', workload: `${route.ns}/${route.workload}`, routes: 'routes', authz: 'authorization', tap: 'tap' }[route.name]);
  const make = { topology: topologyView, workload: workloadView, routes: routesView, authz: authzView, tap: tapView }[route.name];
  state.view = make(main, ctx, route);
  refresh();
}

async function refresh() {
  const view = state.view;
  if (!view || !view.refresh) return;
  if (state.busy) {
    state.again = true; // e.g. the window changed while a refresh was under way
    return;
  }
  state.busy = true;
  state.again = false;
  try {
    await view.refresh();
    if (view === state.view) {
      document.body.dataset.auth = 'ok';
      const back = sessionStorage.getItem('onemesh.after-login');
      if (back) {
        sessionStorage.removeItem('onemesh.after-login');
        if (back !== location.hash) location.hash = back;
      }
      ctx.setError('');
      window.__onemesh.refreshes += 1;
    }
  } catch (err) {
    if (err instanceof AuthError) showLogin();
    else if (err instanceof ApiError && err.status === 400 && state.window !== WINDOWS[0].value) {
      // Most likely a remembered window longer than this control plane's retention: fall back
      // to the shortest; the next overview tells the retention and disables what is too long.
      ctx.setError(`${err.message} (switching to the ${WINDOWS[0].label} window)`);
      state.window = WINDOWS[0].value;
      windowSelect.value = state.window;
      state.again = true;
    } else if (view === state.view) ctx.setError(err.message);
  } finally {
    state.busy = false;
    if (state.again) setTimeout(refresh, 0);
  }
}

window.addEventListener('hashchange', () => {
  if (document.body.dataset.auth === 'required') return;
  mount();
});
setInterval(() => {
  if (document.body.dataset.auth !== 'required' && !document.hidden) refresh();
}, REFRESH_MS);
mount();

// Tiny DOM helpers: h('tag', {attrs}, children...) and table builders.

export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k === 'text') el.textContent = v;
    else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'dataset') for (const [dk, dv] of Object.entries(v)) el.dataset[dk] = dv;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c == null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/** A `<td data-field=...>` with text (numbers right-aligned). */
export function td(field, text, cls) {
  return h('td', { 'data-field': field, class: cls }, text);
}

/** A table with a header row; returns {table, tbody}. */
export function table(testid, headers) {
  const tbody = h('tbody');
  const tableEl = h(
    'table',
    { 'data-testid': testid },
    h('thead', {}, h('tr', {}, headers.map((x) => h('th', { class: x.num ? 'num' : null }, x.label || x)))),
    tbody,
  );
  return { table: tableEl, tbody };
}

export function emptyRow(tbody, cols, text) {
  tbody.replaceChildren(h('tr', { class: 'empty' }, h('td', { colspan: cols }, text)));
}

export const link = (href, text) => h('a', { href }, text);
export const workloadHref = (key) => '#/workload/' + key.split('/').map(encodeURIComponent).join('/');

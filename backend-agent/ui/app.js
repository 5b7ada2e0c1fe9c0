// agentmesh fleet page: the core (token, API calls, the event stream, routing, DOM helpers).
// Pages are in pages.js. Everything is built with createElement/textContent: data from
// agents (hostnames, labels, output) is never parsed as HTML.
'use strict';

const TOKEN_KEY = 'agentmesh.token';

/** Builds an element: el('a', {href: '#/'}, 'text', child, ...). Strings become text nodes. */
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k.startsWith('on') && typeof v === 'function') e.addEventListener(k.slice(2), v);
    else if (v === true) e.setAttribute(k, '');
    else e.setAttribute(k, String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

/** The bearer token, or null. */
function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

/** `/ui/#token=...`: keep the token in sessionStorage and take it out of the address bar. */
function takeTokenFromFragment() {
  const m = /^#token=([^&]*)/.exec(location.hash);
  if (!m) return;
  let value = '';
  try { value = decodeURIComponent(m[1]); } catch (_) { value = ''; }
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  history.replaceState(null, '', location.pathname + location.search);
}

function signOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  stopStream();
  render();
}

/** An API error with the server's message. */
class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** Calls the API with the bearer token; resolves to the JSON body or throws ApiError. */
async function api(method, path, body) {
  const headers = { Authorization: 'Bearer ' + (token() || '') };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const r = await fetch(path, {
    method, headers, cache: 'no-store', credentials: 'omit',
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = null;
  try { data = await r.json(); } catch (_) { data = null; }
  if (!r.ok) {
    const err = (data && data.error) || {};
    if (r.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      setTimeout(render, 0);
    }
    throw new ApiError(r.status, err.code || 'http_' + r.status, err.message || r.statusText);
  }
  return data;
}

// ---- the event stream: fetch() + ReadableStream, so the token goes in a header ----

const stream = { ctrl: null, lastId: null, listeners: new Set() };

/** Subscribes `fn(type, data)` to events until the page changes. */
function onEvent(fn) {
  stream.listeners.add(fn);
}

function setLive(on, text) {
  const live = document.getElementById('live');
  live.textContent = text || (on ? 'live' : 'reconnecting');
  live.className = 'live ' + (on ? 'on' : 'off');
}

function stopStream() {
  if (stream.ctrl) stream.ctrl.abort();
  stream.ctrl = null;
  setLive(false, 'offline');
}

async function startStream() {
  if (stream.ctrl || !token()) return;
  const ctrl = new AbortController();
  stream.ctrl = ctrl;
  while (!ctrl.signal.aborted) {
    try {
      const headers = { Authorization: 'Bearer ' + token(), Accept: 'text/event-stream' };
      if (stream.lastId) headers['Last-Event-ID'] = stream.lastId;
      const r = await fetch('/api/v1/events', { headers, signal: ctrl.signal, cache: 'no-store' });
      if (r.status === 401) { signOut(); return; }
      if (!r.ok || !r.body) throw new Error('events: HTTP ' + r.status);
      setLive(true);
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value.replace(/\r\n?/g, '\n');
        let i;
        while ((i = buf.indexOf('\n\n')) >= 0) {
          dispatchBlock(buf.slice(0, i));
          buf = buf.slice(i + 2);
        }
      }
    } catch (_) {
      if (ctrl.signal.aborted) return;
    }
    setLive(false);
    await new Promise((res) => setTimeout(res, 2000));
  }
}

function dispatchBlock(block) {
  let id = null;
  let type = 'message';
  const data = [];
  for (const line of block.split('\n')) {
    if (line === '' || line.startsWith(':')) continue;
    const c = line.indexOf(':');
    const field = c < 0 ? line : line.slice(0, c);
    let value = c < 0 ? '' : line.slice(c + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'id') id = value;
    else if (field === 'event') type = value;
    else if (field === 'data') data.push(value);
  }
  if (id !== null) stream.lastId = id;
  if (data.length === 0) return;
  let payload;
  try { payload = JSON.parse(data.join('\n')); } catch (_) { return; }
  for (const fn of stream.listeners) {
    try { fn(type, payload); } catch (e) { console.error(e); }
  }
}

// ---- small shared pieces ----

/** Runs `fn` at most once per `ms`, trailing. */
function debounce(fn, ms) {
  let t = null;
  return () => {
    if (t) return;
    t = setTimeout(() => { t = null; fn(); }, ms);
  };
}

function when(ts) {
  if (!ts) return '—';
  const d = new Date(ts);
  return isNaN(d) ? String(ts) : d.toLocaleString();
}

function badge(status) {
  return el('span', { class: 'badge s-' + String(status).replace(/[^a-z_]/g, '') }, status);
}

function labelChips(labels) {
  return el('span', { class: 'chips' },
    Object.entries(labels || {}).map(([k, v]) => el('span', { class: 'chip' }, k + '=' + v)));
}

function errorBox(e) {
  return el('p', { class: 'error', role: 'alert' }, e instanceof ApiError
    ? e.message + ' (' + e.code + ')' : String(e && e.message ? e.message : e));
}

function table(head, rows, caption) {
  return el('div', { class: 'scroll' },
    el('table', {},
      caption ? el('caption', {}, caption) : null,
      el('thead', {}, el('tr', {}, head.map((h) => el('th', { scope: 'col' }, h)))),
      el('tbody', {}, rows)));
}

/** Parses `k=v, k2=v2` into an object; throws on a malformed item. */
function parseLabels(text) {
  const out = {};
  for (const item of text.split(',').map((s) => s.trim()).filter(Boolean)) {
    const i = item.indexOf('=');
    if (i <= 0) throw new Error('label filter must be key=value, not ' + JSON.stringify(item));
    out[item.slice(0, i).trim()] = item.slice(i + 1).trim();
  }
  return out;
}

// ---- routing ----

function loginPage(main) {
  const input = el('input', { id: 'token', type: 'password', autocomplete: 'off', required: true });
  const form = el('form', { class: 'card narrow' },
    el('h1', {}, 'Sign in'),
    el('p', {}, 'Paste an API token. It stays in this tab (sessionStorage) and is sent only as a bearer header.'),
    el('label', { for: 'token' }, 'API token'), input,
    el('button', { type: 'submit' }, 'Sign in'));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    if (!input.value.trim()) return;
    sessionStorage.setItem(TOKEN_KEY, input.value.trim());
    render();
  });
  main.append(form);
  input.focus();
}

function render() {
  const main = document.getElementById('main');
  main.replaceChildren();
  stream.listeners.clear();
  document.getElementById('signout').hidden = !token();
  if (!token()) {
    stopStream();
    loginPage(main);
    return;
  }
  startStream();
  const hash = location.hash || '#/';
  for (const [re, page] of window.AGENTMESH_PAGES || []) {
    const m = re.exec(hash);
    if (m) {
      document.querySelectorAll('nav a').forEach((a) => {
        a.toggleAttribute('aria-current', a.getAttribute('href') === hash);
      });
      page(main, ...m.slice(1).map(decodeURIComponent));
      return;
    }
  }
  main.append(el('p', {}, 'No such page. '), el('a', { href: '#/' }, 'Back to the fleet'));
}

window.addEventListener('hashchange', () => {
  takeTokenFromFragment();
  render();
});
document.addEventListener('DOMContentLoaded', () => {
  takeTokenFromFragment();
  document.getElementById('signout').addEventListener('click', signOut);
  render();
});

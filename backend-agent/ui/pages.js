// agentmesh fleet page: the pages (fleet, agent + run form, history, command, fan-out, audit).
// Helpers (el, api, onEvent, ...) come from app.js.
'use strict';

const FINAL = new Set(['ok', 'failed', 'rejected', 'timeout', 'cancelled', 'expired']);

// ---- fleet ----

function fleetPage(main) {
  const labelIn = el('input', { id: 'f-label', type: 'search', placeholder: 'role=web, region=eu', autocomplete: 'off' });
  const stateIn = el('select', { id: 'f-state' },
    el('option', { value: '' }, 'any'),
    el('option', { value: 'connected' }, 'connected'),
    el('option', { value: 'offline' }, 'offline'));
  const count = el('p', { id: 'fleet-count', role: 'status' });
  const body = el('div', { id: 'fleet' });
  main.append(
    el('h1', {}, 'Fleet'),
    el('form', { class: 'filters', role: 'search', onsubmit: (e) => e.preventDefault() },
      el('div', {}, el('label', { for: 'f-label' }, 'Labels'), labelIn),
      el('div', {}, el('label', { for: 'f-state' }, 'State'), stateIn)),
    count, body);
  let agents = [];
  const draw = () => {
    let want = {};
    try { want = parseLabels(labelIn.value); } catch (e) { body.replaceChildren(errorBox(e)); return; }
    const shown = agents.filter((a) =>
      (stateIn.value === '' || (stateIn.value === 'connected') === a.connected) &&
      Object.entries(want).every(([k, v]) => (a.labels || {})[k] === v));
    count.textContent = shown.length + ' of ' + agents.length + ' agents';
    body.replaceChildren(table(
      ['Agent', 'State', 'Site', 'Hostname', 'Labels', 'Version', 'Last seen'],
      shown.map((a) => el('tr', { 'data-agent-id': a.id },
        el('td', {}, el('a', { href: '#/agent/' + encodeURIComponent(a.id) }, a.id)),
        el('td', {}, badge(a.revoked ? 'revoked' : a.connected ? 'connected' : 'offline')),
        el('td', {}, a.site || '—'),
        el('td', { class: 'hostname' }, a.hostname || '—'),
        el('td', {}, labelChips(a.labels)),
        el('td', {}, a.version || '—'),
        el('td', {}, a.connected ? 'now' : when(a.last_seen)))),
      'Agents'));
  };
  const load = async () => {
    try {
      agents = (await api('GET', '/api/v1/agents')).agents || [];
      draw();
    } catch (e) { body.replaceChildren(errorBox(e)); }
  };
  labelIn.addEventListener('input', draw);
  stateIn.addEventListener('change', draw);
  const reload = debounce(load, 300);
  onEvent((type) => { if (type.startsWith('agent_') || type === 'reset') reload(); });
  load();
}

// ---- one agent: details and the run form ----

function paramField(name, spec) {
  const id = 'p-' + name;
  let input;
  if (spec.type === 'boolean') {
    input = el('input', { id, name, type: 'checkbox' });
  } else if (spec.type === 'enum') {
    input = el('select', { id, name, required: spec.required },
      spec.required ? null : el('option', { value: '' }, '(not set)'),
      (spec.values || []).map((v) => el('option', { value: v }, v)));
  } else if (spec.type === 'integer') {
    input = el('input', { id, name, type: 'number', step: 1, min: spec.min, max: spec.max, required: spec.required });
  } else {
    input = el('input', { id, name, type: spec.secret ? 'password' : 'text', autocomplete: 'off',
      maxlength: spec.max_len, required: spec.required, spellcheck: 'false' });
  }
  const hint = [spec.type, spec.pattern ? 'pattern ' + spec.pattern : null,
    spec.max_len ? 'max ' + spec.max_len + ' bytes' : null,
    spec.min !== undefined ? 'min ' + spec.min : null, spec.max !== undefined ? 'max ' + spec.max : null,
    spec.description].filter(Boolean).join(' · ');
  input.setAttribute('aria-describedby', id + '-hint');
  return el('div', { class: spec.type === 'boolean' ? 'field check' : 'field' },
    el('label', { for: id }, name + (spec.required ? ' (required)' : '')), input,
    el('small', { id: id + '-hint' }, hint));
}

/** Reads the generated fields into typed args. */
function readArgs(form, params) {
  const args = {};
  for (const [name, spec] of Object.entries(params || {})) {
    const input = form.elements.namedItem(name);
    if (!input) continue;
    if (spec.type === 'boolean') { args[name] = input.checked; continue; }
    if (input.value === '') continue;
    args[name] = spec.type === 'integer' ? Number.parseInt(input.value, 10) : input.value;
  }
  return args;
}

function outputBlock(rec) {
  return el('div', { class: 'result', 'data-status': rec.status, id: 'run-result' },
    el('p', {}, badge(rec.status), ' exit code ', rec.exit_code === null || rec.exit_code === undefined ? '—' : rec.exit_code,
      rec.duration_ms !== null && rec.duration_ms !== undefined ? ' · ' + rec.duration_ms + ' ms' : '',
      rec.command_id ? [' · ', el('a', { href: '#/command/' + encodeURIComponent(rec.command_id) }, 'details')] : null),
    rec.error ? el('p', { class: 'error' }, rec.error.code + ': ' + rec.error.message) : null,
    el('h3', {}, 'stdout'), el('pre', { class: 'stdout' }, rec.stdout || ''),
    rec.stderr ? [el('h3', {}, 'stderr'), el('pre', { class: 'stderr' }, rec.stderr)] : null,
    rec.truncated ? el('p', {}, 'Output truncated by the agent.') : null);
}

/** A verb picker and the form generated from the chosen verb's schema. */
function runForm(verbs, submit) {
  const select = el('select', { id: 'verb', name: 'verb' }, verbs.map((v) => el('option', { value: v.name }, v.name)));
  const fields = el('div', { class: 'fields' });
  const desc = el('p', { class: 'muted' });
  const timeout = el('input', { id: 'timeout', type: 'number', min: 1, step: 1, placeholder: 'verb default' });
  const button = el('button', { type: 'submit', id: 'run' }, 'Run');
  const out = el('div', { id: 'run-out', 'aria-live': 'polite' });
  const spec = () => verbs.find((v) => v.name === select.value);
  const build = () => {
    const v = spec();
    desc.textContent = v ? v.description || '' : '';
    fields.replaceChildren(...Object.entries((v && v.params) || {}).map(([n, s]) => paramField(n, s)));
  };
  const form = el('form', { class: 'card', id: 'run-form' },
    el('h2', {}, 'Run a verb'),
    el('div', { class: 'field' }, el('label', { for: 'verb' }, 'Verb'), select), desc, fields,
    el('div', { class: 'field' }, el('label', { for: 'timeout' }, 'Timeout (seconds, optional)'), timeout),
    button, out);
  select.addEventListener('change', build);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const v = spec();
    if (!v) return;
    button.disabled = true;
    out.replaceChildren(el('p', { class: 'muted' }, 'Running ' + v.name + '…'));
    try {
      const t = Number.parseInt(timeout.value, 10);
      out.replaceChildren(await submit(v.name, readArgs(form, v.params), t > 0 ? t * 1000 : undefined));
    } catch (e) {
      out.replaceChildren(errorBox(e));
    } finally {
      button.disabled = false;
    }
  });
  build();
  return form;
}

/** Seconds until the agent's certificate (of its latest session) expires, from `/metrics`
 * (public, no token: the agent routes do not carry it); null when unknown. */
async function certExpiry(id) {
  try {
    const r = await fetch('/metrics', { cache: 'no-store', credentials: 'omit' });
    if (!r.ok) return null;
    const esc = id.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');
    const prefix = 'agentmesh_agent_cert_expiry_seconds{agent="' + esc + '"} ';
    const line = (await r.text()).split('\n').find((l) => l.startsWith(prefix));
    const v = line ? Number.parseFloat(line.slice(prefix.length)) : NaN;
    return Number.isFinite(v) ? v : null;
  } catch (_) {
    return null;
  }
}

async function agentPage(main, id) {
  main.append(el('p', { class: 'muted' }, 'Loading ' + id + '…'));
  let a;
  try { a = await api('GET', '/api/v1/agents/' + encodeURIComponent(id)); } catch (e) {
    main.replaceChildren(errorBox(e)); return;
  }
  const expiry = el('span', { id: 'cert-expiry' }, 'unknown');
  certExpiry(a.id).then((secs) => {
    if (secs === null) return;
    const at = new Date(Date.now() + secs * 1000).toLocaleDateString();
    const days = Math.round(Math.abs(secs) / 86400);
    expiry.textContent = secs >= 0 ? 'in ' + days + ' days (' + at + ')' : 'expired ' + days + ' days ago';
    if (secs < 14 * 86400) expiry.className = 'error';
  });
  const facts = [['State', badge(a.revoked ? 'revoked' : a.connected ? 'connected' : 'offline')],
    ['Site', a.site], ['Hostname', el('span', { class: 'hostname' }, a.hostname || '—')], ['Version', a.version],
    ['Address', a.remote_addr], ['Connected since', when(a.connected_since)], ['Last seen', when(a.last_seen)],
    ['Pin', el('code', {}, a.pin || '—')], ['Certificate expiry', expiry],
    ['Labels', labelChips(a.labels)]];
  const history = el('div', { id: 'agent-history' });
  const loadHistory = async () => {
    try {
      const page = await api('GET', '/api/v1/commands?limit=20&agent=' + encodeURIComponent(id));
      history.replaceChildren(commandTable(page.commands || [], 'Recent commands on ' + id));
    } catch (e) { history.replaceChildren(errorBox(e)); }
  };
  main.replaceChildren(
    el('h1', {}, 'Agent ', el('span', { class: 'mono' }, a.id)),
    el('dl', { class: 'facts' }, facts.map(([k, v]) => [el('dt', {}, k), el('dd', {}, v === null || v === undefined ? '—' : v)])),
    el('h2', {}, 'Verbs'),
    el('ul', { class: 'verbs' }, (a.verbs || []).map((v) => el('li', {}, el('code', {}, v.name), ' ', v.description || ''))),
    (a.verbs || []).length ? runForm(a.verbs, async (verb, args, timeoutMs) => {
      const rec = await api('POST', '/api/v1/agents/' + encodeURIComponent(id) + '/commands',
        { verb, args, wait: true, timeout_ms: timeoutMs });
      return outputBlock(rec);
    }) : el('p', {}, 'This agent advertises no verbs (it has not said hello yet).'),
    history);
  const reload = debounce(loadHistory, 300);
  onEvent((type, d) => { if (type === 'command_status' && d.agent_id === id) reload(); });
  loadHistory();
}

// ---- history and one command ----

function commandTable(commands, caption) {
  return table(['Created', 'Command', 'Agent', 'Verb', 'Status', 'Exit', 'By'],
    commands.map((c) => el('tr', { 'data-command-id': c.command_id },
      el('td', {}, when(c.created_at)),
      el('td', {}, el('a', { class: 'mono', href: '#/command/' + encodeURIComponent(c.command_id) }, String(c.command_id).slice(-12))),
      el('td', {}, el('a', { href: '#/agent/' + encodeURIComponent(c.agent_id) }, c.agent_id)),
      el('td', {}, c.verb), el('td', {}, badge(c.status)),
      el('td', {}, c.exit_code === null || c.exit_code === undefined ? '—' : c.exit_code),
      el('td', {}, c.requested_by))), caption);
}

function historyPage(main) {
  const agentIn = el('input', { id: 'h-agent', type: 'search', autocomplete: 'off' });
  const statusIn = el('select', { id: 'h-status' }, el('option', { value: '' }, 'any'),
    [...['pending', 'dispatched', 'running'], ...FINAL].map((s) => el('option', { value: s }, s)));
  const body = el('div', { id: 'history' });
  const load = async () => {
    const q = new URLSearchParams({ limit: '100' });
    if (agentIn.value.trim()) q.set('agent', agentIn.value.trim());
    if (statusIn.value) q.set('status', statusIn.value);
    try { body.replaceChildren(commandTable((await api('GET', '/api/v1/commands?' + q)).commands || [], 'Commands')); } catch (e) { body.replaceChildren(errorBox(e)); }
  };
  main.append(el('h1', {}, 'Command history'),
    el('form', { class: 'filters', role: 'search', onsubmit: (e) => { e.preventDefault(); load(); } },
      el('div', {}, el('label', { for: 'h-agent' }, 'Agent'), agentIn),
      el('div', {}, el('label', { for: 'h-status' }, 'Status'), statusIn),
      el('button', { type: 'submit' }, 'Filter')), body);
  const reload = debounce(load, 500);
  onEvent((type) => { if (type === 'command_status' || type === 'reset') reload(); });
  load();
}

async function commandPage(main, id) {
  const load = async () => {
    let c;
    try { c = await api('GET', '/api/v1/commands/' + encodeURIComponent(id) + '?include=output'); } catch (e) {
      main.replaceChildren(errorBox(e)); return;
    }
    if (c.job_id && c.summary) { main.replaceChildren(el('h1', {}, 'Fan-out job'), jobView(c)); return; }
    const cancel = FINAL.has(c.status) ? null : el('button', { type: 'button', onclick: async () => {
      try { await api('DELETE', '/api/v1/commands/' + encodeURIComponent(id)); } catch (e) { main.append(errorBox(e)); }
    } }, 'Cancel');
    main.replaceChildren(el('h1', {}, 'Command ', el('span', { class: 'mono' }, c.command_id)),
      el('dl', { class: 'facts' }, [['Agent', el('a', { href: '#/agent/' + encodeURIComponent(c.agent_id) }, c.agent_id)],
        ['Verb', c.verb], ['Args', el('code', {}, JSON.stringify(c.args || {}))], ['Requested by', c.requested_by],
        ['Created', when(c.created_at)], ['Job', c.job_id ? el('a', { href: '#/command/' + encodeURIComponent(c.job_id) }, c.job_id) : '—']]
        .map(([k, v]) => [el('dt', {}, k), el('dd', {}, v || '—')])),
      cancel, outputBlock(c));
  };
  const reload = debounce(load, 200);
  onEvent((type, d) => { if ((type === 'command_status' && d.command_id === id) || (type === 'job_progress' && d.job_id === id)) reload(); });
  await load();
}

// ---- fan-out with live progress ----

function progressView(summary, finished) {
  const s = summary || {};
  const done = (s.ok || 0) + (s.failed || 0) + (s.skipped || 0);
  return el('div', { class: 'progress', id: 'job-progress', 'data-finished': finished ? 'true' : 'false' },
    el('label', { for: 'job-bar' }, finished ? 'Finished' : 'Running'),
    el('progress', { id: 'job-bar', max: s.targets || 1, value: done }),
    el('p', {}, s.ok + ' ok · ' + s.failed + ' failed · ' + s.skipped + ' skipped · ' + s.pending + ' pending of ' + s.targets));
}

function jobView(job) {
  const finished = job.summary && job.summary.pending === 0;
  return el('div', {}, progressView(job.summary, finished),
    table(['Agent', 'Status', 'Exit', 'Output'], (job.results || []).map((r) => el('tr', {},
      el('td', {}, r.agent_id), el('td', {}, badge(r.status)),
      el('td', {}, r.exit_code === null || r.exit_code === undefined ? '—' : r.exit_code),
      el('td', {}, el('pre', { class: 'stdout small' }, (r.stdout || '') + (r.stderr || ''))))), 'Per-agent results'));
}

async function fanoutPage(main) {
  const labelsIn = el('input', { id: 'fo-labels', type: 'text', placeholder: 'role=web', autocomplete: 'off' });
  const idsIn = el('input', { id: 'fo-ids', type: 'text', placeholder: 'edge-01, edge-02', autocomplete: 'off' });
  const conc = el('input', { id: 'fo-conc', type: 'number', min: 1, step: 1, placeholder: '50' });
  const errs = el('input', { id: 'fo-errs', type: 'number', min: 0, step: 1, placeholder: 'no limit' });
  const status = el('div', { id: 'fanout-out', 'aria-live': 'polite' });
  main.append(el('h1', {}, 'Fan-out'), el('p', { class: 'muted' }, 'Loading verbs…'));
  let agents = [];
  try { agents = (await api('GET', '/api/v1/agents')).agents || []; } catch (e) { main.append(errorBox(e)); return; }
  const verbs = new Map();
  for (const a of agents) for (const v of a.verbs || []) if (!verbs.has(v.name)) verbs.set(v.name, v);
  const form = runForm([...verbs.values()].sort((x, y) => x.name.localeCompare(y.name)), async (verb, args, timeoutMs) => {
    const selector = {};
    const labels = parseLabels(labelsIn.value);
    if (Object.keys(labels).length) selector.labels = labels;
    const ids = idsIn.value.split(',').map((s) => s.trim()).filter(Boolean);
    if (ids.length) selector.ids = ids;
    const body = { selector, verb, args, timeout_ms: timeoutMs };
    if (conc.value) body.max_concurrency = Number.parseInt(conc.value, 10);
    if (errs.value) body.max_errors = Number.parseInt(errs.value, 10);
    const job = await api('POST', '/api/v1/commands', body);
    const box = el('div', { 'data-job-id': job.job_id },
      progressView({ targets: (job.targets || []).length, ok: 0, failed: 0, skipped: 0, pending: (job.targets || []).length }, false));
    const final = async () => {
      try { box.replaceChildren(jobView(await api('GET', '/api/v1/commands/' + encodeURIComponent(job.job_id) + '?include=output'))); } catch (e) { box.append(errorBox(e)); }
    };
    onEvent((type, d) => {
      if (type !== 'job_progress' || d.job_id !== job.job_id) return;
      if (d.finished) final(); else box.replaceChildren(progressView(d.summary, false));
    });
    final();
    return box;
  });
  form.querySelector('h2').textContent = 'Run a verb on many agents';
  form.insertBefore(el('div', { class: 'fields' },
    el('div', { class: 'field' }, el('label', { for: 'fo-labels' }, 'Agents with labels'), labelsIn),
    el('div', { class: 'field' }, el('label', { for: 'fo-ids' }, 'Or agent ids'), idsIn),
    el('div', { class: 'field' }, el('label', { for: 'fo-conc' }, 'Max concurrency'), conc),
    el('div', { class: 'field' }, el('label', { for: 'fo-errs' }, 'Max errors'), errs)), form.children[1]);
  main.replaceChildren(el('h1', {}, 'Fan-out'), form, status);
}

// ---- audit ----

function auditPage(main) {
  const agentIn = el('input', { id: 'a-agent', type: 'search', autocomplete: 'off' });
  const actorIn = el('input', { id: 'a-actor', type: 'search', autocomplete: 'off' });
  const body = el('div', { id: 'audit' });
  const load = async () => {
    const q = new URLSearchParams({ limit: '200' });
    if (agentIn.value.trim()) q.set('agent', agentIn.value.trim());
    if (actorIn.value.trim()) q.set('actor', actorIn.value.trim());
    try {
      const recs = ((await api('GET', '/api/v1/audit?' + q)).records || []).slice().reverse();
      body.replaceChildren(table(['#', 'Time', 'Kind', 'Actor', 'Agent', 'Details'], recs.map((r) => el('tr', {},
        el('td', {}, r.seq), el('td', {}, when(r.ts)), el('td', {}, r.kind), el('td', {}, r.actor || '—'),
        el('td', {}, r.agent_id || '—'), el('td', {}, el('code', { class: 'small' }, JSON.stringify(r.details || {}))))), 'Audit records, newest first'));
    } catch (e) { body.replaceChildren(errorBox(e)); }
  };
  main.append(el('h1', {}, 'Audit log'),
    el('form', { class: 'filters', role: 'search', onsubmit: (e) => { e.preventDefault(); load(); } },
      el('div', {}, el('label', { for: 'a-agent' }, 'Agent'), agentIn),
      el('div', {}, el('label', { for: 'a-actor' }, 'Actor'), actorIn),
      el('button', { type: 'submit' }, 'Filter')), body);
  load();
}

window.AGENTMESH_PAGES = [
  [/^#\/?$/, fleetPage],
  [/^#\/agent\/(.+)$/, agentPage],
  [/^#\/history$/, historyPage],
  [/^#\/command\/(.+)$/, commandPage],
  [/^#\/fanout$/, fanoutPage],
  [/^#\/audit$/, auditPage],
];

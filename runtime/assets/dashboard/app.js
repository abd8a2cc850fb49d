// Sluice dashboard: a client of the public /v1 API, nothing more.
//
// Safety rule for this file: data from the API (outputs, tags, errors, URLs: all of it is
// tenant-controlled) becomes DOM only through `el()` children, which are text nodes, or
// attribute values we compose ourselves. Nothing here parses HTML (no *HTML setters) or builds
// markup from strings; links are only `#/...` routes made with encodeURIComponent.
'use strict';

(() => {
  const KEY_STORE = 'sluice.apiKey';
  const POLL_MS = 3000;
  const WINDOWS = { '1h': 3600, '24h': 86400, '7d': 7 * 86400, '30d': 30 * 86400 };
  const GROUPS = ['plugin', 'user', 'feature', 'model', 'provider'];
  const STATUSES = ['scheduled', 'queued', 'running', 'retrying', 'completed', 'dead', 'cancelled'];
  const BUCKETS = 12;
  const PALETTE = ['#4f7cff', '#1fb58f', '#f2a33a', '#e5534b', '#9b6cf0', '#3cb4d8'];
  const SVG = 'http://www.w3.org/2000/svg';

  const main = () => document.getElementById('main');
  let view = { timer: null, abort: null, gen: 0 };

  // ---------- DOM helpers (text only) ----------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    setAttrs(node, attrs);
    append(node, children);
    return node;
  }

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG, tag);
    setAttrs(node, attrs);
    append(node, children);
    return node;
  }

  function setAttrs(node, attrs) {
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k.startsWith('on') && typeof v === 'function') {
        node.addEventListener(k.slice(2), v);
      } else if (k === 'style') {
        // A style attribute is inline style, which the CSP refuses; CSSOM properties are not.
        for (const decl of String(v).split(';')) {
          const i = decl.indexOf(':');
          if (i > 0) node.style.setProperty(decl.slice(0, i).trim(), decl.slice(i + 1).trim());
        }
      } else if (k === 'href') {
        // Only in-page routes: never a URL that came from data.
        node.setAttribute('href', String(v).startsWith('#/') ? v : '#/');
      } else {
        node.setAttribute(k, String(v));
      }
    }
  }

  function append(node, children) {
    for (const c of children.flat(Infinity)) {
      if (c === undefined || c === null || c === false) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
    return node;
  }

  // ---------- formatting ----------

  function usd(v) {
    const n = Number(v) || 0;
    return '$' + (Math.abs(n) < 1 ? n.toFixed(6) : n.toFixed(2));
  }
  const int = (v) => (Number(v) || 0).toLocaleString('en-US');
  const ms = (v) => (v === null || v === undefined ? '—' : `${Math.round(Number(v)).toLocaleString('en-US')} ms`);
  // Job ids are UUIDv7: the leading digits are a timestamp shared by neighbours, the tail is random.
  const shortId = (id) => String(id || '').slice(-12);

  function ago(iso) {
    if (!iso) return '—';
    const s = Math.round((Date.now() - Date.parse(iso)) / 1000);
    if (!Number.isFinite(s)) return String(iso);
    if (s < 0) return `in ${fmtSpan(-s)}`;
    return `${fmtSpan(s)} ago`;
  }
  function fmtSpan(s) {
    if (s < 60) return `${s}s`;
    if (s < 3600) return `${Math.floor(s / 60)}m`;
    if (s < 86400) return `${Math.floor(s / 3600)}h`;
    return `${Math.floor(s / 86400)}d`;
  }
  const time = (iso) => el('time', { datetime: iso || '', title: iso || '' }, ago(iso));

  function errorText(e) {
    if (!e) return '';
    if (typeof e === 'string') return e;
    return [e.kind, e.message].filter(Boolean).join(': ');
  }

  const badge = (status) => el('span', { class: `badge s-${String(status).replace(/[^a-z_]/g, '')}` }, status);

  function tagChips(tags) {
    return el('span', { class: 'tags' },
      Object.entries(tags || {}).map(([k, v]) => el('span', { class: 'tag' }, `${k}:${v}`)));
  }

  // ---------- API ----------

  const key = () => sessionStorage.getItem(KEY_STORE) || '';

  class ApiError extends Error {
    constructor(status, problem) {
      super((problem && (problem.detail || problem.title)) || `HTTP ${status}`);
      this.status = status;
      this.problem = problem;
    }
  }

  async function api(path, opts = {}) {
    const headers = { Accept: 'application/json' };
    if (key()) headers.Authorization = `Bearer ${key()}`;
    const init = { method: opts.method || 'GET', headers, signal: opts.signal };
    if (opts.body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(opts.body);
    }
    const res = await fetch(path, init);
    const text = await res.text();
    let body = null;
    try { body = text ? JSON.parse(text) : null; } catch { body = null; }
    if (!res.ok) {
      if (res.status === 401) showKeyForm('This server needs an API key.');
      throw new ApiError(res.status, body);
    }
    return body;
  }

  function notice(message, kind = 'info') {
    const n = document.getElementById('notice');
    n.hidden = false;
    n.className = `notice ${kind}`;
    n.textContent = message;
    clearTimeout(notice.t);
    notice.t = setTimeout(() => { n.hidden = true; }, 6000);
  }

  function showKeyForm(why) {
    const f = document.getElementById('key-form');
    f.hidden = false;
    if (why) notice(why, 'warn');
    document.getElementById('key-input').focus();
  }

  // ---------- routing ----------

  function parseHash() {
    const raw = location.hash.replace(/^#\/?/, '');
    const [path, query] = raw.split('?');
    const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
    return { parts, params: new URLSearchParams(query || '') };
  }

  function hashFor(path, params) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(params || {})) if (v) q.set(k, v);
    const qs = q.toString();
    return `#/${path}${qs ? `?${qs}` : ''}`;
  }

  function stopView() {
    clearInterval(view.timer);
    if (view.abort) view.abort.abort();
    view = { timer: null, abort: new AbortController(), gen: view.gen + 1 };
    return view;
  }

  function poll(fn, every = POLL_MS) {
    const mine = view;
    const tick = async () => {
      if (mine !== view || document.hidden) return;
      try { await fn(); } catch (e) { if (mine === view) showError(e); }
    };
    view.timer = setInterval(tick, every);
    return tick();
  }

  function showError(e) {
    if (e && e.name === 'AbortError') return;
    // A 401 already opened the key form with its own message.
    if (e instanceof ApiError && e.status === 401) return;
    notice(e instanceof ApiError ? `${e.status}: ${e.message}` : String(e && e.message ? e.message : e), 'error');
  }

  function render() {
    const { parts, params } = parseHash();
    const section = parts[0] || 'jobs';
    for (const a of document.querySelectorAll('[data-nav]')) {
      a.classList.toggle('active', a.dataset.nav === section);
    }
    stopView();
    const root = clear(main());
    const views = { jobs: parts[1] ? jobView : jobsView, dlq: dlqView, cost: costView, webhooks: webhooksView, nodes: nodesView, health: healthView };
    (views[section] || jobsView)(root, parts, params).catch(showError);
  }

  // ---------- Jobs ----------

  async function jobsView(root, _parts, params) {
    const filters = { plugin: params.get('plugin') || '', status: params.get('status') || '', tag: params.get('tag') || '' };
    const pluginSel = el('select', { name: 'plugin', 'aria-label': 'Plugin' }, el('option', { value: '' }, 'all plugins'));
    const statusSel = el('select', { name: 'status', 'aria-label': 'Status' }, el('option', { value: '' }, 'any status'),
      STATUSES.map((s) => el('option', { value: s }, s)));
    statusSel.value = filters.status;
    const tagInput = el('input', { name: 'tag', placeholder: 'tag key:value (e.g. user:ann)', value: filters.tag, 'aria-label': 'Tag' });
    const form = el('form', { class: 'filters', onsubmit: (ev) => {
      ev.preventDefault();
      location.hash = hashFor('jobs', { plugin: pluginSel.value, status: statusSel.value, tag: tagInput.value.trim() });
    } }, pluginSel, statusSel, tagInput, el('button', { type: 'submit' }, 'Filter'),
    el('a', { href: '#/jobs', class: 'button ghost' }, 'Clear'));
    pluginSel.addEventListener('change', () => form.requestSubmit());
    statusSel.addEventListener('change', () => form.requestSubmit());

    const counts = el('div', { class: 'counts', 'data-testid': 'job-counts' });
    const tbody = el('tbody');
    const more = el('button', { type: 'button', class: 'ghost', hidden: true }, 'Load more');
    root.append(el('h1', {}, 'Jobs'), form, counts,
      el('table', { class: 'grid', 'data-testid': 'jobs' },
        el('thead', {}, el('tr', {}, ['Job', 'Plugin', 'Status', 'Tags', 'Attempt', 'Created', 'Finished', 'Error'].map((t) => el('th', {}, t)))),
        tbody),
      more);

    api('/v1/plugins', { signal: view.abort.signal }).then((p) => {
      const names = (p.plugins || p.items || []).map((x) => x.name).filter(Boolean);
      if (filters.plugin && !names.includes(filters.plugin)) names.push(filters.plugin);
      for (const n of names.sort()) pluginSel.append(el('option', { value: n }, n));
      pluginSel.value = filters.plugin;
    }).catch(showError);

    let extra = []; // pages after the first, loaded with "Load more"
    let cursor = null;
    const query = (c) => {
      const q = new URLSearchParams();
      if (filters.plugin) q.set('plugin', filters.plugin);
      if (filters.status) q.set('status', filters.status);
      if (filters.tag) q.append('tag', filters.tag);
      q.set('limit', '50');
      if (c) q.set('cursor', c);
      return `/v1/jobs?${q}`;
    };
    const draw = (items) => {
      clear(tbody);
      if (!items.length) tbody.append(el('tr', {}, el('td', { colspan: 8, class: 'empty' }, 'No jobs match.')));
      for (const j of items) {
        tbody.append(el('tr', { 'data-job': j.id },
          el('td', { class: 'mono' }, el('a', { href: `#/jobs/${encodeURIComponent(j.id)}` }, shortId(j.id))),
          el('td', { class: 'nowrap' }, j.plugin, el('span', { class: 'muted' }, ` v${j.plugin_version}`)),
          el('td', {}, badge(j.status)),
          el('td', {}, tagChips(j.tags)),
          el('td', { class: 'num' }, `${j.attempt}/${j.max_attempts}`, j.run ? el('span', { class: 'muted' }, ` run ${j.run}`) : ''),
          el('td', {}, time(j.created_at)),
          el('td', {}, j.finished_at ? time(j.finished_at) : '—'),
          el('td', { class: 'err' }, errorText(j.error))));
      }
      const by = {};
      for (const j of items) by[j.status] = (by[j.status] || 0) + 1;
      clear(counts).append(el('span', { class: 'muted' }, `${items.length} shown`),
        ...Object.entries(by).map(([s, n]) => el('span', { class: 'count' }, badge(s), ` ${n}`)));
    };
    let first = [];
    more.addEventListener('click', async () => {
      const page = await api(query(cursor), { signal: view.abort.signal });
      extra = extra.concat(page.items);
      cursor = page.next_cursor;
      more.hidden = !cursor;
      draw(first.concat(extra));
    });
    await poll(async () => {
      const page = await api(query(null), { signal: view.abort.signal });
      first = page.items;
      if (!extra.length) { cursor = page.next_cursor; more.hidden = !cursor; }
      draw(first.concat(extra));
    });
  }

  async function jobView(root, parts) {
    const id = parts[1];
    const mine = view;
    const head = el('div', { class: 'job-head' });
    const cards = el('div', { class: 'cards' });
    const actions = el('div', { class: 'actions' });
    const output = el('pre', { class: 'output', 'data-testid': 'job-output' });
    const errorBox = el('pre', { class: 'output err', hidden: true, 'data-testid': 'job-error' });
    const attempts = el('tbody');
    const calls = el('tbody');
    const events = el('ol', { class: 'events', 'data-testid': 'job-events' });
    root.append(el('p', {}, el('a', { href: '#/jobs' }, '← Jobs')), head, actions, cards,
      el('div', { class: 'two' },
        el('section', {}, el('h2', {}, 'Output'), output, errorBox),
        el('section', {}, el('h2', {}, 'Input'), el('pre', { class: 'output', 'data-testid': 'job-input' }))),
      el('h2', {}, 'Model calls'),
      el('table', { class: 'grid', 'data-testid': 'model-calls' },
        el('thead', {}, el('tr', {}, ['#', 'Model', 'Provider', 'Tokens in', 'Tokens out', 'Cost', 'Source'].map((t) => el('th', {}, t)))), calls),
      el('h2', {}, 'Attempts'),
      el('table', { class: 'grid', 'data-testid': 'attempts' },
        el('thead', {}, el('tr', {}, ['Run', 'Attempt', 'Worker', 'Started', 'Took', 'Outcome', 'Error'].map((t) => el('th', {}, t)))), attempts),
      el('h2', {}, 'Events'), events);

    let last = null;
    const drawJob = (j) => {
      last = j;
      clear(head).append(el('h1', {}, el('span', { class: 'mono' }, j.id), ' ', badge(j.status)),
        el('p', { class: 'muted' }, `${j.plugin} v${j.plugin_version} · run ${j.run} · attempt ${j.attempt}/${j.max_attempts} · `,
          'created ', time(j.created_at), j.finished_at ? [' · finished ', time(j.finished_at)] : '', ' ', tagChips(j.tags)));
      const u = j.usage || {};
      const t = j.timings || {};
      clear(cards).append(
        card('Model calls', int(u.model_calls), 'calls'),
        card('Tokens in / out', `${int(u.input_tokens)} / ${int(u.output_tokens)}`, 'tokens'),
        card('Cost', usd(u.cost_usd), 'cost'),
        card('Queued', ms(t.queue_ms), 'queue'),
        card('Last attempt', ms(t.last_attempt_ms), 'last-attempt'),
        card('Total', ms(t.total_ms), 'total'));
      output.textContent = j.output === null || j.output === undefined ? '—' : JSON.stringify(j.output, null, 2);
      root.querySelector('[data-testid=job-input]').textContent = JSON.stringify(j.input, null, 2);
      errorBox.hidden = !j.error;
      errorBox.textContent = j.error ? errorText(j.error) : '';
      clear(attempts);
      for (const a of j.attempts || []) {
        const took = Date.parse(a.finished_at) - Date.parse(a.started_at);
        attempts.append(el('tr', {}, el('td', { class: 'num' }, a.run), el('td', { class: 'num' }, a.attempt),
          el('td', { class: 'mono' }, a.worker_id || '—'), el('td', {}, time(a.started_at)),
          el('td', { class: 'num' }, ms(took)), el('td', {}, badge(a.outcome)), el('td', { class: 'err' }, errorText(a.error))));
      }
      if (!(j.attempts || []).length) attempts.append(el('tr', {}, el('td', { colspan: 7, class: 'empty' }, 'No attempts yet.')));
      clear(actions);
      if (j.status === 'dead') {
        actions.append(el('button', { type: 'button', 'data-testid': 'redrive', onclick: () => redrive(j.id).then(refresh) }, 'Redrive'));
      }
      if (!['completed', 'dead', 'cancelled'].includes(j.status)) {
        actions.append(el('button', { type: 'button', class: 'ghost', onclick: () => cancel(j.id).then(refresh) }, 'Cancel'));
      }
    };
    const refresh = async () => drawJob(await api(`/v1/jobs/${encodeURIComponent(id)}`, { signal: mine.abort.signal }));

    await refresh();
    streamEvents(id, mine, events, calls).catch((e) => { if (mine === view) showError(e); });
    await poll(async () => {
      if (last && ['completed', 'dead', 'cancelled'].includes(last.status)) return;
      await refresh();
    }, 2000);
  }

  function card(label, value, testid) {
    return el('div', { class: 'card', 'data-testid': `card-${testid}` }, el('div', { class: 'label' }, label), el('div', { class: 'value' }, value));
  }

  // The job's story from GET /v1/jobs/{id}/events. EventSource cannot send an Authorization
  // header, so the stream is read with fetch. It ends by itself once the job is finished.
  async function streamEvents(id, mine, list, calls) {
    const headers = { Accept: 'text/event-stream' };
    if (key()) headers.Authorization = `Bearer ${key()}`;
    const res = await fetch(`/v1/jobs/${encodeURIComponent(id)}/events`, { headers, signal: mine.abort.signal });
    if (!res.ok) throw new ApiError(res.status, null);
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buf = '';
    let seenCalls = 0;
    const add = (name, data) => {
      if (name === 'model_call') {
        seenCalls += 1;
        calls.append(el('tr', {}, el('td', { class: 'num' }, data.call), el('td', {}, data.model), el('td', {}, data.provider),
          el('td', { class: 'num' }, int(data.input_tokens)), el('td', { class: 'num' }, int(data.output_tokens)),
          el('td', { class: 'num' }, usd((Number(data.cost_micros) || 0) / 1e6)), el('td', {}, badge(data.outcome))));
      }
      if (name === 'token') return; // token deltas are too many to list; the output shows the result
      list.append(el('li', {}, el('span', { class: 'ev' }, name), ' ', describe(name, data)));
    };
    for (;;) {
      const { value, done } = await reader.read();
      if (done || mine !== view) break;
      buf += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buf.indexOf('\n\n')) >= 0) {
        const block = buf.slice(0, cut);
        buf = buf.slice(cut + 2);
        let name = 'message';
        const data = [];
        for (const line of block.split('\n')) {
          if (line.startsWith('event:')) name = line.slice(6).trim();
          else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
        }
        if (!data.length) continue;
        let parsed = null;
        try { parsed = JSON.parse(data.join('\n')); } catch { parsed = data.join('\n'); }
        add(name, parsed);
      }
    }
    if (!seenCalls && mine === view) calls.append(el('tr', {}, el('td', { colspan: 7, class: 'empty' }, 'No model calls.')));
  }

  function describe(name, d) {
    if (!d || typeof d !== 'object') return String(d);
    switch (name) {
      case 'status': return [d.status, d.attempt ? ` (attempt ${d.attempt})` : '', d.reason ? ` — ${d.reason}` : ''].join('');
      case 'progress': return `${d.message}${d.fraction !== undefined ? ` (${Math.round(d.fraction * 100)}%)` : ''}`;
      case 'log': return `[${d.level}] ${d.message}${(d.fields || []).map(([k, v]) => ` ${k}=${v}`).join('')}`;
      case 'model_call': return `${d.model} via ${d.provider}: ${d.input_tokens} in, ${d.output_tokens} out, ${usd(d.cost_micros / 1e6)}, ${d.outcome}`;
      case 'result': return `${d.status}${d.error ? ` — ${errorText(d.error)}` : ''}`;
      default: return JSON.stringify(d);
    }
  }

  async function redrive(id) {
    try {
      const r = await api(`/v1/jobs/${encodeURIComponent(id)}/redrive`, { method: 'POST', body: {} });
      notice(`Redriven: ${r.count} job${r.count === 1 ? '' : 's'} back in the queue.`, 'ok');
    } catch (e) { showError(e); }
  }

  async function cancel(id) {
    try {
      const r = await api(`/v1/jobs/${encodeURIComponent(id)}/cancel`, { method: 'POST', body: {} });
      notice(`Cancel: ${r.status}`, 'ok');
    } catch (e) { showError(e); }
  }

  // ---------- DLQ ----------

  async function dlqView(root, _parts, params) {
    const plugin = params.get('plugin') || '';
    const total = el('span', { 'data-testid': 'dlq-total' });
    const tbody = el('tbody');
    root.append(el('h1', {}, 'Dead letters ', el('span', { class: 'pill' }, total)),
      el('p', { class: 'muted' }, 'Jobs that used up their attempts or failed permanently. Redrive puts a job back in the queue as a new run.'),
      el('div', { class: 'actions' }, el('button', { type: 'button', class: 'ghost', 'data-testid': 'redrive-all', onclick: async () => {
        if (!confirm('Redrive every dead job shown here?')) return;
        try {
          const r = await api('/v1/dlq/redrive', { method: 'POST', body: plugin ? { plugin } : {} });
          notice(`Redriven: ${r.count}.`, 'ok');
          await refresh();
        } catch (e) { showError(e); }
      } }, plugin ? `Redrive all of ${plugin}` : 'Redrive all')),
      el('table', { class: 'grid', 'data-testid': 'dlq' },
        el('thead', {}, el('tr', {}, ['Job', 'Plugin', 'Run', 'Attempts', 'Died', 'Reason', ''].map((t) => el('th', {}, t)))), tbody));
    const refresh = async () => {
      const q = new URLSearchParams({ limit: '100' });
      if (plugin) q.set('plugin', plugin);
      const page = await api(`/v1/dlq?${q}`, { signal: view.abort.signal });
      total.textContent = int(page.total);
      clear(tbody);
      if (!page.items.length) tbody.append(el('tr', {}, el('td', { colspan: 7, class: 'empty' }, 'The dead-letter queue is empty.')));
      for (const j of page.items) {
        tbody.append(el('tr', { 'data-job': j.id },
          el('td', { class: 'mono' }, el('a', { href: `#/jobs/${encodeURIComponent(j.id)}` }, shortId(j.id))),
          el('td', {}, el('a', { href: hashFor('dlq', { plugin: j.plugin }) }, j.plugin)),
          el('td', { class: 'num' }, j.run),
          el('td', { class: 'num' }, `${j.attempt}/${j.max_attempts}`),
          el('td', {}, time(j.finished_at)),
          el('td', { class: 'err' }, errorText(j.error)),
          el('td', {}, el('button', { type: 'button', 'data-testid': 'redrive', onclick: async (ev) => {
            ev.target.disabled = true;
            await redrive(j.id);
            await refresh().catch(showError);
          } }, 'Redrive'))));
      }
    };
    await poll(refresh);
  }

  // ---------- Cost & latency ----------

  async function costView(root, _parts, params) {
    const win = WINDOWS[params.get('window')] ? params.get('window') : '24h';
    const group = GROUPS.includes(params.get('group')) ? params.get('group') : 'plugin';
    const tabs = (name, values, current, label) => el('div', { class: 'tabs', role: 'tablist', 'aria-label': label },
      values.map((v) => el('a', { href: hashFor('cost', { window: name === 'window' ? v : win, group: name === 'group' ? v : group }),
        class: v === current ? 'active' : '', 'data-testid': `${name}-${v}` }, v)));
    const totals = el('div', { class: 'cards', 'data-testid': 'usage-totals' });
    const overTime = el('div', { class: 'chart', 'data-testid': 'chart-cost-time' });
    const p95Time = el('div', { class: 'chart', 'data-testid': 'chart-latency-time' });
    const costBy = el('div', { class: 'chart', 'data-testid': 'chart-cost-group' });
    const latBy = el('div', { class: 'chart', 'data-testid': 'chart-latency-group' });
    const tokBy = el('div', { class: 'chart', 'data-testid': 'chart-tokens-group' });
    const tbody = el('tbody');
    const budgets = el('div', { 'data-testid': 'budgets' });
    root.append(el('h1', {}, 'Cost & latency'),
      el('div', { class: 'toolbar' }, tabs('window', Object.keys(WINDOWS), win, 'Window'), tabs('group', GROUPS, group, 'Group by')),
      totals,
      el('div', { class: 'two' },
        el('section', {}, el('h2', {}, 'Cost over time'), overTime),
        el('section', {}, el('h2', {}, `p95 latency over time, by ${group}`), p95Time)),
      el('div', { class: 'three' },
        el('section', {}, el('h2', {}, `Cost by ${group}`), costBy),
        el('section', {}, el('h2', {}, `Latency p50 / p95 by ${group}`), latBy),
        el('section', {}, el('h2', {}, `Tokens by ${group}`), tokBy)),
      el('table', { class: 'grid', 'data-testid': 'usage' },
        el('thead', {}, el('tr', {}, [group, 'Calls', 'Tokens in', 'Tokens out', 'Cached in', 'Cost', 'p50', 'p95'].map((t) => el('th', {}, t)))), tbody),
      el('h2', {}, 'Budgets'), budgets);

    const refresh = async () => {
      const signal = view.abort.signal;
      const until = new Date();
      const span = WINDOWS[win] * 1000;
      const since = new Date(until.getTime() - span);
      const q = (s, u) => `/v1/usage?${new URLSearchParams({ group_by: group, since: s.toISOString(), until: u.toISOString() })}`;
      const step = span / BUCKETS;
      const edges = Array.from({ length: BUCKETS }, (_, i) => [new Date(since.getTime() + i * step), new Date(since.getTime() + (i + 1) * step)]);
      const [report, buckets, budgetList] = await Promise.all([
        api(q(since, until), { signal }),
        Promise.all(edges.map(([s, u]) => api(q(s, u), { signal }))),
        api('/v1/budgets', { signal }).catch((e) => ({ error: e })),
      ]);
      const rows = report.items;
      const sum = (f) => rows.reduce((a, r) => a + (Number(r[f]) || 0), 0);
      clear(totals).append(card('Cost', usd(sum('cost_usd')), 'cost'), card('Model calls', int(sum('calls')), 'calls'),
        card('Tokens in', int(sum('input_tokens')), 'input'), card('Tokens out', int(sum('output_tokens')), 'output'),
        card('Cached in', int(sum('cached_input_tokens')), 'cached'));
      const label = (r) => (r.key === null ? `(no ${group})` : r.key);
      clear(tbody);
      if (!rows.length) tbody.append(el('tr', {}, el('td', { colspan: 8, class: 'empty' }, 'No model calls in this window.')));
      for (const r of rows) {
        tbody.append(el('tr', { 'data-key': label(r) }, el('td', {}, label(r)), el('td', { class: 'num' }, int(r.calls)),
          el('td', { class: 'num' }, int(r.input_tokens)), el('td', { class: 'num' }, int(r.output_tokens)),
          el('td', { class: 'num' }, int(r.cached_input_tokens)), el('td', { class: 'num' }, usd(r.cost_usd)),
          el('td', { class: 'num' }, ms(r.latency_p50_ms)), el('td', { class: 'num' }, ms(r.latency_p95_ms))));
      }
      const top = [...rows].sort((a, b) => b.cost_micros - a.cost_micros || b.calls - a.calls).slice(0, PALETTE.length);
      const keys = top.map(label);
      clear(overTime).append(barChart(edges.map(([s]) => s), buckets.map((b) => b.items.reduce((a, r) => a + r.cost_usd, 0)), usd));
      clear(p95Time).append(lineChart(edges.map(([s]) => s), keys.map((k) => buckets.map((b) => {
        const r = b.items.find((x) => label(x) === k);
        return r && r.calls ? r.latency_p95_ms : null;
      })), keys));
      clear(costBy).append(hbars(top.map((r) => [label(r), [r.cost_usd]]), usd));
      clear(latBy).append(hbars(top.map((r) => [label(r), [r.latency_p50_ms, r.latency_p95_ms]]), ms, ['p50', 'p95']));
      clear(tokBy).append(hbars(top.map((r) => [label(r), [r.input_tokens, r.output_tokens]]), int, ['in', 'out']));
      drawBudgets(budgets, budgetList);
    };
    // Thirteen usage queries a refresh (the window and its buckets): not more often than this.
    await poll(refresh, 15000);
  }

  function drawBudgets(box, list) {
    clear(box);
    if (list.error) { box.append(el('p', { class: 'muted' }, `Budgets unavailable: ${list.error.message}`)); return; }
    if (!list.budgets.length) { box.append(el('p', { class: 'muted' }, 'No budgets. Set one with PUT /v1/budgets/{name}.')); return; }
    const tbody = el('tbody');
    for (const b of list.budgets) {
      const spec = b.spec || {};
      const scope = spec.scope === 'tag' ? `tag ${spec.tag}=${spec.value}` : spec.scope;
      const windows = b.windows.length ? b.windows : [null];
      for (const w of windows) {
        const limit = Number(spec.limit_usd) || 0;
        const spent = w ? w.spent_usd : 0;
        const pct = limit > 0 ? Math.min(100, (spent / limit) * 100) : 0;
        tbody.append(el('tr', { 'data-budget': b.name },
          el('td', {}, b.name), el('td', {}, scope), el('td', {}, spec.period, w ? el('span', { class: 'muted' }, ` ${w.window}`) : ''),
          el('td', { class: 'num' }, usd(limit)), el('td', { class: 'num' }, usd(spent)), el('td', { class: 'num' }, usd(w ? w.reserved_usd : 0)),
          el('td', { class: 'num' }, usd(w ? w.remaining_usd : limit)),
          el('td', {}, el('div', { class: `meter${pct >= 90 ? ' hot' : ''}`, title: `${pct.toFixed(1)}%` }, el('div', { class: 'fill', style: `width:${pct.toFixed(1)}%` })))));
      }
    }
    box.append(el('table', { class: 'grid' }, el('thead', {}, el('tr', {}, ['Budget', 'Scope', 'Period', 'Limit', 'Spent', 'Held', 'Left', ''].map((t) => el('th', {}, t)))), tbody));
  }

  // ---------- charts: SVG built with DOM calls ----------

  function emptyChart(text) { return el('p', { class: 'muted empty' }, text); }

  function barChart(starts, values, fmt) {
    const W = 560, H = 180, P = 28;
    const max = Math.max(...values, 0);
    if (max <= 0) return emptyChart('No spend in this window.');
    const bw = (W - P * 2) / values.length;
    const g = svg('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': 'Cost over time' });
    g.append(svg('text', { x: P, y: 12, class: 'axis' }, `max ${fmt(max)}`));
    values.forEach((v, i) => {
      const h = (v / max) * (H - P * 2);
      const rect = svg('rect', { x: P + i * bw + 2, y: H - P - h, width: Math.max(1, bw - 4), height: h, rx: 2, fill: PALETTE[0] });
      rect.append(svg('title', {}, `${starts[i].toISOString()}: ${fmt(v)}`));
      g.append(rect);
    });
    g.append(svg('line', { x1: P, x2: W - P, y1: H - P, y2: H - P, class: 'base' }));
    g.append(svg('text', { x: P, y: H - 8, class: 'axis' }, clock(starts[0])));
    g.append(svg('text', { x: W - P, y: H - 8, class: 'axis', 'text-anchor': 'end' }, 'now'));
    return g;
  }

  function lineChart(starts, series, names) {
    const W = 560, H = 180, P = 28;
    const all = series.flat().filter((v) => v !== null);
    if (!all.length) return emptyChart('No model calls in this window.');
    const max = Math.max(...all, 1);
    const x = (i) => P + (i + 0.5) * ((W - P * 2) / starts.length);
    const y = (v) => H - P - (v / max) * (H - P * 2);
    const g = svg('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': 'p95 latency over time' });
    g.append(svg('text', { x: P, y: 12, class: 'axis' }, `max ${ms(max)}`));
    series.forEach((vals, s) => {
      const pts = vals.map((v, i) => (v === null ? null : `${x(i).toFixed(1)},${y(v).toFixed(1)}`)).filter(Boolean);
      g.append(svg('polyline', { points: pts.join(' '), fill: 'none', stroke: PALETTE[s], 'stroke-width': 2 }));
      vals.forEach((v, i) => { if (v !== null) g.append(svg('circle', { cx: x(i), cy: y(v), r: 3, fill: PALETTE[s] }, svg('title', {}, `${names[s]}: ${ms(v)}`))); });
    });
    g.append(svg('line', { x1: P, x2: W - P, y1: H - P, y2: H - P, class: 'base' }));
    g.append(svg('text', { x: P, y: H - 8, class: 'axis' }, clock(starts[0])));
    g.append(svg('text', { x: W - P, y: H - 8, class: 'axis', 'text-anchor': 'end' }, 'now'));
    const legend = el('div', { class: 'legend' }, names.map((n, i) => el('span', {}, el('i', { style: `background:${PALETTE[i]}` }), n)));
    return el('div', {}, g, legend);
  }

  // Horizontal bars, one row per group, one bar per series.
  function hbars(rows, fmt, seriesNames) {
    if (!rows.length) return emptyChart('Nothing in this window.');
    const max = Math.max(...rows.flatMap(([, v]) => v.map(Number)), 0) || 1;
    const box = el('div', { class: 'hbars' });
    for (const [name, vals] of rows) {
      box.append(el('div', { class: 'hrow' }, el('div', { class: 'hlabel', title: name }, name),
        el('div', { class: 'hvals' }, vals.map((v, i) => el('div', { class: 'hbar-line' },
          el('div', { class: 'hbar', style: `width:${Math.max(0.5, (Number(v) / max) * 100).toFixed(1)}%;background:${PALETTE[i]}` }),
          el('span', { class: 'hnum' }, seriesNames ? `${seriesNames[i]} ${fmt(v)}` : fmt(v)))))));
    }
    return box;
  }

  const clock = (d) => d.toISOString().slice(5, 16).replace('T', ' ');

  // ---------- Webhooks ----------

  async function webhooksView(root, _parts, params) {
    const status = ['pending', 'delivered', 'dead'].includes(params.get('status')) ? params.get('status') : '';
    const tbody = el('tbody');
    const deadCount = el('span', { 'data-testid': 'webhook-dead' });
    root.append(el('h1', {}, 'Webhook deliveries'),
      el('div', { class: 'tabs' }, ['', 'pending', 'delivered', 'dead'].map((s) =>
        el('a', { href: hashFor('webhooks', { status: s }), class: s === status ? 'active' : '' }, s || 'all'))),
      el('p', { class: 'muted' }, 'Dead letters (gave up): ', deadCount),
      el('table', { class: 'grid', 'data-testid': 'webhooks' },
        el('thead', {}, el('tr', {}, ['#', 'Event', 'Job', 'URL', 'Status', 'Attempts', 'Last error', 'Created', ''].map((t) => el('th', {}, t)))), tbody));
    const refresh = async () => {
      const q = new URLSearchParams({ limit: '100' });
      if (status) q.set('status', status);
      const [page, dead] = await Promise.all([
        api(`/v1/webhooks/deliveries?${q}`, { signal: view.abort.signal }),
        api('/v1/webhooks/deliveries?status=dead&limit=500', { signal: view.abort.signal }),
      ]);
      deadCount.textContent = `${dead.deliveries.length}${dead.next_cursor ? '+' : ''}`;
      clear(tbody);
      if (!page.deliveries.length) tbody.append(el('tr', {}, el('td', { colspan: 9, class: 'empty' }, 'No deliveries.')));
      for (const d of page.deliveries) {
        tbody.append(el('tr', {}, el('td', { class: 'num' }, d.id), el('td', {}, d.event),
          el('td', { class: 'mono' }, d.job_id ? el('a', { href: `#/jobs/${encodeURIComponent(d.job_id)}` }, shortId(d.job_id)) : '—'),
          el('td', { class: 'url' }, d.url), el('td', {}, badge(d.status)), el('td', { class: 'num' }, d.attempts),
          el('td', { class: 'err' }, d.last_error || ''), el('td', {}, time(d.created_at)),
          el('td', {}, d.status === 'dead' ? el('button', { type: 'button', onclick: async () => {
            try {
              await api(`/v1/webhooks/deliveries/${encodeURIComponent(d.id)}/retry`, { method: 'POST', body: {} });
              notice('Queued for another attempt.', 'ok');
              await refresh();
            } catch (e) { showError(e); }
          } }, 'Retry') : '')));
      }
    };
    await poll(refresh, 5000);
  }

  // ---------- Health: providers and webhook deliveries ----------

  const pct = (v) => `${((Number(v) || 0) * 100).toFixed(1)}%`;

  async function healthView(root) {
    const providers = el('tbody');
    const hooks = el('div', { class: 'cards', 'data-testid': 'webhook-totals' });
    root.append(el('h1', {}, 'Health'),
      el('h2', {}, 'Model providers'),
      el('p', { class: 'muted' }, 'As the node that answered sees them: its circuit breakers, and its last 200 attempts at each provider.'),
      el('table', { class: 'grid', 'data-testid': 'providers' },
        el('thead', {}, el('tr', {}, ['Provider', 'Kind', 'Breaker', 'Attempts', 'Errors', 'Error rate', 'p50', 'p95'].map((t) => el('th', {}, t)))), providers),
      el('h2', {}, 'Webhook deliveries'),
      el('p', { class: 'muted' }, 'Kept deliveries by status; dead ones are the webhook dead letters (', el('a', { href: '#/webhooks?status=dead' }, 'list'), ').'),
      hooks);
    // A count by status, from pages of the deliveries list (at most 2,000 read a refresh).
    const countOf = async (status, signal) => {
      let n = 0;
      let cursor = null;
      for (let i = 0; i < 4; i++) {
        const q = new URLSearchParams({ status, limit: '500' });
        if (cursor !== null) q.set('cursor', cursor);
        const page = await api(`/v1/webhooks/deliveries?${q}`, { signal });
        n += page.deliveries.length;
        cursor = page.next_cursor ?? null;
        if (cursor === null) return int(n);
      }
      return `${int(n)}+`;
    };
    await poll(async () => {
      const signal = view.abort.signal;
      const [list, delivered, pending, dead] = await Promise.all([
        api('/v1/providers', { signal }),
        countOf('delivered', signal), countOf('pending', signal), countOf('dead', signal),
      ]);
      clear(providers);
      if (!list.providers.length) providers.append(el('tr', {}, el('td', { colspan: 8, class: 'empty' }, 'No providers configured.')));
      for (const p of list.providers) {
        providers.append(el('tr', { 'data-provider': p.name },
          el('td', {}, p.name), el('td', {}, p.kind), el('td', {}, badge(p.breaker)),
          el('td', { class: 'num' }, int(p.attempts)), el('td', { class: 'num' }, int(p.errors)),
          el('td', { class: 'num' }, pct(p.error_rate)), el('td', { class: 'num' }, ms(p.p50_ms)), el('td', { class: 'num' }, ms(p.p95_ms))));
      }
      clear(hooks).append(card('Delivered', delivered, 'webhook-delivered'), card('Pending', pending, 'webhook-pending'),
        card('Dead letters', dead, 'webhook-dead-letters'));
    }, 5000);
  }

  // ---------- Nodes ----------

  async function nodesView(root) {
    const tbody = el('tbody');
    root.append(el('h1', {}, 'Nodes'), el('p', { class: 'muted' }, 'Nodes sharing this database, seen in the last 15 s (needs the admin scope).'),
      el('table', { class: 'grid', 'data-testid': 'nodes' },
        el('thead', {}, el('tr', {}, ['Node', 'Host', 'Version', 'Roles', 'Started', 'Last seen'].map((t) => el('th', {}, t)))), tbody));
    await poll(async () => {
      let list;
      try {
        list = await api('/v1/nodes', { signal: view.abort.signal });
      } catch (e) {
        if (e.status === 403) { clear(tbody).append(el('tr', {}, el('td', { colspan: 6, class: 'empty' }, 'This key lacks the admin scope.'))); return; }
        throw e;
      }
      clear(tbody);
      for (const n of list.nodes) {
        tbody.append(el('tr', {}, el('td', { class: 'mono' }, n.id), el('td', {}, n.hostname), el('td', {}, n.version),
          el('td', {}, n.roles), el('td', {}, time(n.started_at)), el('td', {}, time(n.last_seen))));
      }
    }, 5000);
  }

  // ---------- start ----------

  function start() {
    const form = document.getElementById('key-form');
    const input = document.getElementById('key-input');
    document.getElementById('key-button').addEventListener('click', () => { form.hidden = !form.hidden; if (!form.hidden) input.focus(); });
    form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      const v = input.value.trim();
      if (v) sessionStorage.setItem(KEY_STORE, v);
      input.value = '';
      form.hidden = true;
      notice('Key saved for this tab.', 'ok');
      render();
    });
    document.getElementById('key-forget').addEventListener('click', () => {
      sessionStorage.removeItem(KEY_STORE);
      form.hidden = true;
      notice('Key forgotten.', 'ok');
      render();
    });
    window.addEventListener('hashchange', render);
    render();
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();

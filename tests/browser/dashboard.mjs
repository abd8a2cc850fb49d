// Drives the dashboard of a running `sluice up` in headless Chromium (Debian's `chromium`,
// through playwright-core) and checks it against the API's own JSON. Run by
// runtime/tests/dashboard.rs, which starts the server and makes the jobs; by hand:
//
//   SLUICE_URL=http://127.0.0.1:8080 XSS_JOB=<id> DEAD_JOB=<id> ARTIFACTS=/tmp/shots \
//     node tests/browser/dashboard.mjs
//
// Exits non-zero with a message on the first mismatch.
import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import assert from 'node:assert/strict';

const BASE = process.env.SLUICE_URL;
// `keyed`: a server outside dev mode; the page must ask for KEY and then show KEYED_JOB.
const MODE = process.env.MODE || 'dev';
const XSS_JOB = process.env.XSS_JOB;
const DEAD_JOB = process.env.DEAD_JOB;
const CALLS_JOB = process.env.CALLS_JOB;
const ARTIFACTS = process.env.ARTIFACTS || 'target/dashboard';
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
assert.ok(BASE && (MODE === 'keyed' || (XSS_JOB && DEAD_JOB && CALLS_JOB)), 'set SLUICE_URL, XSS_JOB, DEAD_JOB and CALLS_JOB');
mkdirSync(ARTIFACTS, { recursive: true });

// The page's formatting, restated: the numbers shown must be the API's numbers.
const usd = (v) => '$' + (Math.abs(Number(v) || 0) < 1 ? (Number(v) || 0).toFixed(6) : (Number(v) || 0).toFixed(2));
const int = (v) => (Number(v) || 0).toLocaleString('en-US');
const ms = (v) => `${Math.round(Number(v)).toLocaleString('en-US')} ms`;

async function api(path, init) {
  const res = await fetch(BASE + path, init);
  const body = await res.json();
  assert.ok(res.ok, `${path}: ${res.status} ${JSON.stringify(body)}`);
  return body;
}

const step = (name) => console.log(`-- ${name}`);
const problems = [];

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  headless: true,
  // Root in a container has no user namespace for Chromium's sandbox.
  args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
});
try {
  const page = await browser.newPage({ viewport: { width: 1360, height: 900 } });
  page.setDefaultTimeout(15000);
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error') problems.push(`console error: ${m.text()}`);
  });
  const shot = (name) => page.screenshot({ path: join(ARTIFACTS, `${name}.png`), fullPage: true });
  const texts = (sel) => page.$$eval(sel, (els) => els.map((e) => e.textContent.trim()));

  checks: {
  if (MODE === 'keyed') {
    await keyed(page, shot);
    // The refused request shows in the console as a failed resource load; nothing else may.
    const others = problems.filter((p) => !p.includes('401'));
    problems.length = 0;
    problems.push(...others);
    break checks;
  }

  step('page and headers');
  const res = await page.goto(`${BASE}/`);
  const csp = res.headers()['content-security-policy'] || '';
  assert.match(csp, /script-src 'self'/, 'the page is served with a CSP');
  assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval/, 'the CSP allows no inline code');

  step('jobs list matches GET /v1/jobs');
  const jobs = await api('/v1/jobs?limit=50');
  await page.waitForSelector('table[data-testid=jobs] tr[data-job]');
  await page.waitForFunction((n) => document.querySelectorAll('table[data-testid=jobs] tr[data-job]').length === n, jobs.items.length);
  const rows = await page.$$eval('table[data-testid=jobs] tr[data-job]', (trs) =>
    trs.map((tr) => ({ id: tr.dataset.job, status: tr.cells[2].textContent.trim(), plugin: tr.cells[1].textContent.trim() })));
  assert.deepEqual(rows.map((r) => r.id), jobs.items.map((j) => j.id), 'same jobs, same order');
  for (const [i, j] of jobs.items.entries()) {
    assert.equal(rows[i].status, j.status, `status of ${j.id}`);
    assert.equal(rows[i].plugin, `${j.plugin} v${j.plugin_version}`);
  }
  await shot('jobs');
  assert.equal(await page.isVisible('#key-form'), false, 'no key is asked for in dev mode');
  assert.equal(await page.isVisible('text=Load more'), Boolean(jobs.next_cursor));

  step('filter by plugin');
  await page.selectOption('select[name=plugin]', 'state-effects');
  const byPlugin = await api('/v1/jobs?plugin=state-effects&limit=50');
  await page.waitForFunction((n) => location.hash.includes('plugin=state-effects')
    && document.querySelectorAll('table[data-testid=jobs] tr[data-job]').length === n, byPlugin.items.length);
  assert.deepEqual(await page.$$eval('table[data-testid=jobs] tr[data-job]', (t) => t.map((r) => r.dataset.job)),
    byPlugin.items.map((j) => j.id));

  step('filter by status and tag');
  await page.goto(`${BASE}/#/jobs?status=completed&tag=user%3Aann`);
  const byTag = await api('/v1/jobs?status=completed&tag=user:ann&limit=50');
  assert.ok(byTag.items.length > 0, 'the fixture made completed jobs of user ann');
  await page.waitForFunction((n) => document.querySelectorAll('table[data-testid=jobs] tr[data-job]').length === n, byTag.items.length);
  assert.deepEqual(await page.$$eval('table[data-testid=jobs] tr[data-job]', (t) => t.map((r) => r.dataset.job)),
    byTag.items.map((j) => j.id));

  step('a job output with markup is text');
  await page.goto(`${BASE}/#/jobs/${XSS_JOB}`);
  const xss = await api(`/v1/jobs/${XSS_JOB}`);
  await page.waitForFunction(() => document.querySelector('[data-testid=job-output]').textContent.includes('onerror'));
  const out = await page.textContent('[data-testid=job-output]');
  assert.equal(out, JSON.stringify(xss.output, null, 2), 'the output is shown verbatim');
  assert.ok(out.includes('<img src=x onerror='), out);
  assert.equal(await page.$$eval('main img, main script, main iframe', (e) => e.length), 0, 'no element was made from data');
  assert.equal(await page.evaluate(() => window.__pwned), undefined, 'no injected handler ran');
  const tagText = await texts('.job-head .tag');
  assert.ok(tagText.some((t) => t.includes('<script>')), `tags shown as text: ${tagText}`);
  await shot('job-xss');

  step('a job with model calls: events, attempts, usage');
  const job = await api(`/v1/jobs/${CALLS_JOB}`);
  await page.goto(`${BASE}/#/jobs/${CALLS_JOB}`);
  await page.waitForFunction((n) => document.querySelectorAll('table[data-testid=model-calls] tbody tr td.num').length >= n, job.usage.model_calls);
  assert.ok(job.usage.model_calls > 0, 'the fixture job made a model call');
  assert.equal((await texts('table[data-testid=model-calls] tbody tr')).length, job.usage.model_calls);
  assert.equal(await page.textContent('[data-testid=card-cost] .value'), usd(job.usage.cost_usd));
  assert.equal(await page.textContent('[data-testid=card-calls] .value'), int(job.usage.model_calls));
  assert.equal(await page.textContent('[data-testid=card-tokens] .value'), `${int(job.usage.input_tokens)} / ${int(job.usage.output_tokens)}`);
  assert.equal((await texts('table[data-testid=attempts] tbody tr')).length, job.attempts.length);
  await page.waitForFunction(() => [...document.querySelectorAll('[data-testid=job-events] .ev')].some((e) => e.textContent === 'result'));
  await shot('job');

  for (const group of ['plugin', 'user', 'feature', 'model', 'provider']) {
    step(`usage by ${group} matches GET /v1/usage`);
    await page.goto(`${BASE}/#/cost?window=24h&group=${group}`);
    const usage = await api(`/v1/usage?group_by=${group}&since=24h`);
    assert.ok(usage.items.length > 0, `usage by ${group} is not empty`);
    await page.waitForFunction((n) => document.querySelectorAll('table[data-testid=usage] tr[data-key]').length === n, usage.items.length);
    for (const r of usage.items) {
      const key = r.key === null ? `(no ${group})` : r.key;
      const cells = await page.$$eval('table[data-testid=usage] tr[data-key]', (trs, k) =>
        trs.find((tr) => tr.dataset.key === k)?.querySelectorAll('td') ? [...trs.find((tr) => tr.dataset.key === k).cells].map((c) => c.textContent) : null, key);
      assert.ok(cells, `a row for ${group} ${key}`);
      assert.deepEqual(cells, [key, int(r.calls), int(r.input_tokens), int(r.output_tokens), int(r.cached_input_tokens),
        usd(r.cost_usd), ms(r.latency_p50_ms), ms(r.latency_p95_ms)], `${group} ${key}`);
    }
    const total = usage.items.reduce((a, r) => a + r.cost_usd, 0);
    assert.equal(await page.textContent('[data-testid=usage-totals] [data-testid=card-cost] .value'), usd(total));
    assert.ok(await page.$('[data-testid=chart-cost-time] svg rect'), 'a cost-over-time bar');
    assert.ok(await page.$('[data-testid=chart-latency-time] svg polyline'), 'a latency line');
    if (group === 'user') {
      const budgets = await api('/v1/budgets');
      await page.waitForSelector('[data-testid=budgets] tr[data-budget]');
      const b = budgets.budgets[0];
      const cells = await page.$eval(`[data-testid=budgets] tr[data-budget="${b.name}"]`, (tr) => [...tr.cells].map((c) => c.textContent));
      assert.equal(cells[3], usd(b.spec.limit_usd));
      assert.equal(cells[4], usd(b.windows[0]?.spent_usd ?? 0));
      assert.equal(cells[6], usd(b.windows[0]?.remaining_usd ?? b.spec.limit_usd));
      await shot('cost');
      // The README's picture: one screen, small.
      await page.setViewportSize({ width: 1180, height: 780 });
      await page.screenshot({ path: join(ARTIFACTS, 'readme.png') });
      await page.setViewportSize({ width: 1360, height: 900 });
    }
  }

  step('webhook deliveries match the API');
  await page.goto(`${BASE}/#/webhooks`);
  const deliveries = await api('/v1/webhooks/deliveries?limit=100');
  await page.waitForFunction((n) => document.querySelectorAll('table[data-testid=webhooks] tbody tr').length === Math.max(n, 1)
    && (n === 0 || !document.querySelector('table[data-testid=webhooks] td.empty')), deliveries.deliveries.length);
  await shot('webhooks');

  step('provider health and webhook counts match the API');
  await page.goto(`${BASE}/#/health`);
  const prov = await api('/v1/providers');
  assert.ok(prov.providers.some((p) => p.attempts > 0 && p.p95_ms !== undefined), 'the jobs made provider attempts');
  await page.waitForFunction((n) => document.querySelectorAll('table[data-testid=providers] tr[data-provider]').length === n, prov.providers.length);
  const pct = (v) => `${((Number(v) || 0) * 100).toFixed(1)}%`;
  const msOr = (v) => (v === undefined || v === null ? '—' : ms(v));
  for (const p of prov.providers) {
    // Nothing calls a provider now, so the page's last reading is the API's.
    const cells = await page.$eval(`table[data-testid=providers] tr[data-provider="${p.name}"]`, (tr) => [...tr.cells].map((c) => c.textContent));
    assert.deepEqual(cells, [p.name, p.kind, p.breaker, int(p.attempts), int(p.errors), pct(p.error_rate), msOr(p.p50_ms), msOr(p.p95_ms)], `provider ${p.name}`);
  }
  const count = async (status) => (await api(`/v1/webhooks/deliveries?status=${status}&limit=500`)).deliveries.length;
  const hooks = { delivered: await count('delivered'), pending: await count('pending'), dead: await count('dead') };
  assert.ok(hooks.pending + hooks.dead > 0, 'the unreachable webhook is pending or dead');
  await page.waitForFunction((h) => {
    const v = (id) => document.querySelector(`[data-testid=card-${id}] .value`)?.textContent;
    return v('webhook-delivered') === String(h.delivered) && v('webhook-pending') === String(h.pending)
      && v('webhook-dead-letters') === String(h.dead);
  }, hooks);
  await shot('health');

  step('nodes');
  await page.goto(`${BASE}/#/nodes`);
  const nodes = await api('/v1/nodes');
  await page.waitForFunction((n) => document.querySelectorAll('table[data-testid=nodes] tbody tr').length === n, nodes.nodes.length);

  step('DLQ lists the dead job; its Redrive button takes it out');
  await page.goto(`${BASE}/#/dlq`);
  const dead = await api('/v1/dlq');
  await page.waitForSelector(`table[data-testid=dlq] tr[data-job="${DEAD_JOB}"]`);
  assert.equal(await page.textContent('[data-testid=dlq-total]'), int(dead.total));
  const reason = await page.$eval(`table[data-testid=dlq] tr[data-job="${DEAD_JOB}"] td.err`, (td) => td.textContent);
  const deadJob = dead.items.find((j) => j.id === DEAD_JOB);
  assert.equal(reason, [deadJob.error.kind, deadJob.error.message].filter(Boolean).join(': '));
  await shot('dlq');
  await page.click(`table[data-testid=dlq] tr[data-job="${DEAD_JOB}"] button[data-testid=redrive]`);
  await page.waitForSelector(`table[data-testid=dlq] tr[data-job="${DEAD_JOB}"]`, { state: 'detached' });
  const after = await api(`/v1/jobs/${DEAD_JOB}`);
  assert.equal(after.run, 1, 'the redrive made a new run');
  const stillDead = (await api('/v1/dlq')).items.some((j) => j.id === DEAD_JOB);
  assert.ok(!stillDead, 'the job left the DLQ');
  await page.waitForSelector('#notice:not([hidden])');
  assert.match(await page.textContent('#notice'), /Redriven: 1 job/);
  await shot('dlq-after-redrive');
  }

  assert.deepEqual(problems, [], 'no page errors, console errors or CSP violations');
  console.log(`ok: screenshots in ${ARTIFACTS}`);
} finally {
  await browser.close();
}

// Outside dev mode: the first API call answers 401, the page asks for a key, keeps it in
// sessionStorage only, and then shows the tenant's jobs; "Forget" drops it.
async function keyed(page, shot) {
  const KEY = process.env.KEY;
  const JOB = process.env.KEYED_JOB;
  assert.ok(KEY && JOB, 'set KEY and KEYED_JOB');
  step('the page asks for a key');
  await page.goto(`${BASE}/`);
  await page.waitForSelector('#key-form', { state: 'visible' });
  assert.match(await page.textContent('#notice'), /needs an API key/);
  await shot('keyed-ask');
  step('with the key it shows the jobs');
  await page.fill('#key-input', KEY);
  await page.click('#key-form button[type=submit]');
  await page.waitForSelector(`table[data-testid=jobs] tr[data-job="${JOB}"]`);
  assert.equal(await page.isVisible('#key-form'), false);
  assert.equal(await page.evaluate(() => sessionStorage.getItem('sluice.apiKey')), KEY);
  assert.equal(await page.evaluate(() => localStorage.length), 0, 'the key is not kept beyond the tab');
  await page.goto(`${BASE}/#/jobs/${JOB}`);
  await page.waitForFunction(() => document.querySelector('[data-testid=job-output]').textContent.length > 1);
  step('forget drops it');
  await page.click('#key-button');
  await page.click('#key-forget');
  assert.equal(await page.evaluate(() => sessionStorage.getItem('sluice.apiKey')), null);
  await page.waitForSelector('#key-form', { state: 'visible' });
}

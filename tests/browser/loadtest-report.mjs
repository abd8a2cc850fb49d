// Opens a `sluice loadtest --html` report in headless Chromium (Debian's `chromium`, through
// playwright-core) with every network request blocked, and checks that it renders and that
// every number it shows is the JSON report's. Run by runtime/tests/loadtest.rs; by hand:
//
//   REPORT_HTML=/tmp/r.html REPORT_JSON=/tmp/r.json node tests/browser/loadtest-report.mjs
//
// Exits non-zero with a message on the first mismatch.
import { chromium } from 'playwright-core';
import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import assert from 'node:assert/strict';

const HTML = process.env.REPORT_HTML;
const JSON_FILE = process.env.REPORT_JSON;
const ARTIFACTS = process.env.ARTIFACTS || 'target/loadtest-report';
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
assert.ok(HTML && JSON_FILE, 'set REPORT_HTML and REPORT_JSON');
mkdirSync(ARTIFACTS, { recursive: true });
const report = JSON.parse(readFileSync(JSON_FILE, 'utf8'));

// `jobs.completed` → report.jobs.completed
const at = (path) => path.split('.').reduce((v, k) => (v == null ? v : v[k]), report);

// The number a text shows, and how many decimals it shows.
function shown(text) {
  const m = text.replace(/,/g, '').match(/-?\d+(\.\d+)?/);
  assert.ok(m, `no number in ${JSON.stringify(text)}`);
  return { value: Number(m[0]), decimals: m[1] ? m[1].length - 1 : 0 };
}

// What the JSON value is in the unit the page shows it in.
function expected(key, v) {
  if (key.startsWith('cost.')) return v / 1e6; // micro-dollars shown as dollars
  return v;
}

const problems = [];
const requests = [];
const browser = await chromium.launch({
  executablePath: CHROMIUM,
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
});
try {
  const context = await browser.newContext({ viewport: { width: 1400, height: 1000 } });
  // Nothing may be fetched: the page must stand alone.
  await context.route('**/*', (route) => {
    const url = route.request().url();
    if (url.startsWith('file:')) return route.continue();
    requests.push(url);
    return route.abort();
  });
  const page = await context.newPage();
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error') problems.push(`console error: ${m.text()}`);
  });
  await page.goto(pathToFileURL(HTML).href);
  await page.screenshot({ path: join(ARTIFACTS, 'report.png'), fullPage: true });

  // The heading and the verdict.
  assert.equal((await page.textContent('#scenario')).trim(), report.run.scenario);
  assert.equal((await page.textContent('#run-id')).trim(), report.run.run_id);
  const verdict = (await page.textContent('#verdict')).trim();
  assert.equal(verdict, report.passed ? 'Every SLO met' : 'SLO missed');

  // Every number tile against the JSON, to the precision it is shown with.
  const tiles = await page.$$eval('[data-k]', (els) =>
    els.map((e) => ({ key: e.dataset.k, text: e.textContent.trim(), w: e.getBoundingClientRect().width })),
  );
  assert.ok(tiles.length >= 20, `only ${tiles.length} numbers on the page`);
  for (const { key, text, w } of tiles) {
    const v = at(key);
    assert.equal(typeof v, 'number', `${key} is not a number in the JSON (${v})`);
    const s = shown(text);
    const want = expected(key, v);
    const tolerance = 0.5 * 10 ** -s.decimals + 1e-9;
    assert.ok(Math.abs(s.value - want) <= tolerance, `${key}: page shows ${text}, JSON has ${want}`);
    assert.ok(w > 0, `${key} is not rendered`);
  }
  console.log(`-- ${tiles.length} numbers match the JSON`);

  // The SLO table: one row per check, the same verdicts and values.
  const rows = await page.$$eval('#slo tbody tr', (trs) =>
    trs.map((tr) => ({ name: tr.dataset.slo, actual: tr.querySelector('.actual').textContent.trim(), verdict: tr.lastElementChild.textContent.trim() })),
  );
  assert.equal(rows.length, report.slo.length, 'one row per SLO');
  for (const c of report.slo) {
    const row = rows.find((r) => r.name === c.name);
    assert.ok(row, `no row for SLO ${c.name}`);
    assert.equal(row.verdict, c.met ? 'met' : 'MISSED', c.name);
    const s = shown(row.actual);
    assert.ok(Math.abs(s.value - c.actual) <= 0.5 * 10 ** -s.decimals + 1e-9, `${c.name}: ${row.actual} vs ${c.actual}`);
  }
  console.log(`-- ${rows.length} SLO rows match`);

  // The charts are drawn: each has a visible SVG, and the time series have lines.
  for (const id of ['chart-throughput', 'chart-latency', 'chart-queue', 'chart-errors', 'chart-cost', 'chart-error-classes', 'chart-amplification', 'chart-cost-total', 'chart-cost-job', 'chart-accounting']) {
    const box = await page.$eval(`#${id} svg`, (s) => { const r = s.getBoundingClientRect(); return [r.width, r.height]; });
    assert.ok(box[0] > 100 && box[1] > 50, `${id} is not rendered: ${box}`);
  }
  const line = async (chart, series) =>
    page.$eval(`#${chart} path[data-series="${series}"]`, (p) => [p.getAttribute('d'), p.getTotalLength()]);
  for (const [chart, series] of [['chart-throughput', 'completed'], ['chart-throughput', 'submitted'], ['chart-latency', 'p50'], ['chart-queue', 'outstanding'], ['chart-cost', 'spend']]) {
    const [d, len] = await line(chart, series);
    assert.ok(d && d.startsWith('M') && len > 0, `${chart}/${series} draws no line: ${d}`);
  }
  // The completed series sums to the completed jobs: the chart is the data.
  const completedPerBucket = report.series.map((p) => p.completed);
  assert.equal(completedPerBucket.reduce((a, b) => a + b, 0), report.jobs.completed, 'series sum');
  // The accounting bars carry the same counts.
  const bars = await page.$$eval('#chart-accounting text', (ts) => ts.map((t) => t.textContent.trim()));
  for (const k of ['completed', 'dead', 'cancelled', 'lost']) {
    const i = bars.indexOf(k);
    assert.ok(i >= 0, `no ${k} bar`);
    assert.equal(shown(bars[i + 1]).value, report.jobs[k], `${k} bar`);
  }

  // The embedded data is the JSON report.
  const embedded = JSON.parse(await page.textContent('#report'));
  assert.deepEqual(embedded, report);
  console.log('-- charts drawn, embedded data equals the JSON');
} finally {
  await browser.close();
}
assert.deepEqual(requests, [], `the page fetched ${requests.join(', ')}`);
assert.deepEqual(problems, [], problems.join('\n'));
console.log('ok');

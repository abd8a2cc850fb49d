// Unit tests without a host: `node --test` (or `npm test`). FakeHost, the SDK's test double,
// scripts the models' replies and records calls, events, state and usage.

import { test } from 'node:test';
import assert from 'node:assert/strict';

import { FakeHost, JobFailure } from '{{sdk_js_path}}/testing.js';

// After the test double, which is what lets Node resolve `@sluice/sdk`.
const { handle } = await import('./app.js');

test('summarizes with the fast model', () => {
  const host = new FakeHost().reply('fast', 'A short summary.');
  const out = host.run(handle, { text: 'A long text.' });
  assert.equal(out.summary, 'A short summary.');
  assert.equal(host.calls[0].model, 'fast');
  assert.equal(out.cost_micros, host.spend().costMicros);
});

test('empty text is permanent', () => {
  const host = new FakeHost();
  assert.throws(() => host.run(handle, { text: ' ' }), (e) => e instanceof JobFailure && !e.retryable);
  assert.deepEqual(host.calls, []);
});

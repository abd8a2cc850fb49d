// Unit tests of the classify port without a host (`@sluice/sdk/testing`'s FakeHost):
// `node --test` from this folder.

import { test } from 'node:test';
import assert from 'node:assert/strict';

import { FakeHost, JobFailure } from '../../sdk-js/testing.js';

// After the test double: it is what lets Node resolve `@sluice/sdk` and the host imports.
const { handle } = await import('./app.js');
const { ModelError } = await import('@sluice/sdk');

const LABELS = ['billing', 'bug report', 'other'];
const INPUT = { text: 'The export button crashes the app.', labels: LABELS };

test('a confident fast answer is used as it is, fenced and in another case', () => {
  const host = new FakeHost()
    .reply('fast', '```json\n{"label": "Bug Report", "confidence": "85%"}\n```');
  const out = host.run(handle, INPUT);
  assert.equal(out.label, 'bug report');
  assert.equal(out.confidence, 0.85);
  assert.equal(out.escalated, false);
  assert.equal(out.method, 'model');
  assert.equal(host.calls.length, 1);
  const [call] = host.calls;
  assert.equal(call.model, 'fast');
  assert.equal(call.json, true);
  assert.equal(call.maxTokens, 100);
  assert.match(call.messages[0].content, /"billing","bug report","other"/);
  assert.equal(call.messages[1].content, INPUT.text);
  // Usage is recorded as the host would: the output's cost is what the calls cost.
  assert.equal(out.cost_micros, host.spend().costMicros);
  assert.equal(host.spend().calls, 1);
  assert.ok(host.spend().inputTokens > 0);
});

test('an unsure fast answer escalates to the smart model and says why', () => {
  const host = new FakeHost()
    .reply('fast', '{"label": "other", "confidence": 0.2}')
    .reply('smart', '{"label": "billing", "confidence": 0.9}');
  const out = host.run(handle, INPUT);
  assert.equal(out.label, 'billing');
  assert.equal(out.model_used, 'smart');
  assert.equal(out.escalated, true);
  assert.deepEqual(host.calls.map((c) => c.model), ['fast', 'smart']);
  assert.equal(out.cost_micros, 2);
  const [log] = host.events.filter((e) => e.kind === 'log');
  assert.equal(log.level, 'info');
  assert.equal(log.message, 'escalating');
  assert.equal(log.fields.to, 'smart');
  assert.match(log.fields.why, /unsure \(0\.20 < 0\.7\)/);
});

test('a smart model that is down is retried, except on the last attempt', () => {
  const script = () => new FakeHost()
    .reply('fast', '{"label": "other", "confidence": 0.2}')
    .fail('smart', new ModelError('unavailable', 'down'));
  assert.throws(() => script().run(handle, INPUT, { attempt: 1, maxAttempts: 3 }), (e) => {
    assert.ok(e instanceof JobFailure);
    assert.equal(e.retryable, true);
    assert.match(e.message, /model unavailable: down/);
    return true;
  });
  const out = script().run(handle, INPUT, { attempt: 3, maxAttempts: 3 });
  assert.equal(out.label, 'other');
  assert.equal(out.escalated, true);
  assert.match(out.note, /escalation failed: model unavailable: down; used fast's unsure answer/);
});

test('with no usable answer at all, the keyword match picks and warns', () => {
  const host = new FakeHost()
    .reply('fast', 'I think it is a bug.')
    .fail('smart', new ModelError('content-filtered', 'no'));
  const text = 'The app crashed: a bug. Another bug! Please fix the bug report form.';
  const out = host.run(handle, { text, labels: LABELS });
  assert.equal(out.label, 'bug report');
  assert.equal(out.method, 'keyword');
  assert.equal(out.model_used, 'keyword-match');
  assert.ok(out.confidence > 0 && out.confidence <= 0.5);
  assert.deepEqual(host.logs('warn'), ['no usable model answer; keyword match picked "bug report"']);
});

test('bad input is permanent and calls no model', () => {
  for (const input of [{ text: ' ', labels: LABELS }, { text: 'x', labels: ['a'] }, { text: 'x', labels: LABELS, colour: 1 }, [1]]) {
    const host = new FakeHost();
    assert.throws(() => host.run(handle, input), (e) => e instanceof JobFailure && !e.retryable, JSON.stringify(input));
    assert.deepEqual(host.calls, []);
  }
  assert.throws(() => new FakeHost().runText(handle, '{not json'),
    (e) => e instanceof JobFailure && !e.retryable && /invalid job input/.test(e.message));
});

test('a bug in a reply handler is a retryable failure with its stack logged', () => {
  const host = new FakeHost().reply('fast', () => { throw new RangeError('boom'); });
  assert.throws(() => host.run(handle, INPUT), (e) => {
    assert.ok(e instanceof JobFailure);
    assert.equal(e.retryable, true);
    assert.match(e.message, /handler threw RangeError: boom/);
    return true;
  });
  assert.equal(host.logs('error').length, 1);
  assert.ok(host.events.at(-1).fields.stack.includes('RangeError'));
});

test('an unscripted model is an invalid request, as an unknown alias is on a real host', () => {
  const out = new FakeHost().reply('fast', '{"label": "other", "confidence": 0.1}').run(handle, INPUT);
  assert.match(out.note, /escalation failed: invalid model request: no reply scripted for model "smart"/);
});

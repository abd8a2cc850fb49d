// The test double itself: state, effects.once, events and usage behave as the host's do, so a
// handler tested against it behaves the same on a real host. `node --test testing.test.js`.

import { test } from 'node:test';
import assert from 'node:assert/strict';

import { FakeHost, JobFailure } from './testing.js';

const sdk = await import('@sluice/sdk');
const { handler, models, state, effects, events, usage, SluiceError, StateError } = sdk;

// A handler that uses every part of the SDK: a counter in state, a once-only notification,
// progress, a reported cost, and its spend at the end.
const handle = handler((job, input) => {
  events.progress('starting', 0);
  const seen = state.get(`count:${input.user}`, 0) + 1;
  state.set(`count:${input.user}`, seen);
  const sent = effects.once(`notify:${job.id}`, () => {
    events.info('notifying', { user: input.user });
    return { messageId: `m-${seen}` };
  });
  const reply = models.chat('fast').user(`hello ${input.user}`).send();
  usage.reportCost('search API', 250);
  events.progress('done', 2);
  return { seen, sent, reply: reply.content, spend: usage.jobSpend(), left: usage.budgetRemaining() };
});

test('state persists across jobs on one host and effects run once per job', () => {
  const host = new FakeHost().reply('fast', 'hi').withState('count:ann', 4);
  const first = host.run(handle, { user: 'ann' }, { id: 'j1' });
  assert.equal(first.seen, 5);
  assert.deepEqual(first.sent, { messageId: 'm-5' });
  assert.equal(host.state('count:ann'), 5);
  // The same job again (a retry): the effect's recorded result, and no second notification.
  const again = host.run(handle, { user: 'ann' }, { id: 'j1', attempt: 2, maxAttempts: 2 });
  assert.deepEqual(again.sent, { messageId: 'm-5' });
  assert.equal(again.seen, 6);
  assert.deepEqual(host.logs('info'), ['notifying']);
  assert.deepEqual(host.effects(), { 'notify:j1': { messageId: 'm-5' } });
});

test('an effect committed by an earlier attempt is not run again', () => {
  const host = new FakeHost().reply('fast', 'hi').withEffect('notify:j9', { messageId: 'old' });
  const out = host.run(handle, { user: 'bo' }, { id: 'j9' });
  assert.deepEqual(out.sent, { messageId: 'old' });
  assert.deepEqual(host.logs(), []);
});

test('events, usage and the budget are recorded', () => {
  const host = new FakeHost().reply('fast', 'hi there').budget(1000);
  const out = host.run(handle, { user: 'cy' });
  assert.deepEqual(
    host.events.filter((e) => e.kind === 'progress').map((e) => [e.message, e.fraction]),
    [['starting', 0], ['done', 1]],
  );
  assert.deepEqual(host.costs, [{ description: 'search API', costMicros: 250 }]);
  assert.equal(out.spend.costMicros, 251, 'one model call (1 µ$) and the reported 250');
  assert.equal(out.spend.calls, 1);
  assert.ok(out.spend.inputTokens > 0 && out.spend.outputTokens > 0);
  assert.equal(out.left, 750);
  assert.equal(host.budgetRemaining(), 750);
  assert.deepEqual(host.spend(), { costMicros: 251, inputTokens: out.spend.inputTokens, outputTokens: out.spend.outputTokens, calls: 1 });
});

test('a cost beyond the budget is refused, permanently', () => {
  const host = new FakeHost().reply('fast', 'hi').budget(100);
  assert.throws(() => host.run(handle, { user: 'di' }),
    (e) => e instanceof JobFailure && !e.retryable && /budget refused 250 µ\$ for search API: 100 µ\$ left/.test(e.message));
  assert.deepEqual(host.costs, []);
});

test('replies are used in order and the last one repeats; a scripted failure is a ModelError', () => {
  const host = new FakeHost().reply('fast', 'one').reply('fast', 'two')
    .fail('smart', new sdk.ModelError('rate-limited', 'slow down', 1500));
  const got = host.serve(() => [1, 2, 3].map(() => models.chat('fast').user('x').send().content));
  assert.deepEqual(got, ['one', 'two', 'two']);
  host.serve(() => {
    assert.throws(() => models.chat('smart').user('x').send(), (e) => {
      assert.ok(e instanceof sdk.ModelError);
      assert.equal(e.kind, 'rate-limited');
      assert.equal(e.retryable, true);
      assert.equal(e.retryAfterMs, 1500);
      return true;
    });
    const batch = models.chatAll([models.chat('fast').user('a'), models.chat('nope').user('b')]);
    assert.equal(batch[0].content, 'two');
    assert.ok(batch[1] instanceof sdk.ModelError && batch[1].kind === 'invalid-request');
  });
  assert.equal(host.calls.length, 6);
});

test('state keys follow the host rules and values are JSON', () => {
  const host = new FakeHost();
  host.serve(() => {
    assert.throws(() => state.set('', 1), (e) => e instanceof StateError && e.kind === 'invalid-key' && !e.retryable);
    assert.throws(() => state.get('k'.repeat(513)), StateError);
    state.set('a:1', { n: 1 });
    state.set('a:2', [2]);
    state.set('b', 'x');
    assert.deepEqual(state.listKeys('a:'), ['a:1', 'a:2']);
    assert.equal(state.compareAndSwap('a:1', { n: 2 }, 0), false);
    assert.equal(state.compareAndSwap('a:1', { n: 1 }, 0), true);
    assert.equal(state.delete('b'), true);
    assert.equal(state.get('b', 'gone'), 'gone');
  });
  assert.equal(host.state('a:1'), 0);
  assert.throws(() => new FakeHost().serve(() => effects.once('', () => 1)), (e) => e.kind === 'invalid-key');
});

test('outside a host, an SDK call says how to test', () => {
  assert.throws(() => models.chat('fast').user('x').send(), /FakeHost\.run/);
  assert.throws(() => new FakeHost().run(handler(() => { throw SluiceError.retryAfter('later', 2000); }), null),
    (e) => e instanceof JobFailure && e.retryable && e.retryAfterMs === 2000);
});

// @sluice/sdk/testing: a host-less test double, so a handler can be unit-tested with plain
// Node (`node --test`; Node 18.19 or 20.6+, for its module hooks), no component and no host.
// The same double as the Rust SDK's `sluice_sdk::testing::FakeHost` and the Python SDK's
// `sluice_sdk.testing.FakeHost`.
//
//   import { test } from 'node:test';
//   import assert from 'node:assert/strict';
//   import { FakeHost } from '../../sdk-js/testing.js';   // first: it teaches Node the names
//   const { handle } = await import('./app.js');          // then the handler, dynamically
//
//   test('labels with the fast model', () => {
//     const host = new FakeHost().reply('fast', '{"label": "bug", "confidence": 0.9}');
//     const out = host.run(handle, { text: '...', labels: ['bug', 'other'] });
//     assert.equal(out.label, 'bug');
//     assert.equal(host.calls[0].model, 'fast');
//   });
//
// Importing this module registers Node module hooks that resolve `@sluice/sdk` to this SDK and
// the `sluice:plugin` imports to the installed FakeHost, so the handler must be imported after
// it (an `await import(...)`: static imports are resolved before any module code runs).
//
// Model calls get scripted replies per model alias (several are used in order, the last one
// repeats; an unscripted model is an `invalid-request` error, as an unknown alias is on a real
// host). State and effects live in memory with the host's key rules. Model calls, events,
// reported costs and the job's spend (tokens, calls, µ$) are recorded for the test to check.

import { register } from 'node:module';

register('./testing/hooks.js', import.meta.url);

const CURRENT = Symbol.for('sluice.sdk.testing.current');

/** The longest state or effect key the host accepts, in bytes. */
const MAX_KEY_BYTES = 512;

/** What componentize-js throws for a WIT `err`: the error variant is its `payload`. */
class ComponentError extends Error {
  constructor(payload) {
    super(typeof payload === 'string' ? payload : payload.tag);
    this.name = 'ComponentError';
    this.payload = payload;
  }
}

/** The handler failed the job: what the host would record and how it would go on. */
export class JobFailure extends Error {
  constructor(jobError) {
    const retryable = jobError.tag === 'retryable';
    super(retryable ? jobError.val.message : jobError.val);
    this.name = 'JobFailure';
    /** True when the host would retry the job; false when it would be dead at once. */
    this.retryable = retryable;
    /** The delay the handler asked for before the retry, in ms, if any. */
    this.retryAfterMs = retryable && jobError.val.retryAfterMs !== undefined
      ? Number(jobError.val.retryAfterMs) : undefined;
  }
}

function isJobError(e) {
  return e !== null && typeof e === 'object' && !(e instanceof Error)
    && (e.tag === 'retryable' || e.tag === 'permanent');
}

function badKey(key) {
  const bytes = Buffer.byteLength(String(key));
  return bytes === 0 || bytes > MAX_KEY_BYTES
    ? `keys are 1 to ${MAX_KEY_BYTES} bytes, got ${bytes}` : null;
}

// A `ModelError` of the SDK (or any `{ kind, detail, retryAfterMs }`) as the WIT variant.
function modelVariant(error) {
  const kind = error.kind;
  const message = error.detail ?? error.message ?? String(kind);
  if (kind === 'rate-limited') {
    const after = error.retryAfterMs;
    return { tag: kind, val: { message, retryAfterMs: after === undefined ? undefined : BigInt(after) } };
  }
  return { tag: kind, val: message };
}

const MODEL_ERRORS = ['budget-exceeded', 'rate-limited', 'unavailable', 'invalid-request', 'timeout', 'content-filtered'];

/** A rough token count, as the Rust SDK's double makes it: a token per 4 bytes, at least 1. */
function tokens(text) {
  return Math.floor(Buffer.byteLength(text) / 4) + 1;
}

/** A fake Sluice host; see the module comment. */
export class FakeHost {
  constructor() {
    this._replies = new Map();
    this._state = new Map();
    this._effects = new Map();
    this._budget = undefined;
    this._spend = { costMicros: 0, inputTokens: 0, outputTokens: 0 };
    /** The model calls made, in order: `{ model, messages, json, maxTokens, temperature }`. */
    this.calls = [];
    /** Every event, in order: `{ kind: 'progress', message, fraction }` or
     * `{ kind: 'log', level, message, fields }`. */
    this.events = [];
    /** The costs reported with `usage.reportCost` and accepted: `{ description, costMicros }`. */
    this.costs = [];
    this.wit = witOf(this);
  }

  /** Reply `content` (text, or a function of the call that returns text) to the next call to
   * `model`. Several replies for one model are used in order; the last one repeats. */
  reply(model, content) {
    return this._push(model, { content });
  }

  /** Fail the next call to `model` with `error`: a `ModelError` of `@sluice/sdk` such as
   * `new ModelError('unavailable', 'down')` (retryable), or `{ kind, detail }`. */
  fail(model, error) {
    if (!MODEL_ERRORS.includes(error?.kind)) {
      throw new TypeError(`FakeHost.fail needs a ModelError kind, one of ${MODEL_ERRORS.join(', ')}`);
    }
    return this._push(model, { error });
  }

  _push(model, reply) {
    if (!this._replies.has(model)) this._replies.set(model, []);
    this._replies.get(model).push(reply);
    return this;
  }

  /** A hard budget of `micros` µ$ left: reported costs beyond it are refused. */
  budget(micros) {
    this._budget = BigInt(micros);
    return this;
  }

  /** A state key present before the handler runs (any JSON value). */
  withState(key, value) {
    this._state.set(key, JSON.stringify(value));
    return this;
  }

  /** An effect already committed by an "earlier attempt", with its recorded result. */
  withEffect(key, result) {
    this._effects.set(key, JSON.stringify(result ?? null));
    return this;
  }

  /** Run `fn` with this host serving every SDK call it makes; its result. */
  serve(fn) {
    const previous = globalThis[CURRENT];
    globalThis[CURRENT] = this;
    try {
      return fn();
    } finally {
      globalThis[CURRENT] = previous;
    }
  }

  /** Run a handler's export (`handle`, made by `handler(f)`) as the host would: `input` is
   * the job's input (any JSON value), `job` overrides the job's `id` (`job-1`), `plugin` and
   * `tenant` (`test`), `attempt` (1), `maxAttempts` (1), `idempotencyKey`, `tags` (an object)
   * and `deadlineUnixMs` (a minute from now). Returns the output, parsed; throws a
   * `JobFailure` when the handler fails the job. */
  run(handle, input, job = {}) {
    return this.runText(handle, JSON.stringify(input ?? null), job);
  }

  /** `run` with the input as the host passes it: JSON text (which may be malformed). */
  runText(handle, inputText, job = {}) {
    const info = {
      id: job.id ?? 'job-1',
      plugin: job.plugin ?? 'test',
      tenant: job.tenant ?? 'test',
      attempt: job.attempt ?? 1,
      maxAttempts: job.maxAttempts ?? 1,
      idempotencyKey: job.idempotencyKey ?? undefined,
      tags: Object.entries(job.tags ?? {}).map(([key, value]) => ({ key, value: String(value) })),
      deadlineUnixMs: BigInt(job.deadlineUnixMs ?? Date.now() + 60_000),
    };
    let text;
    try {
      text = this.serve(() => handle(info, String(inputText)));
    } catch (e) {
      if (isJobError(e)) throw new JobFailure(e);
      throw e;
    }
    return JSON.parse(text);
  }

  /** The messages of the log lines (of one level, if given), in order. */
  logs(level = undefined) {
    return this.events
      .filter((e) => e.kind === 'log' && (level === undefined || e.level === level))
      .map((e) => e.message);
  }

  /** A state key's value now (parsed), or `undefined`. */
  state(key) {
    const text = this._state.get(key);
    return text === undefined ? undefined : JSON.parse(text);
  }

  /** The committed effects: key → recorded result (parsed). */
  effects() {
    return Object.fromEntries([...this._effects].map(([k, v]) => [k, JSON.parse(v)]));
  }

  /** What the job has spent: `{ costMicros, inputTokens, outputTokens, calls }`, as
   * `usage.jobSpend()` would tell the handler. */
  spend() {
    return { ...this._spend, calls: this.calls.length };
  }

  /** The µ$ left of the budget, or `undefined` without one. */
  budgetRemaining() {
    return this._budget === undefined ? undefined : Number(this._budget);
  }
}

// The `sluice:plugin` functions (as testing/wit.js calls them) over a FakeHost's records.
function witOf(h) {
  const checkKey = (key, kind) => {
    const why = badKey(key);
    if (why) throw new ComponentError({ tag: kind, val: why });
  };
  const nextReply = (model) => {
    const queue = h._replies.get(model);
    if (!queue || queue.length === 0) return undefined;
    return queue.length > 1 ? queue.shift() : queue[0];
  };
  const chatOne = (request) => {
    const call = {
      model: request.model,
      messages: request.messages.map((m) => ({ role: m.role, content: m.content })),
      json: request.responseFormat === 'json',
      maxTokens: request.maxTokens,
      temperature: request.temperature,
    };
    h.calls.push(call);
    const reply = nextReply(request.model);
    if (reply === undefined) {
      return { tag: 'err', val: { tag: 'invalid-request', val: `no reply scripted for model ${JSON.stringify(request.model)} (FakeHost.reply)` } };
    }
    if (reply.error) return { tag: 'err', val: modelVariant(reply.error) };
    const content = typeof reply.content === 'function' ? reply.content(call) : reply.content;
    if (typeof content !== 'string') {
      throw new TypeError(`FakeHost.reply for ${request.model} must give text, got ${typeof content}`);
    }
    const usage = {
      inputTokens: request.messages.reduce((n, m) => n + tokens(m.content), 0),
      outputTokens: tokens(content),
      cachedInputTokens: 0,
    };
    h._spend.inputTokens += usage.inputTokens;
    h._spend.outputTokens += usage.outputTokens;
    h._spend.costMicros += 1;
    return {
      tag: 'ok',
      val: {
        content, model: request.model, provider: 'fake', usage, costMicros: 1n, latencyMs: 0,
        source: 'provider', finishReason: 'stop',
      },
    };
  };
  return {
    chat(request) {
      const r = chatOne(request);
      if (r.tag === 'err') throw new ComponentError(r.val);
      return r.val;
    },
    chatBatch: (requests) => requests.map(chatOne),
    embed: (request) => ({
      vectors: request.inputs.map((t) => [t.length, 1]), model: request.model, provider: 'fake',
      usage: { inputTokens: 0, outputTokens: 0, cachedInputTokens: 0 }, costMicros: 0n,
      source: 'provider',
    }),
    stateGet(key) {
      checkKey(key, 'invalid-key');
      return h._state.get(key);
    },
    stateSet(key, value, _ttlMs) {
      checkKey(key, 'invalid-key');
      h._state.set(key, value);
    },
    stateDelete(key) {
      checkKey(key, 'invalid-key');
      return h._state.delete(key);
    },
    stateListKeys: (prefix, limit) =>
      [...h._state.keys()].filter((k) => k.startsWith(prefix)).sort().slice(0, limit),
    stateCas(key, expected, value) {
      checkKey(key, 'invalid-key');
      if (h._state.get(key) !== expected) return false;
      h._state.set(key, value);
      return true;
    },
    effectBegin(key) {
      checkKey(key, 'invalid-key');
      const done = h._effects.get(key);
      return done === undefined ? { tag: 'pending' } : { tag: 'committed', val: done };
    },
    effectCommit(key, outcome) {
      checkKey(key, 'invalid-key');
      if (!h._effects.has(key)) h._effects.set(key, outcome);
    },
    progress: (message, fraction) => { h.events.push({ kind: 'progress', message, fraction }); },
    log: (level, message, fields) => {
      h.events.push({ kind: 'log', level, message, fields: Object.fromEntries(fields) });
    },
    reportCost(description, costMicros) {
      const cost = BigInt(costMicros);
      if (h._budget !== undefined) {
        if (cost > h._budget) throw new ComponentError(`${h._budget} µ$ left`);
        h._budget -= cost;
      }
      h.costs.push({ description, costMicros: Number(cost) });
      h._spend.costMicros += Number(cost);
    },
    jobSpend: () => ({
      costMicros: BigInt(h._spend.costMicros), inputTokens: BigInt(h._spend.inputTokens),
      outputTokens: BigInt(h._spend.outputTokens), calls: h.calls.length,
    }),
    budgetRemaining: () => h._budget,
  };
}

// @sluice/sdk: write Sluice job handlers in JavaScript.
//
//   import { handler, models, events, SluiceError } from '@sluice/sdk';
//
//   export const handle = handler((job, input) => {
//     if (!input?.text?.trim()) throw SluiceError.permanent('`text` is empty');
//     const reply = models.chat('fast').system('Write a short title.').user(input.text).send();
//     events.info(`job ${job.id} titled by ${reply.model}`);
//     return { title: reply.content.trim(), costMicros: reply.costMicros };
//   });
//
// `sluice run .` bundles the handler (resolving `@sluice/sdk` to this file) and builds it with
// componentize-js against the `sluice:plugin` world. The input is the job's JSON parsed (empty:
// null); the return value is serialized as JSON. Throw `SluiceError.retryable`,
// `SluiceError.retryAfter` or `SluiceError.permanent`; the SDK's own errors (`ModelError`,
// `StateError`, `EffectError`) carry the class the Rust SDK gives them. Any other exception
// fails the attempt as retryable (like a Rust panic) after its stack is logged to the events.

import * as wmodels from 'sluice:plugin/models@0.1.0';
import * as wstate from 'sluice:plugin/state@0.1.0';
import * as weffects from 'sluice:plugin/effects@0.1.0';
import * as wevents from 'sluice:plugin/events@0.1.0';
import * as wusage from 'sluice:plugin/usage@0.1.0';

/** A job failure, retryable (the host retries with backoff) or permanent (dead at once). */
export class SluiceError extends Error {
  constructor(message, { retryable, retryAfterMs = undefined } = {}) {
    super(message);
    this.name = 'SluiceError';
    this.retryable = Boolean(retryable);
    this.retryAfterMs = this.retryable ? retryAfterMs : undefined;
  }
  static retryable(message) { return new SluiceError(message, { retryable: true }); }
  static retryAfter(message, delayMs) {
    return new SluiceError(message, { retryable: true, retryAfterMs: Number(delayMs) });
  }
  static permanent(message) { return new SluiceError(message, { retryable: false }); }
  context(what) {
    return new SluiceError(`${what}: ${this.message}`, this);
  }
}

const MODEL_TITLES = {
  'budget-exceeded': 'budget exceeded', 'rate-limited': 'rate limited',
  unavailable: 'model unavailable', 'invalid-request': 'invalid model request',
  timeout: 'model call timed out', 'content-filtered': 'content filtered',
};

/** A model call failed: rate limits, outages and timeouts are retryable, the rest permanent. */
export class ModelError extends SluiceError {
  constructor(kind, detail, retryAfterMs) {
    const retryable = ['rate-limited', 'unavailable', 'timeout'].includes(kind);
    super(`${MODEL_TITLES[kind] ?? kind}: ${detail}`, { retryable, retryAfterMs });
    this.name = 'ModelError';
    this.kind = kind;
    this.detail = detail;
  }
}

/** A state operation failed: `unavailable` and `conflict` are retryable, the rest permanent. */
export class StateError extends SluiceError {
  constructor(kind, detail) {
    super(`state ${kind}: ${detail}`, { retryable: kind === 'unavailable' || kind === 'conflict' });
    this.name = 'StateError';
    this.kind = kind;
  }
}

/** An effect's journal could not be used: `unavailable` is retryable, `invalid-key` not. */
export class EffectError extends SluiceError {
  constructor(kind, detail) {
    super(`effect ${kind}: ${detail}`, { retryable: kind === 'unavailable' });
    this.name = 'EffectError';
    this.kind = kind;
  }
}

// A `result` error from an import arrives as a thrown value carrying the WIT variant, either
// itself or as `payload` (ComponentError).
function variantOf(e) {
  const v = e && typeof e === 'object' && 'payload' in e ? e.payload : e;
  if (v && typeof v === 'object' && typeof v.tag === 'string') return v;
  throw e;
}

function toModelError(v) {
  if (v.tag === 'rate-limited') {
    const after = v.val.retryAfterMs;
    return new ModelError(v.tag, v.val.message, after === undefined ? undefined : Number(after));
  }
  return new ModelError(v.tag, String(v.val));
}

function stripCodeFence(text) {
  const t = text.trim();
  if (t.length >= 6 && t.startsWith('```') && t.endsWith('```')) {
    let body = t.slice(3, -3);
    const nl = body.indexOf('\n');
    if (nl >= 0 && /^[A-Za-z0-9]*$/.test(body.slice(0, nl).trim())) body = body.slice(nl + 1);
    return body.trim();
  }
  return t;
}

function response(r) {
  return {
    content: r.content, model: r.model, provider: r.provider,
    usage: {
      inputTokens: r.usage.inputTokens, outputTokens: r.usage.outputTokens,
      cachedInputTokens: r.usage.cachedInputTokens,
    },
    costMicros: Number(r.costMicros), latencyMs: r.latencyMs, source: r.source,
    finishReason: r.finishReason,
    /** The reply parsed as JSON, tolerating a Markdown code fence; throws SyntaxError. */
    json() { return JSON.parse(stripCodeFence(this.content)); },
    get isTruncated() { return this.finishReason === 'length'; },
  };
}

/** A chat request, built step by step (the Rust SDK's shape) and sent with `send()`. */
export class ChatRequest {
  constructor(model) {
    this.model = model;
    this.messages = [];
    this._maxTokens = undefined;
    this._temperature = undefined;
    this.format = 'text';
    this._noCache = false;
    this._stream = false;
  }
  system(content) { return this.message('system', content); }
  user(content) { return this.message('user', content); }
  assistant(content) { return this.message('assistant', content); }
  message(role, content) { this.messages.push({ role, content: String(content) }); return this; }
  maxTokens(n) { this._maxTokens = n; return this; }
  temperature(t) { this._temperature = t; return this; }
  json() { this.format = 'json'; return this; }
  noCache() { this._noCache = true; return this; }
  stream() { this._stream = true; return this; }
  copy() { return Object.assign(new ChatRequest(this.model), this, { messages: [...this.messages] }); }
  toWit() {
    return {
      model: this.model, messages: this.messages, maxTokens: this._maxTokens,
      temperature: this._temperature, responseFormat: this.format, noCache: this._noCache,
      streamEvents: this._stream,
    };
  }
  /** Make the call; throws `ModelError`. */
  send() {
    try {
      return response(wmodels.chat(this.toWit()));
    } catch (e) {
      throw toModelError(variantOf(e));
    }
  }
}

export const models = {
  chat: (model) => new ChatRequest(model),
  /** Several calls at once; each item is a response or the `ModelError` of that call. */
  chatAll(requests) {
    return wmodels.chatBatch(requests.map((r) => r.toWit())).map((r) =>
      r.tag === 'ok' ? response(r.val) : toModelError(r.val));
  },
  embed(model, inputs) {
    try {
      const r = wmodels.embed({ model, inputs });
      return { ...r, costMicros: Number(r.costMicros) };
    } catch (e) {
      throw toModelError(variantOf(e));
    }
  },
};

function stateCall(f) {
  try {
    return f();
  } catch (e) {
    const v = variantOf(e);
    throw new StateError(v.tag, String(v.val));
  }
}

function decode(key, text) {
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new StateError('json', `${key}: ${e.message}`);
  }
}

/** Key/value state that outlives jobs; values are JSON. */
export const state = {
  get(key, fallback = null) {
    const text = stateCall(() => wstate.get(key));
    return text === undefined ? fallback : decode(key, text);
  },
  set(key, value, ttlMs = undefined) {
    const ttl = ttlMs === undefined ? undefined : BigInt(ttlMs);
    stateCall(() => wstate.set(key, JSON.stringify(value), ttl));
  },
  delete: (key) => stateCall(() => wstate.delete(key)),
  listKeys: (prefix = '', limit = 100) => stateCall(() => wstate.listKeys(prefix, limit)),
  compareAndSwap(key, expected, value) {
    const exp = expected === null || expected === undefined ? undefined : JSON.stringify(expected);
    return stateCall(() => wstate.compareAndSwap(key, exp, JSON.stringify(value)));
  },
};

function effectCall(f) {
  try {
    return f();
  } catch (e) {
    const v = variantOf(e);
    throw new EffectError(v.tag, String(v.val));
  }
}

/** Side effects that happen once per job even when the job runs again. */
export const effects = {
  /** Run `effect` at most once per job under `key`; a retry gets the recorded result. */
  once(key, effect) {
    const status = effectCall(() => weffects.begin(key));
    if (status.tag === 'committed') return JSON.parse(status.val);
    const value = effect();
    effectCall(() => weffects.commit(key, JSON.stringify(value ?? null)));
    return value;
  },
};

const LEVELS = ['trace', 'debug', 'info', 'warn', 'error'];

/** Progress and structured logs for the job's event stream. */
export const events = {
  progress(message, fraction = undefined) {
    const f = fraction === undefined || Number.isNaN(fraction)
      ? undefined : Math.min(1, Math.max(0, fraction));
    wevents.progress(String(message), f);
  },
  log(level, message, fields = {}) {
    if (!LEVELS.includes(level)) throw new TypeError(`log level must be one of ${LEVELS}`);
    wevents.log(level, String(message), Object.entries(fields).map(([k, v]) => [k, String(v)]));
  },
  trace: (m, f) => events.log('trace', m, f),
  debug: (m, f) => events.log('debug', m, f),
  info: (m, f) => events.log('info', m, f),
  warn: (m, f) => events.log('warn', m, f),
  error: (m, f) => events.log('error', m, f),
};

/** What the job has spent, and costs the host cannot see. */
export const usage = {
  reportCost(description, costMicros) {
    try {
      wusage.reportCost(description, BigInt(costMicros));
    } catch (e) {
      const reason = e && typeof e === 'object' && 'payload' in e ? e.payload : e;
      throw SluiceError.permanent(`budget refused ${costMicros} µ$ for ${description}: ${reason}`);
    }
  },
  jobSpend() {
    const s = wusage.jobSpend();
    return {
      costMicros: Number(s.costMicros), inputTokens: Number(s.inputTokens),
      outputTokens: Number(s.outputTokens), calls: s.calls,
    };
  },
  budgetRemaining() {
    const b = wusage.budgetRemaining();
    return b === undefined ? null : Number(b);
  },
};

function jobOf(info) {
  return {
    id: info.id, plugin: info.plugin, tenant: info.tenant, attempt: info.attempt,
    maxAttempts: info.maxAttempts, idempotencyKey: info.idempotencyKey ?? null,
    tags: Object.fromEntries(info.tags.map((t) => [t.key, t.value])),
    deadlineUnixMs: Number(info.deadlineUnixMs),
    get isRetry() { return this.attempt > 1; },
    get isLastAttempt() { return this.attempt >= this.maxAttempts; },
  };
}

function jobError(e) {
  if (e.retryable) {
    const after = e.retryAfterMs === undefined ? undefined : BigInt(Math.max(0, Math.floor(e.retryAfterMs)));
    return { tag: 'retryable', val: { message: e.message, retryAfterMs: after } };
  }
  return { tag: 'permanent', val: e.message };
}

/** Wrap `f(job, input)` as the component's export: `export const handle = handler(f)`. */
export function handler(f) {
  return (info, inputText) => {
    let input;
    try {
      input = inputText.trim() === '' ? null : JSON.parse(inputText);
    } catch (e) {
      throw jobError(SluiceError.permanent(`invalid job input: ${e.message}`));
    }
    let output;
    try {
      output = f(jobOf(info), input);
    } catch (e) {
      if (e instanceof SluiceError) throw jobError(e);
      // A bug in the handler: like a Rust panic, a retryable failure of this attempt.
      const what = e instanceof Error ? `${e.name}: ${e.message}` : String(e);
      events.log('error', `handler threw ${what}`, { stack: e?.stack ?? '' });
      throw jobError(SluiceError.retryable(`handler threw ${what}`));
    }
    const text = JSON.stringify(output ?? null);
    if (text === undefined) throw jobError(SluiceError.permanent('the job output is not JSON'));
    return text;
  };
}

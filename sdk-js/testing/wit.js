// The `sluice:plugin@0.1.0` imports, as componentize-js hands them to the SDK (camelCase
// names, u64 as BigInt, an `err` thrown as an error whose `payload` is the WIT variant),
// answered by the FakeHost installed with `FakeHost.run`/`FakeHost.serve`. One module serves
// every interface: their function names do not overlap.

const CURRENT = Symbol.for('sluice.sdk.testing.current');

function host() {
  const h = globalThis[CURRENT];
  if (!h) {
    throw new Error('a Sluice host call outside a host: run the handler with FakeHost.run (or inside FakeHost.serve) in tests');
  }
  return h;
}

// models
export const chat = (request) => host().wit.chat(request);
export const chatBatch = (requests) => host().wit.chatBatch(requests);
export const embed = (request) => host().wit.embed(request);
// state
export const get = (key) => host().wit.stateGet(key);
export const set = (key, value, ttlMs) => host().wit.stateSet(key, value, ttlMs);
const del = (key) => host().wit.stateDelete(key);
export { del as delete };
export const listKeys = (prefix, limit) => host().wit.stateListKeys(prefix, limit);
export const compareAndSwap = (key, expected, value) => host().wit.stateCas(key, expected, value);
// effects
export const begin = (key) => host().wit.effectBegin(key);
export const commit = (key, outcome) => host().wit.effectCommit(key, outcome);
// events
export const progress = (message, fraction) => host().wit.progress(message, fraction);
export const log = (level, message, fields) => host().wit.log(level, message, fields);
// usage
export const reportCost = (description, costMicros) => host().wit.reportCost(description, costMicros);
export const jobSpend = () => host().wit.jobSpend();
export const budgetRemaining = () => host().wit.budgetRemaining();

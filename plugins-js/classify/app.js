// Classify a text into one of the given labels, cheaply when the answer is clear: a port of
// plugins/classify (Rust) to JavaScript, with the same input, output and fallbacks.
//
// The `fast` model is asked, in JSON mode, for {"label", "confidence"}. When its confidence is
// below the threshold, or its reply is unusable, the `smart` model is asked. When neither gives
// a usable answer, the fast model's unsure answer is used if there is one, else the label whose
// words occur most in the text (`"method": "keyword"`).
//
// Input: {"text": "...", "labels": ["billing", "bug", "other"], "threshold": 0.7}

import { handler, models, events, SluiceError, ModelError } from '@sluice/sdk';

const FAST_MODEL = 'fast';
const SMART_MODEL = 'smart';
const DEFAULT_THRESHOLD = 0.7;
const MAX_LABELS = 100;
const MAX_TEXT_CHARS = 20_000; // the most text sent to a model; the keyword fallback reads it all
const KEYWORD_MATCH = 'keyword-match';

export const handle = handler((job, input) => {
  if (input === null || typeof input !== 'object' || Array.isArray(input)) {
    throw SluiceError.permanent('invalid job input: expected an object');
  }
  const unknown = Object.keys(input).filter((k) => !['text', 'labels', 'threshold'].includes(k));
  if (unknown.length) throw SluiceError.permanent(`invalid job input: unknown field \`${unknown[0]}\``);
  const { text, labels: rawLabels, threshold = DEFAULT_THRESHOLD } = input;
  if (typeof text !== 'string' || !Array.isArray(rawLabels)) {
    throw SluiceError.permanent('invalid job input: `text` (a string) and `labels` (a list) are required');
  }
  const labels = cleanLabels(rawLabels);
  if (!text.trim()) throw SluiceError.permanent('`text` is empty');
  if (typeof threshold !== 'number' || !(threshold >= 0 && threshold <= 1)) {
    throw SluiceError.permanent(`\`threshold\` must be between 0 and 1, got ${threshold}`);
  }
  const cut = [...text].slice(0, MAX_TEXT_CHARS).join('');
  let costMicros = 0;
  const notes = [];

  const fast = request(FAST_MODEL, labels, cut).send();
  costMicros += fast.costMicros;
  const [fastVerdict, fastWhy] = parseVerdict(fast, labels);
  if (fastVerdict && fastVerdict.confidence >= threshold) {
    return output(fastVerdict, fast.model, false, costMicros, 'model');
  }
  notes.push(fastVerdict
    ? `${fast.model} was unsure (${fastVerdict.confidence.toFixed(2)} < ${threshold})`
    : `${fast.model}'s reply was unusable: ${fastWhy}`);
  events.log('info', 'escalating', { to: SMART_MODEL, why: notes[0] });

  // A retry replays the fast call from the journal, so a passing failure here is cheap to
  // retry; a lasting one (or the last attempt) falls back to what we have.
  try {
    const smart = request(SMART_MODEL, labels, cut).send();
    costMicros += smart.costMicros;
    const [verdict, why] = parseVerdict(smart, labels);
    if (verdict) return output(verdict, smart.model, true, costMicros, 'model', notes);
    notes.push(`${smart.model}'s reply was unusable: ${why}`);
  } catch (e) {
    if (!(e instanceof ModelError)) throw e;
    if (e.retryable && !job.isLastAttempt) throw e;
    notes.push(`escalation failed: ${e.message}`);
  }

  if (fastVerdict) {
    notes.push(`used ${fast.model}'s unsure answer`);
    return output(fastVerdict, fast.model, true, costMicros, 'model', notes);
  }
  const verdict = keywordMatch(text, labels);
  notes.push('picked by keyword match');
  events.warn(`no usable model answer; keyword match picked ${JSON.stringify(verdict.label)}`);
  return output(verdict, KEYWORD_MATCH, true, costMicros, 'keyword', notes);
});

function output(verdict, modelUsed, escalated, costMicros, method, notes = []) {
  const out = {
    label: verdict.label, confidence: verdict.confidence, model_used: modelUsed, escalated,
    cost_micros: costMicros, method,
  };
  if (notes.length) out.note = notes.join('; ');
  return out;
}

/** Trim labels, drop empty ones and duplicates (ignoring case), check there is a choice. */
function cleanLabels(labels) {
  const out = [];
  for (const raw of labels) {
    if (typeof raw !== 'string') throw SluiceError.permanent('invalid job input: `labels` must be strings');
    const label = raw.trim();
    if (label && !out.some((l) => l.toLowerCase() === label.toLowerCase())) out.push(label);
  }
  if (out.length < 2) throw SluiceError.permanent('`labels` must name at least two different labels');
  if (out.length > MAX_LABELS) {
    throw SluiceError.permanent(`\`labels\` has ${out.length} labels, more than ${MAX_LABELS}`);
  }
  return out;
}

function request(model, labels, text) {
  return models.chat(model)
    .system('You are a precise text classifier. Choose the single best label for the user\'s '
      + `text from this list: ${JSON.stringify(labels)}. Reply with only a JSON object of the `
      + 'form {"label": "<a label from the list, exactly as written>", "confidence": <a number '
      + 'from 0 to 1>}.')
    .user(text)
    .json()
    .temperature(0.0)
    .maxTokens(100);
}

/** [verdict, null] or [null, why]. Tolerates code fences, label case, a percentage or a string
 * confidence; a missing one counts as 0. */
function parseVerdict(reply, labels) {
  let value;
  try {
    value = reply.json();
  } catch (e) {
    return [null, `not JSON (${e.message})`];
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return [null, 'not a JSON object'];
  const raw = value.label;
  if (typeof raw !== 'string') return [null, 'no string `label`'];
  const label = labels.find((l) => l === raw)
    ?? labels.find((l) => l.trim().toLowerCase() === raw.trim().toLowerCase());
  if (label === undefined) return [null, `${JSON.stringify(raw)} is not one of the labels`];
  let c = value.confidence;
  if (c === undefined || c === null) c = 0;
  else if (typeof c === 'string') c = Number(c.trim().replace(/%$/, '').trim() || 'NaN');
  else if (typeof c !== 'number') return [null, `\`confidence\` is ${JSON.stringify(c)}, not a number`];
  if (c >= 0 && c <= 1) return [{ label, confidence: c }, null];
  if (c > 1 && c <= 100) return [{ label, confidence: c / 100 }, null];
  return [null, `\`confidence\` ${c} is not between 0 and 1`];
}

// Words of a label: runs of letters and digits. (No `\p{L}` here: the component's JS engine
// is built without Unicode property tables; a letter is a character with a case, or any
// non-ASCII character without one is treated as a separator.)
function splitWords(s) {
  const words = [];
  let word = '';
  for (const c of s) {
    if (/[0-9]/.test(c) || c.toLowerCase() !== c.toUpperCase()) word += c;
    else if (word) { words.push(word); word = ''; }
  }
  if (word) words.push(word);
  return words;
}

function count(haystack, needle) {
  return needle ? haystack.split(needle).length - 1 : 0;
}

/** The label whose words occur most (ties to the earlier label), and a modest confidence:
 * the label's share of all matches, halved. */
function keywordMatch(text, labels) {
  const lower = text.toLowerCase();
  const scores = labels.map((l) => {
    const label = l.toLowerCase();
    const words = splitWords(label).filter((w) => [...w].length >= 3);
    return 2 * count(lower, label) + words.reduce((n, w) => n + count(lower, w), 0);
  });
  const total = scores.reduce((a, b) => a + b, 0);
  let best = 0;
  scores.forEach((s, i) => { if (s > scores[best]) best = i; });
  return { label: labels[best], confidence: total === 0 ? 0 : (0.5 * scores[best]) / total };
}

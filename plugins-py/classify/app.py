"""Classify a text into one of the given labels, cheaply when the answer is clear: a port of
plugins/classify (Rust) to Python, with the same input, output and fallbacks.

The `fast` model is asked, in JSON mode, for {"label", "confidence"}. When its confidence is
below the threshold, or its reply is unusable, the `smart` model is asked. When neither gives
a usable answer, the fast model's unsure answer is used if there is one, else the label whose
words occur most in the text (`"method": "keyword"`).

Input: {"text": "...", "labels": ["billing", "bug", "other"], "threshold": 0.7}
"""

import json
import math

import sluice_sdk as sluice
from sluice_sdk import Error, events, models

FAST_MODEL = "fast"
SMART_MODEL = "smart"
DEFAULT_THRESHOLD = 0.7
MAX_LABELS = 100
MAX_TEXT_CHARS = 20_000  # the most text sent to a model; the keyword fallback reads it all
KEYWORD_MATCH = "keyword-match"


@sluice.handler
def handle(job: sluice.Job, input):
    if not isinstance(input, dict):
        raise Error.permanent("invalid job input: expected an object")
    unknown = set(input) - {"text", "labels", "threshold"}
    if unknown:
        raise Error.permanent(f"invalid job input: unknown field `{sorted(unknown)[0]}`")
    text, raw_labels = input.get("text"), input.get("labels")
    threshold = input.get("threshold", DEFAULT_THRESHOLD)
    if not isinstance(text, str) or not isinstance(raw_labels, list):
        raise Error.permanent("invalid job input: `text` (a string) and `labels` (a list) are required")
    labels = clean_labels(raw_labels)
    if not text.strip():
        raise Error.permanent("`text` is empty")
    if not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
        raise Error.permanent(f"`threshold` must be between 0 and 1, got {threshold}")
    cut = text[:MAX_TEXT_CHARS]
    cost_micros = 0
    notes = []

    fast = request(FAST_MODEL, labels, cut).send()
    cost_micros += fast.cost_micros
    fast_verdict, why = parse_verdict(fast, labels)
    if fast_verdict and fast_verdict[1] >= threshold:
        return output(fast_verdict, fast.model, False, cost_micros, "model")
    if fast_verdict:
        notes.append(f"{fast.model} was unsure ({fast_verdict[1]:.2f} < {threshold})")
    else:
        notes.append(f"{fast.model}'s reply was unusable: {why}")
    events.log("info", "escalating", {"to": SMART_MODEL, "why": notes[0]})

    # A retry replays the fast call from the journal, so a passing failure here is cheap to
    # retry; a lasting one (or the last attempt) falls back to what we have.
    try:
        smart = request(SMART_MODEL, labels, cut).send()
        cost_micros += smart.cost_micros
        verdict, why = parse_verdict(smart, labels)
        if verdict:
            return output(verdict, smart.model, True, cost_micros, "model", notes)
        notes.append(f"{smart.model}'s reply was unusable: {why}")
    except models.ModelError as e:
        if e.is_retryable and not job.is_last_attempt:
            raise
        notes.append(f"escalation failed: {e}")

    if fast_verdict:
        notes.append(f"used {fast.model}'s unsure answer")
        return output(fast_verdict, fast.model, True, cost_micros, "model", notes)

    label, confidence = keyword_match(text, labels)
    notes.append("picked by keyword match")
    events.warn(f"no usable model answer; keyword match picked {json.dumps(label)}")
    return output((label, confidence), KEYWORD_MATCH, True, cost_micros, "keyword", notes)


def output(verdict, model_used, escalated, cost_micros, method, notes=None):
    out = {"label": verdict[0], "confidence": verdict[1], "model_used": model_used,
           "escalated": escalated, "cost_micros": cost_micros, "method": method}
    if notes:
        out["note"] = "; ".join(notes)
    return out


def clean_labels(labels):
    """Trim labels, drop empty ones and duplicates (ignoring case), check there is a choice."""
    out = []
    for label in labels:
        if not isinstance(label, str):
            raise Error.permanent("invalid job input: `labels` must be strings")
        label = label.strip()
        if label and not any(l.lower() == label.lower() for l in out):
            out.append(label)
    if len(out) < 2:
        raise Error.permanent("`labels` must name at least two different labels")
    if len(out) > MAX_LABELS:
        raise Error.permanent(f"`labels` has {len(out)} labels, more than {MAX_LABELS}")
    return out


def request(model, labels, text):
    return (models.chat(model)
            .system("You are a precise text classifier. Choose the single best label for the "
                    f"user's text from this list: {json.dumps(labels, separators=(',', ':'))}. "
                    "Reply with only a JSON object of the form {\"label\": \"<a label from the "
                    "list, exactly as written>\", \"confidence\": <a number from 0 to 1>}.")
            .user(text)
            .json()
            .temperature(0.0)
            .max_tokens(100))


def parse_verdict(reply, labels):
    """(label, confidence) and None, or None and why the reply is unusable. Tolerates code
    fences, label case, a percentage or a string confidence; a missing one counts as 0."""
    try:
        value = reply.json()
    except ValueError as e:
        return None, f"not JSON ({e})"
    if not isinstance(value, dict):
        return None, "not a JSON object"
    raw = value.get("label")
    if not isinstance(raw, str):
        return None, "no string `label`"
    label = next((l for l in labels if l == raw), None) or next(
        (l for l in labels if l.strip().lower() == raw.strip().lower()), None)
    if label is None:
        return None, f"{json.dumps(raw)} is not one of the labels"
    c = value.get("confidence")
    if c is None:
        c = 0.0
    elif isinstance(c, bool) or not isinstance(c, (int, float, str)):
        return None, f"`confidence` is {json.dumps(c)}, not a number"
    elif isinstance(c, str):
        try:
            c = float(c.strip().rstrip("%").strip())
        except ValueError:
            c = math.nan
    c = float(c)
    if 0.0 <= c <= 1.0:
        return (label, c), None
    if 1.0 < c <= 100.0:
        return (label, c / 100.0), None
    return None, f"`confidence` {c} is not between 0 and 1"


def keyword_match(text, labels):
    """The label whose words occur most (ties to the earlier label), and a modest confidence:
    the label's share of all matches, halved."""
    text = text.lower()
    scores = []
    for label in labels:
        label = label.lower()
        words = "".join(ch if ch.isalnum() else " " for ch in label).split()
        scores.append(2 * text.count(label) + sum(text.count(w) for w in words if len(w) >= 3))
    total = sum(scores)
    best = max(range(len(labels)), key=lambda i: (scores[i], -i))
    return labels[best], (0.0 if total == 0 else 0.5 * scores[best] / total)

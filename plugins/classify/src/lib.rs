//! Classify a text into one of the given labels, cheaply when the answer is clear.
//!
//! The `fast` model is asked, in JSON mode, for `{"label", "confidence"}`. When its confidence
//! is below the threshold, or its reply is not usable (not JSON, or a label that is not one of
//! the labels), the `smart` model is asked the same question. When neither gives a usable
//! answer, the `fast` model's unsure answer is used if there is one, and otherwise the label
//! whose words occur most in the text, and the output says so.
//!
//! Input: `{"text": "...", "labels": ["billing", "bug", "other"], "threshold": 0.7}`
//! (`threshold` optional).
//!
//! Output: `{"label": "bug", "confidence": 0.92, "model_used": "...", "escalated": false,
//! "cost_micros": 31, "method": "model"}`, with `"method": "keyword"` and a `note` when the
//! models did not settle it.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sluice_sdk::models::{self, ChatRequest, ChatResponse};
use sluice_sdk::{Error, Job, events};

const FAST_MODEL: &str = "fast";
const SMART_MODEL: &str = "smart";
const DEFAULT_THRESHOLD: f64 = 0.7;
const MAX_LABELS: usize = 100;
/// The most text sent to a model; the rest is cut (the keyword fallback still reads it all).
const MAX_TEXT_CHARS: usize = 20_000;
/// What `model_used` says when no model's answer was used.
const KEYWORD_MATCH: &str = "keyword-match";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    text: String,
    labels: Vec<String>,
    #[serde(default = "default_threshold")]
    threshold: f64,
}

fn default_threshold() -> f64 {
    DEFAULT_THRESHOLD
}

#[derive(Debug, Serialize, PartialEq)]
struct Output {
    label: String,
    confidence: f64,
    model_used: String,
    escalated: bool,
    cost_micros: u64,
    method: Method,
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
}

#[derive(Debug, Serialize, PartialEq, Eq, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum Method {
    /// A model's answer.
    Model,
    /// Neither model gave a usable answer: the label whose words occur most in the text.
    Keyword,
}

/// A usable answer from a model.
#[derive(Debug, Clone, PartialEq)]
struct Verdict {
    label: String,
    confidence: f64,
}

fn handle(job: &Job, input: Input) -> Result<Output, Error> {
    let labels = clean_labels(input.labels)?;
    if input.text.trim().is_empty() {
        return Err(Error::permanent("`text` is empty"));
    }
    if !(0.0..=1.0).contains(&input.threshold) {
        return Err(Error::permanent(format!(
            "`threshold` must be between 0 and 1, got {}",
            input.threshold
        )));
    }
    let text = truncate_chars(&input.text, MAX_TEXT_CHARS);
    let mut cost_micros = 0;
    let mut notes = Vec::new();

    let fast = request(FAST_MODEL, &labels, text).send()?;
    cost_micros += fast.cost_micros;
    let fast_verdict = parse_verdict(&fast, &labels);
    match &fast_verdict {
        Ok(v) if v.confidence >= input.threshold => {
            return Ok(Output {
                label: v.label.clone(),
                confidence: v.confidence,
                model_used: fast.model,
                escalated: false,
                cost_micros,
                method: Method::Model,
                note: None,
            });
        }
        Ok(v) => notes.push(format!(
            "{} was unsure ({:.2} < {})",
            fast.model, v.confidence, input.threshold
        )),
        Err(why) => notes.push(format!("{}'s reply was unusable: {why}", fast.model)),
    }
    events::log(
        events::Level::Info,
        "escalating",
        &[("to", SMART_MODEL), ("why", &notes[0])],
    );

    // A retry replays the fast call from the journal, so a passing failure here is cheap to
    // retry; a lasting one (or the last attempt) falls back to what we have.
    match request(SMART_MODEL, &labels, text).send() {
        Ok(smart) => {
            cost_micros += smart.cost_micros;
            match parse_verdict(&smart, &labels) {
                Ok(v) => {
                    return Ok(Output {
                        label: v.label,
                        confidence: v.confidence,
                        model_used: smart.model,
                        escalated: true,
                        cost_micros,
                        method: Method::Model,
                        note: Some(notes.join("; ")),
                    });
                }
                Err(why) => notes.push(format!("{}'s reply was unusable: {why}", smart.model)),
            }
        }
        Err(e) if e.is_retryable() && !job.is_last_attempt() => return Err(e.into()),
        Err(e) => notes.push(format!("escalation failed: {e}")),
    }

    if let Ok(v) = fast_verdict {
        notes.push(format!("used {}'s unsure answer", fast.model));
        return Ok(Output {
            label: v.label,
            confidence: v.confidence,
            model_used: fast.model,
            escalated: true,
            cost_micros,
            method: Method::Model,
            note: Some(notes.join("; ")),
        });
    }

    let (label, confidence) = keyword_match(&input.text, &labels);
    notes.push("picked by keyword match".into());
    events::warn(format!(
        "no usable model answer; keyword match picked {label:?}"
    ));
    Ok(Output {
        label,
        confidence,
        model_used: KEYWORD_MATCH.into(),
        escalated: true,
        cost_micros,
        method: Method::Keyword,
        note: Some(notes.join("; ")),
    })
}

/// Trim labels, drop empty ones and duplicates (ignoring case), and check there is a choice.
fn clean_labels(labels: Vec<String>) -> Result<Vec<String>, Error> {
    let mut out: Vec<String> = Vec::new();
    for label in labels {
        let label = label.trim();
        if !label.is_empty() && !out.iter().any(|l| l.eq_ignore_ascii_case(label)) {
            out.push(label.to_owned());
        }
    }
    if out.len() < 2 {
        return Err(Error::permanent(
            "`labels` must name at least two different labels",
        ));
    }
    if out.len() > MAX_LABELS {
        return Err(Error::permanent(format!(
            "`labels` has {} labels, more than {MAX_LABELS}",
            out.len()
        )));
    }
    Ok(out)
}

fn truncate_chars(s: &str, max: usize) -> &str {
    s.char_indices().nth(max).map_or(s, |(at, _)| &s[..at])
}

fn request(model: &str, labels: &[String], text: &str) -> ChatRequest {
    let list = serde_json::to_string(labels).unwrap_or_default();
    models::chat(model)
        .system(format!(
            "You are a precise text classifier. Choose the single best label for the user's text \
             from this list: {list}. Reply with only a JSON object of the form \
             {{\"label\": \"<a label from the list, exactly as written>\", \"confidence\": <a \
             number from 0 to 1>}}."
        ))
        .user(text)
        .json()
        .temperature(0.0)
        .max_tokens(100)
}

/// Read a model's reply as a verdict, tolerating code fences, label case, a percentage or a
/// string for the confidence; a missing confidence counts as 0.
fn parse_verdict(reply: &ChatResponse, labels: &[String]) -> Result<Verdict, String> {
    let value: Value = reply.json().map_err(|e| format!("not JSON ({e})"))?;
    let Value::Object(map) = value else {
        return Err("not a JSON object".into());
    };
    let raw_label = map
        .get("label")
        .and_then(Value::as_str)
        .ok_or("no string `label`")?;
    let label = labels
        .iter()
        .find(|l| l.as_str() == raw_label)
        .or_else(|| {
            labels
                .iter()
                .find(|l| l.trim().eq_ignore_ascii_case(raw_label.trim()))
        })
        .ok_or_else(|| format!("{raw_label:?} is not one of the labels"))?;
    let confidence = match map.get("confidence") {
        None | Some(Value::Null) => 0.0,
        Some(Value::Number(n)) => n.as_f64().unwrap_or(f64::NAN),
        Some(Value::String(s)) => s
            .trim()
            .trim_end_matches('%')
            .trim()
            .parse()
            .unwrap_or(f64::NAN),
        Some(other) => return Err(format!("`confidence` is {other}, not a number")),
    };
    let confidence = match confidence {
        c if (0.0..=1.0).contains(&c) => c,
        c if c > 1.0 && c <= 100.0 => c / 100.0,
        c => return Err(format!("`confidence` {c} is not between 0 and 1")),
    };
    Ok(Verdict {
        label: label.clone(),
        confidence,
    })
}

/// The label whose words occur most often in the text (ties go to the earlier label), and a
/// deliberately modest confidence: the label's share of all matches, halved.
fn keyword_match(text: &str, labels: &[String]) -> (String, f64) {
    let text = text.to_lowercase();
    let scores: Vec<usize> = labels
        .iter()
        .map(|label| {
            let label = label.to_lowercase();
            let phrase = 2 * text.matches(label.as_str()).count();
            let words: usize = label
                .split(|c: char| !c.is_alphanumeric())
                .filter(|w| w.chars().count() >= 3)
                .map(|w| text.matches(w).count())
                .sum();
            phrase + words
        })
        .collect();
    let total: usize = scores.iter().sum();
    let (best, score) =
        scores.iter().enumerate().fold(
            (0, 0),
            |best, (i, &s)| if s > best.1 { (i, s) } else { best },
        );
    let confidence = if total == 0 {
        0.0
    } else {
        0.5 * score as f64 / total as f64
    };
    (labels[best].clone(), confidence)
}

sluice_sdk::handler!(handle);

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sluice_sdk::models::{Source, Usage};

    use super::*;

    fn reply(content: &str) -> ChatResponse {
        ChatResponse {
            content: content.into(),
            model: "m".into(),
            provider: "p".into(),
            usage: Usage::default(),
            cost_micros: 0,
            latency: Duration::ZERO,
            source: Source::Provider,
            finish_reason: "stop".into(),
        }
    }

    fn labels() -> Vec<String> {
        vec!["billing".into(), "bug report".into(), "other".into()]
    }

    #[test]
    fn parses_good_and_sloppy_verdicts() {
        let l = labels();
        let v = |s: &str| parse_verdict(&reply(s), &l);
        assert_eq!(
            v(r#"{"label":"billing","confidence":0.9}"#).unwrap(),
            Verdict {
                label: "billing".into(),
                confidence: 0.9
            }
        );
        assert_eq!(
            v("```json\n{\"label\":\"Bug Report\",\"confidence\":\"85%\"}\n```")
                .unwrap()
                .label,
            "bug report"
        );
        assert_eq!(
            v(r#"{"label":"other","confidence":85}"#)
                .unwrap()
                .confidence,
            0.85
        );
        assert_eq!(v(r#"{"label":"other"}"#).unwrap().confidence, 0.0);
    }

    #[test]
    fn rejects_unusable_verdicts() {
        let l = labels();
        let v = |s: &str| parse_verdict(&reply(s), &l).unwrap_err();
        assert!(v("I think it's billing").starts_with("not JSON"));
        assert_eq!(v("[1]"), "not a JSON object");
        assert_eq!(v(r#"{"confidence":1}"#), "no string `label`");
        assert_eq!(
            v(r#"{"label":"refund","confidence":1}"#),
            "\"refund\" is not one of the labels"
        );
        assert!(v(r#"{"label":"other","confidence":-2}"#).contains("not between 0 and 1"));
        assert!(v(r#"{"label":"other","confidence":[1]}"#).contains("not a number"));
    }

    #[test]
    fn keyword_match_picks_the_most_mentioned() {
        let l = labels();
        let (label, c) = keyword_match(
            "The app crashed: a bug. Another bug! Please fix the bug report form.",
            &l,
        );
        assert_eq!(label, "bug report");
        assert!(c > 0.0 && c <= 0.5);
        assert_eq!(
            keyword_match("nothing relevant", &l),
            ("billing".into(), 0.0)
        );
    }

    #[test]
    fn labels_are_cleaned() {
        let l = clean_labels(vec![" a ".into(), "A".into(), "".into(), "b".into()]).unwrap();
        assert_eq!(l, vec!["a", "b"]);
        assert!(
            !clean_labels(vec!["a".into(), "A".into()])
                .unwrap_err()
                .is_retryable()
        );
    }

    #[test]
    fn prompt_lists_labels_in_json_mode() {
        let r = request(FAST_MODEL, &labels(), "text");
        assert_eq!(r.format, models::ResponseFormat::Json);
        assert!(
            r.messages[0]
                .content
                .contains(r#"["billing","bug report","other"]"#)
        );
        assert_eq!(truncate_chars("héllo", 2), "hé");
    }

    #[test]
    fn bad_input_is_permanent() {
        let job = Job::new("j");
        let e = handle(
            &job,
            Input {
                text: "x".into(),
                labels: labels(),
                threshold: 1.5,
            },
        )
        .unwrap_err();
        assert!(!e.is_retryable() && e.message().contains("threshold"));
        let e = handle(
            &job,
            Input {
                text: " ".into(),
                labels: labels(),
                threshold: 0.5,
            },
        )
        .unwrap_err();
        assert!(!e.is_retryable());
    }
}

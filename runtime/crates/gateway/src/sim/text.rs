//! The simulator's deterministic content: summary-like text, classify-style JSON, embeddings.
//!
//! Everything is a pure function of the seed and the request, through a 64-bit FNV-1a hash and
//! a splitmix64 generator, so the same request to the same seed gets the same bytes on every
//! platform and version.

use std::collections::HashSet;

/// splitmix64: tiny, fast, and stable forever (unlike a library's default RNG).
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// Uniform in `[0, 1)`.
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn pick<'a>(&mut self, words: &[&'a str]) -> &'a str {
        words[self.below(words.len())]
    }
}

/// FNV-1a over the seed and the parts (with separators, so `["ab","c"] != ["a","bc"]`).
pub(crate) fn hash(seed: u64, parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: u8| {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    };
    for b in seed.to_le_bytes() {
        eat(b);
    }
    for p in parts {
        for &b in *p {
            eat(b);
        }
        eat(0xff);
    }
    h
}

const STOP: &[&str] = &[
    "about",
    "above",
    "after",
    "again",
    "against",
    "being",
    "below",
    "between",
    "could",
    "doing",
    "during",
    "every",
    "having",
    "other",
    "should",
    "their",
    "there",
    "these",
    "those",
    "through",
    "under",
    "until",
    "where",
    "which",
    "while",
    "would",
    "your",
    "yours",
    "please",
    "summarize",
    "summary",
    "following",
    "classify",
    "reply",
    "answer",
    "respond",
    "sentence",
    "sentences",
    "words",
    "object",
    "labels",
    "label",
    "category",
    "categories",
    "given",
];
const NOUNS: &[&str] = &[
    "report", "system", "team", "result", "change", "process", "plan", "market", "model",
    "service", "customer", "issue", "update", "review", "trend", "risk", "cost", "outcome",
    "approach", "signal", "record", "design", "request", "estimate", "effect", "goal",
];
const VERBS: &[&str] = &[
    "shows",
    "suggests",
    "describes",
    "highlights",
    "explains",
    "covers",
    "links",
    "weighs",
    "reviews",
    "notes",
    "outlines",
    "compares",
    "traces",
    "frames",
    "stresses",
    "tracks",
];
const ADJS: &[&str] = &[
    "clear",
    "steady",
    "broad",
    "recent",
    "modest",
    "key",
    "early",
    "strong",
    "mixed",
    "main",
    "careful",
    "practical",
    "useful",
    "notable",
    "long",
    "short",
    "local",
    "central",
];
const OPENERS: &[&str] = &[
    "In short",
    "Overall",
    "In brief",
    "Taken together",
    "On balance",
    "Put simply",
    "At its core",
    "Above all",
    "In summary",
    "Notably",
];
const PREPS: &[&str] = &[
    "across", "within", "around", "beyond", "through", "against", "toward",
];

/// Distinctive words of a prompt (5+ letters, not stop words), in order of first appearance.
pub(crate) fn topics(prompt: &str) -> Vec<String> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for w in prompt.split(|c: char| !c.is_alphabetic()) {
        if w.chars().count() < 5 {
            continue;
        }
        let w = w.to_lowercase();
        if STOP.contains(&w.as_str()) || !seen.insert(w.clone()) {
            continue;
        }
        out.push(w);
        if out.len() == 12 {
            break;
        }
    }
    out
}

fn sentence(rng: &mut Rng, topics: &[String]) -> String {
    let topic = if topics.is_empty() {
        rng.pick(NOUNS).to_string()
    } else {
        topics[rng.below(topics.len())].clone()
    };
    match rng.below(4) {
        0 => format!(
            "The {} {} the {} {} of {}.",
            rng.pick(NOUNS),
            rng.pick(VERBS),
            rng.pick(ADJS),
            rng.pick(NOUNS),
            topic
        ),
        1 => format!(
            "{}, the {} {} {} {} {} {}.",
            rng.pick(OPENERS),
            rng.pick(NOUNS),
            rng.pick(VERBS),
            topic,
            rng.pick(PREPS),
            rng.pick(ADJS),
            rng.pick(NOUNS)
        ),
        2 => format!(
            "It {} how {} {} the {} {}.",
            rng.pick(VERBS),
            topic,
            rng.pick(VERBS).trim_end_matches('s'),
            rng.pick(ADJS),
            rng.pick(NOUNS)
        ),
        _ => {
            let mut first = rng.pick(ADJS).to_string();
            if let Some(c) = first.get_mut(0..1) {
                c.make_ascii_uppercase();
            }
            format!(
                "{} {} {} {} {} {}.",
                first,
                topic,
                rng.pick(VERBS),
                rng.pick(PREPS),
                rng.pick(ADJS),
                rng.pick(NOUNS)
            )
        }
    }
}

/// Prose of at least `min_chars` characters (whole sentences), all ASCII.
pub(crate) fn prose(rng: &mut Rng, topics: &[String], min_chars: usize) -> String {
    let mut out = String::new();
    while out.len() < min_chars.max(1) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(&sentence(rng, topics));
    }
    out
}

/// Cut ASCII text to at most `max_chars`, returning whether it was cut.
pub(crate) fn truncate(text: &mut String, max_chars: usize) -> bool {
    if text.len() > max_chars {
        let mut cut = max_chars;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        true
    } else {
        false
    }
}

/// Labels offered by a classify-style prompt: the list after `one of`, `labels:`,
/// `categories:`, `classes:`, `options:` or `choose from`, up to the end of the line or
/// sentence, split on commas, `|`, `/` and ` or `.
pub(crate) fn labels(prompt: &str) -> Vec<String> {
    let lower = prompt.to_lowercase();
    const MARKERS: &[&str] = &[
        "one of",
        "labels:",
        "label:",
        "categories:",
        "category:",
        "classes:",
        "options:",
        "choose from",
        "pick from",
    ];
    for marker in MARKERS {
        let Some(at) = lower.find(marker) else {
            continue;
        };
        let start = at + marker.len();
        // Work on the original text so labels keep their case; `lower` has the same byte
        // offsets only for ASCII, so bail out on anything else.
        if !prompt.is_char_boundary(start) || lower.len() != prompt.len() {
            continue;
        }
        let rest = prompt[start..].trim_start_matches([':', ' ', '\t']);
        let end = rest.find(['\n', '.', ';', '?']).unwrap_or(rest.len());
        let list = &rest[..end];
        let found: Vec<String> = list
            .replace(" or ", ",")
            .split([',', '|', '/'])
            .map(|s| {
                s.trim()
                    .trim_matches(|c: char| "\"'`[](){}*".contains(c))
                    .trim()
                    .to_string()
            })
            .filter(|s| !s.is_empty() && s.len() <= 40 && s.split_whitespace().count() <= 4)
            .collect();
        if found.len() >= 2 {
            return found;
        }
    }
    Vec::new()
}

/// A JSON reply of at most `max_chars` characters when possible: a classification when the
/// prompt offers labels, else a summary object. Returns the text and whether it had to be cut.
pub(crate) fn json_reply(
    rng: &mut Rng,
    prompt: &str,
    natural_chars: usize,
    max_chars: usize,
) -> (String, bool) {
    let offered = labels(prompt);
    if !offered.is_empty() {
        let label = &offered[rng.below(offered.len())];
        let confidence = 0.55 + (rng.below(44) as f64) / 100.0;
        let mut text = serde_json::json!({ "label": label, "confidence": confidence }).to_string();
        let cut = truncate(&mut text, max_chars);
        return (text, cut);
    }
    let topics = topics(prompt);
    let frame = r#"{"summary":""}"#.len();
    let budget = natural_chars.min(max_chars.saturating_sub(frame));
    let mut summary = prose(rng, &topics, budget);
    truncate(&mut summary, budget);
    let mut text = serde_json::json!({ "summary": summary.trim_end() }).to_string();
    let cut = truncate(&mut text, max_chars);
    (text, cut)
}

/// A deterministic unit-length embedding: hashed bag of words (so texts sharing words are
/// close), each word adding ±1 to a seeded dimension.
pub(crate) fn embedding(seed: u64, text: &str, dims: usize) -> Vec<f32> {
    let dims = dims.max(1);
    let mut v = vec![0f32; dims];
    let mut any = false;
    for w in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        let w = w.to_lowercase();
        let h = hash(seed, &[w.as_bytes()]);
        let sign = if h & 1 == 0 { 1.0 } else { -1.0 };
        v[((h >> 1) % dims as u64) as usize] += sign;
        let h2 = hash(seed ^ 0x5eed, &[w.as_bytes()]);
        v[((h2 >> 1) % dims as u64) as usize] += 0.5 * if h2 & 1 == 0 { 1.0 } else { -1.0 };
        any = true;
    }
    if !any {
        let mut rng = Rng::new(hash(seed, &[text.as_bytes()]));
        for x in &mut v {
            *x = (rng.unit() * 2.0 - 1.0) as f32;
        }
    }
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        for x in &mut v {
            *x /= norm;
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_labels() {
        let p = "Classify the sentiment as one of: positive, negative, neutral.\nText: great";
        assert_eq!(labels(p), vec!["positive", "negative", "neutral"]);
        assert_eq!(labels("Labels: \"spam\" | \"ham\""), vec!["spam", "ham"]);
        assert_eq!(
            labels("pick from billing or support or sales"),
            vec!["billing", "support", "sales"]
        );
        assert!(labels("Summarize this text").is_empty());
    }

    #[test]
    fn json_is_valid_and_bounded() {
        let mut rng = Rng::new(7);
        let (t, cut) = json_reply(&mut rng, "Summarize the quarterly revenue report", 400, 120);
        assert!(!cut);
        assert!(t.len() <= 120);
        let v: serde_json::Value = serde_json::from_str(&t).unwrap();
        assert!(v["summary"].is_string());
        let (t, _) = json_reply(&mut rng, "Label: one of: bug, feature", 400, 400);
        let v: serde_json::Value = serde_json::from_str(&t).unwrap();
        assert!(["bug", "feature"].contains(&v["label"].as_str().unwrap()));
    }

    #[test]
    fn embeddings_are_unit_and_similar_for_shared_words() {
        let a = embedding(1, "the cat sat on the mat", 64);
        let b = embedding(1, "the cat sat on a mat", 64);
        let c = embedding(1, "quarterly revenue grew", 64);
        let dot = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(p, q)| p * q).sum::<f32>();
        assert!((dot(&a, &a) - 1.0).abs() < 1e-4);
        assert!(dot(&a, &b) > dot(&a, &c));
        assert_eq!(a, embedding(1, "the cat sat on the mat", 64));
    }
}

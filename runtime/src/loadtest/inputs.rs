//! Each job's input and tags, deterministic for the scenario's seed.

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use super::scenario::{InputSpec, MAX_JSONL_BYTES, MAX_JSONL_LINES, Scenario, TagSpec, Words};

/// Words `{{text}}` is made of: support-ticket vocabulary, so a classifier's prompt reads
/// like one.
const VOCABULARY: &[&str] = &[
    "invoice",
    "refund",
    "charged",
    "twice",
    "subscription",
    "login",
    "password",
    "error",
    "crash",
    "upgrade",
    "plan",
    "pricing",
    "discount",
    "quote",
    "export",
    "report",
    "slow",
    "timeout",
    "billing",
    "account",
    "team",
    "seat",
    "renewal",
    "contract",
    "api",
    "key",
    "webhook",
    "failed",
    "delivery",
    "order",
    "shipping",
    "address",
    "cancel",
    "trial",
    "feature",
    "request",
    "bug",
    "dashboard",
    "integration",
    "mobile",
    "app",
    "sync",
    "data",
    "missing",
    "please",
    "help",
    "urgent",
    "thanks",
    "since",
    "yesterday",
    "again",
    "customer",
];

/// The tag under which every job of a run is filed, with the run's id as its value.
pub const RUN_TAG: &str = "loadtest";

/// Makes each job's input and tags.
pub struct Inputs {
    kind: Kind,
    words: Option<Words>,
    tags: TagSpec,
    run_id: String,
    rng: StdRng,
}

enum Kind {
    Fixed(Value),
    Lines(Vec<Value>),
    Template(String),
}

/// One job to submit.
pub struct JobSpec {
    /// Its input.
    pub input: Value,
    /// Its tags, with [`RUN_TAG`].
    pub tags: BTreeMap<String, String>,
}

impl Inputs {
    /// The generator of `scenario`, for the run `run_id`; reads a JSONL file and checks a
    /// template once.
    pub fn new(scenario: &Scenario, run_id: &str) -> Result<Inputs, String> {
        let InputSpec {
            json,
            jsonl,
            template,
            words,
        } = &scenario.input;
        let kind =
            if let Some(v) = json {
                Kind::Fixed(v.clone())
            } else if let Some(p) = jsonl {
                let path = scenario.resolve(p);
                let len = std::fs::metadata(&path)
                    .map_err(|e| format!("input.jsonl {}: {e}", path.display()))?
                    .len();
                if len > MAX_JSONL_BYTES {
                    return Err(format!(
                        "input.jsonl {}: {len} bytes; at most {MAX_JSONL_BYTES}",
                        path.display()
                    ));
                }
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| format!("input.jsonl {}: {e}", path.display()))?;
                let mut lines = Vec::new();
                for (n, line) in text
                    .lines()
                    .enumerate()
                    .filter(|(_, l)| !l.trim().is_empty())
                {
                    if lines.len() == MAX_JSONL_LINES {
                        return Err(format!(
                            "input.jsonl {}: more than {MAX_JSONL_LINES} lines",
                            path.display()
                        ));
                    }
                    lines.push(serde_json::from_str(line).map_err(|e| {
                        format!("input.jsonl {} line {}: {e}", path.display(), n + 1)
                    })?);
                }
                if lines.is_empty() {
                    return Err(format!("input.jsonl {}: no input in it", path.display()));
                }
                Kind::Lines(lines)
            } else {
                Kind::Template(template.clone().unwrap_or_default())
            };
        let mut inputs = Inputs {
            kind,
            words: *words,
            tags: scenario.tags.clone(),
            run_id: run_id.to_string(),
            rng: StdRng::seed_from_u64(scenario.seed),
        };
        if let Kind::Template(_) = inputs.kind {
            // A template that does not make JSON fails here, not on the 40,000th job.
            inputs
                .render_template(0, "user-0001", "feature")
                .map_err(|e| format!("input.template does not make JSON: {e}"))?;
            inputs.rng = StdRng::seed_from_u64(scenario.seed);
        }
        Ok(inputs)
    }

    /// The input and tags of job number `seq`.
    pub fn job(&mut self, seq: u64) -> JobSpec {
        let mut tags = BTreeMap::from([(RUN_TAG.to_string(), self.run_id.clone())]);
        let user = self
            .tags
            .users
            .map(|n| format!("user-{:04}", self.rng.random_range(1..=n)));
        let feature = (!self.tags.features.is_empty()).then(|| {
            self.tags.features[self.rng.random_range(0..self.tags.features.len())].clone()
        });
        if let Some(u) = &user {
            tags.insert("user".into(), u.clone());
        }
        if let Some(f) = &feature {
            tags.insert("feature".into(), f.clone());
        }
        let input = match &self.kind {
            Kind::Fixed(v) => v.clone(),
            Kind::Lines(lines) => lines[(seq % lines.len() as u64) as usize].clone(),
            Kind::Template(_) => Value::Null,
        };
        let input = if matches!(self.kind, Kind::Template(_)) {
            self.render_template(
                seq,
                user.as_deref().unwrap_or(""),
                feature.as_deref().unwrap_or(""),
            )
            // Checked at start: a template that rendered once renders always (the
            // substitutions are JSON-escaped text).
            .unwrap_or(Value::Null)
        } else {
            input
        };
        JobSpec { input, tags }
    }

    fn render_template(&mut self, seq: u64, user: &str, feature: &str) -> Result<Value, String> {
        let Kind::Template(t) = &self.kind else {
            return Err("not a template".into());
        };
        let mut out = t.replace("{{seq}}", &seq.to_string());
        out = out.replace("{{user}}", &escape(user));
        out = out.replace("{{feature}}", &escape(feature));
        if out.contains("{{text}}") {
            let n = match self.words.unwrap_or(Words::Fixed(40)) {
                Words::Fixed(n) => n,
                Words::Range([lo, hi]) => self.rng.random_range(lo..=hi),
            };
            let mut text = String::with_capacity(n as usize * 8);
            for i in 0..n {
                if i > 0 {
                    text.push(' ');
                }
                text.push_str(VOCABULARY[self.rng.random_range(0..VOCABULARY.len())]);
            }
            out = out.replace("{{text}}", &escape(&text));
        }
        serde_json::from_str(&out).map_err(|e| e.to_string())
    }
}

/// `s` escaped for the inside of a JSON string.
fn escape(s: &str) -> String {
    let quoted = Value::String(s.to_string()).to_string();
    quoted[1..quoted.len() - 1].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario(input: &str, tags: &str) -> Scenario {
        let text = format!(
            "name = \"t\"\nduration = \"1s\"\n[plugin]\nname = \"x\"\n[arrival]\npattern = \"constant\"\nrate = 1\n[input]\n{input}\n[tags]\n{tags}"
        );
        let mut s: Scenario = toml::from_str(&text).unwrap();
        s.dir = std::path::PathBuf::from(".");
        s
    }

    #[test]
    fn templates_vary_per_job_and_stay_json() {
        let s = scenario(
            r#"template = '{"text": "{{text}} \"{{user}}\"", "n": {{seq}}}'
words = [3, 6]"#,
            "users = 5\nfeatures = [\"search\", \"support\"]",
        );
        let mut g = Inputs::new(&s, "run1").unwrap();
        let a = g.job(0);
        let b = g.job(1);
        assert_eq!(a.input["n"], 0);
        assert_eq!(b.input["n"], 1);
        let words = a.input["text"].as_str().unwrap().split(' ').count();
        assert!(
            (4..=7).contains(&words),
            "3 to 6 words and the user: {}",
            a.input
        );
        assert_eq!(a.tags[RUN_TAG], "run1");
        assert!(a.tags["user"].starts_with("user-000"));
        assert!(["search", "support"].contains(&a.tags["feature"].as_str()));
        // The same seed makes the same jobs.
        let mut again = Inputs::new(&s, "run1").unwrap();
        assert_eq!(again.job(0).input, a.input);
    }

    #[test]
    fn a_template_that_is_not_json_is_refused_up_front() {
        let s = scenario("template = '{\"text\": {{text}}}'", "");
        let e = Inputs::new(&s, "r").err().unwrap();
        assert!(e.contains("input.template"), "{e}");
    }

    #[test]
    fn jsonl_lines_are_used_in_turn() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("in.jsonl"), "{\"a\":1}\n\n{\"a\":2}\n").unwrap();
        let mut s = scenario("jsonl = \"in.jsonl\"", "");
        s.dir = dir.path().to_path_buf();
        let mut g = Inputs::new(&s, "r").unwrap();
        let got: Vec<Value> = (0..3).map(|i| g.job(i).input["a"].clone()).collect();
        assert_eq!(got, [1, 2, 1].map(Value::from).to_vec());
        std::fs::write(dir.path().join("in.jsonl"), "{\"a\":1}\nnot json\n").unwrap();
        let e = Inputs::new(&s, "r").err().unwrap();
        assert!(e.contains("line 2"), "{e}");
    }
}

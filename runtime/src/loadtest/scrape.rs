//! Reading the node's `/metrics` (Prometheus text): the counters and gauges the live view
//! and the time series come from. Counters are read as differences from the first scrape,
//! so a server that was already running is measured from the start of the run.

use std::collections::BTreeMap;

/// Bytes of one `/metrics` answer read.
pub const MAX_METRICS_BYTES: usize = 16 << 20;

/// A series' labels.
type Labels = BTreeMap<String, String>;

/// One scrape: every sample by name, with its labels.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    samples: BTreeMap<String, Vec<(Labels, f64)>>,
}

impl Metrics {
    /// Parse the text format; lines that are not samples are skipped.
    pub fn parse(text: &str) -> Metrics {
        let mut samples: BTreeMap<String, Vec<_>> = BTreeMap::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, parse_labels(rest.trim_end_matches('}'))),
                None => (series, BTreeMap::new()),
            };
            samples
                .entry(name.to_string())
                .or_default()
                .push((labels, value));
        }
        Metrics { samples }
    }

    /// The sum of `name` over the series whose labels include every `(key, value)` of `with`.
    pub fn sum(&self, name: &str, with: &[(&str, &str)]) -> f64 {
        self.samples
            .get(name)
            .into_iter()
            .flatten()
            .filter(|(l, _)| with.iter().all(|(k, v)| l.get(*k).is_some_and(|x| x == v)))
            .map(|(_, v)| *v)
            .sum()
    }

    /// `name` summed by the value of label `by`.
    pub fn by(&self, name: &str, by: &str) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for (l, v) in self.samples.get(name).into_iter().flatten() {
            if let Some(k) = l.get(by) {
                *out.entry(k.clone()).or_insert(0.0) += v;
            }
        }
        out
    }

    /// `name` summed by the values of labels `a` and `b`.
    pub fn by_pair(&self, name: &str, a: &str, b: &str) -> BTreeMap<(String, String), f64> {
        let mut out = BTreeMap::new();
        for (l, v) in self.samples.get(name).into_iter().flatten() {
            if let (Some(x), Some(y)) = (l.get(a), l.get(b)) {
                *out.entry((x.clone(), y.clone())).or_insert(0.0) += v;
            }
        }
        out
    }

    /// The cumulative buckets `(le, count)` of histogram `name` (summed over its other
    /// labels, restricted to `with`), in order.
    pub fn buckets(&self, name: &str, with: &[(&str, &str)]) -> Vec<(f64, f64)> {
        let mut by_le: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
        for (l, v) in self
            .samples
            .get(&format!("{name}_bucket"))
            .into_iter()
            .flatten()
        {
            if !with.iter().all(|(k, x)| l.get(*k).is_some_and(|y| y == x)) {
                continue;
            }
            let Some(le) = l.get("le").and_then(|s| {
                if s == "+Inf" {
                    Some(f64::INFINITY)
                } else {
                    s.parse::<f64>().ok()
                }
            }) else {
                continue;
            };
            let e = by_le.entry(le.to_bits()).or_insert((le, 0.0));
            e.1 += v;
        }
        let mut v: Vec<(f64, f64)> = by_le.into_values().collect();
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v
    }
}

fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = s;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, e)) = chars.next() {
                        value.push(match e {
                            'n' => '\n',
                            other => other,
                        });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.insert(key.trim_start_matches(',').trim().to_string(), value);
        rest = &after[end..];
    }
    out
}

/// The `q` quantile of the observations between two scrapes of a cumulative histogram
/// (`now` minus `before`), interpolated inside its bucket as Prometheus'
/// `histogram_quantile` does; `None` without observations.
pub fn quantile(before: &[(f64, f64)], now: &[(f64, f64)], q: f64) -> Option<f64> {
    let delta: Vec<(f64, f64)> = now
        .iter()
        .map(|(le, c)| {
            let old = before
                .iter()
                .find(|(l, _)| l == le)
                .map(|(_, c)| *c)
                .unwrap_or(0.0);
            (*le, (c - old).max(0.0))
        })
        .collect();
    let total = delta.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for (le, c) in &delta {
        if *c >= rank {
            if le.is_infinite() {
                return Some(prev.0);
            }
            let span = c - prev.1;
            let frac = if span > 0.0 {
                (rank - prev.1) / span
            } else {
                1.0
            };
            return Some(prev.0 + (le - prev.0) * frac);
        }
        prev = (*le, *c);
    }
    Some(prev.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# TYPE sluice_jobs_finished_total counter
sluice_jobs_finished_total{status="completed"} 7
sluice_jobs_finished_total{status="dead"} 2
sluice_model_attempts_total{provider="sim",outcome="ok"} 10
sluice_model_attempts_total{provider="sim-b",outcome="ok"} 1
sluice_model_attempts_total{provider="sim",outcome="rate_limited"} 3
sluice_odd{label="with \"quotes\", and = signs"} 1.5
sluice_job_duration_seconds_bucket{status="completed",le="0.5"} 2
sluice_job_duration_seconds_bucket{status="completed",le="1"} 6
sluice_job_duration_seconds_bucket{status="completed",le="+Inf"} 7
"#;

    #[test]
    fn sums_and_groups_by_label() {
        let m = Metrics::parse(TEXT);
        assert_eq!(m.sum("sluice_jobs_finished_total", &[]), 9.0);
        assert_eq!(
            m.sum("sluice_jobs_finished_total", &[("status", "dead")]),
            2.0
        );
        let by = m.by("sluice_model_attempts_total", "outcome");
        assert_eq!(by["ok"], 11.0);
        assert_eq!(by["rate_limited"], 3.0);
        assert_eq!(
            m.by("sluice_odd", "label")["with \"quotes\", and = signs"],
            1.5
        );
        assert_eq!(m.sum("absent", &[]), 0.0);
    }

    #[test]
    fn quantiles_interpolate_between_scrapes() {
        let m = Metrics::parse(TEXT);
        let now = m.buckets("sluice_job_duration_seconds", &[("status", "completed")]);
        assert_eq!(now.len(), 3);
        // 7 observations: 2 up to 0.5 s, 4 more up to 1 s, 1 above.
        let p50 = quantile(&[], &now, 0.5).unwrap();
        assert!((p50 - 0.6875).abs() < 1e-9, "{p50}");
        assert_eq!(quantile(&[], &now, 0.99), Some(1.0));
        assert_eq!(quantile(&now, &now, 0.5), None, "nothing new");
    }
}

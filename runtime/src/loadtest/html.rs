//! The report as one self-contained HTML page: inline CSS and SVG charts drawn here, no
//! script and nothing fetched when it is opened (its CSP says so). The report's JSON is
//! embedded as inert data (`<script type="application/json" id="report">`) for tools.
//!
//! Every number shown carries `data-k` with its path in the JSON report, so a test can
//! check the page against the JSON.

use std::fmt::Write as _;

use super::report::{Point, Report};
use super::scenario::Window;

const W: f64 = 660.0;
const H: f64 = 230.0;
const ML: f64 = 60.0;
const MR: f64 = 14.0;
const MT: f64 = 30.0;
const MB: f64 = 30.0;

/// Colours of the series, in order.
const COLORS: [&str; 6] = [
    "#2563eb", "#16a34a", "#dc2626", "#9333ea", "#ea580c", "#0891b2",
];

/// Escape text for HTML (element content and quoted attributes).
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// An integer with thousands separators.
pub fn int(v: u64) -> String {
    let s = v.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Dollars: six decimals under a dollar, two above.
pub fn usd(v: f64) -> String {
    if v.abs() < 1.0 {
        format!("${v:.6}")
    } else {
        format!("${v:.2}")
    }
}

fn num(v: f64) -> String {
    if v.abs() >= 1000.0 {
        format!("{:.0}", v)
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else if v.abs() >= 0.1 || v == 0.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.5}")
    }
}

fn tile(key: &str, value: &str, label: &str, bad: bool) -> String {
    format!(
        "<div class=\"tile{}\"><div class=\"v\" data-k=\"{}\">{}</div><div class=\"l\">{}</div></div>",
        if bad { " bad" } else { "" },
        esc(key),
        esc(value),
        esc(label)
    )
}

/// A time-series line chart; `None` values break a line.
fn line_chart(
    id: &str,
    title: &str,
    unit: &str,
    points: &[Point],
    bucket_s: f64,
    series: &[(&str, Vec<Option<f64>>)],
    windows: &[Window],
) -> String {
    let t_max = points
        .last()
        .map(|p| p.t + bucket_s)
        .unwrap_or(1.0)
        .max(1.0);
    let y_max = nice(
        series
            .iter()
            .flat_map(|(_, v)| v.iter().flatten().copied())
            .fold(0.0, f64::max),
    );
    let x = |t: f64| ML + (W - ML - MR) * t / t_max;
    let y = |v: f64| H - MB - (H - MT - MB) * v / y_max;
    let mut s = String::new();
    let _ = write!(
        s,
        "<figure class=\"chart\" id=\"{id}\"><svg viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"{t}\"><title>{t}</title>",
        t = esc(title)
    );
    for w in windows {
        let (a, b) = (
            w.from.as_secs_f64().min(t_max),
            w.until.as_secs_f64().min(t_max),
        );
        let what = if w.outage {
            format!("{} down", w.provider)
        } else if let Some(f) = w.latency_factor {
            format!("{} latency ×{f}", w.provider)
        } else {
            format!("{} errors", w.provider)
        };
        let _ = write!(
            s,
            "<rect class=\"window\" x=\"{:.1}\" y=\"{MT}\" width=\"{:.1}\" height=\"{:.1}\"><title>{}</title></rect>",
            x(a),
            (x(b) - x(a)).max(0.5),
            H - MT - MB,
            esc(&what)
        );
    }
    for k in 0..=4 {
        let v = y_max * f64::from(k) / 4.0;
        let _ = write!(
            s,
            "<line class=\"grid\" x1=\"{ML}\" x2=\"{:.1}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\"/><text class=\"ax\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            W - MR,
            ML - 6.0,
            y(v) + 4.0,
            num(v),
            yy = y(v)
        );
    }
    for k in 0..=5 {
        let t = t_max * f64::from(k) / 5.0;
        let _ = write!(
            s,
            "<text class=\"ax\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}s</text>",
            x(t),
            H - MB + 16.0,
            if t_max < 10.0 {
                format!("{t:.1}")
            } else {
                format!("{t:.0}")
            }
        );
    }
    let _ = write!(
        s,
        "<text class=\"ax\" x=\"6\" y=\"{:.1}\">{}</text>",
        MT - 12.0,
        esc(unit)
    );
    let mut lx = ML + 60.0;
    for (n, (name, values)) in series.iter().enumerate() {
        let color = COLORS[n % COLORS.len()];
        let mut d = String::new();
        let mut pen_up = true;
        for (p, v) in points.iter().zip(values) {
            match v {
                Some(v) => {
                    let _ = write!(
                        d,
                        "{}{:.1},{:.1} ",
                        if pen_up { "M" } else { "L" },
                        x(p.t + bucket_s / 2.0),
                        y(*v)
                    );
                    pen_up = false;
                }
                None => pen_up = true,
            }
        }
        let _ = write!(
            s,
            "<path class=\"series\" data-series=\"{}\" d=\"{}\" stroke=\"{color}\"/>",
            esc(name),
            d.trim_end()
        );
        let _ = write!(
            s,
            "<rect x=\"{lx:.1}\" y=\"{:.1}\" width=\"10\" height=\"10\" fill=\"{color}\"/><text class=\"lg\" x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            MT - 21.0,
            lx + 14.0,
            MT - 12.0,
            esc(name)
        );
        lx += 24.0 + 7.0 * name.chars().count() as f64;
    }
    s.push_str("</svg>");
    let _ = write!(s, "<figcaption>{}</figcaption></figure>", esc(title));
    s
}

/// Horizontal bars with their values.
fn bar_chart(id: &str, title: &str, items: &[(String, f64, String)]) -> String {
    let row = 22.0;
    let h = MT + row * items.len().max(1) as f64 + 10.0;
    let max = items.iter().map(|i| i.1).fold(0.0, f64::max).max(1e-12);
    let label_w = 250.0;
    let span = W - label_w - 90.0;
    let mut s = format!(
        "<figure class=\"chart\" id=\"{id}\"><svg viewBox=\"0 0 {W} {h}\" role=\"img\" aria-label=\"{t}\"><title>{t}</title>",
        t = esc(title)
    );
    if items.is_empty() {
        let _ = write!(
            s,
            "<text class=\"ax\" x=\"{ML}\" y=\"{:.1}\">none</text>",
            MT + 12.0
        );
    }
    for (n, (label, v, shown)) in items.iter().enumerate() {
        let yy = MT + row * n as f64;
        let w = (span * v / max).max(if *v > 0.0 { 1.0 } else { 0.0 });
        let _ = write!(
            s,
            "<text class=\"lg\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text><rect class=\"bar\" x=\"{label_w}\" y=\"{yy:.1}\" width=\"{w:.1}\" height=\"{:.1}\" fill=\"{}\"/><text class=\"lg\" x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            label_w - 6.0,
            yy + 14.0,
            esc(&shorten(label, 40)),
            row - 6.0,
            COLORS[n % COLORS.len()],
            label_w + w + 6.0,
            yy + 14.0,
            esc(shown)
        );
    }
    let _ = write!(s, "</svg><figcaption>{}</figcaption></figure>", esc(title));
    s
}

fn shorten(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n - 1).collect();
        t.push('…');
        t
    }
}

/// A round number at or above `v` (1, 2, 5 × 10ⁿ); 1 when there is nothing to show.
fn nice(v: f64) -> f64 {
    if !(v.is_finite() && v > 0.0) {
        return 1.0;
    }
    let e = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if m * e >= v * (1.0 - 1e-12) {
            return m * e;
        }
    }
    10.0 * e
}

/// The page.
pub fn render(r: &Report, windows: &[Window]) -> String {
    let j = &r.jobs;
    let l = &r.latency_ms;
    let mut body = String::new();
    let verdict = if r.passed {
        "<p class=\"verdict ok\" id=\"verdict\">Every SLO met</p>"
    } else {
        "<p class=\"verdict miss\" id=\"verdict\">SLO missed</p>"
    };
    let _ = write!(
        body,
        "<header><h1>Load test: <span id=\"scenario\">{}</span></h1><p>{}</p><p class=\"meta\">run <code id=\"run-id\">{}</code> · plugin <code>{}</code> · {} · started {} · {} · wall {:.1} s</p>{verdict}</header>",
        esc(&r.run.scenario),
        esc(&r.run.description),
        esc(&r.run.run_id),
        esc(&r.run.plugin),
        esc(&r.run.target),
        esc(&r.run.started_at),
        esc(&r.run.arrival),
        r.run.wall_s
    );

    body.push_str("<section><h2>Jobs</h2><div class=\"tiles\">");
    for (k, v, label, bad) in [
        ("jobs.submitted", j.submitted, "submitted", false),
        ("jobs.accepted", j.accepted, "accepted", false),
        ("jobs.rejected", j.rejected, "rejected", j.rejected > 0),
        ("jobs.completed", j.completed, "completed", false),
        ("jobs.dead", j.dead, "dead", j.dead > 0),
        ("jobs.cancelled", j.cancelled, "cancelled", false),
        (
            "jobs.unfinished",
            j.unfinished,
            "unfinished at the deadline",
            j.unfinished > 0,
        ),
        (
            "jobs.lost",
            j.lost,
            "lost (accepted − terminal)",
            j.lost > 0,
        ),
    ] {
        body.push_str(&tile(k, &int(v), label, bad));
    }
    body.push_str("</div><div class=\"tiles\">");
    for (k, v, label) in [
        ("latency_ms.p50", l.p50, "p50 latency"),
        ("latency_ms.p95", l.p95, "p95 latency"),
        ("latency_ms.p99", l.p99, "p99 latency"),
        ("latency_ms.max", l.max, "max latency"),
    ] {
        body.push_str(&tile(
            k,
            &format!("{} ms", int(v.round() as u64)),
            label,
            false,
        ));
    }
    body.push_str(&tile(
        "throughput.completed_per_s",
        &format!("{:.2}/s", r.throughput.completed_per_s),
        "completed per second",
        false,
    ));
    body.push_str("</div><div class=\"tiles\">");
    body.push_str(&tile(
        "retries.retry_amplification",
        &format!("{:.3}", r.retries.retry_amplification),
        "provider attempts per model call",
        false,
    ));
    body.push_str(&tile(
        "retries.provider_calls_per_job",
        &format!("{:.3}", r.retries.provider_calls_per_job),
        "provider calls per job",
        false,
    ));
    body.push_str(&tile(
        "providers.rate_limited",
        &int(r.providers.rate_limited),
        "429s from providers",
        false,
    ));
    body.push_str(&tile(
        "providers.failovers",
        &int(r.providers.failovers),
        "failovers",
        false,
    ));
    body.push_str(&tile(
        "providers.breaker_opened",
        &int(r.providers.breaker_opened),
        "breaker opened",
        false,
    ));
    body.push_str(&tile(
        "cost.total_micros",
        &usd(r.cost.total_micros.to_usd()),
        "total cost",
        false,
    ));
    body.push_str(&tile(
        "cost.per_job_micros",
        &usd(r.cost.per_job_micros / 1e6),
        "cost per completed job",
        false,
    ));
    body.push_str("</div></section>");

    body.push_str("<section><h2>SLOs</h2><table id=\"slo\"><thead><tr><th>objective</th><th>target</th><th>measured</th><th>verdict</th></tr></thead><tbody>");
    for c in &r.slo {
        let _ = write!(
            body,
            "<tr data-slo=\"{}\" class=\"{}\"><td>{}</td><td>{} {}</td><td class=\"actual\">{}</td><td>{}</td></tr>",
            esc(&c.name),
            if c.met { "ok" } else { "miss" },
            esc(&c.name),
            esc(&c.op),
            fmt_slo(c.target),
            fmt_slo(c.actual),
            if c.met { "met" } else { "MISSED" }
        );
    }
    body.push_str("</tbody></table></section>");

    let pts = &r.series;
    let b = r.run.bucket_s;
    let per_s =
        |f: fn(&Point) -> f64| -> Vec<Option<f64>> { pts.iter().map(|p| Some(f(p) / b)).collect() };
    body.push_str("<section><h2>Over time</h2><div class=\"charts\">");
    body.push_str(&line_chart(
        "chart-throughput",
        "Throughput",
        "jobs/s",
        pts,
        b,
        &[
            ("submitted", per_s(|p| p.submitted as f64)),
            ("completed", per_s(|p| p.completed as f64)),
            ("dead", per_s(|p| p.dead as f64)),
        ],
        windows,
    ));
    body.push_str(&line_chart(
        "chart-latency",
        "Latency of jobs completing (accepted → finished)",
        "ms",
        pts,
        b,
        &[
            ("p50", pts.iter().map(|p| p.p50_ms).collect()),
            ("p95", pts.iter().map(|p| p.p95_ms).collect()),
            ("p99", pts.iter().map(|p| p.p99_ms).collect()),
        ],
        windows,
    ));
    body.push_str(&line_chart(
        "chart-queue",
        "Queue depth",
        "jobs",
        pts,
        b,
        &[
            (
                "outstanding",
                pts.iter().map(|p| Some(p.outstanding as f64)).collect(),
            ),
            ("queued", pts.iter().map(|p| p.queued).collect()),
            ("running", pts.iter().map(|p| p.running).collect()),
            ("retrying", pts.iter().map(|p| p.retrying).collect()),
        ],
        windows,
    ));
    body.push_str(&line_chart(
        "chart-errors",
        "Errors, 429s and failovers",
        "per s",
        pts,
        b,
        &[
            ("failed attempts", per_s(|p| p.failed_attempts)),
            ("provider errors", per_s(|p| p.provider_errors)),
            ("429s", per_s(|p| p.rate_limited)),
            ("failovers", per_s(|p| p.failovers)),
        ],
        windows,
    ));
    let mut cum = 0.0;
    let cumulative: Vec<Option<f64>> = pts
        .iter()
        .map(|p| {
            cum += p.cost_micros / 1e6;
            Some(cum)
        })
        .collect();
    body.push_str(&line_chart(
        "chart-cost",
        "Spend so far",
        "USD",
        pts,
        b,
        &[("spend", cumulative)],
        windows,
    ));
    body.push_str("</div></section>");

    body.push_str("<section><h2>Where it went</h2><div class=\"charts\">");
    let mut errors: Vec<(String, f64, String)> = Vec::new();
    for (prefix, m) in [
        ("dead", &r.errors.dead_by_class),
        ("attempt", &r.errors.failed_attempts_by_kind),
        ("provider", &r.errors.provider_errors_by_kind),
    ] {
        for (k, v) in m {
            errors.push((format!("{prefix}: {k}"), *v as f64, int(*v)));
        }
    }
    body.push_str(&bar_chart(
        "chart-error-classes",
        "Errors by class",
        &errors,
    ));
    let x = &r.retries;
    body.push_str(&bar_chart(
        "chart-amplification",
        "Retry amplification",
        &[
            ("accepted jobs".into(), j.accepted as f64, int(j.accepted)),
            (
                "job attempts".into(),
                x.job_attempts as f64,
                int(x.job_attempts),
            ),
            (
                "model calls".into(),
                x.model_calls as f64,
                int(x.model_calls),
            ),
            (
                "provider attempts".into(),
                x.provider_attempts as f64,
                int(x.provider_attempts),
            ),
        ],
    ));
    let mut cost_bars = vec![(
        "total, measured".to_string(),
        r.cost.total_micros.to_usd(),
        usd(r.cost.total_micros.to_usd()),
    )];
    if let Some(t) = r.cost.projection.as_ref().and_then(|p| p.total_usd) {
        cost_bars.push(("total, projected".into(), t, usd(t)));
    }
    body.push_str(&bar_chart(
        "chart-cost-total",
        "Total cost against the projection",
        &cost_bars,
    ));
    let mut per_job = vec![(
        "per job, measured".to_string(),
        r.cost.per_job_micros / 1e6,
        usd(r.cost.per_job_micros / 1e6),
    )];
    if let Some(t) = r.cost.projection.as_ref().and_then(|p| p.cost_per_job_usd) {
        per_job.push(("per job, projected".into(), t, usd(t)));
    }
    body.push_str(&bar_chart(
        "chart-cost-job",
        "Cost per job against the projection",
        &per_job,
    ));
    body.push_str(&bar_chart(
        "chart-accounting",
        "Accepted jobs, accounted for",
        &[
            ("completed".into(), j.completed as f64, int(j.completed)),
            ("dead".into(), j.dead as f64, int(j.dead)),
            ("cancelled".into(), j.cancelled as f64, int(j.cancelled)),
            ("lost".into(), j.lost as f64, int(j.lost)),
        ],
    ));
    let mut users: Vec<(String, f64, String)> = r
        .cost
        .by_user
        .iter()
        .chain(&r.cost.by_feature)
        .map(|(k, v)| (k.clone(), v.to_usd(), usd(v.to_usd())))
        .collect();
    users.sort_by(|a, b| b.1.total_cmp(&a.1));
    users.truncate(15);
    body.push_str(&bar_chart(
        "chart-cost-tags",
        "Spend by user and feature (top 15)",
        &users,
    ));
    body.push_str("</div></section>");

    body.push_str("<section><h2>Providers</h2><table id=\"providers\"><thead><tr><th>provider</th><th>outcome</th><th>attempts</th></tr></thead><tbody>");
    for (prov, m) in &r.providers.attempts {
        for (outcome, n) in m {
            let _ = write!(
                body,
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(prov),
                esc(outcome),
                int(*n)
            );
        }
    }
    body.push_str("</tbody></table><table id=\"simulators\"><thead><tr><th>simulator</th><th>requests</th><th>ok</th><th>429</th><th>5xx</th><th>tokens in</th><th>tokens out</th></tr></thead><tbody>");
    for (name, s) in &r.providers.simulators {
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(name),
            int(s.requests),
            int(s.ok),
            int(s.rate_limited),
            int(s.server_errors),
            int(s.input_tokens),
            int(s.output_tokens)
        );
    }
    body.push_str("</tbody></table></section>");
    if !j.lost_ids.is_empty() {
        body.push_str("<section><h2>Lost jobs</h2><ul id=\"lost\">");
        for id in &j.lost_ids {
            let _ = write!(body, "<li><code>{id}</code></li>");
        }
        body.push_str("</ul></section>");
    }

    let json = serde_json::to_string(r)
        .unwrap_or_else(|_| "{}".into())
        .replace("</", "<\\/");
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; img-src data:\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>Load test: {}</title><style>{CSS}</style></head><body>{body}\
<script type=\"application/json\" id=\"report\">{json}</script></body></html>\n",
        esc(&r.run.scenario)
    )
}

fn fmt_slo(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.4}")
    }
}

const CSS: &str = "
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1400px;color:#111;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 10px;border-bottom:1px solid #ddd;padding-bottom:4px}
.meta{color:#555}.verdict{display:inline-block;padding:4px 12px;border-radius:4px;font-weight:600}
.verdict.ok{background:#dcfce7;color:#166534}.verdict.miss{background:#fee2e2;color:#991b1b}
.tiles{display:flex;flex-wrap:wrap;gap:10px;margin-bottom:10px}
.tile{border:1px solid #ddd;border-radius:6px;padding:8px 12px;min-width:120px}
.tile .v{font-size:20px;font-weight:600;font-variant-numeric:tabular-nums}.tile .l{color:#555;font-size:12px}
.tile.bad{border-color:#dc2626;background:#fef2f2}
table{border-collapse:collapse;margin:8px 16px 8px 0;display:inline-table;vertical-align:top}
td,th{border:1px solid #ddd;padding:4px 10px;text-align:left;font-variant-numeric:tabular-nums}
tr.miss td{background:#fee2e2}tr.ok td:last-child{color:#166534}
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(600px,1fr));gap:16px}
figure.chart{margin:0;border:1px solid #eee;border-radius:6px;padding:6px}
figcaption{font-weight:600;font-size:13px;padding:2px 6px}
svg{width:100%;height:auto}.grid{stroke:#eee}.ax{font-size:11px;fill:#666}.lg{font-size:11px;fill:#333}
.series{fill:none;stroke-width:1.8}.window{fill:#fde68a;opacity:.45}
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_numbers_grouped() {
        assert_eq!(esc("<b a=\"x\">&'"), "&lt;b a=&quot;x&quot;&gt;&amp;&#39;");
        assert_eq!(int(0), "0");
        assert_eq!(int(1234567), "1,234,567");
        assert_eq!(usd(0.0001234), "$0.000123");
        assert_eq!(usd(12.5), "$12.50");
        assert_eq!(nice(0.0), 1.0);
        assert_eq!(nice(0.3), 0.5);
        assert_eq!(nice(0.019), 0.02);
        assert_eq!(nice(7.0), 10.0);
        assert_eq!(nice(1234.0), 2000.0);
    }
}

//! Once a second: scrape `/metrics`, keep the sample for the series, and redraw the live
//! view (indicatif on a terminal, a plain line every few seconds otherwise).

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use tokio_util::sync::CancellationToken;

use super::driver::Submissions;
use super::scrape::{Metrics, quantile};
use super::target::Target;

/// How often `/metrics` is read.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// How often a line is printed when stderr is not a terminal.
const LINE_EVERY: Duration = Duration::from_secs(5);

/// One scrape, at `t` seconds from the start.
pub struct Sample {
    /// Seconds from the start.
    pub t: f64,
    /// What it read.
    pub metrics: Metrics,
}

/// The numbers the live view shows, from the driver's counters and a scrape.
pub struct Live {
    /// Sent.
    pub submitted: u64,
    /// Finished: completed.
    pub completed: f64,
    /// Dead.
    pub dead: f64,
    /// Cancelled.
    pub cancelled: f64,
    /// Attempts that failed and will be retried.
    pub retried: f64,
    /// Accepted minus finished.
    pub in_flight: f64,
    /// Completed jobs' latency percentiles since the start (from the histogram), seconds.
    pub p: [Option<f64>; 3],
    /// Provider attempts per finished job.
    pub calls_per_job: f64,
    /// 429s.
    pub rate_limited: f64,
    /// Spend, micro-dollars.
    pub cost_micros: f64,
}

/// `name` in `now` minus in `base`, summed over series matching `with`.
pub fn delta(now: &Metrics, base: &Metrics, name: &str, with: &[(&str, &str)]) -> f64 {
    (now.sum(name, with) - base.sum(name, with)).max(0.0)
}

impl Live {
    /// The live numbers now.
    pub fn read(subs: &Submissions, base: &Metrics, now: &Metrics) -> Live {
        let fin = |s: &str| delta(now, base, "sluice_jobs_finished_total", &[("status", s)]);
        let (completed, dead, cancelled) = (fin("completed"), fin("dead"), fin("cancelled"));
        let accepted = subs.accepted.load(Ordering::Relaxed);
        let hist_base = base.buckets("sluice_job_duration_seconds", &[("status", "completed")]);
        let hist_now = now.buckets("sluice_job_duration_seconds", &[("status", "completed")]);
        let attempts = delta(now, base, "sluice_model_attempts_total", &[]);
        let finished = completed + dead;
        Live {
            submitted: subs.submitted.load(Ordering::Relaxed),
            completed,
            dead,
            cancelled,
            retried: fin("retrying"),
            in_flight: (accepted as f64 - completed - dead - cancelled).max(0.0),
            p: [0.5, 0.95, 0.99].map(|q| quantile(&hist_base, &hist_now, q)),
            calls_per_job: if finished > 0.0 {
                attempts / finished
            } else {
                0.0
            },
            rate_limited: delta(now, base, "sluice_provider_rate_limited_total", &[]),
            cost_micros: delta(now, base, "sluice_model_cost_micros_total", &[]),
        }
    }

    /// One line.
    pub fn line(&self) -> String {
        let p = |v: Option<f64>| v.map(|s| format!("{s:.2}")).unwrap_or_else(|| "–".into());
        format!(
            "submitted {} · in flight {:.0} · completed {:.0} · retried {:.0} · dead {:.0} · p50/p95/p99 ≈ {}/{}/{} s · provider calls/job {:.2} · 429s {:.0} · cost ${:.4}",
            self.submitted,
            self.in_flight,
            self.completed,
            self.retried,
            self.dead,
            p(self.p[0]),
            p(self.p[1]),
            p(self.p[2]),
            self.calls_per_job,
            self.rate_limited,
            self.cost_micros / 1e6
        )
    }
}

/// The sampler's handle: stop it to get its samples.
pub struct Sampler {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Vec<Sample>>,
}

impl Sampler {
    /// Start sampling `target` against the baseline `base`.
    pub fn start(
        target: Arc<Target>,
        subs: Arc<Submissions>,
        base: Metrics,
        planned: u64,
        started: Instant,
        quiet: bool,
    ) -> Sampler {
        let stop = CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            let tty = std::io::stderr().is_terminal() && !quiet;
            let bar = if tty {
                let b = ProgressBar::new(planned);
                b.set_style(
                    ProgressStyle::with_template(
                        "{elapsed_precise} [{bar:30}] {pos}/{len} finished\n{msg}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
                b
            } else {
                ProgressBar::hidden()
            };
            let mut samples = Vec::new();
            let mut last_line = Instant::now();
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            loop {
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let Ok(m) = target.metrics().await else {
                    continue;
                };
                let live = Live::read(&subs, &base, &m);
                bar.set_position((live.completed + live.dead + live.cancelled) as u64);
                bar.set_message(live.line());
                if !tty && !quiet && last_line.elapsed() >= LINE_EVERY {
                    eprintln!(
                        "[{:>5.0}s] {}",
                        started.elapsed().as_secs_f64(),
                        live.line()
                    );
                    last_line = Instant::now();
                }
                samples.push(Sample {
                    t: started.elapsed().as_secs_f64(),
                    metrics: m,
                });
            }
            bar.finish_and_clear();
            samples
        });
        Sampler { stop, task }
    }

    /// Stop and return the samples.
    pub async fn finish(self) -> Vec<Sample> {
        self.stop.cancel();
        self.task.await.unwrap_or_default()
    }
}

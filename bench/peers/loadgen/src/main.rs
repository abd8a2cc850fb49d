//! Open-loop load generator for `bench/peers/`: sends `--rate` POSTs a second for `--secs`
//! seconds at a constant arrival rate, each at its scheduled instant whether or not earlier ones
//! have answered, and times every request from that scheduled instant (so a slow server or a
//! lagging generator shows up as latency instead of silently lowering the rate: no coordinated
//! omission). Prints one JSON line:
//!
//! `{"label", "rate", "secs", "sent", "ok", "failed", "ok_per_sec", "p50_ms", "p90_ms",
//!   "p99_ms", "max_ms", "first_error"}`
//!
//! A request is ok when it answers `--status` (200) and, with `--expect`, its body contains that
//! text. Requests scheduled in the first `--warmup-secs` are sent but not counted. `{n}` in the
//! body is replaced by the request's sequence number and `{run}` by a per-run nonce, so no two
//! requests are alike (no cache on either side can answer them).
//!
//! Usage: `peers-loadgen --url URL --rate 100 --secs 10 --body '{"x": "{n}"}'
//!         [--header 'Authorization: Bearer k'] [--expect completed] [--timeout-ms 30000]
//!         [--max-inflight 4000] [--warmup-secs 1] [--label name]`

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

struct Args {
    url: String,
    rate: f64,
    secs: f64,
    body: String,
    headers: Vec<(String, String)>,
    expect: Option<String>,
    status: u16,
    timeout: Duration,
    max_inflight: usize,
    warmup: f64,
    label: String,
}

fn parse_args() -> Args {
    let mut a = Args {
        url: String::new(),
        rate: 10.0,
        secs: 10.0,
        body: "{}".into(),
        headers: Vec::new(),
        expect: None,
        status: 200,
        timeout: Duration::from_secs(30),
        max_inflight: 4000,
        warmup: 1.0,
        label: "run".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || {
            it.next()
                .unwrap_or_else(|| die(&format!("{flag} needs a value")))
        };
        match flag.as_str() {
            "--url" => a.url = val(),
            "--rate" => a.rate = num(&val()),
            "--secs" => a.secs = num(&val()),
            "--body" => a.body = val(),
            "--header" => {
                let h = val();
                let (k, v) = h
                    .split_once(':')
                    .unwrap_or_else(|| die("--header is 'Name: value'"));
                a.headers.push((k.trim().into(), v.trim().into()));
            }
            "--expect" => a.expect = Some(val()),
            "--status" => a.status = num(&val()) as u16,
            "--timeout-ms" => a.timeout = Duration::from_millis(num(&val()) as u64),
            "--max-inflight" => a.max_inflight = num(&val()) as usize,
            "--warmup-secs" => a.warmup = num(&val()),
            "--label" => a.label = val(),
            _ => die(&format!("unknown argument {flag}")),
        }
    }
    if a.url.is_empty() || a.rate <= 0.0 || a.secs <= 0.0 {
        die("--url, a positive --rate and --secs are required");
    }
    a
}

fn num(s: &str) -> f64 {
    s.parse()
        .unwrap_or_else(|_| die(&format!("not a number: {s}")))
}

fn die(msg: &str) -> ! {
    eprintln!("peers-loadgen: {msg}");
    std::process::exit(2)
}

#[derive(Default)]
struct Tally {
    latencies_us: Vec<u64>,
    ok: u64,
    failed: u64,
    first_error: Option<String>,
}

impl Tally {
    fn fail(&mut self, why: String) {
        self.failed += 1;
        self.first_error.get_or_insert(why);
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Arc::new(parse_args());
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.max_inflight)
        .timeout(args.timeout)
        .build()
        .expect("http client");
    let run = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
        .to_string();
    let tally = Arc::new(Mutex::new(Tally::default()));
    let inflight = Arc::new(tokio::sync::Semaphore::new(args.max_inflight));
    let total = (args.rate * args.secs).round() as u64;
    let warmup_n = (args.rate * args.warmup).round() as u64;
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let mut tasks = Vec::with_capacity(total as usize);
    for n in 0..total {
        let due = start + Duration::from_secs_f64(n as f64 / args.rate);
        tokio::time::sleep_until(due).await;
        let counted = n >= warmup_n;
        // Past --max-inflight the server is hopelessly behind: count a failure, send nothing.
        let Ok(permit) = inflight.clone().try_acquire_owned() else {
            if counted {
                tally
                    .lock()
                    .unwrap()
                    .fail("max in-flight requests reached".into());
            }
            continue;
        };
        let (client, args, tally) = (client.clone(), args.clone(), tally.clone());
        let body = args
            .body
            .replace("{n}", &n.to_string())
            .replace("{run}", &run);
        let due: Instant = due.into_std();
        tasks.push(tokio::spawn(async move {
            let mut req = client
                .post(&args.url)
                .header("content-type", "application/json")
                .body(body);
            for (k, v) in &args.headers {
                req = req.header(k, v);
            }
            let outcome = match req.send().await {
                Ok(res) => {
                    let status = res.status().as_u16();
                    match res.text().await {
                        Ok(text) if status != args.status => {
                            Err(format!("status {status}: {}", preview(&text)))
                        }
                        Ok(text) => match &args.expect {
                            Some(want) if !text.contains(want.as_str()) => {
                                Err(format!("body lacks {want:?}: {}", preview(&text)))
                            }
                            _ => Ok(()),
                        },
                        Err(e) => Err(format!("reading body: {e}")),
                    }
                }
                Err(e) => Err(format!("request: {e}")),
            };
            let took = due.elapsed();
            drop(permit);
            if !counted {
                return;
            }
            let mut t = tally.lock().unwrap();
            match outcome {
                Ok(()) => {
                    t.ok += 1;
                    t.latencies_us.push(took.as_micros() as u64);
                }
                Err(why) => t.fail(why),
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let wall = (Instant::now() - start.into_std()).as_secs_f64();
    let mut t = tally.lock().unwrap();
    t.latencies_us.sort_unstable();
    let pct = |p: f64| -> f64 {
        let v = &t.latencies_us;
        if v.is_empty() {
            return -1.0;
        }
        let i = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
        v[i] as f64 / 1000.0
    };
    let counted_secs = (wall - args.warmup).max(1e-9);
    println!(
        "{{\"label\":{:?},\"rate\":{},\"secs\":{},\"sent\":{},\"ok\":{},\"failed\":{},\
         \"ok_per_sec\":{:.1},\"p50_ms\":{:.3},\"p90_ms\":{:.3},\"p99_ms\":{:.3},\"max_ms\":{:.3},\
         \"first_error\":{:?}}}",
        args.label,
        args.rate,
        args.secs,
        total - warmup_n,
        t.ok,
        t.failed,
        t.ok as f64 / counted_secs,
        pct(0.50),
        pct(0.90),
        pct(0.99),
        pct(1.0),
        t.first_error.clone().unwrap_or_default(),
    );
}

fn preview(s: &str) -> String {
    s.chars().take(200).collect()
}

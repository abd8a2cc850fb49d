//! What the fault-injection tests share on top of `e2e_support`: simulated providers the test
//! owns (so their counters outlive a killed node), a gateway configuration pointing nodes at
//! them, a private Postgres cluster a test may stop, and the tally every test ends with:
//! jobs accepted, completed, dead and lost, provider calls and usage rows.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use sluice_gateway::sim::{self, SimHandle};
use sluice_gateway::{Faults, SimConfig};
use sqlx::Connection;

use crate::e2e_support::{DEADLINE, Server};

/// A simulated provider serving on loopback in the test process, with `extra_latency_ms`
/// added to every answer (switchable with [`SimHandle::update_faults`]).
pub async fn provider(seed: u64, extra_latency_ms: u64) -> SimHandle {
    sim::start(SimConfig {
        seed,
        faults: Faults {
            extra_latency_ms,
            ..Faults::default()
        },
        ..SimConfig::instant()
    })
    .await
    .expect("starting a simulated provider")
}

/// One provider of the gateway configuration written by [`write_gateway`].
pub struct ProviderSpec<'a> {
    /// Its name in the configuration (`primary`, `backup`, …).
    pub name: &'a str,
    /// The simulator it talks to.
    pub sim: &'a SimHandle,
    /// Extra TOML lines of its `[gateway.providers.<name>]` table (`max_retries = 0`, …).
    pub extra: &'a str,
}

/// Write a `sluice.toml` in `dir` whose gateway sends alias `fast` to `providers` in order (an
/// OpenAI-format chain), with the response cache off so every job's call reaches a provider;
/// its path, for `SLUICE_CONFIG`.
pub fn write_gateway(dir: &Path, providers: &[ProviderSpec<'_>], extra: &str) -> PathBuf {
    let mut toml = String::from("[gateway.cache]\nenabled = false\n\n");
    let mut chain = Vec::new();
    for p in providers {
        toml.push_str(&format!(
            "[gateway.providers.{name}]\nkind = \"openai\"\nbase_url = \"{url}\"\n\
             api_key = \"sk-sim\"\n{extra}\n\n\
             [gateway.models.\"{name}/sim-fast\"]\n\
             input_usd_per_mtok = 0.15\noutput_usd_per_mtok = 0.60\n\n",
            name = p.name,
            url = p.sim.base_url(),
            extra = p.extra,
        ));
        chain.push(format!("\"{}/sim-fast\"", p.name));
    }
    toml.push_str(&format!(
        "[gateway.aliases]\nfast = [{}]\n",
        chain.join(", ")
    ));
    toml.push_str(extra);
    let path = dir.join("sluice.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

/// Poll `check` every 50 ms until it returns `Some`, failing the test with `what` after the
/// deadline.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(started.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Submit `input` to `plugin`: the job id when it was accepted (202), else the status and
/// body the server answered (or the transport error).
pub async fn try_submit(
    server: &Server,
    key: &str,
    plugin: &str,
    body: &Value,
) -> Result<String, String> {
    let req = server
        .request(
            reqwest::Method::POST,
            &format!("/v1/plugins/{plugin}/jobs"),
            Some(key),
        )
        .timeout(Duration::from_secs(30))
        .json(body);
    match req.send().await {
        Ok(res) if res.status() == reqwest::StatusCode::ACCEPTED => {
            let body: Value = res.json().await.map_err(|e| e.to_string())?;
            Ok(body["id"].as_str().expect("a job id").to_string())
        }
        Ok(res) => Err(format!(
            "{}: {}",
            res.status(),
            res.text().await.unwrap_or_default()
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// What became of a set of accepted jobs.
#[derive(Debug, Default)]
pub struct Tally {
    /// Jobs the API answered 202 for.
    pub accepted: usize,
    pub completed: usize,
    pub dead: usize,
    pub cancelled: usize,
    /// Accepted and not terminal (or not found at all): must be 0.
    pub lost: usize,
    /// Each finished job, by id.
    pub jobs: BTreeMap<String, Value>,
}

impl Tally {
    /// The accepted jobs whose attempt count is above 1.
    pub fn rerun(&self) -> Vec<&Value> {
        self.jobs
            .values()
            .filter(|j| j["attempt"].as_u64() > Some(1))
            .collect()
    }
}

/// Wait until every job in `ids` is terminal (or the deadline passes), then count outcomes.
pub async fn settle(server: &Server, key: &str, ids: &[String]) -> Tally {
    let started = Instant::now();
    let mut tally = Tally {
        accepted: ids.len(),
        ..Tally::default()
    };
    for id in ids {
        let job = loop {
            let res = server.get(Some(key), &format!("/v1/jobs/{id}")).await;
            let terminal = res.status == 200
                && matches!(
                    res.body["status"].as_str(),
                    Some("completed" | "dead" | "cancelled")
                );
            if terminal || started.elapsed() > DEADLINE {
                break res;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        match (job.status.as_u16(), job.body["status"].as_str()) {
            (200, Some("completed")) => tally.completed += 1,
            (200, Some("dead")) => tally.dead += 1,
            (200, Some("cancelled")) => tally.cancelled += 1,
            _ => tally.lost += 1,
        }
        tally.jobs.insert(id.clone(), job.body.clone());
    }
    tally
}

/// Usage rows in the database, by `(source, outcome)`.
pub async fn usage_rows(db_url: &str) -> BTreeMap<(String, String), i64> {
    let mut conn = sqlx::PgConnection::connect(db_url).await.unwrap();
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT source, outcome, count(*) FROM usage_records GROUP BY source, outcome",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let _ = conn.close().await;
    rows.into_iter().map(|(s, o, n)| ((s, o), n)).collect()
}

/// Every job the database holds, waiting, running or finished: `(id, state)`.
pub async fn stored_jobs(db_url: &str) -> Vec<(uuid::Uuid, String)> {
    let mut conn = sqlx::PgConnection::connect(db_url).await.unwrap();
    let rows = sqlx::query_as(
        "SELECT id, state FROM jobs UNION ALL SELECT id, state FROM job_history ORDER BY 1",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let _ = conn.close().await;
    rows
}

/// Persisted events of a job, as `(seq, event JSON)`.
pub async fn stored_events(db_url: &str, job: &str) -> Vec<(i64, Value)> {
    let mut conn = sqlx::PgConnection::connect(db_url).await.unwrap();
    let id = uuid::Uuid::parse_str(job).unwrap();
    let rows: Vec<(i64, sqlx::types::Json<Value>)> =
        sqlx::query_as("SELECT seq, event FROM job_events WHERE job_id = $1 ORDER BY seq")
            .bind(id)
            .fetch_all(&mut conn)
            .await
            .unwrap();
    let _ = conn.close().await;
    rows.into_iter().map(|(s, e)| (s, e.0)).collect()
}

/// A Postgres cluster of the test's own, in a temporary directory on a free port, which the
/// test may stop and start (the shared server on 5432 is never touched). Stopped when dropped.
pub struct PrivatePostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    /// Run the server's commands as this user (initdb refuses root).
    run_as: Option<&'static str>,
}

impl PrivatePostgres {
    /// `initdb` and start one, or `None` (with the reason printed) when the server binaries
    /// are not installed.
    pub fn start() -> Option<PrivatePostgres> {
        let Some(bin) = postgres_bin() else {
            eprintln!(
                "SKIPPED: no /usr/lib/postgresql/*/bin/initdb and pg_ctl: a private Postgres \
                 cluster (one this test may stop) cannot be made"
            );
            return None;
        };
        let run_as = is_root().then_some("postgres");
        let dir = tempfile::tempdir().unwrap();
        if let Some(user) = run_as {
            let ok = Command::new("chown")
                .args([user, &dir.path().display().to_string()])
                .status()
                .unwrap();
            assert!(ok.success(), "chown {user} of the cluster's directory");
        }
        let port = free_port();
        let pg = PrivatePostgres {
            dir,
            bin,
            port,
            run_as,
        };
        let data = pg.data().display().to_string();
        pg.run(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        pg.start_server();
        Some(pg)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Its admin URL (database `postgres`).
    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let exe = self.bin.join(tool);
        let mut c = match self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        let out = c
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", exe.display()));
        assert!(
            out.status.success(),
            "{tool} {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Start the server and wait until it accepts connections.
    pub fn start_server(&self) {
        let data = self.data().display().to_string();
        let log = self.dir.path().join("server.log").display().to_string();
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories='{}' -c fsync=off \
             -c max_connections=200",
            self.port,
            self.dir.path().display()
        );
        self.run(
            "pg_ctl",
            &["-D", &data, "-l", &log, "-o", &opts, "-w", "start"],
        );
    }

    /// Stop the server as an operator does (`pg_ctl stop -m fast`: sessions are ended).
    pub fn stop_server(&self) {
        let data = self.data().display().to_string();
        self.run("pg_ctl", &["-D", &data, "-m", "fast", "-w", "stop"]);
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let data = self.data().display().to_string();
        let exe = self.bin.join("pg_ctl");
        let mut c = match self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        let _ = c
            .args(["-D", &data, "-m", "immediate", "-w", "stop"])
            .output();
    }
}

/// The newest installed Postgres server's `bin` directory with `initdb` and `pg_ctl`.
fn postgres_bin() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            (bin.join("initdb").is_file() && bin.join("pg_ctl").is_file()).then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A TCP port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

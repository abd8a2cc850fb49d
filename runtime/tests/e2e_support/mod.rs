//! What the end-to-end tests share: a fresh Postgres database per test, the real `sluice`
//! binary (its CLI, and `sluice up` as a child process), HTTP and SSE helpers, and a webhook
//! receiver.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::Value;
use sqlx::Connection;

/// How long anything in these tests may take before it counts as hung.
pub const DEADLINE: Duration = Duration::from_secs(90);

/// The Postgres server the tests create their databases on.
fn admin_url() -> String {
    std::env::var("SLUICE_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// `url` with its database name replaced by `db`.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let host = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{host}/{db}?{q}"),
        None => format!("{host}/{db}"),
    }
}

/// A database of its own for one test, dropped (connections and all) when this goes, even
/// when the test panicked.
pub struct Db {
    admin: String,
    name: String,
    /// Its URL.
    pub url: String,
}

impl Db {
    /// Create it. Panics when Postgres is unreachable: CI has Postgres, so a missing one is a
    /// failure, not a reason to skip.
    pub async fn create() -> Db {
        Db::create_on(&admin_url()).await
    }

    /// Create it on the server of admin URL `admin` (e.g. a private cluster a test can stop).
    pub async fn create_on(admin: &str) -> Db {
        let admin = admin.to_string();
        let name = format!("sluice_e2e_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap_or_else(|e| {
            panic!(
                "cannot reach Postgres at {admin} (set SLUICE_TEST_PG_URL to another admin URL): {e}"
            )
        });
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut conn)
            .await
            .unwrap();
        let _ = conn.close().await;
        Db {
            url: with_database(&admin, &name),
            admin,
            name,
        }
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        // Drop runs inside the test's runtime, which cannot be blocked on: use a thread with
        // a runtime of its own.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let mut conn = sqlx::PgConnection::connect(&admin).await?;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                )))
                .execute(&mut conn)
                .await?;
                conn.close().await?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
            })
            .map_err(|e| e.to_string())
            .map_err(std::io::Error::other)
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("warning: could not drop test database {}: {e}", self.name),
            Err(_) => eprintln!("warning: dropping test database {} panicked", self.name),
        }
    }
}

/// One installation of Sluice as a user would have it: a database, a data directory and
/// `SLUICE_*` settings, shared by every `sluice` command run against it.
pub struct Site {
    /// The data directory and working directory of every command.
    dir: tempfile::TempDir,
    /// `SLUICE_*` settings.
    vars: Vec<(String, String)>,
    /// What runs instead of the `sluice` binary (a wrapper that execs it), when set.
    program: Option<std::path::PathBuf>,
    /// The database; declared last, so it is dropped last.
    pub db: Db,
}

impl Site {
    /// A new site on a fresh database, with extra `SLUICE_*` settings.
    pub async fn new(vars: &[(&str, &str)]) -> Site {
        Site::on(Db::create().await, vars)
    }

    /// A new site on database `db`, with extra `SLUICE_*` settings.
    pub fn on(db: Db, vars: &[(&str, &str)]) -> Site {
        let dir = tempfile::tempdir().unwrap();
        let mut all = vec![
            ("SLUICE_DATABASE__URL".to_string(), db.url.clone()),
            (
                "SLUICE_DATABASE__DATA_DIR".to_string(),
                dir.path().join("data").display().to_string(),
            ),
            // Delayed jobs are found by polling: keep the tests quick.
            ("SLUICE_WORKER__POLL_MS".to_string(), "100".to_string()),
            // Several servers run at once here; keep each one's instance pool small.
            ("SLUICE_ENGINE__MAX_INSTANCES".to_string(), "16".to_string()),
        ];
        all.extend(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        Site {
            dir,
            vars: all,
            program: None,
            db,
        }
    }

    /// Run `program` (a wrapper that execs the `sluice` binary with the arguments it is
    /// given) instead of the binary itself from now on; `None` goes back to the binary.
    pub fn set_program(&mut self, program: Option<std::path::PathBuf>) {
        self.program = program;
    }

    /// Set (or override) one `SLUICE_*` setting for every command run from now on.
    pub fn set_var(&mut self, name: &str, value: &str) {
        self.vars.retain(|(k, _)| k != name);
        self.vars.push((name.to_string(), value.to_string()));
    }

    /// The site's directory (its data directory is `data/` inside it).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// `sluice` with this site's settings and none of the caller's `SLUICE_*` ones.
    /// `RUST_LOG` passes through: a server's log is shown when its test fails.
    pub fn command(&self) -> Command {
        let mut c = match &self.program {
            Some(p) => Command::new(p),
            None => Command::new(env!("CARGO_BIN_EXE_sluice")),
        };
        for (k, _) in std::env::vars() {
            if k.starts_with("SLUICE_") {
                c.env_remove(k);
            }
        }
        c.envs(self.vars.iter().map(|(k, v)| (k, v)));
        c.current_dir(self.dir.path());
        c.stdin(Stdio::null());
        c
    }

    /// Run a `sluice` command to its end.
    pub async fn cli(&self, args: &[&str]) -> Output {
        let mut c = tokio::process::Command::from(self.command());
        c.args(args);
        tokio::time::timeout(DEADLINE, c.output())
            .await
            .unwrap_or_else(|_| panic!("`sluice {}` did not finish", args.join(" ")))
            .unwrap()
    }

    /// `sluice keys create --tenant … --scopes …`: the secret it prints.
    pub async fn create_key(&self, tenant: &str, scopes: &str) -> String {
        let out = self
            .cli(&["keys", "create", "--tenant", tenant, "--scopes", scopes])
            .await;
        assert!(out.status.success(), "keys create: {}", stderr_of(&out));
        let secret = String::from_utf8(out.stdout).unwrap().trim().to_string();
        assert!(secret.starts_with("sk_"), "{secret}");
        secret
    }

    /// `sluice keys webhook-secret --tenant …`.
    pub async fn webhook_secret(&self, tenant: &str) -> String {
        let out = self
            .cli(&["keys", "webhook-secret", "--tenant", tenant])
            .await;
        assert!(out.status.success(), "webhook-secret: {}", stderr_of(&out));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    /// Start `sluice up --listen <listen>` and wait until it is up (its welcome
    /// names the address) and ready (`/readyz`).
    pub async fn up(&self, listen: &str) -> Server {
        let mut c = self.command();
        c.args(["up", "--listen", listen])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = c.spawn().expect("spawning sluice up");
        let stderr = Arc::new(Mutex::new(String::new()));
        let pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        let mut server = Server {
            child,
            stderr,
            base: String::new(),
            http: reqwest::Client::new(),
        };
        let started = Instant::now();
        server.base = loop {
            if let Some(url) = server.stderr().lines().find_map(|l| {
                l.split_once("Sluice is up at ")
                    .map(|(_, url)| url.trim().to_string())
            }) {
                // Bound to every interface: talk to it on loopback.
                break url.replace("0.0.0.0", "127.0.0.1");
            }
            if let Some(status) = server.child.try_wait().unwrap() {
                panic!("sluice up exited with {status}:\n{}", server.stderr());
            }
            assert!(
                started.elapsed() < DEADLINE,
                "sluice up did not start:\n{}",
                server.stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        loop {
            let ready = server.http.get(server.url("/readyz")).send().await;
            if matches!(&ready, Ok(r) if r.status() == StatusCode::OK) {
                break;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "sluice up never became ready ({ready:?}):\n{}",
                server.stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server
    }

    /// Run `sluice up <args…>` expecting it to refuse to start: its exit code and what it
    /// printed.
    pub async fn up_refused(&self, args: &[&str]) -> (Option<i32>, String) {
        let mut c = tokio::process::Command::from(self.command());
        c.arg("up").args(args).kill_on_drop(true);
        let out = tokio::time::timeout(DEADLINE, c.output())
            .await
            .expect("sluice up neither started nor exited")
            .unwrap();
        (out.status.code(), stderr_of(&out))
    }
}

/// A command's standard error, as text.
pub fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A running `sluice up`, killed when dropped; what it printed is shown if the test failed.
pub struct Server {
    child: Child,
    stderr: Arc<Mutex<String>>,
    base: String,
    /// A plain HTTP client.
    pub http: reqwest::Client,
}

impl Server {
    /// Stop it as a process manager does (SIGTERM) and wait for it to exit: its exit code.
    pub async fn terminate(&mut self) -> Option<i32> {
        let pid = self.child.id().to_string();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("running kill");
        assert!(sent.success(), "kill -TERM {pid} failed");
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                started.elapsed() < DEADLINE,
                "sluice up did not stop on SIGTERM:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Server {
    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `kill -9`: the process gets no chance to finish anything; wait until it is gone.
    pub fn kill9(&mut self) {
        self.child.kill().expect("sending SIGKILL");
        let status = self.child.wait().expect("waiting for the killed server");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9),
            "the server was not killed by SIGKILL: {status}"
        );
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- sluice up stderr ----\n{}", self.stderr());
        }
    }
}

/// An HTTP answer: status, content type and body (JSON, or `Null` when empty).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub content_type: String,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Reply {
    /// Assert this is an `application/problem+json` answer with `status` and problem type
    /// `kind`; the problem document.
    #[track_caller]
    pub fn problem(&self, status: u16, kind: &str) -> &Value {
        assert_eq!(self.status.as_u16(), status, "{self:?}");
        assert_eq!(self.content_type, "application/problem+json", "{self:?}");
        assert_eq!(self.body["status"], status, "{self:?}");
        assert_eq!(
            self.body["type"],
            format!("https://sluice.dev/problems/{kind}"),
            "{self:?}"
        );
        assert!(
            !self.body["detail"].as_str().unwrap_or_default().is_empty(),
            "{self:?}"
        );
        &self.body
    }

    /// Assert the status; the body.
    #[track_caller]
    pub fn ok(&self, status: u16) -> &Value {
        assert_eq!(self.status.as_u16(), status, "{self:?}");
        &self.body
    }
}

impl Server {
    /// What it printed so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The absolute URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A request to `path`, with `Authorization: Bearer <key>` when given.
    pub fn request(&self, method: Method, path: &str, key: Option<&str>) -> RequestBuilder {
        let req = self.http.request(method, self.url(path));
        match key {
            Some(k) => req.bearer_auth(k),
            None => req,
        }
    }

    /// Send and read the answer.
    pub async fn send(&self, req: RequestBuilder) -> Reply {
        let res = tokio::time::timeout(DEADLINE, req.send())
            .await
            .expect("request timed out")
            .expect("request failed");
        let status = res.status();
        let headers = res.headers().clone();
        let content_type = headers
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let bytes = res.bytes().await.unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                panic!(
                    "not JSON ({status}, {content_type}): {}",
                    String::from_utf8_lossy(&bytes)
                )
            })
        };
        Reply {
            status,
            content_type,
            headers,
            body,
        }
    }

    /// `GET path`.
    pub async fn get(&self, key: Option<&str>, path: &str) -> Reply {
        self.send(self.request(Method::GET, path, key)).await
    }

    /// `PUT /v1/plugins/{name}` with the component's bytes.
    pub async fn upload(&self, key: Option<&str>, name: &str, bytes: Vec<u8>) -> Reply {
        self.send(
            self.request(Method::PUT, &format!("/v1/plugins/{name}"), key)
                .header("content-type", "application/wasm")
                .body(bytes),
        )
        .await
    }

    /// `POST /v1/plugins/{plugin}/jobs` with a JSON body.
    pub async fn submit(&self, key: Option<&str>, plugin: &str, body: &Value) -> Reply {
        self.send(
            self.request(Method::POST, &format!("/v1/plugins/{plugin}/jobs"), key)
                .json(body),
        )
        .await
    }

    /// Poll `GET /v1/jobs/{id}` until the job is finished.
    pub async fn wait_finished(&self, key: &str, id: &str) -> Value {
        let started = Instant::now();
        loop {
            let job = self.get(Some(key), &format!("/v1/jobs/{id}")).await;
            let body = job.ok(200).clone();
            if matches!(
                body["status"].as_str(),
                Some("completed" | "dead" | "cancelled")
            ) {
                return body;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "job {id} never finished: {body}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Follow `GET /v1/jobs/{id}/events` (resuming after `last_event_id` when given) until
    /// the server ends the stream; every event it sent.
    pub async fn events(&self, key: &str, id: &str, last_event_id: Option<&str>) -> Vec<SseEvent> {
        let mut req = self
            .request(Method::GET, &format!("/v1/jobs/{id}/events"), Some(key))
            .header("accept", "text/event-stream");
        if let Some(last) = last_event_id {
            req = req.header("last-event-id", last);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{:?}", res.text().await);
        assert!(
            res.headers()[reqwest::header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream")
        );
        let read = async {
            let mut stream = res.bytes_stream();
            let mut buf: Vec<u8> = Vec::new();
            let mut events = Vec::new();
            while let Some(chunk) = stream.next().await {
                buf.extend_from_slice(&chunk.expect("reading the event stream"));
                while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
                    let block: Vec<u8> = buf.drain(..end + 2).collect();
                    if let Some(ev) = SseEvent::parse(&String::from_utf8(block).unwrap()) {
                        events.push(ev);
                    }
                }
            }
            assert!(
                buf.iter().all(u8::is_ascii_whitespace),
                "the stream ended inside an event: {}",
                String::from_utf8_lossy(&buf)
            );
            events
        };
        tokio::time::timeout(DEADLINE, read)
            .await
            .unwrap_or_else(|_| panic!("the event stream of job {id} did not end"))
    }
}

/// One Server-Sent Event.
#[derive(Debug, Clone)]
pub struct SseEvent {
    /// `id:`, when the event is persisted (resumable).
    pub id: Option<u64>,
    /// `event:`.
    pub event: String,
    /// `data:`, as JSON.
    pub data: Value,
}

impl SseEvent {
    /// Parse one event block; `None` for comment-only blocks (keep-alives).
    fn parse(block: &str) -> Option<SseEvent> {
        let (mut id, mut event, mut data) = (None, String::from("message"), Vec::new());
        for line in block.lines() {
            if line.starts_with(':') || line.is_empty() {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "id" => id = Some(value.parse().expect("numeric event id")),
                "event" => event = value.to_string(),
                "data" => data.push(value),
                _ => {}
            }
        }
        if data.is_empty() {
            return None;
        }
        let data = serde_json::from_str(&data.join("\n")).expect("event data is JSON");
        Some(SseEvent { id, event, data })
    }
}

/// A webhook delivery as the receiver got it.
#[derive(Debug)]
pub struct Delivery {
    pub headers: axum::http::HeaderMap,
    pub body: bytes::Bytes,
}

/// A small HTTP server on loopback that answers 200 to `POST /hook` and hands every
/// request to the test.
pub struct Receiver {
    /// `http://127.0.0.1:<port>/hook`.
    pub url: String,
    rx: tokio::sync::mpsc::UnboundedReceiver<Delivery>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// Start it.
    pub async fn start() -> Receiver {
        Receiver::start_on("127.0.0.1:0").await
    }

    /// Start it on `addr` (e.g. the address of a receiver that was down until now).
    pub async fn start_on(addr: &str) -> Receiver {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: bytes::Bytes| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(Delivery { headers, body });
                    StatusCode::OK
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Receiver { url, rx, task }
    }

    /// The next delivery.
    pub async fn next(&mut self) -> Delivery {
        tokio::time::timeout(DEADLINE, self.rx.recv())
            .await
            .expect("no webhook delivery arrived")
            .expect("the receiver stopped")
    }

    /// The next delivery if one arrives within `wait`.
    pub async fn next_within(&mut self, wait: Duration) -> Option<Delivery> {
        tokio::time::timeout(wait, self.rx.recv())
            .await
            .ok()
            .flatten()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

//! `sluice submit --follow`, the CLI's Server-Sent Events client, against a server that does
//! what networks do: split a UTF-8 character across two writes, and drop the connection in the
//! middle of a job. The server here speaks HTTP/1.1 by hand so that it controls every write
//! and can cut the connection without ending the chunked body; what it sends is what
//! `GET /v1/jobs/{id}/events` sends (per-job `id`s, live status without one, a final `result`),
//! and on a resume it replays, as the real endpoint does, only the events after
//! `Last-Event-ID`.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Read one request's head (and its body, by `content-length`); the head, lowercased.
async fn read_request(conn: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        assert_eq!(conn.read(&mut byte).await.unwrap(), 1, "request cut short");
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).unwrap().to_lowercase();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |n| n.trim().parse::<usize>().unwrap());
    let mut body = vec![0u8; length];
    conn.read_exact(&mut body).await.unwrap();
    head
}

/// Write one HTTP chunk and let it go out on its own.
async fn chunk(conn: &mut TcpStream, data: &[u8]) {
    conn.write_all(format!("{:x}\r\n", data.len()).as_bytes())
        .await
        .unwrap();
    conn.write_all(data).await.unwrap();
    conn.write_all(b"\r\n").await.unwrap();
    conn.flush().await.unwrap();
    // Give the client time to read this chunk before the next is written, so the two are
    // not coalesced into one read.
    tokio::time::sleep(Duration::from_millis(50)).await;
}

const STREAM_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n";
const RUNNING: &[u8] =
    b"event: status\ndata: {\"type\":\"status\",\"status\":\"running\",\"attempt\":1}\n\n";

/// Serve one submit and then the job's event stream, twice: the first stream breaks after
/// event 2; the second must be a resume after it. Returns the heads of the event requests.
async fn serve(listener: TcpListener) -> Vec<String> {
    let (mut conn, _) = listener.accept().await.unwrap();
    let head = read_request(&mut conn).await;
    assert!(head.starts_with("post /v1/plugins/writer/jobs "), "{head}");
    let body = br#"{"id":"job-1","status":"queued","attempt":0}"#;
    conn.write_all(
        format!(
            "HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    conn.write_all(body).await.unwrap();
    drop(conn);

    let mut heads = Vec::new();
    // First stream: a token delta whose `é` and `€` are each split between two writes, a
    // live status, a log line, then the connection drops (no final chunk).
    let (mut conn, _) = listener.accept().await.unwrap();
    heads.push(read_request(&mut conn).await);
    conn.write_all(STREAM_HEAD).await.unwrap();
    let token = "id: 1\nevent: token_delta\ndata: {\"type\":\"token_delta\",\"delta\":\"caf\u{e9} 5\u{20ac}\"}\n\n".as_bytes();
    let e_acute = token.iter().position(|&b| b == 0xC3).unwrap();
    let euro = token.iter().position(|&b| b == 0xE2).unwrap();
    chunk(&mut conn, &token[..e_acute + 1]).await;
    chunk(&mut conn, &token[e_acute + 1..euro + 2]).await;
    chunk(&mut conn, &token[euro + 2..]).await;
    chunk(&mut conn, RUNNING).await;
    chunk(
        &mut conn,
        b"id: 2\nevent: log\ndata: {\"type\":\"log\",\"level\":\"info\",\"message\":\"half way\"}\n\n",
    )
    .await;
    drop(conn);

    // The resume: the events after the one named, the current status (already shown), the
    // rest of the job and its result.
    let (mut conn, _) = listener.accept().await.unwrap();
    let head = read_request(&mut conn).await;
    heads.push(head.clone());
    conn.write_all(STREAM_HEAD).await.unwrap();
    let after: u64 = head
        .lines()
        .find_map(|l| l.strip_prefix("last-event-id:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    let all = [
        (
            1,
            "token_delta",
            r#"{"type":"token_delta","delta":"café 5€"}"#,
        ),
        (
            2,
            "log",
            r#"{"type":"log","level":"info","message":"half way"}"#,
        ),
        (
            3,
            "progress",
            r#"{"type":"progress","message":"nearly done"}"#,
        ),
    ];
    for (id, name, data) in all.iter().filter(|(id, ..)| *id > after) {
        chunk(
            &mut conn,
            format!("id: {id}\nevent: {name}\ndata: {data}\n\n").as_bytes(),
        )
        .await;
    }
    chunk(&mut conn, RUNNING).await;
    chunk(
        &mut conn,
        b"event: result\ndata: {\"id\":\"job-1\",\"status\":\"completed\",\"output\":{\"title\":\"caf\xC3\xA9\"},\"error\":null,\"attempt\":1}\n\n",
    )
    .await;
    // The client may have gone already: it stops at the result.
    let _ = conn.write_all(b"0\r\n\r\n").await;
    heads
}

fn follow(url: &str, json: bool) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"));
    c.env_remove("RUST_LOG")
        .env_remove("SLUICE_API_KEY")
        .args(["submit", "writer", "--follow", "--url", url])
        .kill_on_drop(true);
    if json {
        c.arg("--json");
    }
    c
}

#[tokio::test]
async fn follow_keeps_split_characters_whole_and_resumes_after_a_drop() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(serve(listener));
    let out = tokio::time::timeout(Duration::from_secs(60), follow(&url, true).output())
        .await
        .expect("sluice submit --follow hung")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let heads = server.await.unwrap();
    assert!(!heads[0].contains("last-event-id"), "{}", heads[0]);
    assert!(
        heads[1].contains("\r\nlast-event-id: 2\r\n"),
        "{}",
        heads[1]
    );
    assert!(stderr.contains("resuming after event 2"), "{stderr}");

    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let seen: Vec<(&str, Option<&str>)> = lines
        .iter()
        .map(|l| (l["event"].as_str().unwrap(), l["id"].as_str()))
        .collect();
    // Each event once, in order: nothing replayed twice, nothing lost, and the status the
    // server repeats on the resume not shown again.
    assert_eq!(
        seen,
        [
            ("token_delta", Some("1")),
            ("status", None),
            ("log", Some("2")),
            ("progress", Some("3")),
            ("result", None)
        ]
    );
    assert_eq!(lines[0]["data"]["delta"], "café 5€");
    assert_eq!(lines[4]["data"]["output"]["title"], "café");
}

#[tokio::test]
async fn follow_prints_split_characters_whole_as_text() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(serve(listener));
    let out = tokio::time::timeout(Duration::from_secs(60), follow(&url, false).output())
        .await
        .expect("sluice submit --follow hung")
        .unwrap();
    server.await.unwrap();
    let stderr = String::from_utf8(out.stderr).expect("stderr is UTF-8");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.starts_with("café 5€\n"), "{stderr}");
    assert_eq!(stderr.matches("· running").count(), 1, "{stderr}");
    assert_eq!(stderr.matches("half way").count(), 1, "{stderr}");
    assert!(stderr.contains("· nearly done"), "{stderr}");
    let output: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(output["title"], "café");
}

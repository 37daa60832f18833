//! `--listen`: a real Prometheus scrapes a leaktrace tracing a fixture that leaks exactly
//! 500 x 100 bytes; promtool checks the exposition; `go tool pprof` reads the heap endpoint;
//! bad, oversize and slow requests are refused without blocking others; 200 short-lived
//! processes leave /metrics after the grace period.
//!
//! Ports come from 21600-21699 (one pair per test, so the tests may run in parallel). The
//! HTTP requests are written by hand on a TcpStream: the tests need malformed and slow ones,
//! which no client library sends.

use std::{
    collections::HashSet,
    io::{Read as _, Write as _},
    net::TcpStream,
    os::unix::fs::PermissionsExt as _,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use leaktrace_supervisor::{Input, Supervised};
use serde_json::Value;

use crate::common::*;

const TOKEN: &str = "fleet-test-token-0123456789";

/// One HTTP/1.1 exchange on a fresh connection: (status, body).
fn http(addr: &str, request: &str) -> (u16, String) {
    try_http(addr, request).unwrap_or_else(|e| panic!("{e}"))
}

fn try_http(addr: &str, request: &str) -> Result<(u16, String), String> {
    let mut stream = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .map_err(|e| format!("read from {addr}: {e}"))?;
    Ok(parse_response(&response))
}

fn parse_response(response: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(response);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    (status, body.to_string())
}

fn get(addr: &str, path: &str, token: Option<&str>) -> (u16, String) {
    try_get(addr, path, token).unwrap_or_else(|e| panic!("{e}"))
}

fn try_get(addr: &str, path: &str, token: Option<&str>) -> Result<(u16, String), String> {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    try_http(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"),
    )
}

/// GET that must succeed.
fn body(addr: &str, path: &str, token: Option<&str>) -> String {
    let (status, body) = get(addr, path, token);
    assert_eq!(status, 200, "GET {path}: {body}");
    body
}

/// Poll `check` every 200 ms until it gives a value or `timeout` passes.
fn poll<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => {
                panic!("{what}: not within {timeout:?}; last: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// The JSON snapshot served, once it lists a process holding `bytes` outstanding.
fn served_snapshot(addr: &str, token: Option<&str>, ready: impl Fn(&Value) -> bool) -> Value {
    poll("a served snapshot", Duration::from_secs(120), || {
        let (status, text) = try_get(addr, "/snapshot.json", token)?;
        let snapshot: Value =
            serde_json::from_str(&text).map_err(|_| format!("{status} {text}"))?;
        if ready(&snapshot) {
            Ok(snapshot)
        } else {
            Err(text)
        }
    })
}

fn token_file(dir: &Path) -> String {
    let path = dir.join("token");
    std::fs::write(&path, format!("{TOKEN}\n")).expect("write token");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    path.to_str().expect("utf-8").to_string()
}

fn leaking_process(snapshot: &Value) -> Option<&Value> {
    snapshot["processes"].as_array()?.iter().find(|p| {
        p["sites"].as_array().is_some_and(|sites| {
            sites
                .iter()
                .any(|s| top_function(s) == Some("leak_for_prometheus"))
        })
    })
}

/// Start Prometheus scraping `target` every second with the bearer token; returns it and its
/// address.
fn start_prometheus(dir: &Path, port: u16, target: &str, token_path: &str) -> (Supervised, String) {
    let prometheus = require_tool("prometheus", "prometheus");
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
             scrape_configs:\n  - job_name: leaktrace\n    authorization:\n      \
             credentials_file: {token_path}\n    static_configs:\n      \
             - targets: ['{target}']\n"
        ),
    )
    .expect("write prometheus.yml");
    let addr = format!("127.0.0.1:{port}");
    let mut command = Command::new(prometheus);
    command
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .current_dir(dir);
    let running =
        Supervised::spawn("prometheus", &mut command, Input::Null).expect("start prometheus");
    (running, addr)
}

/// The value of the one series `query` selects, from Prometheus's HTTP API.
fn prometheus_value(addr: &str, query: &str) -> Result<String, String> {
    let encoded: String = query
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let (status, text) = try_http(
        addr,
        &format!("GET /api/v1/query?query={encoded} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    )?;
    let reply: Value = serde_json::from_str(&text).map_err(|_| format!("{status}: {text}"))?;
    match reply["data"]["result"].as_array().map(Vec::as_slice) {
        Some([one]) => one["value"][1]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| text.clone()),
        _ => Err(text),
    }
}

#[test]
fn prometheus_scrapes_the_exact_leak_and_bad_requests_are_refused() {
    if !privileged() {
        return;
    }
    let fixture = fixture("fleet_leak", &[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let token_path = token_file(dir.path());
    let addr = "127.0.0.1:21610";
    let mut run = Run::start(&[
        "--headless",
        "--interval",
        "300ms",
        "--listen",
        addr,
        "--listen-token",
        &token_path,
        "--",
        fixture.to_str().expect("utf-8 path"),
        "leak",
    ]);
    run.wait_for("leaked 50000", Duration::from_secs(60));
    let token = Some(TOKEN);
    let snapshot = served_snapshot(addr, token, |s| {
        leaking_process(s).is_some_and(|p| p["outstanding_bytes"] == 50_000)
    });
    validate_schema(&snapshot);
    let process = leaking_process(&snapshot).expect("the fixture");
    let pid = process["pid"].as_u64().expect("pid");
    // The fixture allocates nothing else (its output goes through write(2)).
    assert_eq!(process["outstanding_count"], 500, "{process:#}");

    // promtool accepts the Prometheus text exposition.
    let metrics = body(addr, "/metrics", token);
    let promtool = require_tool("promtool", "prometheus");
    let mut check = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run promtool");
    check
        .stdin
        .take()
        .expect("stdin")
        .write_all(metrics.as_bytes())
        .expect("feed promtool");
    let checked = check.wait_with_output().expect("promtool");
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}\n{metrics}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    // A real Prometheus scrapes it (OpenMetrics, with the bearer token) and returns the leak.
    let (mut prometheus, api) = start_prometheus(dir.path(), 21611, addr, &token_path);
    let site_query = format!(
        "leaktrace_site_outstanding_bytes{{pid=\"{pid}\",function=\"leak_for_prometheus\"}}"
    );
    let site_bytes = poll(
        "Prometheus's value of the leak",
        Duration::from_secs(90),
        || prometheus_value(&api, &site_query),
    );
    assert_eq!(site_bytes, "50000");
    let process_query = format!("leaktrace_process_outstanding_bytes{{pid=\"{pid}\"}}");
    let process_bytes = poll(
        "Prometheus's value of the process",
        Duration::from_secs(60),
        || prometheus_value(&api, &process_query),
    );
    assert_eq!(process_bytes, "50000");
    let up = poll("Prometheus's up", Duration::from_secs(60), || {
        prometheus_value(&api, "up{job=\"leaktrace\"}")
    });
    assert_eq!(up, "1", "the scrape failed");
    prometheus.kill_and_reap();

    // Refusals: 4xx and one line.
    let refused = [
        ("/metrics", None, 401),
        ("/metrics", Some("wrong-token"), 401),
        ("/debug/pprof/heap?pid=4000000", token, 404),
        ("/debug/pprof/heap?pid=abc", token, 400),
        ("/debug/pprof/heap", token, 400),
        ("/etc/passwd", token, 404),
        ("/../../etc/passwd", token, 404),
    ];
    for (path, with, expected) in refused {
        let (status, text) = get(addr, path, with);
        assert_eq!(status, expected, "{path}: {text}");
        assert_eq!(text.lines().count(), 1, "{path}: {text:?}");
    }
    let (status, text) = get(addr, &format!("/metrics?{}", "x".repeat(2000)), token);
    assert_eq!((status, text.lines().count()), (414, 1), "{text}");
    let (status, text) = http(
        addr,
        &format!(
            "POST /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 4\r\nConnection: close\r\n\r\nabcd"
        ),
    );
    assert!((400..500).contains(&status), "{status} {text}");
    assert_eq!(text.lines().count(), 1, "{text:?}");
    // A head larger than the server reads is refused by hyper (431), with no body.
    let (status, _) = http(
        addr,
        &format!(
            "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Filler: {}\r\nConnection: close\r\n\r\n",
            "y".repeat(16 * 1024)
        ),
    );
    assert_eq!(status, 431);
    assert_eq!(body(addr, "/healthz", None), "ok\n");

    // A client that sends half a request head does not hold up the others, and is cut off.
    let mut slow = TcpStream::connect(addr).expect("connect");
    slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .expect("send half a head");
    let started = Instant::now();
    assert_eq!(body(addr, "/healthz", None), "ok\n");
    let (status, _) = get(addr, "/metrics", token);
    assert_eq!(status, 200);
    slow.set_read_timeout(Some(Duration::from_secs(120)))
        .expect("timeout");
    let mut rest = Vec::new();
    let _ = slow.read_to_end(&mut rest);
    assert!(
        started.elapsed() < Duration::from_secs(100),
        "the half-sent request was never cut off"
    );

    run.send_line();
    let (code, lines) = run.finish(Duration::from_secs(60));
    assert_eq!(code, 0, "{}", lines.join("\n"));
}

/// `go tool pprof -top URL`, in `dir`: its output.
fn pprof_top(dir: &Path, sample_index: &str, source: &str) -> String {
    let go = require_tool("go", "golang-go");
    let top = Command::new(go)
        .args([
            "tool",
            "pprof",
            "-top",
            &format!("-sample_index={sample_index}"),
            source,
        ])
        .env("HOME", dir)
        .env("PPROF_TMPDIR", dir)
        .output()
        .expect("go tool pprof");
    assert!(
        top.status.success(),
        "go tool pprof {source}: {}",
        String::from_utf8_lossy(&top.stderr)
    );
    String::from_utf8_lossy(&top.stdout).into_owned()
}

#[test]
fn go_tool_pprof_reads_the_heap_endpoint() {
    if !privileged() {
        return;
    }
    let fixture = fixture("fleet_leak", &[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let addr = "127.0.0.1:21630";
    let mut run = Run::start(&[
        "--headless",
        "--interval",
        "300ms",
        "--listen",
        addr,
        "--",
        fixture.to_str().expect("utf-8 path"),
        "leak",
    ]);
    run.wait_for("leaked 50000", Duration::from_secs(60));
    let snapshot = served_snapshot(addr, None, |s| {
        leaking_process(s).is_some_and(|p| p["outstanding_bytes"] == 50_000)
    });
    let pid = leaking_process(&snapshot).expect("the fixture")["pid"]
        .as_u64()
        .expect("pid");
    let url = format!("http://{addr}/debug/pprof/heap?pid={pid}");
    // inuse_space is the default, as in Go's heap profiles; 50000 bytes as pprof writes them.
    let top = pprof_top(dir.path(), "inuse_space", &url);
    assert!(top.contains("Type: inuse_space"), "{top}");
    let leak_line = top
        .lines()
        .find(|l| l.ends_with(" leak_for_prometheus"))
        .unwrap_or_else(|| panic!("no leak_for_prometheus in:\n{top}"));
    assert!(leak_line.trim_start().starts_with("48.83kB "), "{top}");
    let objects = pprof_top(dir.path(), "inuse_objects", &url);
    let leak_line = objects
        .lines()
        .find(|l| l.ends_with(" leak_for_prometheus"))
        .unwrap_or_else(|| panic!("no leak_for_prometheus in:\n{objects}"));
    assert!(leak_line.trim_start().starts_with("500 "), "{objects}");
    for index in ["alloc_space", "alloc_objects"] {
        let text = pprof_top(dir.path(), index, &url);
        assert!(text.contains("leak_for_prometheus"), "{index}:\n{text}");
    }
    run.send_line();
    let (code, lines) = run.finish(Duration::from_secs(60));
    assert_eq!(code, 0, "{}", lines.join("\n"));
}

#[test]
fn exited_processes_leave_metrics_after_the_grace_period() {
    if !privileged() {
        return;
    }
    let fixture = fixture("fleet_leak", &[]);
    let addr = "127.0.0.1:21620";
    let mut run = Run::start(&[
        "--headless",
        "--interval",
        "500ms",
        "--listen",
        addr,
        "--metrics-grace",
        "2s",
        "--metrics-top-sites",
        "2",
        "--top-processes",
        "100",
    ]);
    run.wait_for(
        "watching the heap syscalls of every process",
        Duration::from_secs(60),
    );
    poll("a first snapshot", Duration::from_secs(120), || {
        let (status, text) = try_get(addr, "/metrics", None)?;
        if status == 200 {
            Ok(())
        } else {
            Err(text)
        }
    });
    // 40 short-lived processes, a few at a time, each growing its heap once (by 1 GiB of
    // address space: the host's other exited processes, which a busy machine has plenty of,
    // are dropped before them; see architecture.md, "Bounds").
    let mut pids = Vec::new();
    for _ in 0..10 {
        let children: Vec<_> = (0..4)
            .map(|_| {
                Command::new(&fixture)
                    .arg("burst")
                    .spawn()
                    .expect("start a short-lived process")
            })
            .collect();
        for mut child in children {
            pids.push(child.id());
            assert!(child.wait().expect("wait").success());
        }
    }
    let listed = |snapshot: &Value| -> usize {
        let listed: HashSet<u64> = snapshot["processes"]
            .as_array()
            .map(|processes| processes.iter().filter_map(|p| p["pid"].as_u64()).collect())
            .unwrap_or_default();
        pids.iter()
            .filter(|&&pid| listed.contains(&u64::from(pid)))
            .count()
    };
    let ours = |text: &str| -> HashSet<u32> {
        pids.iter()
            .copied()
            .filter(|pid| text.contains(&format!("pid=\"{pid}\"")))
            .collect()
    };
    // They are traced: the snapshot lists exited processes with heap growth left for a while
    // (60 s), so it names (nearly) all of them, however late the session gets to them.
    poll(
        "the short-lived processes in the snapshot",
        Duration::from_secs(180),
        || {
            let (_, text) = try_get(addr, "/snapshot.json", None)?;
            let snapshot: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
            let seen = listed(&snapshot);
            if seen >= 30 {
                Ok(())
            } else {
                Err(format!("{seen} of 40 listed"))
            }
        },
    );
    // ...while /metrics drops each one --metrics-grace after it was first seen exited, and
    // the snapshot served with it still lists them: they go from /metrics because of the grace
    // period, not because the snapshot forgot them. Every scrape has a bounded number of
    // series per process: 17 of its own, 9 per top site.
    let text = poll(
        "the exited processes' series to go",
        Duration::from_secs(120),
        || {
            // Under load a request may time out: the poll tries again.
            let (_, snapshot) = try_get(addr, "/snapshot.json", None)?;
            let snapshot: Value = serde_json::from_str(&snapshot).map_err(|e| e.to_string())?;
            let (status, text) = try_get(addr, "/metrics", None)?;
            if status != 200 {
                return Err(format!("{status}: {text}"));
            }
            let seen = ours(&text);
            for pid in &seen {
                let series = text
                    .lines()
                    .filter(|l| l.contains(&format!("pid=\"{pid}\"")))
                    .count();
                assert!(
                    series <= 17 + 9 * 2,
                    "{series} series for pid {pid}:\n{text}"
                );
            }
            let in_snapshot = listed(&snapshot);
            assert!(
                in_snapshot >= 30 || !seen.is_empty(),
                "the snapshot forgot them ({in_snapshot} listed) before /metrics did"
            );
            if seen.is_empty() {
                Ok(text)
            } else {
                Err(format!("{} still listed", seen.len()))
            }
        },
    );
    assert!(text.contains("leaktrace_processes "), "{text}");
    run.signal(libc::SIGINT);
    let (code, lines) = run.finish(Duration::from_secs(120));
    assert_eq!(code, 0, "{}", lines.join("\n"));
}

#[test]
fn listen_errors_are_one_line() {
    if !privileged() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("token");
    std::fs::write(&token, "secret\n").expect("write token");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let token = token.to_str().expect("utf-8");
    let pid = std::process::id().to_string();
    assert_one_line_error(
        &[
            "--listen",
            "127.0.0.1:21641",
            "--listen-token",
            token,
            "--pid",
            &pid,
        ],
        "is readable by other users: chmod 600",
    );
    let missing = dir.path().join("missing");
    assert_one_line_error(
        &[
            "--listen",
            "127.0.0.1:21641",
            "--listen-token",
            missing.to_str().expect("utf-8"),
            "--pid",
            &pid,
        ],
        "cannot read the token file",
    );
    // The port is taken: said before anything is traced.
    let taken = std::net::TcpListener::bind("127.0.0.1:21642").expect("bind 21642");
    assert_one_line_error(
        &["--listen", "127.0.0.1:21642", "--pid", &pid],
        "cannot listen on 127.0.0.1:21642",
    );
    drop(taken);
}

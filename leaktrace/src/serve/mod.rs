//! `--listen ADDR`: the latest snapshot over HTTP, for Prometheus (`/metrics`), the pprof-based
//! continuous profilers (`/debug/pprof/heap?pid=P`), any HTTP client (`/snapshot.json`) and
//! health checks (`/healthz`).
//!
//! The session publishes each snapshot it builds ([`Publisher::publish`]); handlers read the
//! latest one from a watch channel and never touch the tracer, the maps or any file. The server
//! runs on a thread of its own ([`start`] says why): axum routes, hyper serves each connection
//! with bounded header size and read time, and every connection has a lifetime, so a slow or
//! stuck client holds only its own connection, for a bounded time, among a bounded number
//! (SECURITY.md).
mod metrics;

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    extract::{Query, Request, State},
    http::{header, HeaderMap, HeaderValue, Method, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::sync::{watch, Semaphore};
use tower_http::{limit::RequestBodyLimitLayer, timeout::TimeoutLayer};

use crate::{postmortem, report, schema::Snapshot};

/// What `--listen`, `--listen-token`, `--metrics-top-sites` and `--metrics-grace` ask for.
#[derive(Clone, Debug, PartialEq)]
pub struct Options {
    pub addr: SocketAddr,
    pub token_file: Option<PathBuf>,
    pub top_sites: usize,
    pub grace: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot read the token file {path}: {source}")]
    TokenUnreadable {
        path: String,
        source: std::io::Error,
    },
    #[error("the token file {path} is {what} by other users: chmod 600 it (or 400)")]
    TokenExposed { path: String, what: &'static str },
    #[error("the token file {path} {problem}")]
    TokenInvalid { path: String, problem: &'static str },
    #[error("cannot start the HTTP server's thread: {0}")]
    Runtime(std::io::Error),
}

/// Requests: the whole head (request line and headers) fits in this many bytes (hyper's
/// smallest buffer), and the target in [`MAX_TARGET`]; no request has a body.
const MAX_HEAD: usize = 8192;
const MAX_TARGET: usize = 1024;
/// A client has this long to send its request head...
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// ...a response this long to be made...
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
/// ...and a connection (keep-alive included) this long to live.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(120);
/// Connections served at once; more are closed at once.
const MAX_CONNECTIONS: usize = 64;
/// The token: at most this long (a file of more is not a token).
const MAX_TOKEN: u64 = 4096;

/// `--listen`: `IP:PORT`, or a bare port for 127.0.0.1. Names are not resolved: the address
/// bound is the one written.
pub fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = text.parse::<u16>() {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    text.parse::<SocketAddr>().map_err(|_| {
        format!("`{text}` is not IP:PORT (e.g. 127.0.0.1:9464, [::1]:9464) nor a port")
    })
}

/// The session's end of the channel: it publishes every snapshot it builds.
pub struct Publisher {
    sender: watch::Sender<Arc<Published>>,
    grace: Duration,
    /// When each process was first seen exited, by pid.
    exited_since: HashMap<u32, Instant>,
}

/// The latest snapshot, and which of its processes exited longer than the grace period ago
/// (their series leave /metrics).
#[derive(Default)]
struct Published {
    snapshot: Option<Arc<Snapshot>>,
    expired: HashSet<u32>,
}

impl Publisher {
    pub fn publish(&mut self, snapshot: Snapshot) {
        let now = Instant::now();
        let mut expired = HashSet::new();
        let mut seen = HashSet::with_capacity(snapshot.processes.len());
        for process in &snapshot.processes {
            seen.insert(process.pid);
            if process.alive {
                // Alive again: a new process with a dead one's pid.
                self.exited_since.remove(&process.pid);
                continue;
            }
            let since = *self.exited_since.entry(process.pid).or_insert(now);
            if now.duration_since(since) >= self.grace {
                expired.insert(process.pid);
            }
        }
        self.exited_since.retain(|pid, _| seen.contains(pid));
        self.sender.send_replace(Arc::new(Published {
            snapshot: Some(Arc::new(snapshot)),
            expired,
        }));
    }
}

#[derive(Clone)]
struct Served {
    latest: watch::Receiver<Arc<Published>>,
    token: Option<Arc<[u8]>>,
    top_sites: usize,
}

impl Served {
    fn latest(&self) -> Arc<Published> {
        Arc::clone(&self.latest.borrow())
    }
}

/// Read the token, bind the address and serve on a thread of its own; the returned publisher
/// feeds it.
///
/// The server has its own thread (and a current-thread tokio runtime on it) rather than tasks on
/// the session's runtime: the session builds snapshots synchronously on its one thread (seconds,
/// system-wide on a busy host, and back to back when that is longer than `--interval`), during
/// which spawned tasks would not run and every request would wait; and an encoding of /metrics
/// must not delay a sample either.
pub fn start(options: &Options) -> Result<Publisher, ServeError> {
    let token = options.token_file.as_deref().map(read_token).transpose()?;
    let bind_error = |source| ServeError::Bind {
        addr: options.addr,
        source,
    };
    let listener = std::net::TcpListener::bind(options.addr).map_err(bind_error)?;
    listener.set_nonblocking(true).map_err(bind_error)?;
    let bound = listener.local_addr().unwrap_or(options.addr);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ServeError::Runtime)?;
    if !bound.ip().is_loopback() && token.is_none() {
        eprintln!(
            "leaktrace: warning: serving {bound} beyond this host without --listen-token: anyone who reaches it sees command lines and function names"
        );
    }
    let (sender, latest) = watch::channel(Arc::new(Published::default()));
    let served = Served {
        latest,
        token: token.map(Arc::from),
        top_sites: options.top_sites,
    };
    std::thread::Builder::new()
        .name("leaktrace-http".to_string())
        .spawn(move || {
            // The thread that parses network input needs no capability at all: it gives up
            // every one before its first request (capabilities are per thread).
            if let Err(err) = crate::privileges::drop_all_on_this_thread() {
                eprintln!("leaktrace: error: the HTTP thread cannot drop its capabilities: {err}");
                return;
            }
            runtime.block_on(async move {
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => accept_loop(listener, router(served)).await,
                    Err(err) => eprintln!("leaktrace: error: cannot serve on {bound}: {err}"),
                }
            });
        })
        .map_err(ServeError::Runtime)?;
    eprintln!("leaktrace: serving /metrics, /debug/pprof/heap, /snapshot.json and /healthz on http://{bound}");
    Ok(Publisher {
        sender,
        grace: options.grace,
        exited_since: HashMap::new(),
    })
}

/// The token file's first line. It must not be readable or writable by other users (a token
/// anyone can read guards nothing), and is followed if a symlink (Kubernetes mounts secrets
/// through links): the caller named it.
fn read_token(path: &Path) -> Result<Vec<u8>, ServeError> {
    use std::{io::Read as _, os::unix::fs::PermissionsExt as _};
    let shown = path.display().to_string();
    let unreadable = |source| ServeError::TokenUnreadable {
        path: shown.clone(),
        source,
    };
    let file = std::fs::File::open(path).map_err(unreadable)?;
    let metadata = file.metadata().map_err(unreadable)?;
    if !metadata.is_file() {
        return Err(ServeError::TokenInvalid {
            path: shown,
            problem: "is not a regular file",
        });
    }
    let mode = metadata.permissions().mode();
    if mode & 0o004 != 0 {
        return Err(ServeError::TokenExposed {
            path: shown,
            what: "readable",
        });
    }
    if mode & 0o022 != 0 {
        return Err(ServeError::TokenExposed {
            path: shown,
            what: "writable",
        });
    }
    let mut text = Vec::new();
    file.take(MAX_TOKEN + 1)
        .read_to_end(&mut text)
        .map_err(unreadable)?;
    if text.len() as u64 > MAX_TOKEN {
        return Err(ServeError::TokenInvalid {
            path: shown,
            problem: "is longer than 4 KiB: give a file holding only the token",
        });
    }
    let token: Vec<u8> = text
        .split(|&b| b == b'\n')
        .next()
        .unwrap_or_default()
        .trim_ascii()
        .to_vec();
    if token.is_empty() {
        return Err(ServeError::TokenInvalid {
            path: shown,
            problem: "holds no token on its first line",
        });
    }
    Ok(token)
}

fn router(served: Served) -> Router {
    Router::new()
        .route("/metrics", get(metrics_page))
        .route("/debug/pprof/heap", get(pprof_heap))
        .route("/snapshot.json", get(snapshot_json))
        .route("/healthz", get(healthz))
        .fallback(|| async {
            refuse(
                StatusCode::NOT_FOUND,
                "no such page: try /metrics, /debug/pprof/heap?pid=P, /snapshot.json or /healthz",
            )
        })
        .layer(middleware::from_fn_with_state(served.clone(), gate))
        .layer(RequestBodyLimitLayer::new(0))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            RESPONSE_TIMEOUT,
        ))
        .with_state(served)
}

/// Accept connections until the process ends; each is served on its own task.
async fn accept_loop(listener: tokio::net::TcpListener, router: Router) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEAD);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of descriptors and the like: wait rather than spin.
                log::warn!("cannot accept a connection: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            log::warn!("{MAX_CONNECTIONS} connections already served: closing {peer}'s");
            continue;
        };
        let connection = http.serve_connection(
            TokioIo::new(stream),
            TowerToHyperService::new(router.clone()),
        );
        tokio::spawn(async move {
            // A connection past its lifetime is dropped, which closes it.
            if let Ok(Err(err)) = tokio::time::timeout(CONNECTION_LIFETIME, connection).await {
                log::debug!("connection from {peer}: {err}");
            }
            drop(slot);
        });
    }
}

/// A refusal: the status and one line saying what to do.
struct Refusal {
    status: StatusCode,
    message: String,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut response = (self.status, format!("{}\n", self.message)).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"leaktrace\""),
            );
        }
        response
    }
}

fn refusal(status: StatusCode, message: &str) -> Refusal {
    Refusal {
        status,
        message: message.to_string(),
    }
}

fn refuse(status: StatusCode, message: &str) -> Response {
    refusal(status, message).into_response()
}

/// What every request passes first: method, size and, but for /healthz, the token.
async fn gate(State(served): State<Served>, request: Request, next: Next) -> Response {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET and HEAD are served",
        );
    }
    let target = request
        .uri()
        .path_and_query()
        .map_or(0, |p| p.as_str().len());
    if target > MAX_TARGET {
        return refuse(
            StatusCode::URI_TOO_LONG,
            "the request target is longer than 1024 bytes",
        );
    }
    if has_body(request.headers()) {
        return refuse(StatusCode::PAYLOAD_TOO_LARGE, "requests carry no body here");
    }
    if request.uri().path() != "/healthz" {
        if let Some(token) = &served.token {
            if let Err(refused) = check_token(request.headers(), token) {
                return refused.into_response();
            }
        }
    }
    next.run(request).await
}

fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|length| length.as_bytes() != b"0")
}

/// `Authorization: Bearer TOKEN`, compared in constant time (for a given token length).
fn check_token(headers: &HeaderMap, token: &[u8]) -> Result<(), Refusal> {
    use subtle::ConstantTimeEq as _;
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(refusal(
            StatusCode::UNAUTHORIZED,
            "this leaktrace needs `Authorization: Bearer TOKEN` (--listen-token)",
        ));
    };
    let given = value
        .as_bytes()
        .strip_prefix(b"Bearer ")
        .unwrap_or_default();
    if bool::from(given.ct_eq(token)) {
        Ok(())
    } else {
        Err(refusal(StatusCode::UNAUTHORIZED, "wrong bearer token"))
    }
}

/// The latest snapshot, or a 503 before the first one.
fn current(served: &Served) -> Result<(Arc<Snapshot>, Arc<Published>), Refusal> {
    let published = served.latest();
    match &published.snapshot {
        Some(snapshot) => Ok((Arc::clone(snapshot), published)),
        None => Err(refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            "no snapshot yet: the first comes after one interval",
        )),
    }
}

async fn healthz(State(served): State<Served>) -> Response {
    let state = if served.latest().snapshot.is_some() {
        "ok"
    } else {
        "ok: starting, no snapshot yet"
    };
    (StatusCode::OK, format!("{state}\n")).into_response()
}

async fn snapshot_json(State(served): State<Served>) -> Response {
    let (snapshot, _) = match current(&served) {
        Ok(latest) => latest,
        Err(refused) => return refused.into_response(),
    };
    let mut json = Vec::new();
    match report::write_json(&mut json, &snapshot) {
        Ok(()) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(err) => refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("cannot serialize the snapshot: {err}"),
        ),
    }
}

async fn metrics_page(State(served): State<Served>, headers: HeaderMap) -> Response {
    let (snapshot, published) = match current(&served) {
        Ok(latest) => latest,
        Err(refused) => return refused.into_response(),
    };
    let format = metrics::Format::accepted(
        headers
            .get(header::ACCEPT)
            .and_then(|a| a.to_str().ok())
            .unwrap_or(""),
    );
    let registry = metrics::registry(&snapshot, &published.expired, served.top_sites);
    match metrics::encode(&registry, format) {
        Ok(text) => ([(header::CONTENT_TYPE, format.content_type())], text).into_response(),
        Err(err) => refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("cannot encode the metrics: {err}"),
        ),
    }
}

/// `/debug/pprof/heap?pid=P`: Go's heap profile of one process (gzipped profile.proto with
/// alloc_objects, alloc_space, inuse_objects and inuse_space). Go's other parameters (`gc`,
/// `debug=0`) are accepted and have no effect; `debug=N>0` (text) and `seconds` (deltas) are not
/// served.
async fn pprof_heap(
    State(served): State<Served>,
    query: Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(params)) = query else {
        return refuse(StatusCode::BAD_REQUEST, "the query string does not parse");
    };
    let pid = match heap_pid(&params) {
        Ok(pid) => pid,
        Err(message) => return refuse(StatusCode::BAD_REQUEST, message),
    };
    let (snapshot, _) = match current(&served) {
        Ok(latest) => latest,
        Err(refused) => return refused.into_response(),
    };
    let Some(recorded) = postmortem::read::RecordedSnapshot::of_process(&snapshot, pid) else {
        return refuse(
            StatusCode::NOT_FOUND,
            &format!("pid {pid} is not in the latest snapshot: /snapshot.json lists the traced processes"),
        );
    };
    match postmortem::export::pprof_heap_gz(&recorded) {
        Ok(profile) => (
            [
                (header::CONTENT_TYPE, "application/octet-stream"),
                (
                    header::CONTENT_DISPOSITION,
                    "attachment; filename=\"heap.pb.gz\"",
                ),
            ],
            profile,
        )
            .into_response(),
        Err(err) => refuse(StatusCode::INTERNAL_SERVER_ERROR, &err.to_string()),
    }
}

/// The `pid` of a heap request, or why the query is refused.
fn heap_pid(params: &[(String, String)]) -> Result<u32, &'static str> {
    let mut pid = None;
    for (name, value) in params {
        match name.as_str() {
            "pid" if pid.is_some() => return Err("give pid once"),
            "pid" => {
                pid = Some(
                    value
                        .parse::<u32>()
                        .map_err(|_| "pid must be a process id, e.g. ?pid=1234")?,
                )
            }
            "gc" => {}
            "debug" if value == "0" => {}
            "debug" => return Err("only debug=0 (the binary profile) is served"),
            "seconds" => return Err("delta profiles (seconds=N) are not served"),
            _ => return Err("unknown parameter: only pid, gc and debug=0 are read"),
        }
    }
    pid.ok_or("missing pid: /debug/pprof/heap?pid=P")
}

/// The body of a 4xx/5xx is one line; used by the tests of the routes.
#[cfg(test)]
async fn body_text(response: Response) -> (StatusCode, String) {
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use tower::ServiceExt as _;

    use super::*;
    use crate::{
        schema::GrowthClass,
        synthetic::{frame, growth, process, site, snapshot, EXE},
    };

    /// pid 4242 (`leaky`) whose site `abc-7` in `leak_500` holds 500 x 100 bytes, growing
    /// 600 bytes a minute.
    pub(super) fn example() -> Snapshot {
        let mut leak = site(
            "abc-7",
            50_000,
            500,
            growth(Some(1000.0), Some(600.0), GrowthClass::LeakSuspect),
            Some(30.0),
            vec![
                frame("leak_500", EXE, Some(("leak.c", 10))),
                frame("main", EXE, Some(("leak.c", 20))),
            ],
        );
        leak.leak_rank = 1;
        snapshot(60.0, vec![process(4242, "leaky", vec![leak])])
    }

    fn served(token: Option<&str>) -> (Served, watch::Sender<Arc<Published>>) {
        let (sender, latest) = watch::channel(Arc::new(Published::default()));
        let served = Served {
            latest,
            token: token.map(|t| Arc::from(t.as_bytes())),
            top_sites: 5,
        };
        (served, sender)
    }

    async fn get(router: &Router, uri: &str, auth: Option<&str>) -> (StatusCode, String) {
        let mut request = axum::http::Request::get(uri);
        if let Some(auth) = auth {
            request = request.header(header::AUTHORIZATION, auth);
        }
        let request = request.body(Body::empty()).expect("request");
        let response = router.clone().oneshot(request).await.expect("infallible");
        body_text(response).await
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    #[test]
    fn listen_addresses_are_written_out_or_a_loopback_port() {
        assert_eq!(
            parse_listen("9464"),
            Ok("127.0.0.1:9464".parse().expect("addr"))
        );
        assert_eq!(
            parse_listen("[::1]:9464"),
            Ok("[::1]:9464".parse().expect("addr"))
        );
        assert!(parse_listen("localhost:9464").is_err());
        assert!(parse_listen("0.0.0.0").is_err());
    }

    #[test]
    fn refusals_are_one_line_4xx() {
        runtime().block_on(async {
            let (served, sender) = served(Some("s3cret"));
            let router = router(served);
            let auth = Some("Bearer s3cret");
            let cases = [
                ("/metrics", None, StatusCode::UNAUTHORIZED),
                ("/metrics", Some("Bearer wrong"), StatusCode::UNAUTHORIZED),
                ("/metrics", Some("s3cret"), StatusCode::UNAUTHORIZED),
                ("/nope", auth, StatusCode::NOT_FOUND),
                ("/debug/pprof/heap", auth, StatusCode::BAD_REQUEST),
                ("/debug/pprof/heap?pid=x", auth, StatusCode::BAD_REQUEST),
                (
                    "/debug/pprof/heap?pid=1&pid=2",
                    auth,
                    StatusCode::BAD_REQUEST,
                ),
                (
                    "/debug/pprof/heap?pid=1&debug=1",
                    auth,
                    StatusCode::BAD_REQUEST,
                ),
                (
                    "/debug/pprof/heap?pid=1&what=1",
                    auth,
                    StatusCode::BAD_REQUEST,
                ),
            ];
            for (uri, auth, status) in cases {
                let (got, body) = get(&router, uri, auth).await;
                assert_eq!(got, status, "{uri}: {body}");
                assert_eq!(body.lines().count(), 1, "{uri}: {body:?}");
                assert!(body.ends_with('\n'), "{uri}: {body:?}");
            }
            let long = format!("/metrics?{}", "a".repeat(2000));
            let (got, _) = get(&router, &long, auth).await;
            assert_eq!(got, StatusCode::URI_TOO_LONG);
            // Before the first snapshot, 503; /healthz needs no token.
            assert_eq!(
                get(&router, "/metrics", auth).await.0,
                StatusCode::SERVICE_UNAVAILABLE
            );
            assert_eq!(get(&router, "/healthz", None).await.0, StatusCode::OK);
            let snapshot = example();
            sender.send_replace(Arc::new(Published {
                snapshot: Some(Arc::new(snapshot)),
                expired: HashSet::new(),
            }));
            assert_eq!(get(&router, "/metrics", auth).await.0, StatusCode::OK);
            let (got, body) = get(&router, "/debug/pprof/heap?pid=999999", auth).await;
            assert_eq!(got, StatusCode::NOT_FOUND, "{body}");
            assert_eq!(body.lines().count(), 1);
        });
    }

    #[test]
    fn token_files_others_can_read_are_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        std::fs::write(&path, "abc\nignored\n").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(matches!(
            read_token(&path),
            Err(ServeError::TokenExposed { .. })
        ));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(read_token(&path).expect("reads"), b"abc");
        std::fs::write(&path, "\n").expect("write");
        assert!(matches!(
            read_token(&path),
            Err(ServeError::TokenInvalid { .. })
        ));
    }

    #[test]
    fn exited_processes_expire_after_the_grace_period() {
        let (sender, latest) = watch::channel(Arc::new(Published::default()));
        let mut publisher = Publisher {
            sender,
            grace: Duration::ZERO,
            exited_since: HashMap::new(),
        };
        let mut snapshot = example();
        let pid = snapshot.processes[0].pid;
        publisher.publish(snapshot.clone());
        assert!(latest.borrow().expired.is_empty());
        snapshot.processes[0].alive = false;
        publisher.publish(snapshot.clone());
        assert!(latest.borrow().expired.contains(&pid));
        publisher.grace = Duration::from_secs(3600);
        publisher.exited_since.clear();
        publisher.publish(snapshot);
        assert!(latest.borrow().expired.is_empty());
    }
}

//! `cargo xtask bench --scenario nginx`: requests/s of nginx serving a 612-byte static file on
//! loopback to `wrk -t1 -c16`, untraced and traced.
//!
//! Every measurement starts its own nginx (private config, logs, pid file and temp paths under
//! `target/bench/nginx/`, listening on a free port of 127.0.0.1, `daemon off`, one master + one
//! worker), attaches the variant's tracer to it, warms it up with wrk, measures with wrk, stops the
//! tracer, then stops nginx by PID (SIGQUIT, then SIGTERM, then SIGKILL). Variants:
//!
//! - `untraced`: nginx alone;
//! - `leaktrace-growth`: `leaktrace --mode growth --headless --interval 1h --pid MASTER --pid WORKER`;
//! - `leaktrace`: the same in exact mode (`--mode exact` when the flag exists, else no flag);
//! - `memleak-bpfcc`: `memleak-bpfcc -p WORKER` (bcc's defaults: stacks, 5 s reports).
//!
//! nginx and wrk come from Debian (apt-get install when missing).

use std::collections::BTreeSet;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use leaktrace_supervisor::{Input, Supervised};

use crate::system::{find_program, is_root, tail_of, Apt};

use super::{
    bin_of, growth_no_bursts_variant, growth_variant, help_mentions_mode, memleak_variant, names,
    peers::{packages_for, prepare_peers, spawn_memleak, BCC_PACKAGE},
    report::{finish, first_line, Report},
    run_rounds, select_variants,
    stats::summarize,
    write_file, BenchArgs, Kind, Metric, Unit, Variant, ATTACH_TIMEOUT, EXIT_TIMEOUT, GROWTH_ARGS,
    GROWTH_NO_BURSTS_ARGS, LEAKTRACE, MEMLEAK, SETTLE, UNTRACED,
};

/// Size of the served file: nginx's own default index page was this size for years.
const FILE_BYTES: usize = 612;
const FILE_NAME: &str = "index.html";
const WRK_THREADS: u32 = 1;
const WRK_CONNECTIONS: u32 = 16;
/// Longest wait for a fresh nginx to accept connections and fork its worker.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest wait for nginx to exit after SIGQUIT (graceful), then after SIGTERM (fast).
const QUIT_TIMEOUT: Duration = Duration::from_secs(10);
const TERM_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) fn run(leaktrace_bin: &Path, out_dir: &Path, args: &BenchArgs) -> Result<()> {
    if args.duration_secs == 0 {
        bail!("bench: --duration must be at least 1 second");
    }
    let (nginx_bin, wrk_bin) = ensure_nginx_and_wrk()?;
    let site = Site::create(&out_dir.join("nginx"))?;
    let peers = prepare_peers(out_dir, &packages_for(&args.only, &[BCC_PACKAGE]))?;
    let exact_args: &[&str] = if supports_mode(leaktrace_bin) {
        &["--mode", "exact"]
    } else {
        &[]
    };
    let variants = vec![
        Variant::new(UNTRACED, Kind::Untraced),
        growth_variant(leaktrace_bin),
        growth_no_bursts_variant(leaktrace_bin),
        Variant::new(LEAKTRACE, Kind::Leaktrace),
        memleak_variant(&peers),
    ];
    let mut variants = select_variants(variants, &args.only)?;
    println!(
        "bench: nginx serving {FILE_BYTES} bytes to `wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS}`, \
         {} s warm-up + {} s per measurement, {} round(s); variants: {}",
        args.warmup_secs,
        args.duration_secs,
        args.repeats,
        names(&variants)
    );
    let unit = match args.metric {
        Metric::Wall => Unit {
            label: "req/s",
            decimals: 0,
        },
        Metric::Cpu => Unit {
            label: "worker cpu us/req",
            decimals: 2,
        },
    };
    run_rounds(&mut variants, args.repeats, unit, |v| {
        let tracer = match v.kind {
            Kind::Untraced => Tracer::None,
            Kind::LeaktraceGrowth => Tracer::Leaktrace {
                bin: leaktrace_bin,
                mode_args: &GROWTH_ARGS,
            },
            Kind::LeaktraceGrowthNoBursts => Tracer::Leaktrace {
                bin: leaktrace_bin,
                mode_args: &GROWTH_NO_BURSTS_ARGS,
            },
            Kind::Leaktrace => Tracer::Leaktrace {
                bin: leaktrace_bin,
                mode_args: exact_args,
            },
            Kind::Memleak => Tracer::Memleak {
                bin: bin_of(v)?,
                headers: peers.headers.as_ref().map_err(|e| anyhow!("{e}"))?,
            },
            Kind::Bpftrace | Kind::LeaktraceSampled => {
                bail!("{} is not a variant of the nginx scenario", v.name)
            }
        };
        let measured = measure(&nginx_bin, &wrk_bin, &site, tracer, args)?;
        match args.metric {
            Metric::Wall => Ok(measured.requests_per_sec),
            Metric::Cpu => measured
                .worker_cpu_us_per_request
                .ok_or_else(|| anyhow!("the nginx worker's CPU time could not be read from /proc")),
        }
    })?;

    let (what, unit, decimals, json_name) = match args.metric {
        Metric::Wall => ("requests/s", "requests_per_sec", 0, "bench-nginx.json"),
        Metric::Cpu => (
            "worker CPU us (user + system) per request",
            "worker_cpu_us_per_request",
            2,
            "bench-nginx-cpu.json",
        ),
    };
    let report = Report {
        scenario: "nginx",
        title: format!(
            "nginx {what} ({FILE_BYTES}-byte file, wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS} \
             -d{}s), {} round(s){}:",
            args.duration_secs,
            args.repeats,
            match args.metric {
                Metric::Wall => "; higher is better",
                Metric::Cpu => "; lower is better",
            }
        ),
        unit,
        decimals,
        params: vec![
            ("duration_s", args.duration_secs),
            ("warmup_s", args.warmup_secs),
            ("file_bytes", FILE_BYTES as u64),
            ("wrk_threads", u64::from(WRK_THREADS)),
            ("wrk_connections", u64::from(WRK_CONNECTIONS)),
        ],
        repeats: args.repeats,
        baselines: &[UNTRACED, MEMLEAK],
    };
    finish(
        &report,
        &summarize(&variants, report.baselines),
        out_dir,
        json_name,
    )
}

fn supports_mode(leaktrace_bin: &Path) -> bool {
    Command::new(leaktrace_bin)
        .arg("--help")
        .output()
        .is_ok_and(|o| help_mentions_mode(&String::from_utf8_lossy(&o.stdout)))
}

/// nginx and wrk from PATH (or /usr/sbin), installed with apt-get when missing.
fn ensure_nginx_and_wrk() -> Result<(PathBuf, PathBuf)> {
    let wanted = [("nginx", "nginx"), ("wrk", "wrk")];
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|(cmd, _)| find_program(cmd).is_none())
        .map(|(_, pkg)| *pkg)
        .collect();
    if !missing.is_empty() {
        if find_program("apt-get").is_none() {
            bail!(
                "bench: the nginx scenario needs {} (not found, and no apt-get to install them)",
                missing.join(" and ")
            );
        }
        println!("bench: installing {} with apt-get", missing.join(" "));
        Apt::default()
            .install(&missing)
            .with_context(|| format!("bench: cannot install {}", missing.join(" ")))?;
    }
    let find = |cmd: &str| {
        find_program(cmd).ok_or_else(|| anyhow!("bench: {cmd} is still missing after apt-get"))
    };
    Ok((find("nginx")?, find("wrk")?))
}

// ---------------------------------------------------------------------------------------------
// One measurement

enum Tracer<'a> {
    None,
    Leaktrace {
        bin: &'a Path,
        mode_args: &'a [&'a str],
    },
    Memleak {
        bin: &'a Path,
        headers: &'a Path,
    },
}

/// What one wrk measurement gave.
struct Measured {
    requests_per_sec: f64,
    /// The nginx worker's CPU time (user + system) over the measurement (not the warm-up),
    /// per request served, in µs.
    worker_cpu_us_per_request: Option<f64>,
}

/// Fresh nginx, tracer attached, warm-up, one wrk measurement.
fn measure(
    nginx_bin: &Path,
    wrk_bin: &Path,
    site: &Site,
    tracer: Tracer,
    args: &BenchArgs,
) -> Result<Measured> {
    // Declared before the tracer: on an early return the tracer is dropped (killed) first.
    let mut server = Nginx::start(nginx_bin, site)?;
    let mut traced = match tracer {
        Tracer::None => None,
        Tracer::Leaktrace { bin, mode_args } => Some((
            attach_leaktrace(bin, mode_args, &[server.master, server.worker])?,
            true,
        )),
        Tracer::Memleak { bin, headers } => {
            Some((spawn_memleak(bin, headers, server.worker)?, false))
        }
    };
    let url = server.url();
    let tracer_pid = traced.as_ref().map(|(t, _)| t.pid());
    let cpu_before = (cpu_seconds(server.worker), tracer_pid.and_then(cpu_seconds));
    if args.warmup_secs > 0 {
        run_wrk(wrk_bin, &url, args.warmup_secs).context("wrk warm-up")?;
    }
    let worker_cpu_measuring = cpu_seconds(server.worker);
    let result = run_wrk(wrk_bin, &url, args.duration_secs)?;
    let cpu_after = (cpu_seconds(server.worker), tracer_pid.and_then(cpu_seconds));
    let worker_cpu_us_per_request = worker_cpu_measuring
        .zip(cpu_after.0)
        .filter(|_| result.requests > 0)
        .map(|(before, after)| (after - before) * 1e6 / result.requests as f64);
    // Where the CPU went (2 cores shared by wrk, nginx and the tracer): explains outliers.
    let used = |before: Option<f64>, after: Option<f64>| {
        before
            .zip(after)
            .map_or_else(|| "n/a".to_string(), |(b, a)| format!("{:.1} s", a - b))
    };
    println!(
        "    cpu during warm-up + measurement: nginx worker {}, tracer {}",
        used(cpu_before.0, cpu_after.0),
        if tracer_pid.is_some() {
            used(cpu_before.1, cpu_after.1)
        } else {
            "-".to_string()
        }
    );
    if result.socket_errors > 0 {
        println!(
            "  note: wrk saw {} socket errors (connect/read/write/timeout)",
            result.socket_errors
        );
    }
    if let Some((tracer, is_leaktrace)) = traced.as_mut() {
        if let Some(status) = tracer.try_status()? {
            bail!(
                "{} exited ({status}) while nginx was measured; last output: {}",
                tracer.name(),
                tracer.tail()
            );
        }
        let status = tracer.interrupt(EXIT_TIMEOUT)?;
        if *is_leaktrace && !status.success() {
            bail!(
                "leaktrace exited with {status} on SIGINT; last output: {}",
                tracer.tail()
            );
        }
    }
    drop(traced);
    server.stop()?;
    Ok(Measured {
        requests_per_sec: result.requests_per_sec,
        worker_cpu_us_per_request,
    })
}

/// `leaktrace [mode] --headless --interval 1h --pid P...`, returned once it says it traces every
/// pid (`leaktrace: tracing pid P ...` on stderr).
fn attach_leaktrace(bin: &Path, mode_args: &[&str], pids: &[u32]) -> Result<Supervised> {
    let mut cmd = Command::new(bin);
    cmd.args(mode_args).args(["--headless", "--interval", "1h"]);
    for pid in pids {
        cmd.arg("--pid").arg(pid.to_string());
    }
    let mut lt = Supervised::spawn("leaktrace", &mut cmd, Input::Null)?;
    let mut pending: BTreeSet<u32> = pids.iter().copied().collect();
    lt.wait_stderr(
        ATTACH_TIMEOUT,
        "`leaktrace: tracing pid ...` line for every nginx process",
        |line| {
            if let Some(pid) = traced_pid(line) {
                pending.remove(&pid);
            }
            pending.is_empty().then_some(())
        },
    )?;
    thread::sleep(SETTLE);
    Ok(lt)
}

/// The pid of a `leaktrace: tracing pid 123 (nginx) ...` line.
fn traced_pid(line: &str) -> Option<u32> {
    let rest = line.strip_prefix("leaktrace: tracing pid ")?;
    let digits: &str = rest
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .filter(|d| !d.is_empty())?;
    digits.parse().ok()
}

// ---------------------------------------------------------------------------------------------
// wrk

#[derive(Debug, PartialEq)]
struct WrkResult {
    requests_per_sec: f64,
    requests: u64,
    socket_errors: u64,
    non_2xx_3xx: u64,
}

fn run_wrk(wrk_bin: &Path, url: &str, secs: u64) -> Result<WrkResult> {
    let mut cmd = Command::new(wrk_bin);
    cmd.arg(format!("-t{WRK_THREADS}"))
        .arg(format!("-c{WRK_CONNECTIONS}"))
        .arg(format!("-d{secs}s"))
        .arg(url);
    let mut wrk = Supervised::spawn("wrk", &mut cmd, Input::Null)?;
    wrk.wait_exit_ok(Duration::from_secs(secs) + EXIT_TIMEOUT)?;
    let result = parse_wrk(&wrk.stdout_text())
        .map_err(|why| anyhow!("wrk: {why}; its output: {}", wrk.tail()))?;
    if result.non_2xx_3xx > 0 {
        bail!(
            "wrk: {} of {} responses from {url} were not 2xx/3xx (nginx misconfigured?)",
            result.non_2xx_3xx,
            result.requests,
        );
    }
    Ok(result)
}

/// Parses wrk's summary: `N requests in 10.00s, ...`, `Requests/sec: X`, and the optional
/// `Socket errors: connect A, read B, write C, timeout D` and `Non-2xx or 3xx responses: N`.
fn parse_wrk(text: &str) -> std::result::Result<WrkResult, String> {
    let mut rps = None;
    let mut requests = None;
    let mut socket_errors = 0;
    let mut non_2xx_3xx = 0;
    for line in text.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            rps = Some(
                v.trim()
                    .parse::<f64>()
                    .map_err(|e| format!("bad Requests/sec value {:?}: {e}", v.trim()))?,
            );
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            non_2xx_3xx = v
                .trim()
                .parse()
                .map_err(|e| format!("bad Non-2xx count {:?}: {e}", v.trim()))?;
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 12, write 0, timeout 3"
            for part in v.split(',') {
                let count = part.split_whitespace().nth(1).unwrap_or("");
                socket_errors += count
                    .parse::<u64>()
                    .map_err(|e| format!("bad socket error count in {:?}: {e}", part.trim()))?;
            }
        } else if let Some((n, _)) = line.split_once(" requests in ") {
            requests = n.trim().parse::<u64>().ok();
        }
    }
    let requests_per_sec = rps.ok_or("no `Requests/sec:` line")?;
    if !requests_per_sec.is_finite() || requests_per_sec < 0.0 {
        return Err(format!("bad Requests/sec value {requests_per_sec}"));
    }
    let requests = requests.ok_or("no `N requests in ...` line")?;
    if requests == 0 {
        return Err("no request completed".to_string());
    }
    Ok(WrkResult {
        requests_per_sec,
        requests,
        socket_errors,
        non_2xx_3xx,
    })
}

// ---------------------------------------------------------------------------------------------
// nginx: a private site directory and one running instance

/// `target/bench/nginx/`: the served file, temp paths, logs, pid file and config.
struct Site {
    dir: PathBuf,
}

impl Site {
    fn create(dir: &Path) -> Result<Site> {
        for sub in ["html", "logs", "temp"] {
            std::fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("bench: cannot create {}", dir.join(sub).display()))?;
        }
        let file = dir.join("html").join(FILE_NAME);
        write_file(&file, &static_file(FILE_BYTES))?;
        let dir = dir
            .canonicalize()
            .with_context(|| format!("bench: cannot resolve {}", dir.display()))?;
        Ok(Site { dir })
    }

    fn conf_path(&self) -> PathBuf {
        self.dir.join("nginx.conf")
    }

    fn error_log(&self) -> PathBuf {
        self.dir.join("logs/error.log")
    }
}

/// An HTML page of exactly `size` bytes (at least the fixed skeleton's length).
fn static_file(size: usize) -> Vec<u8> {
    const HEAD: &str =
        "<!DOCTYPE html>\n<html>\n<head><title>leaktrace bench</title></head>\n<body>\n<p>";
    const TAIL: &str = "</p>\n</body>\n</html>\n";
    let mut page = String::from(HEAD);
    let filler = "static file served by nginx for cargo xtask bench. ";
    while page.len() + TAIL.len() < size {
        let room = size - page.len() - TAIL.len();
        page.push_str(&filler[..filler.len().min(room)]);
    }
    page.push_str(TAIL);
    page.into_bytes()
}

/// nginx.conf for one run: everything nginx writes stays under `dir`; only 127.0.0.1:`port`.
fn render_config(dir: &Path, port: u16, as_root: bool) -> String {
    let d = dir.display();
    // As root, the worker would otherwise switch to `nobody`, which may not read our tree.
    let user = if as_root { "user root;\n" } else { "" };
    format!(
        "# Written by cargo xtask bench (scenario nginx); private to this directory.\n\
         {user}daemon off;\n\
         master_process on;\n\
         worker_processes 1;\n\
         pid {d}/nginx.pid;\n\
         error_log {d}/logs/error.log warn;\n\
         events {{\n    worker_connections 1024;\n}}\n\
         http {{\n\
         \x20   access_log off;\n\
         \x20   default_type text/html;\n\
         \x20   sendfile on;\n\
         \x20   client_body_temp_path {d}/temp/client_body;\n\
         \x20   proxy_temp_path {d}/temp/proxy;\n\
         \x20   fastcgi_temp_path {d}/temp/fastcgi;\n\
         \x20   uwsgi_temp_path {d}/temp/uwsgi;\n\
         \x20   scgi_temp_path {d}/temp/scgi;\n\
         \x20   server {{\n\
         \x20       listen 127.0.0.1:{port};\n\
         \x20       root {d}/html;\n\
         \x20   }}\n\
         }}\n"
    )
}

/// A port of 127.0.0.1 nobody listens on right now.
fn free_port() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .context("bench: cannot find a free port on 127.0.0.1")?;
    Ok(listener.local_addr()?.port())
}

struct Nginx {
    proc: Supervised,
    master: u32,
    worker: u32,
    port: u16,
    stopped: bool,
}

impl Nginx {
    /// Starts nginx on a free port; returns once it serves the file and its worker is known.
    fn start(nginx_bin: &Path, site: &Site) -> Result<Nginx> {
        let port = free_port()?;
        let conf = site.conf_path();
        write_file(&conf, render_config(&site.dir, port, is_root()).as_bytes())?;
        let mut cmd = Command::new(nginx_bin);
        // -e: the error log used before the config is read (the default is under /var/log).
        cmd.arg("-p")
            .arg(&site.dir)
            .arg("-e")
            .arg(site.error_log())
            .arg("-c")
            .arg(&conf);
        let proc = Supervised::spawn("nginx", &mut cmd, Input::Null)?;
        let master = proc.pid();
        let mut server = Nginx {
            proc,
            master,
            worker: 0,
            port,
            stopped: false,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = server.proc.try_status()? {
                bail!(
                    "nginx exited ({status}) at start; output: {}; error log: {}",
                    server.proc.tail(),
                    log_tail(&site.error_log())
                );
            }
            if let Some(worker) = worker_of(master) {
                if let Ok(response) = http_get(port, FILE_NAME) {
                    let (status, length) = parse_http_head(&response)
                        .ok_or_else(|| anyhow!("nginx sent a malformed HTTP response"))?;
                    if status != 200 || length != Some(FILE_BYTES as u64) {
                        bail!(
                            "nginx answered {status} with Content-Length {length:?} for \
                             /{FILE_NAME}, expected 200 and {FILE_BYTES}; error log: {}",
                            log_tail(&site.error_log())
                        );
                    }
                    server.worker = worker;
                    return Ok(server);
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "nginx did not serve http://127.0.0.1:{port}/{FILE_NAME} with a worker within \
                     {} s; error log: {}",
                    START_TIMEOUT.as_secs(),
                    log_tail(&site.error_log())
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/{FILE_NAME}", self.port)
    }

    /// SIGQUIT (graceful), then SIGTERM, then SIGKILL; the master is reaped, and a worker left
    /// behind by a killed master is killed too.
    fn stop(&mut self) -> Result<()> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        let mut escalated = None;
        for (sig, name, timeout) in [
            (libc::SIGQUIT, "SIGQUIT", QUIT_TIMEOUT),
            (libc::SIGTERM, "SIGTERM", TERM_TIMEOUT),
        ] {
            self.proc.signal(sig)?;
            if self.proc.wait_exit(timeout).is_ok() {
                break;
            }
            escalated = Some(name);
        }
        if self.proc.try_status()?.is_none() {
            self.proc.kill_and_reap();
        }
        // A master that exits normally waits for its worker first; one that was killed does not.
        if self.worker != 0 && is_nginx_worker(self.worker) {
            let pid = i32::try_from(self.worker).context("worker pid out of range")?;
            // SAFETY: plain syscall wrapper; `pid` was checked just above to still be an nginx
            // worker process (the one this bench started), not a reused id.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        match escalated {
            Some(sig) => bail!("nginx did not exit after {sig} and was killed"),
            None => Ok(()),
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// The worker process of nginx master `master` (a child named `nginx: worker process`).
fn worker_of(master: u32) -> Option<u32> {
    let entries = std::fs::read_dir("/proc").ok()?;
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| parent_of(&stat))
                == Some(master)
                && is_nginx_worker(*pid)
        })
}

fn is_nginx_worker(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| String::from_utf8_lossy(&c).starts_with("nginx: worker process"))
}

/// CPU time (user + system, all threads) used so far by `pid`.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let ticks = cpu_ticks(&stat)?;
    let per_second = procfs::ticks_per_second();
    (per_second > 0).then(|| ticks as f64 / per_second as f64)
}

/// utime + stime (fields 14 and 15) of a `/proc/PID/stat` line, in clock ticks.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    // After the comm: state(3) ppid(4) ... utime(14) stime(15), i.e. indexes 11 and 12 here.
    let mut fields = after.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The parent pid in a `/proc/PID/stat` line (`pid (comm) state ppid ...`; comm may hold spaces
/// and parentheses, so count from the last `)`).
fn parent_of(stat: &str) -> Option<u32> {
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

/// One `GET /path` over HTTP/1.0; the raw response.
fn http_get(port: u16, path: &str) -> Result<Vec<u8>> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(format!("GET /{path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    Ok(response)
}

/// Status code and Content-Length of an HTTP response.
fn parse_http_head(response: &[u8]) -> Option<(u16, Option<u64>)> {
    let text = String::from_utf8_lossy(response);
    let head = text.split("\r\n\r\n").next()?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    if !status_line.starts_with("HTTP/") {
        return None;
    }
    let status = status_line.split_whitespace().nth(1)?.parse().ok()?;
    let length = lines.find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse().ok())?
    });
    Some((status, length))
}

fn log_tail(path: &Path) -> String {
    std::fs::read(path).map_or_else(
        |e| format!("(cannot read {}: {e})", path.display()),
        |b| {
            let t = tail_of(&b);
            if t.is_empty() {
                "(empty)".to_string()
            } else {
                first_line(&t).to_string()
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK_OUTPUT: &str = "Running 10s test @ http://127.0.0.1:40123/index.html
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   410.22us  120.31us   4.02ms   80.12%
    Req/Sec    38.91k     1.20k   41.02k    71.00%
  387214 requests in 10.00s, 310.95MB read
Requests/sec:  38719.84
Transfer/sec:     31.09MB
";

    #[test]
    fn wrk_summary_is_parsed() {
        assert_eq!(
            parse_wrk(WRK_OUTPUT),
            Ok(WrkResult {
                requests_per_sec: 38719.84,
                requests: 387_214,
                socket_errors: 0,
                non_2xx_3xx: 0,
            })
        );
    }

    #[test]
    fn wrk_errors_are_counted() {
        let text = WRK_OUTPUT.replace(
            "Requests/sec:",
            "  Socket errors: connect 1, read 12, write 0, timeout 3\n  Non-2xx or 3xx responses: 7\nRequests/sec:",
        );
        let r = parse_wrk(&text).expect("parses");
        assert_eq!(r.socket_errors, 16);
        assert_eq!(r.non_2xx_3xx, 7);
    }

    #[test]
    fn wrk_output_without_a_rate_or_requests_is_an_error() {
        assert!(parse_wrk("unable to connect to 127.0.0.1:1 Connection refused\n").is_err());
        let no_requests = WRK_OUTPUT.replace("387214 requests in", "0 requests in");
        assert_eq!(
            parse_wrk(&no_requests),
            Err("no request completed".to_string())
        );
        let bad = WRK_OUTPUT.replace("38719.84", "fast");
        assert!(parse_wrk(&bad).is_err());
    }

    #[test]
    fn config_keeps_every_path_private_and_listens_on_loopback_only() {
        let conf = render_config(Path::new("/x/nginx"), 40123, true);
        for needed in [
            "user root;",
            "daemon off;",
            "master_process on;",
            "worker_processes 1;",
            "pid /x/nginx/nginx.pid;",
            "error_log /x/nginx/logs/error.log warn;",
            "access_log off;",
            "client_body_temp_path /x/nginx/temp/client_body;",
            "scgi_temp_path /x/nginx/temp/scgi;",
            "listen 127.0.0.1:40123;",
            "root /x/nginx/html;",
        ] {
            assert!(conf.contains(needed), "missing {needed:?} in:\n{conf}");
        }
        // Every absolute path in the config is under the private directory.
        for word in conf.split_whitespace() {
            if word.starts_with('/') {
                assert!(word.starts_with("/x/nginx/"), "{word} escapes the site dir");
            }
        }
        assert_eq!(conf.matches('{').count(), conf.matches('}').count());
        assert!(!render_config(Path::new("/x"), 1, false).contains("user "));
    }

    #[test]
    fn static_file_has_the_exact_size() {
        for size in [100, 612, 4096] {
            let page = static_file(size);
            assert_eq!(page.len(), size);
            assert!(page.ends_with(b"</html>\n"));
        }
    }

    #[test]
    fn http_head_gives_status_and_length() {
        let ok = b"HTTP/1.1 200 OK\r\nServer: nginx\r\ncontent-length: 612\r\n\r\n<!DOCTYPE";
        assert_eq!(parse_http_head(ok), Some((200, Some(612))));
        let missing = b"HTTP/1.1 404 Not Found\r\nServer: nginx\r\n\r\n";
        assert_eq!(parse_http_head(missing), Some((404, None)));
        assert_eq!(parse_http_head(b"SSH-2.0-OpenSSH\r\n\r\n"), None);
    }

    #[test]
    fn parent_pid_is_read_after_the_command_name() {
        let stat = "4242 (nginx: a) b) S 4200 4200 4200 0 -1 4194624 123";
        assert_eq!(parent_of(stat), Some(4200));
        assert_eq!(parent_of("garbage"), None);
    }

    #[test]
    fn cpu_ticks_are_utime_plus_stime() {
        // pid comm state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
        let stat = "4242 (nginx: w) S 4200 4200 4200 0 -1 4194624 10 0 0 0 250 75 0 0 20 0 1";
        assert_eq!(cpu_ticks(stat), Some(325));
        assert_eq!(cpu_ticks("4242 (x) S 1 2"), None);
    }

    #[test]
    fn traced_pid_lines_are_recognised() {
        assert_eq!(
            traced_pid("leaktrace: tracing pid 1234 (nginx) through /usr/lib/libc.so.6 [malloc]"),
            Some(1234)
        );
        assert_eq!(traced_pid("leaktrace: tracing pid 77"), Some(77));
        assert_eq!(traced_pid("leaktrace: tracing pid x"), None);
        assert_eq!(traced_pid("leaktrace: watching the heap syscalls"), None);
    }
}

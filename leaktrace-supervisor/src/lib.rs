//! The one supervisor for the child processes that leaktrace's integration tests and
//! `cargo xtask` start: their stdout and stderr are read line by line by two threads (so a child
//! never blocks on a full pipe), every wait has a deadline, and a child still running when its
//! [`Supervised`] is dropped is killed by its PID and reaped. Only processes started here are
//! ever signalled.

use std::{
    fmt,
    io::{BufRead as _, BufReader, Read, Write as _},
    os::unix::process::CommandExt as _,
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError, Sender},
    thread,
    time::{Duration, Instant},
};

/// Lines of output quoted by [`Supervised::tail`].
const TAIL_LINES: usize = 8;
/// How long the rest of the output is read once the process has exited.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);
/// How long an exit is awaited when the output closed before an expected line.
const EXIT_AFTER_CLOSE: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(20);

/// What a failed spawn, wait or write says, in one line.
#[derive(Debug)]
pub struct Error {
    message: String,
}

impl Error {
    fn new(message: String) -> Self {
        Error { message }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

/// Where a line of output came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One line of a child's output, without its line break.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    pub stream: Stream,
    pub text: String,
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let prefix = match self.stream {
            Stream::Stdout => "out",
            Stream::Stderr => "err",
        };
        write!(f, "{prefix}: {}", self.text)
    }
}

/// Which lines a wait looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lines {
    Stdout,
    Stderr,
    Either,
}

impl Lines {
    fn accepts(self, stream: Stream) -> bool {
        match self {
            Lines::Stdout => stream == Stream::Stdout,
            Lines::Stderr => stream == Stream::Stderr,
            Lines::Either => true,
        }
    }
}

/// Whether the child gets a pipe on its stdin (for "go" lines) or /dev/null.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Input {
    Piped,
    Null,
}

/// A child process started by [`Supervised::spawn`].
pub struct Supervised {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    rx: Receiver<Line>,
    /// Every line seen so far, both streams in arrival order.
    log: Vec<Line>,
    status: Option<ExitStatus>,
}

impl Supervised {
    /// Starts `command` with piped stdout and stderr; `name` is how errors call it.
    pub fn spawn(name: &str, command: &mut Command, input: Input) -> Result<Supervised> {
        command
            .stdin(match input {
                Input::Piped => Stdio::piped(),
                Input::Null => Stdio::null(),
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // A command started in the background by a non-interactive shell (as CI may start the
        // tests) inherits SIGINT and SIGQUIT ignored, and would then ignore `interrupt`: the
        // children get the default dispositions back.
        // SAFETY: between fork and exec only signal(2), which is async-signal-safe.
        unsafe {
            command.pre_exec(|| {
                libc::signal(libc::SIGINT, libc::SIG_DFL);
                libc::signal(libc::SIGQUIT, libc::SIG_DFL);
                Ok(())
            });
        }
        let mut child = command.spawn().map_err(|e| {
            Error::new(format!(
                "cannot start {name} ({:?}): {e}",
                command.get_program()
            ))
        })?;
        let (tx, rx) = mpsc::channel();
        if let Some(out) = child.stdout.take() {
            drain(out, tx.clone(), Stream::Stdout);
        }
        if let Some(err) = child.stderr.take() {
            drain(err, tx, Stream::Stderr);
        }
        let stdin = child.stdin.take();
        Ok(Supervised {
            name: name.to_string(),
            child,
            stdin,
            rx,
            log: Vec::new(),
            status: None,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every line seen so far, both streams in arrival order.
    pub fn log(&self) -> &[Line] {
        &self.log
    }

    /// The stdout lines seen so far.
    pub fn stdout_lines(&self) -> impl Iterator<Item = &str> {
        self.log
            .iter()
            .filter(|l| l.stream == Stream::Stdout)
            .map(|l| l.text.as_str())
    }

    /// What the process printed on stdout so far, one line per line.
    pub fn stdout_text(&self) -> String {
        self.stdout_lines().fold(String::new(), |mut text, line| {
            text.push_str(line);
            text.push('\n');
            text
        })
    }

    /// Writes an empty line (a "go" signal) to the child's stdin, which stays open.
    pub fn send_line(&mut self) -> Result<()> {
        let name = &self.name;
        let stdin = self.stdin.as_mut().ok_or_else(|| {
            Error::new(format!("{name}: its stdin is not a pipe (or was closed)"))
        })?;
        stdin
            .write_all(b"\n")
            .and_then(|()| stdin.flush())
            .map_err(|e| Error::new(format!("{name}: cannot write a line to its stdin: {e}")))
    }

    /// The pipe on the child's stdin, for a caller that writes more than "go" lines.
    pub fn take_stdin(&mut self) -> Option<ChildStdin> {
        self.stdin.take()
    }

    /// Closes the child's stdin (end of file for a child waiting on it).
    pub fn close_stdin(&mut self) {
        drop(self.stdin.take());
    }

    /// Waits for a stdout line for which `pick` returns a value.
    pub fn wait_stdout<T>(
        &mut self,
        timeout: Duration,
        what: &str,
        pick: impl FnMut(&str) -> Option<T>,
    ) -> Result<T> {
        self.wait_line(timeout, what, Lines::Stdout, pick)
    }

    /// Waits for a stderr line for which `pick` returns a value.
    pub fn wait_stderr<T>(
        &mut self,
        timeout: Duration,
        what: &str,
        pick: impl FnMut(&str) -> Option<T>,
    ) -> Result<T> {
        self.wait_line(timeout, what, Lines::Stderr, pick)
    }

    /// Waits up to `timeout` for a new line of `lines` for which `pick` returns a value. `what`
    /// names the awaited line in the error.
    pub fn wait_line<T>(
        &mut self,
        timeout: Duration,
        what: &str,
        lines: Lines,
        mut pick: impl FnMut(&str) -> Option<T>,
    ) -> Result<T> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    let picked = lines
                        .accepts(line.stream)
                        .then(|| pick(&line.text))
                        .flatten();
                    self.log.push(line);
                    if let Some(value) = picked {
                        return Ok(value);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(Error::new(format!(
                        "{}: no {what} within {} s; last output: {}",
                        self.name,
                        timeout.as_secs(),
                        self.tail()
                    )))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.wait_exit(EXIT_AFTER_CLOSE).map_or_else(
                        |_| "closed its output".to_string(),
                        |s| format!("exited with {s}"),
                    );
                    return Err(Error::new(format!(
                        "{} {status} before its {what}; last output: {}",
                        self.name,
                        self.tail()
                    )));
                }
            }
        }
    }

    /// The exit status, if the process has exited (reaping it).
    pub fn try_status(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self
                .child
                .try_wait()
                .map_err(|e| Error::new(format!("cannot wait for {}: {e}", self.name)))?;
        }
        Ok(self.status)
    }

    /// Waits up to `timeout` for the process to exit, reading its output meanwhile, then reads
    /// what is left of it.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status()? {
                self.collect_rest(DRAIN_AFTER_EXIT);
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(Error::new(format!(
                    "{} did not exit within {} s",
                    self.name,
                    timeout.as_secs()
                )));
            }
            match self.rx.recv_timeout(POLL) {
                Ok(line) => self.log.push(line),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => thread::sleep(POLL),
            }
        }
    }

    /// [`Supervised::wait_exit`], and an error quoting the output unless the exit is a success.
    pub fn wait_exit_ok(&mut self, timeout: Duration) -> Result<()> {
        let status = self.wait_exit(timeout)?;
        if !status.success() {
            return Err(Error::new(format!(
                "{} exited with {status}; last output: {}",
                self.name,
                self.tail()
            )));
        }
        Ok(())
    }

    /// SIGINT (if still running), then a wait of up to `timeout`; SIGKILL if it ignores it.
    pub fn interrupt(&mut self, timeout: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.try_status()? {
            self.collect_rest(DRAIN_AFTER_EXIT);
            return Ok(status);
        }
        self.signal(libc::SIGINT)?;
        match self.wait_exit(timeout) {
            Ok(status) => Ok(status),
            Err(_) => {
                self.kill_and_reap();
                Err(Error::new(format!(
                    "{} ignored SIGINT for {} s and was killed",
                    self.name,
                    timeout.as_secs()
                )))
            }
        }
    }

    /// Sends `signal` unless the process has already exited (and been reaped by us).
    pub fn signal(&mut self, signal: libc::c_int) -> Result<()> {
        if self.try_status()?.is_some() {
            return Ok(());
        }
        let pid = libc::pid_t::try_from(self.child.id())
            .map_err(|_| Error::new(format!("{}: pid out of range", self.name)))?;
        // SAFETY: kill(2) has no memory preconditions. `pid` is our own child, not yet reaped
        // (checked just above), so the id cannot have been reused by another process.
        if unsafe { libc::kill(pid, signal) } != 0 {
            let err = std::io::Error::last_os_error();
            return Err(Error::new(format!(
                "cannot signal {} ({pid}): {err}",
                self.name
            )));
        }
        Ok(())
    }

    /// Closes stdin, kills the process if it still runs, and reaps it.
    pub fn kill_and_reap(&mut self) {
        self.close_stdin();
        if matches!(self.try_status(), Ok(None)) {
            let _ = self.child.kill();
            if let Ok(status) = self.child.wait() {
                self.status = Some(status);
            }
        }
    }

    /// The last lines of output on one line, for a one-line error.
    pub fn tail(&self) -> String {
        let start = self.log.len().saturating_sub(TAIL_LINES);
        let lines = &self.log[start..];
        if lines.is_empty() {
            "(nothing)".to_string()
        } else {
            lines
                .iter()
                .map(Line::to_string)
                .collect::<Vec<_>>()
                .join(" | ")
        }
    }

    /// Reads what is left of the output once the process has exited (both pipes closed, or
    /// `timeout` when a grandchild still holds them).
    fn collect_rest(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => self.log.push(line),
                Err(_) => return,
            }
        }
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.kill_and_reap();
    }
}

/// Sends every line of `reader` to `tx` from a thread of its own.
fn drain<R: Read + Send + 'static>(reader: R, tx: Sender<Line>, stream: Stream) {
    thread::spawn(move || {
        let mut reader = BufReader::new(reader);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&buf)
                        .trim_end_matches(['\n', '\r'])
                        .to_string();
                    if tx.send(Line { stream, text }).is_err() {
                        // Receiver gone: keep reading so the writer never blocks on a full pipe.
                        let _ = std::io::copy(&mut reader, &mut std::io::sink());
                        return;
                    }
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shell(script: &str, input: Input) -> Supervised {
        Supervised::spawn("sh", Command::new("sh").args(["-c", script]), input).expect("sh starts")
    }

    #[test]
    fn lines_are_picked_from_the_asked_stream() {
        let mut sh = shell("echo one >&2; echo two; echo three >&2", Input::Null);
        let second = sh.wait_stderr(Duration::from_secs(10), "three", |l| {
            (l == "three").then(|| l.to_string())
        });
        assert_eq!(second.expect("stderr line"), "three");
        assert!(sh
            .wait_exit(Duration::from_secs(10))
            .expect("exits")
            .success());
        assert_eq!(sh.stdout_text(), "two\n");
        assert_eq!(sh.log().len(), 3);
        // The two pipes are read by two threads: only each stream's own order is known.
        let tail = sh.tail();
        assert!(tail.contains("out: two"), "{tail}");
        assert!(tail.find("err: one") < tail.find("err: three"), "{tail}");
    }

    #[test]
    fn a_go_line_releases_a_child_waiting_on_stdin() {
        let mut sh = shell("echo ready; read x; echo done", Input::Piped);
        sh.wait_stdout(Duration::from_secs(10), "ready", |l| {
            (l == "ready").then_some(())
        })
        .expect("ready");
        sh.send_line().expect("go line");
        sh.wait_stdout(Duration::from_secs(10), "done", |l| {
            (l == "done").then_some(())
        })
        .expect("done");
        sh.wait_exit_ok(Duration::from_secs(10)).expect("success");
    }

    #[test]
    fn a_missing_line_times_out_and_names_what_was_awaited() {
        let mut sh = shell("echo hello; sleep 30", Input::Null);
        let err = sh
            .wait_stdout(Duration::from_millis(300), "`bye` line", |l| {
                (l == "bye").then_some(())
            })
            .expect_err("no bye");
        assert_eq!(
            err.to_string(),
            "sh: no `bye` line within 0 s; last output: out: hello"
        );
    }

    #[test]
    fn an_exit_before_the_line_is_reported_with_the_status() {
        let mut sh = shell("echo partial; exit 3", Input::Null);
        let err = sh
            .wait_stdout(Duration::from_secs(10), "result", |l| {
                (l == "result").then_some(())
            })
            .expect_err("exits first");
        assert!(
            err.to_string()
                .starts_with("sh exited with exit status: 3 before its result"),
            "{err}"
        );
    }

    #[test]
    fn interrupt_ends_a_running_child_and_drop_kills_one() {
        // sleep itself, not `sh -c`: dash catches SIGINT until it execs its last command and
        // loses a SIGINT that arrives before the exec (a race a busy machine loses).
        let mut sleep = Supervised::spawn("sleep", Command::new("sleep").arg("30"), Input::Null)
            .expect("sleep starts");
        let status = sleep.interrupt(Duration::from_secs(10)).expect("ends");
        assert!(!status.success());

        let sh = shell("trap '' INT; sleep 30", Input::Null);
        let pid = sh.pid();
        drop(sh);
        // Killed and reaped by the drop: no zombie is left under that pid.
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    }
}

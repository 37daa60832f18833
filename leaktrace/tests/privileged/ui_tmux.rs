//! End-to-end test of the live dashboard: the real binary on a real terminal (a
//! tmux pane), tracing a leaking fixture. Privileged, like the other tracing tests.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use crate::common::*;

/// A private tmux server (its socket in the test's temporary directory), killed when the
/// test ends however it ends.
struct Tmux {
    bin: PathBuf,
    socket: PathBuf,
}

impl Tmux {
    fn start(dir: &Path, width: u16, height: u16, command: &str) -> Tmux {
        let tmux = Tmux {
            bin: require_tool("tmux", "tmux"),
            socket: dir.join("tmux.sock"),
        };
        let out = tmux.run(&[
            "new-session",
            "-d",
            "-s",
            "ui",
            "-x",
            &width.to_string(),
            "-y",
            &height.to_string(),
            command,
        ]);
        assert!(out.status.success(), "tmux new-session failed: {out:?}");
        tmux
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(&self.bin)
            .arg("-S")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run tmux")
    }

    fn screen(&self) -> String {
        let out = self.run(&["capture-pane", "-p", "-t", "ui"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn send(&self, keys: &str) {
        let out = self.run(&["send-keys", "-t", "ui", keys]);
        assert!(out.status.success(), "tmux send-keys failed: {out:?}");
    }

    /// Wait until the pane shows `needle`; the screen when it does.
    fn wait_for(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let screen = self.screen();
            if screen.contains(needle) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "the screen did not show {needle:?} within {timeout:?}:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

fn wait_for_file(path: &Path, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if !text.is_empty() {
                return text;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} did not appear within {timeout:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn dashboard_shows_the_leak_sorts_and_quits_cleanly() {
    if !privileged() {
        return;
    }
    let fixture = fixture("alloc_patterns", &[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let status = dir.path().join("status");
    let stty = dir.path().join("stty");
    // After leaktrace exits, the shell records its status and the terminal's modes, then
    // stays so that the restored screen can be read.
    let command = format!(
        "{bin} -- {fixture} steady 30; echo $? > {status}; stty -a > {stty}; echo LEAKTRACE-DONE; sleep 600",
        bin = leaktrace_bin(),
        fixture = fixture.display(),
        status = status.display(),
        stty = stty.display(),
    );
    let tmux = Tmux::start(dir.path(), 100, 30, &command);

    let screen = tmux.wait_for("steady_leak", Duration::from_secs(15));
    assert!(screen.contains("sort: outstanding ▼"), "{screen}");
    assert!(screen.contains("OUTSTANDING▼"), "{screen}");

    tmux.send("s");
    let screen = tmux.wait_for("sort: count ▼", Duration::from_secs(5));
    assert!(screen.contains("COUNT▼"), "{screen}");
    assert!(!screen.contains("OUTSTANDING▼"), "{screen}");

    // v: the callers tree (main over the leak), then the callees tree (the leak first);
    // Esc: back to the table as it was.
    tmux.send("v");
    tmux.wait_for("callers (top-down)", Duration::from_secs(5));
    // The leak opens by itself once it holds 10% of the tree (it grows every interval).
    let screen = tmux.wait_for("steady_leak", Duration::from_secs(20));
    let line_of = |screen: &str, needle: &str| {
        screen
            .lines()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no {needle:?} on screen:\n{screen}"))
    };
    assert!(
        line_of(&screen, "▾ main ") < line_of(&screen, "steady_leak"),
        "{screen}"
    );
    tmux.send("v");
    let screen = tmux.wait_for("callees (bottom-up)", Duration::from_secs(5));
    assert!(
        line_of(&screen, "steady_leak") < line_of(&screen, " main "),
        "{screen}"
    );
    tmux.send("Escape");
    tmux.wait_for("sort: count ▼", Duration::from_secs(5));

    tmux.send("q");
    let code = wait_for_file(&status, Duration::from_secs(15));
    assert_eq!(code.trim(), "0", "leaktrace's exit status");
    let modes = wait_for_file(&stty, Duration::from_secs(5));
    // Raw mode is off again: line editing and echo are back.
    assert!(
        modes.split_whitespace().any(|m| m == "icanon")
            && modes.split_whitespace().any(|m| m == "echo"),
        "terminal left in raw mode:\n{modes}"
    );
    // The alternate screen is gone: the shell's screen is back, without the dashboard.
    let screen = tmux.wait_for("LEAKTRACE-DONE", Duration::from_secs(5));
    assert!(
        !screen.contains("sort: count"),
        "dashboard still on screen:\n{screen}"
    );
}

//! Helpers of the tests that attack the files leaktrace writes (tests/files.rs and the
//! privileged `files` module).

use std::{fs, path::Path, process::Command};

use super::data_file;

pub const PRECIOUS: &[u8] = b"root:*:20000:0:99999:7:::\n";

pub fn victim(dir: &Path) -> std::path::PathBuf {
    let victim = dir.join("victim");
    fs::write(&victim, PRECIOUS).expect("victim");
    victim
}

/// The names a temporary file had before (`.NAME.tmp.PID`) for every pid a shell's `exec`
/// could give leaktrace, and a few guesses at other schemes: all planted as links to `target`.
pub fn plant_links_script(dir: &Path, name: &str, target: &Path) -> String {
    format!(
        "cd '{dir}' && for n in \".{name}.tmp.$$\" \".{name}.tmp\" \".{name}.tmp.0\" \"{name}.tmp\" \"{name}~\"; \
         do ln -s '{target}' \"$n\" || exit 97; done && exec ",
        dir = dir.display(),
        target = target.display()
    )
}

pub fn run_shell(script: &str) -> (i32, String, String) {
    let output = Command::new("sh")
        .arg("-c")
        .arg(script)
        .output()
        .expect("run sh");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

pub fn one_line_error(code: i32, stderr: &str, expected: &str) {
    assert_eq!(code, 1, "should fail with status 1: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line expected:\n{stderr}");
    assert!(stderr.contains(expected), "{expected:?} not in {stderr:?}");
}

pub fn recorded() -> String {
    data_file("leak-run1.json")
        .to_str()
        .expect("utf-8")
        .to_string()
}

//! The files leaktrace writes, attacked as a local user would attack a root leaktrace: links
//! planted at the temporary names, a link at the destination, a directory anyone may write to.
//! The post-mortem `export` and the tracing run's `--json` share one writer (src/output.rs);
//! both are driven here through the real binary.
mod common;

use std::{
    fs,
    os::unix::fs::{symlink, PermissionsExt as _},
    path::Path,
    process::Command,
};

use common::{data_file, leaktrace, leaktrace_bin, privileged};

const PRECIOUS: &[u8] = b"root:*:20000:0:99999:7:::\n";

fn victim(dir: &Path) -> std::path::PathBuf {
    let victim = dir.join("victim");
    fs::write(&victim, PRECIOUS).expect("victim");
    victim
}

/// The names a temporary file had before (`.NAME.tmp.PID`) for every pid a shell's `exec`
/// could give leaktrace, and a few guesses at other schemes: all planted as links to `target`.
fn plant_links_script(dir: &Path, name: &str, target: &Path) -> String {
    format!(
        "cd '{dir}' && for n in \".{name}.tmp.$$\" \".{name}.tmp\" \".{name}.tmp.0\" \"{name}.tmp\" \"{name}~\"; \
         do ln -s '{target}' \"$n\" || exit 97; done && exec ",
        dir = dir.display(),
        target = target.display()
    )
}

fn run_shell(script: &str) -> (i32, String, String) {
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

fn one_line_error(code: i32, stderr: &str, expected: &str) {
    assert_eq!(code, 1, "should fail with status 1: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line expected:\n{stderr}");
    assert!(stderr.contains(expected), "{expected:?} not in {stderr:?}");
}

fn recorded() -> String {
    data_file("leak-run1.json")
        .to_str()
        .expect("utf-8")
        .to_string()
}

#[test]
fn an_export_through_planted_temporary_links_leaves_their_target_intact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let victim = victim(dir.path());
    let out = dir.path().join("out.folded");
    let script = format!(
        "{}'{}' export '{}' --format folded -o '{}'",
        plant_links_script(dir.path(), "out.folded", &victim),
        leaktrace_bin(),
        recorded(),
        out.display()
    );
    let (code, _, stderr) = run_shell(&script);
    assert_eq!(code, 0, "export failed: {stderr}");
    assert_eq!(fs::read(&victim).expect("victim"), PRECIOUS);
    let folded = fs::read_to_string(&out).expect("export written");
    assert!(folded.contains("leak_exactly"), "{folded}");
    assert!(!fs::symlink_metadata(&out)
        .expect("out")
        .file_type()
        .is_symlink());
}

#[test]
fn a_directory_anyone_may_write_without_the_sticky_bit_is_refused_in_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let open = dir.path().join("open");
    fs::create_dir(&open).expect("mkdir");
    fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).expect("chmod");
    let out = open.join("out.svg");
    let (code, _, stderr) = leaktrace(&[
        "export",
        &recorded(),
        "--format",
        "svg",
        "-o",
        out.to_str().expect("utf-8"),
    ]);
    one_line_error(code, &stderr, "writable by everyone without the sticky bit");
    assert!(!out.exists());
    // With the sticky bit (as /tmp has) nobody can replace another user's file: allowed.
    fs::set_permissions(&open, fs::Permissions::from_mode(0o1777)).expect("chmod +t");
    let (code, _, stderr) = leaktrace(&[
        "export",
        &recorded(),
        "--format",
        "svg",
        "-o",
        out.to_str().expect("utf-8"),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(out.is_file());
}

#[test]
fn exports_are_0644_and_0600_with_private() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (flag, mode) in [(None, 0o644), (Some("--private"), 0o600)] {
        let out = dir.path().join(format!("out-{mode:o}.folded"));
        let mut args = vec![
            "export".to_string(),
            recorded(),
            "--format".to_string(),
            "folded".to_string(),
            "-o".to_string(),
            out.to_str().expect("utf-8").to_string(),
        ];
        args.extend(flag.map(str::to_string));
        let script = format!("umask 022 && exec '{}' \"$@\"", leaktrace_bin());
        let status = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("sh")
            .args(&args)
            .status()
            .expect("run");
        assert!(status.success());
        let found = fs::metadata(&out).expect("out").permissions().mode() & 0o7777;
        assert_eq!(found, mode, "{flag:?}");
    }
}

#[test]
fn a_link_planted_at_the_destination_by_another_user_is_refused() {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "\n*** SKIPPED: needs root to give a link to another user (CI runs as root) ***\n"
        );
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let victim = victim(dir.path());
    let link = dir.path().join("out.folded");
    symlink(&victim, &link).expect("plant");
    std::os::unix::fs::lchown(&link, Some(65534), Some(65534)).expect("chown link");
    let (code, _, stderr) = leaktrace(&[
        "export",
        &recorded(),
        "--format",
        "folded",
        "-o",
        link.to_str().expect("utf-8"),
    ]);
    one_line_error(code, &stderr, "owned by uid 65534");
    assert_eq!(fs::read(&victim).expect("victim"), PRECIOUS);
    assert!(fs::symlink_metadata(&link)
        .expect("link")
        .file_type()
        .is_symlink());
}

/// The tracing run itself, as root: `--json` in a directory where links were planted at every
/// temporary name leaktrace could be given (the shell's own pid, which `exec` hands on).
#[test]
fn json_snapshots_through_planted_temporary_links_leave_their_target_intact() {
    if !privileged() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let victim = victim(dir.path());
    let json = dir.path().join("snap.json");
    let script = format!(
        "{}'{}' --headless --interval 200ms --duration 1s --json '{}' -- sleep 0.5",
        plant_links_script(dir.path(), "snap.json", &victim),
        leaktrace_bin(),
        json.display()
    );
    let (code, stdout, stderr) = run_shell(&script);
    assert_eq!(code, 0, "leaktrace failed:\n{stdout}\n{stderr}");
    assert_eq!(fs::read(&victim).expect("victim"), PRECIOUS);
    let snapshot: serde_json::Value =
        serde_json::from_slice(&fs::read(&json).expect("snapshot written")).expect("JSON");
    assert_eq!(snapshot["complete"], true);
    assert_eq!(
        fs::metadata(&json).expect("json").permissions().mode() & 0o022,
        0,
        "never group- or world-writable"
    );
}

#[test]
fn json_in_a_directory_anyone_may_write_is_refused_before_tracing() {
    if !privileged() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let open = dir.path().join("open");
    fs::create_dir(&open).expect("mkdir");
    fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).expect("chmod");
    let json = open.join("snap.json");
    let (code, _, stderr) = leaktrace(&[
        "--headless",
        "--duration",
        "1s",
        "--json",
        json.to_str().expect("utf-8"),
        "--",
        "true",
    ]);
    one_line_error(code, &stderr, "writable by everyone without the sticky bit");
    assert!(!json.exists());
}

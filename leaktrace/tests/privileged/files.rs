//! The files a root leaktrace writes, attacked as a local user would: `--json` of a tracing run
//! through planted links and into a directory anyone may write, and an export over a link
//! another user planted at the destination.

use std::{
    fs,
    os::unix::fs::{symlink, PermissionsExt as _},
};

use crate::common::{files::*, leaktrace, leaktrace_bin, privileged};

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

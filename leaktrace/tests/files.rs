//! The files leaktrace writes, attacked as a local user would attack a root leaktrace: links
//! planted at the temporary names, a link at the destination, a directory anyone may write to.
//! The post-mortem `export` and the tracing run's `--json` share one writer (src/output.rs);
//! both are driven here through the real binary.
mod common;

use std::{fs, os::unix::fs::PermissionsExt as _, process::Command};

use common::{files::*, leaktrace, leaktrace_bin};

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
    let export = || {
        leaktrace(&[
            "export",
            &recorded(),
            "--format",
            "svg",
            "-o",
            out.to_str().expect("utf-8"),
        ])
    };
    let (code, _, stderr) = export();
    one_line_error(code, &stderr, "writable by everyone without the sticky bit");
    assert!(!out.exists());
    // With the sticky bit (as /tmp has) nobody can replace another user's file: allowed.
    fs::set_permissions(&open, fs::Permissions::from_mode(0o1777)).expect("chmod +t");
    let (code, _, stderr) = export();
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

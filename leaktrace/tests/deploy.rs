//! deploy/: the Prometheus configuration and rules load in promtool, the alert fires on a
//! leak of 120 MiB/h and not on one of 30 MiB/h (`promtool test rules`), and the systemd unit
//! passes `systemd-analyze verify`.
mod common;

use std::{path::PathBuf, process::Command};

use common::require_tool;

fn deploy(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path)
}

fn promtool(args: &[&str], file: &str) {
    let promtool = require_tool("promtool", "prometheus");
    let output = Command::new(promtool)
        .args(args)
        .arg(deploy(file))
        .current_dir(deploy("prometheus"))
        .output()
        .expect("run promtool");
    assert!(
        output.status.success(),
        "promtool {args:?} {file}:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn prometheus_rules_and_config_are_valid() {
    promtool(&["check", "rules"], "prometheus/leaktrace.rules.yml");
    promtool(&["check", "config"], "prometheus/prometheus.yml");
}

#[test]
fn the_leak_alert_fires_on_a_fast_leak_only() {
    promtool(&["test", "rules"], "prometheus/leaktrace.rules.test.yml");
}

#[test]
fn the_systemd_unit_verifies() {
    let analyze = require_tool("systemd-analyze", "systemd");
    let output = Command::new(analyze)
        .args(["verify", "--man=no"])
        .arg(deploy("systemd/leaktrace.service"))
        .output()
        .expect("run systemd-analyze");
    let stderr = String::from_utf8_lossy(&output.stderr);
    // The binary need not be installed where the unit says: that is the only complaint allowed.
    let complaints: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.contains("/usr/local/bin/leaktrace") && !l.trim().is_empty())
        .collect();
    assert!(complaints.is_empty(), "{stderr}");
}

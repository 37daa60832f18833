//! Labels that lead with the user's code, and the call tree, on real runs of
//! tests/fixtures/labels.c: a leak through the fixture's own `xmalloc` (exact mode, frame-pointer
//! stacks) and a leak through Debian's libcrypto (`X509_STORE_CTX_new` -> `CRYPTO_zalloc`),
//! whose stacks growth mode unwinds from `.eh_frame`.

use std::time::Duration;

use serde_json::Value;

use crate::common::*;

/// Bytes the "wrapped" mode leaks under main: 500 x 100 through xmalloc, 10 x 64 direct.
const THROUGH_XMALLOC: u64 = 500 * 100;
const DIRECT: u64 = 10 * 64;

fn labels_fixture() -> String {
    fixture("labels", &["-Wl,--no-as-needed", "-lcrypto"])
        .to_str()
        .expect("utf-8 path")
        .to_string()
}

/// `leaktrace report FILE ARGS` on `snapshot`.
fn report(snapshot: &Value, args: &[&str]) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("snapshot.json");
    std::fs::write(&file, serde_json::to_vec(snapshot).expect("serializes")).expect("write");
    let mut all = vec!["report", file.to_str().expect("utf-8 path")];
    all.extend_from_slice(args);
    succeed(&all)
}

fn function<'a>(process: &'a Value, name: &str) -> &'a Value {
    process["functions"]
        .as_array()
        .expect("functions[]")
        .iter()
        .find(|f| f["function"] == name)
        .unwrap_or_else(|| panic!("no function {name} in {:#}", process["functions"]))
}

fn bytes(function: &Value, field: &str) -> u64 {
    function[field].as_u64().expect("u64")
}

#[test]
fn labels_skip_the_programs_own_xmalloc_and_main_holds_exactly_the_leak() {
    if !privileged() {
        return;
    }
    let (snapshot, lines) = trace_command(
        &["--interval", "300ms"],
        &[&labels_fixture(), "wrapped"],
        ("finished wrapped", Duration::from_secs(30)),
        Duration::from_millis(400),
    );
    let process = only_process(&snapshot);
    // The JSON keeps every frame: the innermost of the big site is still xmalloc.
    assert_eq!(totals_for(process, "xmalloc").0, THROUGH_XMALLOC);
    // pprof's numbers: self at the leaf (the allocator's caller), cumulative along the stack.
    let main = function(process, "main");
    assert_eq!(
        bytes(main, "cumulative_bytes"),
        THROUGH_XMALLOC + DIRECT,
        "{main:#}"
    );
    assert_eq!(bytes(main, "cumulative_count"), 510, "{main:#}");
    assert_eq!(bytes(main, "self_bytes"), 0, "{main:#}");
    let xmalloc = function(process, "xmalloc");
    assert_eq!(bytes(xmalloc, "self_bytes"), THROUGH_XMALLOC, "{xmalloc:#}");
    let remember = function(process, "remember");
    assert_eq!(
        (
            bytes(remember, "self_bytes"),
            bytes(remember, "cumulative_bytes")
        ),
        (0, THROUGH_XMALLOC),
        "{remember:#}"
    );
    assert_eq!(
        bytes(function(process, "keep_direct"), "self_bytes"),
        DIRECT
    );

    // The headless table, the report and the tree name the fixture's functions, never xmalloc.
    let table_rows: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("remember (labels.c:"))
        .collect();
    assert!(!table_rows.is_empty(), "{}", lines.join("\n"));
    assert!(
        !lines
            .iter()
            .any(|l| l.trim_end().ends_with("  xmalloc") || l.contains("  xmalloc (labels.c:")),
        "{}",
        lines.join("\n")
    );
    let text = report(&snapshot, &["--tree"]);
    assert!(text.contains("#1 remember (labels.c:"), "{text}");
    assert!(text.contains("#2 keep_direct (labels.c:"), "{text}");
    assert!(!text.contains(" xmalloc (labels.c:"), "{text}");
    assert!(!text.contains('?'), "{text}");
    assert!(
        text.contains("Call tree, callers first (49.5 KiB in all"),
        "{text}"
    );
    let main_line = text
        .lines()
        .skip_while(|l| !l.contains("Call tree"))
        .find(|l| l.contains(" main  [labels"))
        .expect("main in the call tree");
    assert!(main_line.contains("49.5 KiB 100.0%"), "{text}");

    // The exports end each stack at the first frame past the plumbing: remember, not xmalloc.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("snapshot.json");
    std::fs::write(&file, serde_json::to_vec(&snapshot).expect("serializes")).expect("write");
    let folded = succeed(&[
        "export",
        file.to_str().expect("utf-8 path"),
        "--format",
        "folded",
        "-o",
        "-",
    ]);
    let under_main: Vec<&str> = folded.lines().filter(|l| l.contains(";main;")).collect();
    assert!(
        under_main
            .iter()
            .any(|l| l.ends_with(";main;remember 50000")),
        "{folded}"
    );
    assert!(
        under_main
            .iter()
            .any(|l| l.ends_with(";main;keep_direct 640")),
        "{folded}"
    );
    assert!(!folded.contains("xmalloc"), "{folded}");
}

#[test]
fn a_leak_through_libcrypto_is_named_by_the_fixtures_function_via_the_openssl_call() {
    if !privileged() {
        return;
    }
    let (snapshot, _) = trace_command(
        &["--mode", "growth", "--interval", "300ms"],
        &[&labels_fixture(), "openssl", "20000"],
        ("finished openssl", Duration::from_secs(60)),
        Duration::from_millis(400),
    );
    let process = only_process(&snapshot);
    let sites = process["sites"].as_array().expect("sites");
    let largest = sites
        .iter()
        .max_by_key(|s| s["outstanding_bytes"].as_u64().unwrap_or(0))
        .expect("a site");
    // The stack reaches verify_request through libcrypto's frames (growth mode unwinds them).
    let names = function_names(largest);
    let zalloc = names.iter().position(|n| *n == "CRYPTO_zalloc");
    let verify = names.iter().position(|n| *n == "verify_request");
    assert!(
        matches!((zalloc, verify), (Some(z), Some(v)) if z < v),
        "{names:?}"
    );
    let text = report(&snapshot, &["--tree"]);
    let heading = text
        .lines()
        .find(|l| l.trim_start().starts_with("#1 "))
        .expect("a first site");
    assert!(
        heading.contains("#1 verify_request (labels.c:")
            && heading.contains(" via X509_STORE_CTX_new"),
        "{text}"
    );
    // Everything under verify_request is one number: the sum of the sites it is on (OpenSSL's
    // own first-use initialisation may be a second one), and main holds it all.
    let under_verify: u64 = sites
        .iter()
        .filter(|s| function_names(s).contains(&"verify_request"))
        .map(|s| s["outstanding_bytes"].as_u64().expect("u64"))
        .sum();
    let leaked = largest["outstanding_bytes"].as_u64().expect("u64");
    assert!(under_verify >= leaked && leaked > 0);
    let verify_request = function(process, "verify_request");
    assert_eq!(
        bytes(verify_request, "cumulative_bytes"),
        under_verify,
        "{verify_request:#}"
    );
    assert_eq!(bytes(verify_request, "self_bytes"), 0, "{verify_request:#}");
    assert!(bytes(function(process, "main"), "cumulative_bytes") >= under_verify);
    assert!(bytes(function(process, "CRYPTO_zalloc"), "self_bytes") >= leaked);
}

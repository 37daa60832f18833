//! A process that execs starts again: the launched command is reported as the program it
//! became, with that program's numbers only.

use std::time::Duration;

use serde_json::Value;

use crate::common::*;

/// The final snapshot of `leaktrace OPTIONS -- WRAPPER... alloc_patterns leak`.
fn launched_through(options: &[&str], wrapper: &[&str]) -> Value {
    let fixture = fixture("alloc_patterns", &[]);
    let mut command: Vec<&str> = wrapper.to_vec();
    command.extend([fixture.to_str().expect("utf-8 path"), "leak"]);
    let mut all = vec!["--interval", "300ms"];
    all.extend_from_slice(options);
    trace_command(
        &all,
        &command,
        ("finished leak", Duration::from_secs(30)),
        Duration::from_millis(400),
    )
    .0
}

/// Named after the fixture's file (alloc_patterns-HASH), its comm and exe, never env's or sh's.
fn assert_is_the_fixture(process: &Value, wrapper: &[&str]) {
    assert!(
        process["comm"]
            .as_str()
            .is_some_and(|c| c.starts_with("alloc_patterns")),
        "{wrapper:?}: {process:#}"
    );
    assert!(
        process["exe"]
            .as_str()
            .is_some_and(|e| e.contains("/alloc_patterns")),
        "{wrapper:?}: {process:#}"
    );
}

const WRAPPERS: [&[&str]; 2] = [
    &["env", "LEAKTRACE_EXEC_TEST=1"],
    &["sh", "-c", "exec \"$0\" \"$1\""],
];

#[test]
fn a_launched_command_that_execs_is_the_program_it_became_exactly() {
    if !privileged() {
        return;
    }
    for wrapper in WRAPPERS {
        let snapshot = launched_through(&[], wrapper);
        let process = only_process(&snapshot);
        assert_is_the_fixture(process, wrapper);
        // Exactly the fixture's leak, nothing of the wrapper's allocations.
        let (bytes, blocks, allocated, freed) = totals_for(process, "leak_exactly");
        assert_eq!(
            (bytes, blocks, allocated, freed),
            (50_000, 500, 500, 0),
            "{wrapper:?}"
        );
        assert_eq!(totals_for(process, "churn_temporaries"), (0, 0, 1000, 1000));
        // Whole stacks: the new program's unwind tables were loaded before it ran.
        let leak = process["sites"]
            .as_array()
            .expect("sites")
            .iter()
            .find(|s| top_function(s) == Some("leak_exactly"))
            .expect("the leak's site");
        assert!(
            function_names(leak).contains(&"main"),
            "{wrapper:?}: {:?}",
            function_names(leak)
        );
        // The wrapper's break is never subtracted from the new program's.
        let brk = process["heap"]["brk_bytes"].as_u64().expect("brk_bytes");
        assert!(brk < 64 << 20, "{wrapper:?}: brk {brk}");
    }
}

#[test]
fn a_launched_command_that_execs_is_the_program_it_became_in_growth_mode() {
    if !privileged() {
        return;
    }
    for wrapper in WRAPPERS {
        let snapshot = launched_through(&["--mode", "growth"], wrapper);
        let process = only_process(&snapshot);
        assert_is_the_fixture(process, wrapper);
        let brk = process["heap"]["brk_bytes"].as_u64().expect("brk_bytes");
        assert!(brk > 0 && brk < 64 << 20, "{wrapper:?}: brk {brk}");
        assert!(
            process["outstanding_bytes"]
                .as_u64()
                .is_some_and(|b| b < 64 << 20),
            "{wrapper:?}: {process:#}"
        );
    }
}

/// `env LD_PRELOAD=libjemalloc.so.2 prog`: env runs on glibc's malloc, the program it becomes
/// on jemalloc; the probes move to jemalloc at the exec, and the leak is still exact.
#[test]
fn an_exec_into_a_preloaded_allocator_moves_the_probes_to_it() {
    if !privileged() {
        return;
    }
    let jemalloc = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2";
    assert!(
        std::path::Path::new(jemalloc).exists(),
        "{jemalloc} is missing: run `cargo xtask setup` (it installs Debian's libjemalloc2)"
    );
    let preload = format!("LD_PRELOAD={jemalloc}");
    let snapshot = launched_through(&[], &["env", &preload]);
    let process = only_process(&snapshot);
    assert_eq!(process["allocator"]["name"], "jemalloc", "{process:#}");
    assert_eq!(process["allocator"]["module"], jemalloc, "{process:#}");
    let (bytes, blocks, allocated, freed) = totals_for(process, "leak_exactly");
    assert_eq!((bytes, blocks, allocated, freed), (50_000, 500, 500, 0));
    assert_eq!(totals_for(process, "churn_temporaries"), (0, 0, 1000, 1000));
    assert_eq!(process["counters"]["unknown_frees"], 0, "{process:#}");
}

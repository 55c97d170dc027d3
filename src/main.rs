//! The `skillgraft` binary: see `skillgraft --help`.

use clap::Parser;

fn main() {
    skillgraft::model::ops::heap::keep_freed_memory();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = skillgraft::cli::Cli::parse();
    if let Err(e) = skillgraft::cli::run(cli) {
        eprintln!("error: {e:#}");
        let code = e
            .downcast_ref::<skillgraft::cli::Exit>()
            .map_or(1, |x| x.code);
        std::process::exit(code);
    }
}

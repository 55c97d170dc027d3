//! How commands speak besides their results: one JSON document on stdout ([`print_json`]), progress on
//! stderr ([`Reporter`]), and an error that ends the process with its own exit status ([`Exit`]).

use crate::train::Progress;
use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;

/// Progress reporting to stderr: a bar on a terminal, periodic lines otherwise.
pub(super) struct Reporter {
    bar: Option<ProgressBar>,
    quiet_steps: bool,
}

impl Reporter {
    /// A reporter for this process's stderr.
    pub(super) fn new() -> Self {
        Self {
            bar: None,
            quiet_steps: !std::io::stderr().is_terminal(),
        }
    }

    /// Reports one event.
    pub(super) fn handle(&mut self, p: Progress) {
        match p {
            Progress::Step { stage, step, total, loss } => {
                if self.quiet_steps {
                    return;
                }
                let bar = self.bar.get_or_insert_with(|| {
                    let b = ProgressBar::new(total as u64);
                    b.set_style(
                        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ({eta})")
                            .unwrap_or_else(|_| ProgressStyle::default_bar()),
                    );
                    b
                });
                bar.set_length(total as u64);
                bar.set_prefix(stage);
                bar.set_position(step as u64);
                bar.set_message(format!("loss {loss:.4}"));
                if step == total {
                    bar.finish_and_clear();
                    self.bar = None;
                }
            }
            Progress::Eval(e) => {
                let line = format!(
                    "[{}] step {:>5}  train loss {:.4}  dev acc {:.4}  dev loss {:.4}",
                    e.stage, e.step, e.train_loss, e.dev_accuracy, e.dev_loss
                );
                match &self.bar {
                    Some(b) => b.println(line),
                    None => eprintln!("{line}"),
                }
            }
            Progress::Epoch(e) => eprintln!(
                "epoch {:>3}  mask {:>8}{}  flips {:>6}  train acc {:.4}  dev acc {:.4}  loss {}  {:.2}s",
                e.epoch,
                e.mask_size,
                e.unprojected_size
                    .map_or(String::new(), |g| format!(" (projected from {g})")),
                e.flips,
                e.train_accuracy,
                e.dev_accuracy,
                e.loss.map_or("-".to_string(), |l| format!("{l:.4}")),
                e.seconds
            ),
            Progress::Message { text } => eprintln!("{text}"),
        }
    }
}

/// An error that ends the process with its own exit status (the message goes to stderr as usual).
#[derive(Debug)]
pub struct Exit {
    /// Exit status.
    pub code: i32,
    /// What to print.
    pub message: String,
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Exit {}

/// Prints `v` as one pretty JSON document on stdout.
pub(super) fn print_json(v: &serde_json::Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

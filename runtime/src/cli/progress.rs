//! Spinners for steps that take a while (building a plugin, uploading it, waiting for a job).
//! They draw on stderr only when it is a terminal, so scripts and `--json` output stay clean.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// A spinner showing `message` and the time spent; hidden when stderr is not a terminal or
/// `quiet` is set.
pub fn spinner(message: impl Into<String>, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.set_message(message.into());
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

//! Progress of long command-line work (verifying or exporting a large
//! transaction log) with an estimate of the time left, on a terminal only:
//! scripts, cron jobs and pipes get nothing extra on standard error.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Progress(Option<ProgressBar>);

impl Progress {
    /// A bar for `total` records of work called `what`; hidden unless
    /// standard error is a terminal.
    pub fn new(total: u64, what: &str) -> Progress {
        if !std::io::stderr().is_terminal() {
            return Progress(None);
        }
        let style = ProgressStyle::with_template(
            "{msg} [{wide_bar}] {human_pos}/{human_len} records, {eta} left",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr())
            .with_style(style)
            .with_message(what.to_string());
        Progress(Some(bar))
    }

    /// One record done.
    pub fn tick(&self) {
        if let Some(bar) = &self.0 {
            bar.inc(1);
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        // The results printed next stand alone on the terminal.
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

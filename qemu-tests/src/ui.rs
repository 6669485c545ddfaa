//! Progress steps on stderr: one spinner per step, its duration when done.

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

pub struct Step {
    bar: ProgressBar,
    start: Instant,
    name: String,
}

/// Start a step; finish it with [`Step::done`].
pub fn step(name: &str) -> Step {
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
            .expect("template")
            .tick_chars("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏✓"),
    );
    bar.set_message(name.to_string());
    bar.enable_steady_tick(Duration::from_millis(200));
    Step {
        bar,
        start: Instant::now(),
        name: name.to_string(),
    }
}

impl Step {
    /// Update the detail shown after the step name.
    pub fn detail(&self, d: &str) {
        self.bar.set_message(format!("{}: {d}", self.name));
    }

    /// Finish; returns the step's duration in seconds.
    pub fn done(self) -> f64 {
        let s = self.start.elapsed().as_secs_f64();
        self.bar.finish_and_clear();
        eprintln!("✓ {} ({s:.1}s)", self.name);
        s
    }

    pub fn fail(self, why: &str) {
        self.bar.finish_and_clear();
        eprintln!("✗ {}: {why}", self.name);
    }
}

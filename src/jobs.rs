//! Long-running work (training, sampling, indexing, attribution) runs as a job: it reports
//! progress to a [`ProgressSink`] and stops early when its [`CancelToken`] is set. The CLI plugs
//! in an indicatif bar and Ctrl-C; the GUI polls the same progress each frame from its own
//! thread and exposes a cancel button.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// A shared flag asking a job to stop at its next safe point.
#[derive(Clone, Debug, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// A token that is not cancelled.
    pub fn new() -> Self {
        Self::default()
    }
    /// Asks the job to stop.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    /// True once [`Self::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// A snapshot of a job's progress.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Progress {
    /// What the job is doing now ("training", "sampling", …).
    pub stage: String,
    /// Units of work done.
    pub done: u64,
    /// Units of work in all (0 when unknown).
    pub total: u64,
    /// A short status line (current loss, …).
    pub message: String,
}

/// Receives progress updates from a job.
pub trait ProgressSink: Send + Sync {
    /// Called whenever the job advances.
    fn update(&self, progress: &Progress);
}

/// A sink that ignores progress.
pub struct Silent;
impl ProgressSink for Silent {
    fn update(&self, _progress: &Progress) {}
}

/// What a job needs from its caller: where to report progress and when to stop.
#[derive(Clone)]
pub struct JobContext {
    /// Cancellation flag polled by the job.
    pub cancel: CancelToken,
    /// Progress receiver.
    pub progress: Arc<dyn ProgressSink>,
}

impl JobContext {
    /// A context that reports nowhere and is never cancelled.
    pub fn silent() -> Self {
        Self {
            cancel: CancelToken::new(),
            progress: Arc::new(Silent),
        }
    }

    /// Reports progress.
    pub fn report(&self, stage: &str, done: u64, total: u64, message: impl Into<String>) {
        self.progress.update(&Progress {
            stage: stage.to_owned(),
            done,
            total,
            message: message.into(),
        });
    }
}

/// A terminal progress bar (indicatif) with ETA, for CLI jobs.
pub struct TerminalProgress {
    bar: indicatif::ProgressBar,
}

impl TerminalProgress {
    /// A bar that draws to stderr.
    pub fn new() -> Self {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix:>10} [{elapsed_precise}] {wide_bar} {pos}/{len} ETA {eta} {msg}",
            )
            .expect("valid progress template"),
        );
        bar.enable_steady_tick(Duration::from_millis(250));
        Self { bar }
    }

    /// Clears the bar from the terminal.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Default for TerminalProgress {
    fn default() -> Self {
        Self::new()
    }
}

impl ProgressSink for TerminalProgress {
    fn update(&self, p: &Progress) {
        if self.bar.length() != Some(p.total) {
            self.bar.set_length(p.total);
        }
        self.bar.set_prefix(p.stage.clone());
        self.bar.set_position(p.done);
        self.bar.set_message(p.message.clone());
    }
}

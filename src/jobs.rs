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

/// A job stopped at a safe point because it was asked to: the value every layer's error turns
/// into a `Cancelled` variant of its own, so a caller tells a cancelled job from a failed one by
/// matching, never by reading a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cancelled")]
pub struct Cancelled;

/// An error that can stand for a cancelled job (each layer's error type implements it; those
/// of layers that cannot be cancelled keep the default, `false`).
pub trait Cancellable: std::error::Error + Send + Sync + 'static {
    /// True when the job was cancelled rather than failed.
    fn is_cancelled(&self) -> bool {
        false
    }
}

impl Cancellable for Cancelled {
    fn is_cancelled(&self) -> bool {
        true
    }
}

/// What every layer's error with a `Cancelled` variant needs, written once: `From<Cancelled>`,
/// [`Cancellable`], and a `From` for each wrapped lower layer's error that keeps a cancellation
/// a cancellation (`Index(IndexError)`: `IndexError::Cancelled` becomes `Self::Cancelled`,
/// any other `IndexError` `Self::Index`).
macro_rules! cancellable_error {
    ($error:ty { $($variant:ident($lower:ty)),* $(,)? }) => {
        impl From<$crate::jobs::Cancelled> for $error {
            fn from(_: $crate::jobs::Cancelled) -> Self {
                Self::Cancelled
            }
        }

        impl $crate::jobs::Cancellable for $error {
            fn is_cancelled(&self) -> bool {
                matches!(self, Self::Cancelled)
            }
        }

        $(
            impl From<$lower> for $error {
                fn from(e: $lower) -> Self {
                    if $crate::jobs::Cancellable::is_cancelled(&e) {
                        Self::Cancelled
                    } else {
                        Self::$variant(e)
                    }
                }
            }
        )*
    };
}
pub(crate) use cancellable_error;

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

    /// `Err(Cancelled)` once the job was asked to stop: call it at each safe point, with `?`.
    pub fn stop_if_cancelled(&self) -> Result<(), Cancelled> {
        if self.cancel.is_cancelled() {
            Err(Cancelled)
        } else {
            Ok(())
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

/// Progress kept for whoever polls it (the GUI reads it every frame), with an optional wake-up
/// call so a sleeping UI repaints when the job advances.
pub struct SharedProgress {
    latest: std::sync::Mutex<Progress>,
    wake: Box<dyn Fn() + Send + Sync>,
}

impl ProgressSink for SharedProgress {
    fn update(&self, progress: &Progress) {
        if let Ok(mut p) = self.latest.lock() {
            *p = progress.clone();
        }
        (self.wake)();
    }
}

/// Why a background job produced no value.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// It was cancelled.
    #[error("cancelled")]
    Cancelled,
    /// It failed: its own error.
    #[error(transparent)]
    Failed(Box<dyn std::error::Error + Send + Sync>),
    /// It panicked (a defect, caught so the viewer stays up).
    #[error("the job failed unexpectedly: {0}")]
    Panicked(String),
    /// Its thread ended without sending a result.
    #[error("the job's thread ended without a result")]
    Lost,
}

impl JobError {
    /// Sorts a job's own error: a cancellation becomes [`JobError::Cancelled`].
    pub fn from_job<E: Cancellable>(error: E) -> Self {
        if error.is_cancelled() {
            Self::Cancelled
        } else {
            Self::Failed(Box::new(error))
        }
    }
}

/// What a finished background job produced: its value, or why there is none (cancelled,
/// failed, or a panic inside the job, caught).
pub type JobOutcome<T> = Result<T, JobError>;

/// A job running on its own thread: poll it for progress and its outcome, cancel it at will.
pub struct BackgroundJob<T> {
    /// What the job is, for the UI ("ranking with ReTrac", …).
    pub title: String,
    /// Cancels the job at its next safe point.
    pub cancel: CancelToken,
    progress: Arc<SharedProgress>,
    outcome: std::sync::mpsc::Receiver<JobOutcome<T>>,
    started: std::time::Instant,
}

impl<T: Send + 'static> BackgroundJob<T> {
    /// Starts `work` on a new thread; `wake` is called whenever it reports progress or ends.
    pub fn spawn<E: Cancellable>(
        title: impl Into<String>,
        wake: impl Fn() + Send + Sync + Clone + 'static,
        work: impl FnOnce(&JobContext) -> Result<T, E> + Send + 'static,
    ) -> Self {
        let progress = Arc::new(SharedProgress {
            latest: std::sync::Mutex::new(Progress::default()),
            wake: Box::new(wake.clone()),
        });
        let cancel = CancelToken::new();
        let ctx = JobContext {
            cancel: cancel.clone(),
            progress: progress.clone(),
        };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            yield_to_the_interface();
            let result = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(&ctx))) {
                Ok(outcome) => outcome.map_err(JobError::from_job),
                Err(panic) => {
                    let what = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "unknown panic".into());
                    Err(JobError::Panicked(what))
                }
            };
            let _ = tx.send(result);
            wake();
        });
        Self {
            title: title.into(),
            cancel,
            progress,
            outcome: rx,
            started: std::time::Instant::now(),
        }
    }

    /// The latest progress report.
    pub fn progress(&self) -> Progress {
        self.progress.latest.lock().map(|p| p.clone()).unwrap_or_default()
    }

    /// Seconds since the job started.
    pub fn elapsed(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// The outcome once the job has ended (returned once), `None` while it runs.
    pub fn poll(&self) -> Option<JobOutcome<T>> {
        match self.outcome.try_recv() {
            Ok(outcome) => Some(outcome),
            Err(std::sync::mpsc::TryRecvError::Empty) => None,
            Err(std::sync::mpsc::TryRecvError::Disconnected) => Some(Err(JobError::Lost)),
        }
    }

    /// Waits for the outcome (CLI and tests).
    pub fn wait(self) -> JobOutcome<T> {
        self.outcome.recv().unwrap_or(Err(JobError::Lost))
    }
}

/// Lowers the calling thread's scheduling priority (nice 10, on Linux, where the nice value is a
/// thread's own), so that a viewer's frames are not starved by its background jobs on a machine
/// with few cores: with the job at weight 110 against the interface's 1024, the interface gets
/// about nine tenths of a contended core. Threads the job starts inherit the value. Elsewhere it
/// does nothing.
pub fn yield_to_the_interface() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority only changes the calling thread's nice value (`who` = 0 names it).
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 10);
    }
}

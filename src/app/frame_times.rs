//! How long the viewer's frames take: the UI work of each frame (measured around the panels)
//! and each whole frame as eframe reports it (UI work, tessellation and painting; on a machine
//! without a GPU the painting runs on the CPU, through lavapipe). The status bar shows the
//! slowest of the last [`WINDOW`] of each; `RETRACE_FRAME_LOG=FILE` also appends every frame's
//! times to FILE, to measure responsiveness over a whole job.

use std::io::Write;
use std::time::Instant;

/// Frames the status bar's maxima look back over.
pub const WINDOW: usize = 120;

/// The environment variable naming a file every frame's times are appended to.
pub const FRAME_LOG_ENV: &str = "RETRACE_FRAME_LOG";

/// Recent frame times, and the optional log.
pub struct FrameTimes {
    ui: Vec<f32>,
    whole: Vec<f32>,
    started: Instant,
    log: Option<std::io::BufWriter<std::fs::File>>,
}

impl Default for FrameTimes {
    fn default() -> Self {
        let log = std::env::var_os(FRAME_LOG_ENV).and_then(|path| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| eprintln!("{FRAME_LOG_ENV}: cannot open {}: {e}", path.to_string_lossy()))
                .ok()
                .map(std::io::BufWriter::new)
        });
        Self {
            ui: Vec::new(),
            whole: Vec::new(),
            started: Instant::now(),
            log,
        }
    }
}

impl FrameTimes {
    /// Records one frame: its UI work, the previous whole frame (eframe's `cpu_usage`, absent
    /// on the first frame and in test harnesses), and what the viewer was doing.
    pub fn record(&mut self, ui_seconds: f32, previous_whole: Option<f32>, activity: &str) {
        push(&mut self.ui, ui_seconds);
        if let Some(whole) = previous_whole {
            push(&mut self.whole, whole);
        }
        if let Some(log) = &mut self.log {
            let whole = previous_whole.map_or("-".to_owned(), |w| format!("{:.2}", w * 1e3));
            let line = format!(
                "{:.3}\t{:.2}\t{whole}\t{}\n",
                self.started.elapsed().as_secs_f64(),
                ui_seconds * 1e3,
                activity
            );
            if log.write_all(line.as_bytes()).and_then(|()| log.flush()).is_err() {
                self.log = None;
            }
        }
    }

    /// Whether frames are logged (`RETRACE_FRAME_LOG`): only then is the activity worth describing.
    pub fn logging(&self) -> bool {
        self.log.is_some()
    }

    /// The slowest UI work of the last [`WINDOW`] frames, in seconds.
    pub fn worst_ui(&self) -> f32 {
        worst(&self.ui)
    }

    /// The slowest whole frame of the last [`WINDOW`], in seconds (0 before the second frame).
    pub fn worst_whole(&self) -> f32 {
        worst(&self.whole)
    }
}

fn push(times: &mut Vec<f32>, t: f32) {
    times.push(t);
    if times.len() > WINDOW {
        times.remove(0);
    }
}

fn worst(times: &[f32]) -> f32 {
    times.iter().copied().fold(0.0, f32::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_maxima_forget_frames_older_than_the_window() {
        let mut times = FrameTimes::default();
        times.record(0.5, None, "");
        assert_eq!((times.worst_ui(), times.worst_whole()), (0.5, 0.0));
        for _ in 0..WINDOW {
            times.record(0.01, Some(0.02), "");
        }
        assert_eq!((times.worst_ui(), times.worst_whole()), (0.01, 0.02));
    }
}

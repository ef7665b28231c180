//! Native file dialogs (rfd), and what happens where none can open: on a desktop without
//! xdg-desktop-portal (or under a bare X server) rfd returns at once as if cancelled. A dialog
//! that "returns" faster than anyone could dismiss it was never shown, so the viewer says so
//! and, for exports, saves beside the working directory instead of doing nothing.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A dialog that returns sooner than this was never on screen.
const NEVER_SHOWN_UNDER: Duration = Duration::from_millis(150);

/// What a file dialog gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Chosen {
    /// The user chose this path.
    Path(PathBuf),
    /// The user closed the dialog.
    Cancelled,
    /// No dialog could be shown on this desktop.
    Unavailable,
}

fn outcome(started: Instant, path: Option<PathBuf>) -> Chosen {
    match path {
        Some(p) => Chosen::Path(p),
        None if started.elapsed() < NEVER_SHOWN_UNDER => Chosen::Unavailable,
        None => Chosen::Cancelled,
    }
}

/// File-type filters of a dialog: (name, extensions) pairs.
pub type Filters<'a> = &'a [(&'a str, &'a [&'a str])];

fn dialog(filters: Filters<'_>) -> rfd::FileDialog {
    filters
        .iter()
        .fold(rfd::FileDialog::new(), |d, (name, exts)| d.add_filter(*name, exts))
}

/// Asks where to save, offering `file_name`.
pub fn save(filters: Filters<'_>, file_name: &str) -> Chosen {
    let started = Instant::now();
    outcome(started, dialog(filters).set_file_name(file_name).save_file())
}

/// Asks which file to open.
pub fn open(filters: Filters<'_>) -> Chosen {
    let started = Instant::now();
    outcome(started, dialog(filters).pick_file())
}

/// Where an export goes when no dialog can open: `file_name` in `dir`, with a number added
/// before the extension if that file exists (nothing is overwritten).
pub fn fallback_path(dir: &Path, file_name: &str) -> PathBuf {
    let first = dir.join(file_name);
    if !first.exists() {
        return first;
    }
    let (stem, ext) = file_name.rsplit_once('.').unwrap_or((file_name, ""));
    (1..)
        .map(|n| dir.join(format!("{stem}-{n}.{ext}")))
        .find(|p| !p.exists())
        .expect("some numbered name is free")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_never_overwrite_without_a_dialog() {
        let dir = tempfile::tempdir().unwrap();
        let first = fallback_path(dir.path(), "retrace-report.pdf");
        assert_eq!(first, dir.path().join("retrace-report.pdf"));
        std::fs::write(&first, b"x").unwrap();
        assert_eq!(
            fallback_path(dir.path(), "retrace-report.pdf"),
            dir.path().join("retrace-report-1.pdf")
        );
    }

    #[test]
    fn an_instant_empty_answer_means_no_dialog() {
        assert_eq!(outcome(Instant::now(), None), Chosen::Unavailable);
        let long_ago = Instant::now() - Duration::from_secs(2);
        assert_eq!(outcome(long_ago, None), Chosen::Cancelled);
        assert_eq!(outcome(long_ago, Some("a".into())), Chosen::Path("a".into()));
    }
}

//! The status bar: compute device, model, dataset, index state, frame time, the job in flight
//! (with its progress and a cancel button). Notices have their own banner ([`super::notice`]).

use egui::Ui;

use super::RetraceApp;
use crate::session::IndexState;

/// A job's progress bar and its Cancel button.
fn progress(ui: &mut Ui, title: &str, p: &crate::jobs::Progress, elapsed: f64, cancel: impl FnOnce()) {
    let fraction = if p.total > 0 {
        p.done as f32 / p.total as f32
    } else {
        0.0
    };
    // The stage first: a long title (many methods) must not hide what is running now.
    let hint = if p.message.is_empty() {
        title.to_owned()
    } else {
        format!("{title}\n{}", p.message)
    };
    ui.add(
        egui::ProgressBar::new(fraction)
            .desired_width(360.0)
            .text(format!("{} {}/{} ({elapsed:.0} s) · {title}", p.stage, p.done, p.total)),
    )
    .on_hover_text(hint);
    if ui.button("Cancel").clicked() {
        cancel();
    }
}

/// Draws the status bar.
pub fn show(app: &mut RetraceApp, ui: &mut Ui) {
    let index_state = app.index_state();
    ui.horizontal(|ui| {
        match &app.session {
            Ok(s) => {
                let shared = if app.renderer_shared {
                    " (shared with the renderer)"
                } else if s.device.backend != crate::device::BackendKind::Flex {
                    " (the renderer has its own device)"
                } else {
                    ""
                };
                ui.label(format!("device: {}{shared}", s.device.name))
                    .on_hover_text(&s.device.reason);
                ui.separator();
                ui.label(format!("model: {}", crate::files::file_name(&s.model.root)))
                    .on_hover_text(s.model.root.display().to_string());
                ui.separator();
                ui.label(format!("data: {} ({} images)", s.data.name, s.data.len()));
                ui.separator();
                let index = match index_state {
                    Some(IndexState::Ready) => "index ready".to_owned(),
                    Some(IndexState::Missing) | None => "index not built (built on first ranking)".to_owned(),
                    Some(IndexState::Partial(done, total)) => format!("index {done}/{total} chunks"),
                };
                ui.label(index).on_hover_text(s.index.dir.display().to_string());
            }
            Err(e) => {
                ui.colored_label(ui.visuals().error_fg_color, "no model open")
                    .on_hover_text(format!("{e:#}"));
            }
        }
        ui.separator();
        if app.show_frame_time {
            let times = &app.frame_times;
            ui.label(format!(
                "frame max {:.0} ms UI · {:.0} ms whole",
                times.worst_ui() * 1e3,
                times.worst_whole() * 1e3
            ))
            .on_hover_text(format!(
                "slowest of the last {} frames: the UI work, and the whole frame with its painting",
                super::frame_times::WINDOW
            ));
            ui.separator();
        }
        if let Some(job) = &app.indexing {
            progress(ui, &job.title, &job.progress(), job.elapsed(), || job.cancel.cancel());
        }
        if let Some((first, _)) = app.loads.first() {
            let title = match app.loads.len() {
                1 => first.title.clone(),
                n => format!("reading {n} image files"),
            };
            let decoding = crate::jobs::Progress {
                stage: "decoding".into(),
                ..Default::default()
            };
            progress(ui, &title, &decoding, first.elapsed(), || {
                app.loads.iter().for_each(|(job, _)| job.cancel.cancel())
            });
        }
        if let Some(work) = &app.work {
            let (title, p, elapsed) = work.status();
            progress(ui, title, &p, elapsed, || work.cancel());
        }
    });
}

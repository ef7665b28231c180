//! The window's layout: one frame drawn panel by panel (status bar, notice, controls, detail,
//! the central views), and the frame-time log. The panels each import the state; the state
//! imports no panel.

use egui::Ui;

use super::state::{RetraceApp, View};
use super::{compare, detail, evaluation, methods_panel, notice, query_panel, ranking, status_bar, timesteps};

impl RetraceApp {
    /// Draws one frame of the whole window, and returns how long its UI work took (seconds).
    pub fn show(&mut self, ui: &mut Ui) -> f32 {
        let started = std::time::Instant::now();
        self.poll_work();
        query_panel::handle_dropped_files(self, ui.ctx());
        egui::Panel::bottom("status").show(ui, |ui| status_bar::show(self, ui));
        notice::show(self, ui);
        egui::Panel::left("controls")
            .resizable(true)
            .default_size(300.0)
            .show(ui, |ui| {
                egui::ScrollArea::vertical().show(ui, |ui| {
                    query_panel::show(self, ui);
                    ui.separator();
                    methods_panel::show(self, ui);
                });
            });
        if self.selected_train.is_some() {
            egui::Panel::right("detail")
                .resizable(true)
                .default_size(340.0)
                .show(ui, |ui| detail::show(self, ui));
        }
        egui::CentralPanel::default().show(ui, |ui| {
            ui.horizontal(|ui| {
                ui.selectable_value(&mut self.view, View::Ranking, "Ranking");
                ui.selectable_value(&mut self.view, View::Timesteps, "Per-timestep");
                ui.selectable_value(&mut self.view, View::Compare, "Compare");
                ui.selectable_value(&mut self.view, View::Evaluation, "Evaluation");
            });
            ui.separator();
            match self.view {
                View::Ranking => ranking::show(self, ui),
                View::Timesteps => timesteps::show(self, ui),
                View::Compare => compare::show(self, ui),
                View::Evaluation => evaluation::show(self, ui),
            }
        });
        if self.busy() {
            ui.ctx().request_repaint_after(std::time::Duration::from_millis(100));
        }
        started.elapsed().as_secs_f32()
    }

    /// What the viewer is busy with, for the frame log.
    fn activity(&self) -> String {
        let described = |title: &str, p: crate::jobs::Progress| format!("{title}: {} {}/{}", p.stage, p.done, p.total);
        let mut busy = Vec::new();
        if let Some(job) = &self.indexing {
            busy.push(described(&job.title, job.progress()));
        }
        if let Some(work) = &self.work {
            let (title, progress, _) = work.status();
            busy.push(described(title, progress));
        }
        busy.extend(self.loads.iter().map(|(job, _)| job.title.clone()));
        busy.extend(self.exports.iter().map(|job| job.title.clone()));
        busy.join("; ")
    }
}

impl eframe::App for RetraceApp {
    fn ui(&mut self, ui: &mut Ui, frame: &mut eframe::Frame) {
        let ui_seconds = self.show(ui);
        let activity = if self.frame_times.logging() {
            self.activity()
        } else {
            String::new()
        };
        self.frame_times.record(ui_seconds, frame.info().cpu_usage, &activity);
    }
}

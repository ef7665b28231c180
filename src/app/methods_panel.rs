//! The methods panel: which methods to run and their parameters, with defaults; a Run button
//! that starts a background job (results are cached per query, method and parameters).

use egui::Ui;

use super::{RetraceApp, grid_row};
use crate::attribution::CheckpointChoice;
use crate::curvature::{Damping, Fisher, Sharing};
use crate::diffusion::Measurement;
use crate::index::Storage;

/// Draws the methods panel.
pub fn show(app: &mut RetraceApp, ui: &mut Ui) {
    ui.heading("Methods");
    for (m, on) in &mut app.selected_methods {
        ui.checkbox(on, m.name());
    }
    ui.collapsing("K-FAC / EK-FAC settings", |ui| {
        egui::Grid::new("influence").num_columns(2).show(ui, |ui| {
            let label = ui.label("measurement");
            egui::ComboBox::from_id_salt("measurement")
                .selected_text(format!("{:?}", app.influence.measurement))
                .show_ui(ui, |ui| {
                    for m in [Measurement::Loss, Measurement::ElboLoss, Measurement::SquareNorm] {
                        ui.selectable_value(&mut app.influence.measurement, m, format!("{m:?}"));
                    }
                })
                .response
                .labelled_by(label.id);
            ui.end_row();
            let label = ui
                .label("damping")
                .on_hover_text("lambda, as a multiple of each layer's mean eigenvalue");
            let mut factor = match app.influence.damping {
                Damping::Relative(f) | Damping::Absolute(f) => f,
            };
            if ui
                .add(egui::DragValue::new(&mut factor).range(1e-6..=10.0).speed(0.01))
                .labelled_by(label.id)
                .changed()
            {
                app.influence.damping = Damping::Relative(factor);
            }
            ui.end_row();
            ui.label("curvature");
            ui.horizontal(|ui| {
                ui.selectable_value(&mut app.influence.fisher, Fisher::Ggn, "GGN");
                ui.selectable_value(&mut app.influence.fisher, Fisher::Empirical, "empirical");
            });
            ui.end_row();
            ui.label("K-FAC variant");
            ui.horizontal(|ui| {
                ui.selectable_value(&mut app.influence.sharing, Sharing::Expand, "expand");
                ui.selectable_value(&mut app.influence.sharing, Sharing::Reduce, "reduce");
            });
            ui.end_row();
            grid_row(
                ui,
                "fit images",
                egui::DragValue::new(&mut app.influence.fit_images).range(1..=100_000),
            );
        });
    });
    index_settings(app, ui);
    let ready = app.current.is_some() && app.work.is_none() && app.indexing.is_none();
    if ui.add_enabled(ready, egui::Button::new("Run")).clicked() {
        let ctx = ui.ctx().clone();
        app.run_methods(&ctx);
    }
    let computed = app.computed_methods();
    if !computed.is_empty() {
        ui.horizontal_wrapped(|ui| {
            ui.label("export:");
            if let Some(path) = save_button(ui, "HTML report...", &[("HTML", &["html"])], "retrace-report.html") {
                app.export_report(&path);
            }
            if let Some(path) = save_button(ui, "PDF report...", &[("PDF", &["pdf"])], "retrace-report.pdf") {
                app.export_report(&path);
            }
            if let Some(path) = save_button(
                ui,
                "scores (CSV/JSON)...",
                &[("JSON", &["json"]), ("CSV", &["csv"])],
                "retrace-scores.json",
            ) {
                app.export_scores(&path);
            }
        });
    }
    if !computed.is_empty() {
        ui.horizontal_wrapped(|ui| {
            ui.label("show:");
            for m in computed {
                ui.selectable_value(&mut app.shown_method, Some(m), m.name());
            }
        });
    }
}

/// A button that, when clicked, asks where to save (a native dialog with `filters`) and
/// returns the chosen path. Where no dialog can open, the file goes
/// to the working directory, and the notice will say where.
fn save_button(
    ui: &mut egui::Ui,
    label: &str,
    filters: super::dialogs::Filters<'_>,
    file_name: &str,
) -> Option<std::path::PathBuf> {
    if !ui.button(label).clicked() {
        return None;
    }
    match super::dialogs::save(filters, file_name) {
        super::dialogs::Chosen::Path(path) => Some(path),
        super::dialogs::Chosen::Cancelled => None,
        super::dialogs::Chosen::Unavailable => {
            let dir = std::env::current_dir().unwrap_or_else(|_| std::env::temp_dir());
            Some(super::dialogs::fallback_path(&dir, file_name))
        }
    }
}

/// The index settings (timestep buckets, draws, projection k, checkpoints, storage): edited
/// freely, applied with a button, which switches to (and if needed builds) that index.
fn index_settings(app: &mut RetraceApp, ui: &mut Ui) {
    let Ok(session) = app.session.clone() else {
        return;
    };
    let current = &session.index;
    let busy = app.work.is_some();
    let mut apply = false;
    ui.collapsing("Index settings", |ui| {
        let Some(draft) = app.index_draft.as_mut() else {
            return;
        };
        egui::Grid::new("index-settings").num_columns(2).show(ui, |ui| {
            let most_buckets = draft.plan.steps.min(100);
            grid_row(
                ui,
                "timestep buckets",
                egui::DragValue::new(&mut draft.plan.buckets).range(1..=most_buckets),
            );
            grid_row(
                ui,
                "draws per bucket",
                egui::DragValue::new(&mut draft.plan.draws).range(1..=16),
            );
            if grid_row(
                ui,
                "projection k",
                egui::DragValue::new(&mut draft.projection.k_in).range(1..=64),
            )
            .changed()
            {
                draft.projection.k_out = draft.projection.k_in;
            }
            ui.label("checkpoints");
            ui.horizontal(|ui| {
                ui.selectable_value(&mut draft.checkpoints, CheckpointChoice::Last, "last");
                ui.selectable_value(&mut draft.checkpoints, CheckpointChoice::All, "all");
            });
            ui.end_row();
            ui.label("storage");
            ui.horizontal(|ui| {
                ui.selectable_value(&mut draft.storage, Storage::F32, "f32");
                ui.selectable_value(&mut draft.storage, Storage::F16, "f16");
            });
            ui.end_row();
        });
        let changed = draft.slug() != current.slug();
        apply = ui
            .add_enabled(changed && !busy, egui::Button::new("Apply index settings"))
            .on_hover_text("switches to the index of these settings, building it in the background if needed")
            .clicked();
    });
    if apply {
        app.apply_index_settings();
    }
    ui.small(format!(
        "index: {} timestep buckets x {} draws, k = {}, {} checkpoint(s)",
        current.plan.buckets,
        current.plan.draws,
        current.projection.k_in,
        match current.checkpoints {
            CheckpointChoice::All => "all",
            CheckpointChoice::Last => "the last",
        },
    ))
    .on_hover_text(current.dir.display().to_string());
}

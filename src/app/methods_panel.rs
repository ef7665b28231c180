//! The methods panel: which methods to run and their parameters, with defaults; a Run button
//! that starts a background job (results are cached per query, method and parameters).

use egui::Ui;

use super::{RetraceApp, grid_row};
use crate::attribution::{Parameter, Range};
use crate::index::CheckpointChoice;
use crate::index::Storage;

/// Draws the methods panel.
pub fn show(app: &mut RetraceApp, ui: &mut Ui) {
    ui.heading("Methods");
    egui::Grid::new("methods").num_columns(3).show(ui, |ui| {
        for (k, (name, on)) in app.selected_methods.iter_mut().enumerate() {
            let hint = crate::session::method_info(name)
                .map(|m| format!("{}\nneeds: {}", m.summary, m.needs.describe()))
                .unwrap_or_default();
            ui.checkbox(on, name.as_str()).on_hover_text(hint);
            if k % 3 == 2 {
                ui.end_row();
            }
        }
    });
    ensemble_builder(app, ui);
    let why_not = if app.current.is_none() {
        "generate, load or pick a query first"
    } else if app.work.is_some() {
        "wait for the running job, or cancel it"
    } else {
        "the ticked methods read the index: wait for its build (pixel distance and MUCS need not)"
    };
    let run = ui.add_enabled(app.can_run(), egui::Button::new("Run"));
    if run.on_disabled_hover_text(why_not).clicked() {
        let ctx = ui.ctx().clone();
        app.run_methods(&ctx);
    }
    parameters(app, ui);
    index_settings(app, ui);
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
                let label = m.clone();
                ui.selectable_value(&mut app.shown_method, Some(m), label);
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

/// The parameters of the ticked methods, one collapsible group per method; a parameter two
/// methods share (K-FAC and EK-FAC) is shown once, under the first.
fn parameters(app: &mut RetraceApp, ui: &mut Ui) {
    let mut shown: Vec<&'static str> = Vec::new();
    let ticked: Vec<String> = app
        .selected_methods
        .iter()
        .filter(|(_, on)| *on)
        .map(|(m, _)| m.clone())
        .collect();
    for name in ticked {
        let Ok(method) = crate::session::method_info(&name) else {
            continue;
        };
        let fresh: Vec<Parameter> = method
            .parameters
            .into_iter()
            .filter(|p| !shown.contains(&p.key))
            .collect();
        if fresh.is_empty() {
            continue;
        }
        shown.extend(fresh.iter().map(|p| p.key));
        ui.collapsing(format!("{name} settings"), |ui| {
            egui::Grid::new(format!("parameters-{name}"))
                .num_columns(2)
                .show(ui, |ui| {
                    for p in &fresh {
                        parameter_row(app, ui, p);
                    }
                });
        });
    }
}

/// One parameter's label and editor, drawn from its range; edits are checked by the registry.
fn parameter_row(app: &mut RetraceApp, ui: &mut Ui, p: &Parameter) {
    let label = ui.label(p.key).on_hover_text(p.doc);
    let current = app.parameters.text(p.key).unwrap_or_else(|_| p.default.to_owned());
    let edited: Option<String> = match p.range {
        Range::Number { min, max, log } => {
            let mut v: f64 = current.parse().unwrap_or(min);
            let speed = if log { v.abs() * 0.02 } else { (max - min) * 0.002 };
            ui.add(egui::DragValue::new(&mut v).range(min..=max).speed(speed.max(1e-12)))
                .labelled_by(label.id)
                .changed()
                .then(|| v.to_string())
        }
        Range::Integer { min, max } => {
            let mut v: u64 = current.parse().unwrap_or(min);
            ui.add(egui::DragValue::new(&mut v).range(min..=max))
                .labelled_by(label.id)
                .changed()
                .then(|| v.to_string())
        }
        Range::Choice(names) => {
            let mut chosen = current.clone();
            egui::ComboBox::from_id_salt(p.key)
                .selected_text(&chosen)
                .show_ui(ui, |ui| {
                    for n in names() {
                        let text = n.clone();
                        ui.selectable_value(&mut chosen, n, text);
                    }
                })
                .response
                .labelled_by(label.id);
            (chosen != current).then_some(chosen)
        }
    };
    ui.end_row();
    if let Some(value) = edited
        && let Err(e) = app.parameters.set(p.key, &value)
    {
        app.notice = Some(e.to_string());
    }
}

/// Adds an ensemble of the ticked methods (rank or z-score average) as a method of its own.
fn ensemble_builder(app: &mut RetraceApp, ui: &mut Ui) {
    let members: Vec<String> = app
        .selected_methods
        .iter()
        .filter(|(m, on)| *on && !m.starts_with("ensemble"))
        .map(|(m, _)| m.clone())
        .collect();
    ui.horizontal(|ui| {
        for (prefix, label, hint) in [
            (
                "ensemble:",
                "+ rank ensemble",
                "adds the mean rank of the ticked methods as a method",
            ),
            (
                "ensemble-z:",
                "+ z-score ensemble",
                "adds the mean z-score of the ticked methods as a method",
            ),
        ] {
            if ui
                .add_enabled(members.len() >= 2, egui::Button::new(label).small())
                .on_hover_text(hint)
                .on_disabled_hover_text("tick two or more methods first")
                .clicked()
            {
                let name = format!("{prefix}{}", members.join("+"));
                if !app.selected_methods.iter().any(|(m, _)| *m == name) {
                    app.selected_methods.push((name, true));
                }
            }
        }
    });
}

//! The detail view of one training image: enlarged, with its label, its per-timestep
//! influence curve under the shown method, and its rank under every computed method.

use egui::Ui;
use egui_plot::{Line, Plot};

use super::RetraceApp;
use super::textures::training_image;

/// Draws the detail view of the selected training image.
pub fn show(app: &mut RetraceApp, ui: &mut Ui) {
    let (Ok(session), Some(i)) = (app.session.clone(), app.selected_train) else {
        return;
    };
    ui.horizontal(|ui| {
        ui.heading(format!("Training image #{}", session.data.ids[i]));
        if ui.button("Close").on_hover_text("Esc").clicked() {
            app.selected_train = None;
        }
    });
    let ctx = ui.ctx().clone();
    let tex = app.thumbnails.training(&ctx, &session.data, i);
    ui.add(training_image(&tex, 224.0, session.data.ids[i]));
    ui.label(format!("label: {}", session.data.class_name(i)));
    ui.separator();
    egui::Grid::new("ranks").num_columns(3).striped(true).show(ui, |ui| {
        ui.strong("method");
        ui.strong("rank");
        ui.strong("score");
        ui.end_row();
        for m in app.computed_methods() {
            let Some(s) = app.scores(&m) else { continue };
            let rank = s.ranking().iter().position(|&j| j == i).map_or(0, |p| p + 1);
            ui.label(&m);
            ui.label(format!("{rank} / {}", s.len()));
            ui.label(format!("{:.3e}", s.totals()[i]));
            ui.end_row();
        }
    });
    if let Some(s) = app.shown_method.as_deref().and_then(|m| app.scores(m)) {
        ui.separator();
        ui.label(format!("{} per timestep bucket", s.method));
        let curve = s.bucket_curve(i);
        let name = s.method.clone();
        Plot::new("detail-curve")
            .height(180.0)
            .x_axis_label("diffusion step t")
            .show(ui, |p| p.line(Line::new(name, curve).width(2.0)));
    }
}

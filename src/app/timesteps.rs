//! Per-timestep plots (egui_plot): the selected training images' score in every timestep
//! bucket under the shown method; the query's gradient norm per bucket (the bias ReTrac removes);
//! and TracIn and ReTrac of the selected image on the same axes, each scaled to its largest
//! magnitude.

use egui::Ui;
use egui_plot::{Legend, Line, Plot};

use super::RetraceApp;
use crate::attribution::Scores;

/// `points` with y scaled so the largest magnitude is 1.
fn scaled(points: Vec<[f64; 2]>) -> Vec<[f64; 2]> {
    let m = points.iter().map(|p| p[1].abs()).fold(0.0, f64::max).max(1e-30);
    points.into_iter().map(|[x, y]| [x, y / m]).collect()
}

/// The query's projected gradient norm per bucket, recorded by the dot-product methods.
pub fn query_norms(scores: &Scores) -> Option<Vec<[f64; 2]>> {
    let norms = scores.parameters.get("query_gradient_norms")?.as_array()?;
    Some(
        scores
            .buckets
            .iter()
            .zip(norms)
            .map(|([s, e], v)| [(s + e) as f64 / 2.0, v.as_f64().unwrap_or(0.0)])
            .collect(),
    )
}

/// Draws the per-timestep view.
pub fn show(app: &mut RetraceApp, ui: &mut Ui) {
    let Ok(session) = app.session.clone() else { return };
    let Some(method) = app.shown_method.clone() else {
        ui.label("Run a method first.");
        return;
    };
    let Some(scores) = app.scores(&method).cloned() else {
        return;
    };
    if app.plotted.is_empty() {
        app.plotted = scores.ranking().into_iter().take(3).collect();
    }
    super::journey_view::show(app, ui, &scores);
    ui.label(format!(
        "{}: score per timestep bucket of {} training image(s) (click images in the ranking to add them)",
        method,
        app.plotted.len()
    ));
    if ui.button("Clear selection").clicked() {
        app.plotted.clear();
    }
    let height = (ui.available_height() / 3.0 - 20.0).max(120.0);
    Plot::new("per-bucket")
        .height(height)
        .legend(Legend::default())
        .x_axis_label("diffusion step t")
        .y_axis_label("score")
        .show(ui, |p| {
            for &i in &app.plotted {
                let name = format!("#{} {}", session.data.ids[i], session.data.class_name(i));
                p.line(Line::new(name, scores.bucket_curve(i)).width(2.0));
            }
        });
    let dot = ["tracin", "retrac"].map(|m| app.scores(m).cloned());
    if let Some(norms) = dot.iter().flatten().find_map(query_norms) {
        ui.label("Query gradient norm per bucket (what ReTrac normalises away)");
        Plot::new("query-norms")
            .height(height)
            .x_axis_label("diffusion step t")
            .show(ui, |p| p.line(Line::new("query gradient norm", norms).width(2.0)));
    }
    let focus = app.selected_train.or(app.plotted.first().copied());
    if let (Some(i), [Some(tracin), Some(retrac)]) = (focus, &dot) {
        ui.label(format!(
            "TracIn and ReTrac of #{} on the same axes (each scaled to its largest magnitude)",
            session.data.ids[i]
        ));
        Plot::new("tracin-retrac")
            .height(height)
            .legend(Legend::default())
            .x_axis_label("diffusion step t")
            .show(ui, |p| {
                p.line(Line::new("TracIn", scaled(tracin.bucket_curve(i))).width(2.0));
                p.line(Line::new("ReTrac", scaled(retrac.bucket_curve(i))).width(2.0));
            });
    }
}

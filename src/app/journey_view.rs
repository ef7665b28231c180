//! Journey-TRAK's scrubber in the per-timestep view: a slider over the attributed denoising
//! steps of a generated query, showing that step's x̂₀ (what the model believed the image was
//! becoming) beside the training images most influential at that step.

use egui::Ui;

use super::RetraceApp;
use super::textures::{image, training_image};
use crate::attribution::Scores;
use crate::data::pixels::unit_to_bytes;
use crate::stats::top_k;

/// Training images shown for the chosen step.
const SHOWN: usize = 8;

/// The trajectory index of every bucket of Journey-TRAK scores, if these are such scores.
pub fn trajectory_steps(scores: &Scores) -> Option<Vec<usize>> {
    let steps = scores.parameters.get("trajectory_steps")?.as_array()?;
    let steps: Vec<usize> = steps.iter().filter_map(|v| v.as_u64().map(|s| s as usize)).collect();
    (steps.len() == scores.buckets.len()).then_some(steps)
}

/// Draws the scrubber for `scores` when they are Journey-TRAK's and the query kept its
/// trajectory; otherwise nothing.
pub fn show(app: &mut RetraceApp, ui: &mut Ui, scores: &Scores) {
    let (Ok(session), Some(q)) = (app.session.clone(), app.current) else {
        return;
    };
    let Some(steps) = trajectory_steps(scores) else { return };
    let Some(trajectory) = app.history[q].query.trajectory.clone() else {
        return;
    };
    let shape = app.history[q].query.shape;
    let last = steps.len().saturating_sub(1);
    app.journey_step = app.journey_step.min(last);
    ui.horizontal(|ui| {
        let label = ui.label("denoising step");
        // Buckets run in order of t; the slider runs the other way, noise to image.
        ui.add(egui::Slider::new(&mut app.journey_step, 0..=last).show_value(false))
            .labelled_by(label.id);
        let bucket = last - app.journey_step;
        ui.label(format!("t = {}", scores.buckets[bucket][0]));
    });
    let bucket = last - app.journey_step;
    let Some(&s) = steps.get(bucket) else { return };
    if s >= trajectory.steps.len() {
        return;
    }
    let ctx = ui.ctx().clone();
    let column: Vec<f64> = (0..scores.len())
        .map(|i| scores.bucket_scores(i)[bucket] as f64)
        .collect();
    ui.horizontal(|ui| {
        let bytes = unit_to_bytes(trajectory.image(s));
        let tex = app.thumbnails.named(&ctx, "journey-x0", &bytes, shape);
        ui.vertical(|ui| {
            ui.add(image(&tex, 96.0).alt_text("predicted clean image at this step"));
            ui.small("x̂₀ at this step");
        });
        ui.separator();
        for i in top_k(&column, SHOWN) {
            let tex = app.thumbnails.training(&ctx, &session.data, i);
            let response = ui
                .add(training_image(&tex, 56.0, session.data.ids[i]))
                .on_hover_text(format!(
                    "#{} {} · {:.2e} at this step",
                    session.data.ids[i],
                    session.data.class_name(i),
                    column[i]
                ));
            if response.clicked() {
                app.selected_train = Some(i);
            }
        }
    });
    ui.separator();
}

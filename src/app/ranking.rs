//! The ranking view: the top proponents and opponents of the shown method as image grids with
//! rank, score and label. Hover for details, click to open the detail view; ←/→ move the
//! selection along the ranking and Esc closes it.

use egui::Ui;

use super::RetraceApp;
use super::textures::training_image;
use crate::stats::{bottom_k, top_k};

fn grid(app: &mut RetraceApp, ui: &mut Ui, title: &str, order: &[usize], totals: &[f64], ranks_from_end: bool) {
    let Ok(session) = app.session.clone() else { return };
    ui.label(egui::RichText::new(title).strong());
    let n = order.len();
    let ctx = ui.ctx().clone();
    let size = 64.0;
    let columns = ((ui.available_width() / (size + 12.0)).floor() as usize).max(1);
    egui::Grid::new(title).spacing([8.0, 8.0]).show(ui, |ui| {
        for (k, &i) in order.iter().enumerate() {
            let rank = if ranks_from_end { totals.len() - k } else { k + 1 };
            let tex = app.thumbnails.training(&ctx, &session.data, i);
            ui.vertical(|ui| {
                let mut r = ui.add(training_image(&tex, size, session.data.ids[i]));
                if app.selected_train == Some(i) {
                    r = r.highlight();
                }
                let r = r.on_hover_text(format!(
                    "rank {rank}\nid #{}\n{}\nscore {:.4e}",
                    session.data.ids[i],
                    session.data.class_name(i),
                    totals[i]
                ));
                if r.clicked() {
                    app.selected_train = Some(i);
                    if !app.plotted.contains(&i) {
                        app.plotted.push(i);
                    }
                }
                ui.small(format!("#{rank} {:.2e}", totals[i]));
                ui.small(session.data.class_name(i));
            });
            if (k + 1) % columns == 0 || k + 1 == n {
                ui.end_row();
            }
        }
    });
}

/// Moves the selection with the arrow keys along `order`.
/// ←/→ move the selection along the whole ranking (sorted only when a key is pressed), Esc
/// clears it.
fn keyboard(app: &mut RetraceApp, ui: &Ui, totals: &[f64]) {
    let (left, right, escape) = ui.input(|i| {
        (
            i.key_pressed(egui::Key::ArrowLeft),
            i.key_pressed(egui::Key::ArrowRight),
            i.key_pressed(egui::Key::Escape),
        )
    });
    if escape {
        app.selected_train = None;
        return;
    }
    if !(left || right) || totals.is_empty() {
        return;
    }
    let order = top_k(totals, totals.len());
    let pos = app.selected_train.and_then(|s| order.iter().position(|&i| i == s));
    let next = match (pos, right) {
        (None, _) => 0,
        (Some(p), true) => (p + 1).min(order.len() - 1),
        (Some(p), false) => p.saturating_sub(1),
    };
    app.selected_train = Some(order[next]);
}

/// Draws the ranking view.
pub fn show(app: &mut RetraceApp, ui: &mut Ui) {
    let Some(method) = app.shown_method.clone() else {
        ui.label("Pick a query and press Run to rank the training images.");
        return;
    };
    // Only the shown images are ranked: a selection of the top and bottom k, not a sort of
    // every training image, and no copy of the scores, every frame.
    let k = app.top_k;
    let Some((count, proponents, opponents, totals)) = app.scores(&method).map(|s| {
        let totals = s.totals();
        (s.len(), top_k(&totals, k), bottom_k(&totals, k), totals)
    }) else {
        ui.label(format!("{} has not run for this query yet: press Run.", method));
        return;
    };
    keyboard(app, ui, &totals);
    ui.horizontal(|ui| {
        ui.label(format!("{} — {} training images", method, count));
        let label = ui.label("shown per side");
        ui.add(egui::Slider::new(&mut app.top_k, 4..=96)).labelled_by(label.id);
    });
    egui::ScrollArea::vertical().show(ui, |ui| {
        grid(app, ui, "Proponents (highest scores)", &proponents, &totals, false);
        ui.separator();
        grid(app, ui, "Opponents (lowest scores)", &opponents, &totals, true);
    });
}

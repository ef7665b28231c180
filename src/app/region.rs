//! Region queries in the viewer: the user paints the part of the query to attribute with a
//! brush (drag with the primary button; the secondary button erases), and every method then
//! attributes that region only. The query image shows the region (outside dimmed and tinted),
//! and its share of the image.

use egui::Ui;

use super::RetraceApp;
use crate::report::content::{describe_region, with_region};

/// Sets the region weights within `radius` pixels of (x, y) of history entry `q` to `value`
/// (1 paints, 0 erases), creating an empty region first. Returns whether anything changed.
pub fn paint(app: &mut RetraceApp, q: usize, [x, y]: [f32; 2], radius: f32, value: f32) -> bool {
    let Some(entry) = app.history.get_mut(q) else {
        return false;
    };
    let [_, h, w] = entry.query.shape;
    let region = entry.query.mask.get_or_insert_with(|| vec![0.0; h * w]);
    let mut changed = false;
    for py in 0..h {
        for px in 0..w {
            let (dx, dy) = (px as f32 + 0.5 - x, py as f32 + 0.5 - y);
            if dx * dx + dy * dy <= radius * radius && region[py * w + px] != value {
                region[py * w + px] = value;
                changed = true;
            }
        }
    }
    if entry.query.mask.as_ref().is_some_and(|m| m.iter().all(|&v| v == 0.0)) {
        entry.query.mask = None;
    }
    changed
}

/// Draws the current query `q` at `size` points, with its region, and lets the brush paint
/// on it while painting is on.
pub fn query_image(app: &mut RetraceApp, ui: &mut Ui, q: usize, shape: [usize; 3], size: f32) {
    let ctx = ui.ctx().clone();
    let entry = &app.history[q];
    let tex = match &entry.query.mask {
        Some(region) => {
            let image = with_region(crate::data::pixels::to_rgb_image(&entry.bytes, shape, 1), region);
            // RGB as C×H×W planes, what the texture cache takes.
            let pixels = shape[1] * shape[2];
            let planar: Vec<u8> = (0..3)
                .flat_map(|c| image.as_raw().iter().skip(c).step_by(3).copied().collect::<Vec<_>>())
                .collect();
            debug_assert_eq!(planar.len(), 3 * pixels);
            app.thumbnails
                .named(&ctx, "query-region", &planar, [3, shape[1], shape[2]])
        }
        None => app.thumbnails.named(&ctx, &format!("query-{q}"), &entry.bytes, shape),
    };
    let sense = if app.painting {
        egui::Sense::click_and_drag()
    } else {
        egui::Sense::click()
    };
    let response = ui.add(
        egui::Image::new(egui::load::SizedTexture::new(tex.id(), egui::vec2(size, size)))
            .fit_to_exact_size(egui::vec2(size, size))
            .sense(sense)
            .alt_text("query image"),
    );
    if app.painting
        && (response.dragged() || response.clicked() || response.secondary_clicked())
        && let Some(pos) = response.interact_pointer_pos()
    {
        let rect = response.rect;
        let at = [
            (pos.x - rect.min.x) / rect.width() * shape[2] as f32,
            (pos.y - rect.min.y) / rect.height() * shape[1] as f32,
        ];
        let erase = ui.input(|i| i.pointer.secondary_down()) || response.secondary_clicked();
        paint(app, q, at, app.brush, if erase { 0.0 } else { 1.0 });
    }
}

/// The region controls under the query: paint on/off, brush size, clear, and the region's share.
pub fn controls(app: &mut RetraceApp, ui: &mut Ui, q: usize) {
    ui.horizontal_wrapped(|ui| {
        ui.toggle_value(&mut app.painting, "Paint region")
            .on_hover_text("drag on the query to mark the part to attribute (right button erases)");
        if app.painting {
            let label = ui.label("brush");
            ui.add(egui::DragValue::new(&mut app.brush).range(0.5..=20.0).speed(0.1))
                .labelled_by(label.id);
        }
        let has_region = app.history[q].query.mask.is_some();
        if ui.add_enabled(has_region, egui::Button::new("Clear region")).clicked() {
            app.history[q].query.mask = None;
        }
    });
    if let Some(region) = &app.history[q].query.mask {
        ui.small(describe_region(region));
    }
}

//! The query panel: generate a sample (seed, steps, sampler) and watch it denoise, load an
//! image (file dialog or drag-and-drop; converted to the model's format, and the panel says
//! how), or pick a training or held-out image; plus the history of recent queries.

use egui::Ui;

use super::state::Work;
use super::textures::image;
use super::{RetraceApp, grid_row};
use crate::attribution::Query;
use crate::data::pixels::bytes_to_unit;
use crate::diffusion::{Condition, SamplerKind};

/// Starts reading an image file as a query, off the UI thread; it becomes the current query
/// once read ([`RetraceApp::poll_work`]), and the notice says how it was converted, or why it
/// could not be read.
pub fn load_file(app: &mut RetraceApp, path: &std::path::Path) {
    let Ok(session) = &app.session else { return };
    let job = session.load_query(path, RetraceApp::waker(&app.repaint_context()));
    app.loads.push((job, crate::files::file_name(path)));
}

/// Takes files dropped on the window as queries.
pub fn handle_dropped_files(app: &mut RetraceApp, ctx: &egui::Context) {
    let dropped = ctx.input(|i| i.raw.dropped_files.clone());
    for f in dropped {
        let path = f.path().to_path_buf();
        if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("json")) {
            // An evaluation table (`retrace eval lds --out`) goes to the Evaluation tab, read off
            // the UI thread too.
            app.load_evaluation(&path);
            continue;
        }
        load_file(app, &path);
    }
}

/// The class a sample is generated for and a loaded image is attributed under.
fn class_picker(ui: &mut Ui, class: &mut u32, classes: &[(u32, String)]) {
    let label = ui.label("class").on_hover_text(
        "the class a sample is generated for, and a loaded image is attributed under (a picked image keeps its own)",
    );
    let shown = classes
        .iter()
        .find(|(c, _)| c == class)
        .map_or_else(|| format!("class {class}"), |(_, name)| name.clone());
    egui::ComboBox::from_id_salt("class")
        .selected_text(shown)
        .show_ui(ui, |ui| {
            for (c, name) in classes {
                ui.selectable_value(class, *c, name);
            }
        })
        .response
        .labelled_by(label.id);
    ui.end_row();
}

/// Draws the query panel.
pub fn show(app: &mut RetraceApp, ui: &mut Ui) {
    ui.heading("Query");
    let Ok(session) = app.session.clone() else {
        return;
    };
    let shape = session.shape();
    let busy = app.work.is_some();
    // The current query, or the live denoising preview.
    let preview = match &app.work {
        Some(Work::Generate(_, frame)) => frame.lock().ok().and_then(|f| f.clone()),
        _ => None,
    };
    let ctx = ui.ctx().clone();
    if let Some(bytes) = preview {
        let tex = app.thumbnails.named(&ctx, "preview", &bytes, shape);
        ui.add(image(&tex, 160.0));
        ui.label("denoising…");
    } else if let Some(q) = app.current {
        super::region::query_image(app, ui, q, shape, 160.0);
        ui.label(&app.history[q].query.description);
        super::region::controls(app, ui, q);
    } else {
        ui.label("No query yet: generate a sample, load an image, or pick one below.");
    }
    ui.separator();
    egui::Grid::new("generate").num_columns(2).show(ui, |ui| {
        grid_row(ui, "seed", egui::DragValue::new(&mut app.seed));
        grid_row(
            ui,
            "steps",
            egui::DragValue::new(&mut app.sampler.steps).range(1..=1000),
        );
        let label = ui.label("sampler");
        egui::ComboBox::from_id_salt("sampler")
            .selected_text(format!("{:?}", app.sampler.kind))
            .show_ui(ui, |ui| {
                ui.selectable_value(&mut app.sampler.kind, SamplerKind::Ddim, "Ddim");
                ui.selectable_value(&mut app.sampler.kind, SamplerKind::Ddpm, "Ddpm");
            })
            .response
            .labelled_by(label.id);
        ui.end_row();
        if let Some(classes) = session.classes() {
            class_picker(ui, &mut app.class, &classes);
            let guidance = egui::Slider::new(&mut app.sampler.guidance_scale, 0.0..=10.0).step_by(0.1);
            let label = ui.label("guidance").on_hover_text(
                "classifier-free guidance scale: 1 samples the model as it is, higher follows the class more",
            );
            ui.add_enabled(session.can_guide(), guidance).labelled_by(label.id);
            ui.end_row();
        }
    });
    ui.horizontal(|ui| {
        if ui.add_enabled(!busy, egui::Button::new("Generate")).clicked() {
            app.generate(&ctx);
        }
        if ui.add_enabled(!busy, egui::Button::new("Load image…")).clicked() {
            match super::dialogs::open(&[("images", &["png", "jpg", "jpeg"])]) {
                super::dialogs::Chosen::Path(path) => load_file(app, &path),
                super::dialogs::Chosen::Cancelled => {}
                super::dialogs::Chosen::Unavailable => {
                    app.notice = Some("no file dialog could open here: drop the image file on the window".into());
                }
            }
        }
    });
    ui.horizontal(|ui| {
        let limit = if app.pick_held_out {
            session.held_out.as_ref().map_or(0, |d| d.len())
        } else {
            session.data.len()
        };
        let label = ui.label("pick");
        ui.selectable_value(&mut app.pick_held_out, true, "held-out")
            .on_hover_text("an image of the test split");
        ui.selectable_value(&mut app.pick_held_out, false, "training");
        ui.add(egui::DragValue::new(&mut app.pick_index).range(0..=limit.saturating_sub(1)))
            .labelled_by(label.id);
        if ui.add_enabled(limit > 0, egui::Button::new("Use")).clicked() {
            let (data, split) = if app.pick_held_out {
                (session.held_out.as_ref().unwrap_or(&session.data), "held-out")
            } else {
                (&session.data, "training")
            };
            let i = app.pick_index.min(data.len() - 1);
            let query = Query {
                condition: Condition::Class(data.labels[i]),
                ..Query::image(
                    bytes_to_unit(data.image(i)),
                    shape,
                    format!("{split} image #{} ({})", data.ids[i], data.class_name(i)),
                )
            };
            let label = format!("{split} #{}", data.ids[i]);
            app.push_query(query, label);
        }
    });
    ui.small("Drop an image file on the window to use it as the query.");
    if !app.history.is_empty() {
        ui.separator();
        ui.label("History");
        let mut chosen = None;
        ui.horizontal_wrapped(|ui| {
            for (i, entry) in app.history.iter().enumerate().rev().take(12) {
                let tex = app.thumbnails.named(&ctx, &format!("query-{i}"), &entry.bytes, shape);
                let mut response = ui.add(image(&tex, 40.0)).on_hover_text(&entry.label);
                if app.current == Some(i) {
                    response = response.highlight();
                }
                if response.clicked() {
                    chosen = Some(i);
                }
            }
        });
        if let Some(i) = chosen {
            app.current = Some(i);
            app.selected_train = None;
        }
    }
}

//! Methods side by side: any number of computed methods in columns (scrolling when they do not
//! fit), rows aligned by rank, images that several methods rank in their top k framed;
//! agreement figures (overlap@k, Spearman over all scores) and the label breakdown of each
//! method's top k.

use egui::Ui;

use super::RetraceApp;
use super::textures::training_image;
use crate::stats::{overlap_at_k, spearman};

/// Most methods compared at once.
const MOST: usize = 16;

/// Up to this many methods, agreement is a list of pairs; beyond, a matrix.
const PAIR_LIST: usize = 4;

/// Agreement of many methods as one matrix: overlap@k above the diagonal, Spearman below.
fn agreement_matrix(ui: &mut Ui, methods: &[String], totals: &[Vec<f64>], k: usize) {
    ui.small(format!(
        "above the diagonal: overlap@{k}; below: Spearman over all training images"
    ));
    egui::ScrollArea::horizontal()
        .id_salt("agreement-matrix")
        .show(ui, |ui| {
            egui::Grid::new("agreement-matrix").striped(true).show(ui, |ui| {
                ui.label("");
                for m in methods {
                    ui.small(m.as_str());
                }
                ui.end_row();
                for (a, row) in methods.iter().enumerate() {
                    ui.small(row.as_str());
                    for b in 0..methods.len() {
                        let cell = match a.cmp(&b) {
                            std::cmp::Ordering::Less => format!("{:.2}", overlap_at_k(&totals[a], &totals[b], k)),
                            std::cmp::Ordering::Greater => format!("{:.2}", spearman(&totals[a], &totals[b])),
                            std::cmp::Ordering::Equal => "·".to_owned(),
                        };
                        ui.small(cell);
                    }
                    ui.end_row();
                }
            });
        });
}

/// Draws the comparison view.
pub fn show(app: &mut RetraceApp, ui: &mut Ui) {
    let Ok(session) = app.session.clone() else { return };
    let computed = app.computed_methods();
    if computed.len() < 2 {
        ui.label("Run at least two methods on this query to compare them.");
        return;
    }
    ui.horizontal_wrapped(|ui| {
        ui.label("compare:");
        for m in &computed {
            let mut on = app.compared.contains(m);
            if ui.checkbox(&mut on, m).changed() {
                if on && app.compared.len() < MOST {
                    app.compared.push(m.clone());
                } else {
                    app.compared.retain(|x| x != m);
                }
            }
        }
    });
    let methods: Vec<String> = app.compared.iter().filter(|m| computed.contains(m)).cloned().collect();
    if methods.len() < 2 {
        ui.label("Tick two or more methods.");
        return;
    }
    let scores: Vec<_> = methods.iter().filter_map(|m| app.scores(m).cloned()).collect();
    let totals: Vec<Vec<f64>> = scores.iter().map(|s| s.totals()).collect();
    let orders: Vec<Vec<usize>> = scores.iter().map(|s| s.ranking()).collect();
    ui.horizontal(|ui| {
        let label = ui.label("rows");
        ui.add(egui::DragValue::new(&mut app.compare_rows).range(1..=50))
            .labelled_by(label.id);
        if ui.button("all methods").clicked() {
            app.compared = computed.iter().take(MOST).cloned().collect();
        }
    });
    let k = app.compare_rows.min(orders[0].len());
    let shared = |i: usize| orders.iter().filter(|o| o[..k].contains(&i)).count() > 1;

    ui.label(egui::RichText::new("Agreement").strong());
    if methods.len() <= PAIR_LIST {
        egui::Grid::new("agreement").striped(true).show(ui, |ui| {
            ui.label("pair");
            ui.label(format!("overlap@{k}"));
            ui.label("Spearman");
            ui.end_row();
            for a in 0..methods.len() {
                for b in a + 1..methods.len() {
                    ui.label(format!("{} / {}", methods[a], methods[b]));
                    ui.label(format!("{:.2}", overlap_at_k(&totals[a], &totals[b], k)));
                    ui.label(format!("{:.3}", spearman(&totals[a], &totals[b])));
                    ui.end_row();
                }
            }
        });
    } else {
        agreement_matrix(ui, &methods, &totals, k);
    }
    ui.separator();
    ui.label(egui::RichText::new(format!("Labels among each method's top {k}")).strong());
    for (m, order) in methods.iter().zip(&orders) {
        let mut counts = vec![0usize; session.data.class_names.len().max(1)];
        for &i in &order[..k] {
            if let Some(c) = counts.get_mut(session.data.labels[i] as usize) {
                *c += 1;
            }
        }
        let parts: Vec<String> = counts
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(c, n)| format!("{} {n}", session.data.class_names.get(c).cloned().unwrap_or_default()))
            .collect();
        ui.label(format!("{m}: {}", parts.join(", ")));
    }
    ui.separator();
    let ctx = ui.ctx().clone();
    egui::ScrollArea::both().show(ui, |ui| {
        egui::Grid::new("side-by-side").spacing([16.0, 6.0]).show(ui, |ui| {
            ui.label("rank");
            for m in &methods {
                // The name over its LDS, so that many columns fit side by side.
                let lds = app.method_lds(m);
                ui.vertical(|ui| {
                    ui.strong(m.as_str());
                    if let Some((h, g)) = lds {
                        ui.small(format!("LDS {h:.2} / {g:.2}")).on_hover_text(
                            "LDS on the bundled benchmark's held-out / generated queries (Evaluation tab)",
                        );
                    }
                });
            }
            ui.end_row();
            for r in 0..k {
                ui.label(format!("{}", r + 1));
                for (col, order) in orders.iter().enumerate() {
                    let i = order[r];
                    let tex = app.thumbnails.training(&ctx, &session.data, i);
                    ui.horizontal(|ui| {
                        let mut resp = ui.add(training_image(&tex, 48.0, session.data.ids[i]));
                        if shared(i) {
                            resp = resp.highlight();
                        }
                        if resp
                            .on_hover_text(format!("#{} {}", session.data.ids[i], session.data.class_name(i)))
                            .clicked()
                        {
                            app.selected_train = Some(i);
                        }
                        ui.small(format!("{:.2e}", totals[col][i]));
                    });
                }
                ui.end_row();
            }
        });
    });
    ui.small("Highlighted: images in the top of more than one method.");
}

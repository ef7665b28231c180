//! The Evaluation tab: how well each method's scores predict retraining, read from the file
//! `retrace eval lds --out` writes (the bundled benchmark's table by default). LDS per method on
//! held-out and on generated queries with bootstrap 95% intervals, against the ceiling that the
//! ground truth's seed-to-seed agreement sets; how much retraining without each method's top-k
//! raised the query's loss (`retrace eval remove-topk --out` on the same file); and how many
//! distinct training images fill the methods' top-10s (Xie et al.'s "generally influential");
//! and how much generated samples change when they are generated again after removing each
//! method's top-k (`retrace eval regenerate --out`), with one sample before and after.

use egui::Ui;
use egui_plot::{Bar, BarChart, HLine, Legend, Line, Plot};

use super::RetraceApp;
use crate::eval::QueryKind;
use crate::eval::regenerate::RegenerationReport;
use crate::eval::remove_topk::RemovalReport;
use crate::eval::table::EvalReport;

/// Colour of the held-out queries' bars and ceiling.
const HELD_OUT: egui::Color32 = egui::Color32::from_rgb(214, 96, 77);
/// Colour of the generated queries' bars and ceiling.
const GENERATED: egui::Color32 = egui::Color32::from_rgb(67, 147, 195);

/// Draws the Evaluation tab.
pub fn show(app: &mut RetraceApp, ui: &mut Ui) {
    benchmark_picker(app, ui);
    let report = match app.evaluation_table().clone() {
        Ok(report) => report,
        Err(e) => {
            ui.label(format!("No evaluation to show: {e}"));
            ui.label("`retrace eval lds --out results.json` writes one; drop it on the window to show it.");
            if ui.button("Look again").clicked() {
                app.evaluation = None;
            }
            return;
        }
    };
    ui.label(format!(
        "Linear Datamodeling Score on the {} queries of {} (ceiling: seed-to-seed Spearman {:.3}; \
         lines: per kind of query). Higher is better; whiskers are bootstrap 95% intervals over queries.",
        match report.half {
            crate::eval::QueryHalf::Report => "reported",
            crate::eval::QueryHalf::Dev => "development",
        },
        report.benchmark,
        report.ceiling
    ));
    if !report.complete {
        ui.colored_label(
            ui.visuals().warn_fg_color,
            format!(
                "Preliminary: the ground truth held {} subsets when this table was made; its build was still running.",
                report.subsets
            ),
        );
    }
    let height = (ui.available_height() * 0.55).max(200.0);
    // Everything scrolls together: the charts, the table and the regeneration below them.
    egui::ScrollArea::vertical().show(ui, |ui| {
        ui.columns(2, |columns| {
            lds_chart(&mut columns[0], &report, height);
            match &report.remove_top_k {
                Some(removal) => removal_chart(&mut columns[1], removal, height),
                None => {
                    columns[1].label(
                        "No retraining without the top-k yet: `retrace eval remove-topk --out` on this file adds it.",
                    );
                }
            }
        });
        egui::Grid::new("lds-table").striped(true).show(ui, |ui| {
            for title in [
                "#",
                "method",
                "LDS held-out",
                "95% CI",
                "LDS generated",
                "95% CI",
                "distinct in top-10s",
                "share of the 10 most frequent",
                "s / query",
            ] {
                ui.strong(title);
            }
            ui.end_row();
            for (i, m) in report.methods.iter().enumerate() {
                let spread = &m.generally_influential;
                ui.label((i + 1).to_string());
                ui.label(&m.method);
                for interval in [&m.held_out, &m.generated] {
                    // A method that takes only generated queries (Journey-TRAK) has no held-out LDS.
                    if interval.queries == 0 {
                        ui.label("—");
                        ui.label("");
                    } else {
                        ui.label(format!("{:.3}", interval.lds));
                        ui.label(format!("[{:.3}, {:.3}]", interval.ci95[0], interval.ci95[1]));
                    }
                }
                ui.label(format!("{} of {}", spread.distinct, spread.queries * spread.k));
                ui.label(format!("{:.0}%", 100.0 * spread.top10_share));
                ui.label(format!("{:.3}", m.seconds_per_query));
                ui.end_row();
            }
        });
        ui.separator();
        match &report.regenerate {
            Some(regeneration) => regeneration_section(app, ui, regeneration, height),
            None => {
                ui.label("No regeneration yet: `retrace eval regenerate --out` on this file adds it.");
            }
        }
    });
}

/// One button per bundled benchmark's table (when more than one ships), the one shown selected;
/// a table dropped on the window is shown instead of either.
fn benchmark_picker(app: &mut RetraceApp, ui: &mut Ui) {
    let tables = crate::session::bundled_evaluations();
    if tables.len() < 2 {
        return;
    }
    ui.horizontal(|ui| {
        ui.label("Benchmark:");
        for (name, path) in tables {
            if ui.selectable_label(app.evaluation_path == path, name).clicked() && app.evaluation_path != path {
                app.load_evaluation(&path);
            }
        }
    });
}

/// Counterfactual regeneration: one target before and after every method's removal, the change
/// of the targets per method as a multiple of random removal's, and the table of every measure.
fn regeneration_section(app: &mut RetraceApp, ui: &mut Ui, report: &RegenerationReport, height: f32) {
    ui.strong(format!(
        "Regenerated after removing each method's top {} of {} samples ({} seeds; each model {}): how much the \
         samples changed, as a multiple of removing random images (1 = chance; whiskers: bootstrap 95% intervals \
         over samples).",
        report.k,
        report.targets.len(),
        report.seeds.len(),
        report.retraining.describe()
    ));
    let example = &report.example;
    ui.label(format!(
        "{}: before, then after each removal (first seed).",
        example.description
    ));
    let ctx = ui.ctx().clone();
    ui.horizontal_wrapped(|ui| {
        let images = std::iter::once(("before", &example.before))
            .chain(example.after.iter().map(|(method, image)| (method.as_str(), image)));
        for (i, (name, image)) in images.enumerate() {
            ui.vertical(|ui| {
                let tex = app
                    .thumbnails
                    .named(&ctx, &format!("regenerated-{i}"), &image.0, example.shape);
                ui.add(super::textures::image(&tex, 56.0).alt_text(format!("regenerated: {name}")));
                ui.small(name);
            });
        }
    });
    let names: Vec<String> = report.rows.iter().map(|r| r.method.clone()).collect();
    let measures: Vec<(usize, egui::Color32)> = [(0, HELD_OUT), (2, GENERATED)]
        .into_iter()
        .filter(|(m, _)| *m < report.metrics.len())
        .collect();
    // As wide as the visible part of the tab (the tables above may be wider than the window).
    let visible = (ui.clip_rect().right() - ui.cursor().left()).max(200.0);
    let plot = grouped_plot("regeneration-bars", names.len(), "change ÷ random", height * 0.8)
        .include_y(0.0)
        .width(visible);
    plot.show(ui, |p| {
        let mut all = Vec::new();
        for (k, &(m, colour)) in measures.iter().enumerate() {
            let values: Vec<_> = report
                .rows
                .iter()
                .map(|r| {
                    r.targets[m]
                        .ratio_to_random
                        .as_ref()
                        .map_or((1.0, [1.0, 1.0]), |i| (i.lds, i.ci95))
                })
                .collect();
            interval_bars(p, &report.metrics[m], colour, 0.36 * k as f64 - 0.18, &values);
            all.extend(values);
        }
        group_labels(p, &names, &all);
        p.hline(HLine::new("random", 1.0).color(egui::Color32::GRAY));
    });
    egui::ScrollArea::horizontal().show(ui, |ui| regeneration_table(ui, report));
}

/// Every measure's figures per method: mean change on the targets, ratio to random, AUC, and
/// mean change on the controls.
fn regeneration_table(ui: &mut Ui, report: &RegenerationReport) {
    egui::Grid::new("regeneration-table").striped(true).show(ui, |ui| {
        ui.strong("method");
        ui.strong("removed");
        for metric in &report.metrics {
            ui.strong(format!("{metric}: targets"));
            ui.strong("÷ random");
            ui.strong("AUC");
            ui.strong("controls");
        }
        ui.end_row();
        for row in &report.rows {
            ui.label(&row.method);
            ui.label(format!("{:.0}", row.removed));
            for (targets, controls) in row.targets.iter().zip(&row.controls) {
                ui.label(format!("{:.4}", targets.change.lds));
                for value in [&targets.ratio_to_random, &targets.auc] {
                    ui.label(value.as_ref().map_or("—".to_owned(), |i| {
                        format!("{:.2} [{:.2}, {:.2}]", i.lds, i.ci95[0], i.ci95[1])
                    }));
                }
                ui.label(format!("{:.4}", controls.change.lds));
            }
            ui.end_row();
        }
    });
}

/// Bars of `values` (value, 95% interval) at x = index + `offset`, with grey whiskers.
fn interval_bars(
    p: &mut egui_plot::PlotUi<'_>,
    name: &str,
    colour: egui::Color32,
    offset: f64,
    values: &[(f64, [f64; 2])],
) {
    let bars: Vec<Bar> = values
        .iter()
        .enumerate()
        .map(|(i, (v, _))| Bar::new(i as f64 + offset, *v).width(0.34))
        .collect();
    p.bar_chart(BarChart::new(name, bars).color(colour));
    for (i, (_, ci)) in values.iter().enumerate() {
        let x = i as f64 + offset;
        p.line(Line::new("", vec![[x, ci[0]], [x, ci[1]]]).color(egui::Color32::GRAY));
    }
}

/// A bar plot with one x grid line per bar group (labelled by [`group_labels`]). It lies in the
/// tab's vertical scroll, so the mouse wheel scrolls the tab, not the plot.
fn grouped_plot(id: &str, groups: usize, y_label: &str, height: f32) -> Plot<'static> {
    Plot::new(id)
        .height(height)
        .allow_scroll(false)
        .allow_zoom(false)
        .legend(Legend::default().position(egui_plot::Corner::LeftTop))
        .y_axis_label(y_label)
        .x_grid_spacer(move |_| {
            (0..groups)
                .map(|i| egui_plot::GridMark {
                    value: i as f64,
                    step_size: 1.0,
                })
                .collect()
        })
        .x_axis_formatter(|_, _| String::new())
}

/// Writes `labels[i]` under bar group i, below the lowest whisker of `values`: text inside the
/// plot, because the axis drops labels wider than their spacing.
fn group_labels(p: &mut egui_plot::PlotUi<'_>, labels: &[String], values: &[(f64, [f64; 2])]) {
    let low = values.iter().map(|(v, ci)| v.min(ci[0])).fold(0.0, f64::min);
    let high = values.iter().map(|(v, ci)| v.max(ci[1])).fold(0.0, f64::max);
    let y = low - 0.04 * (high - low).max(1e-9);
    for (i, label) in labels.iter().enumerate() {
        let text = egui::RichText::new(label).size(10.0);
        p.text(egui_plot::Text::new("", egui_plot::PlotPoint::new(i as f64, y), text).anchor(egui::Align2::CENTER_TOP));
    }
}

/// LDS per method on both kinds of query, with the ceilings.
fn lds_chart(ui: &mut Ui, report: &EvalReport, height: f32) {
    // Numbers, not names: a table has more methods than their names fit under the bars; the
    // table below numbers its rows the same way.
    let numbers: Vec<String> = (1..=report.methods.len()).map(|i| i.to_string()).collect();
    grouped_plot("lds-bars", numbers.len(), "LDS", height).show(ui, |p| {
        let held_out: Vec<_> = report
            .methods
            .iter()
            .map(|m| (m.held_out.lds, m.held_out.ci95))
            .collect();
        let generated: Vec<_> = report
            .methods
            .iter()
            .map(|m| (m.generated.lds, m.generated.ci95))
            .collect();
        group_labels(p, &numbers, &[held_out.as_slice(), generated.as_slice()].concat());
        interval_bars(p, "held-out", HELD_OUT, -0.18, &held_out);
        interval_bars(p, "generated", GENERATED, 0.18, &generated);
        // The ceiling of each kind of query, in its bars' colour; the overall one when the file
        // has no split.
        match report.ceiling_by_kind.as_slice() {
            [held_out, generated] => {
                p.hline(HLine::new("held-out ceiling", *held_out).color(HELD_OUT));
                p.hline(HLine::new("generated ceiling", *generated).color(GENERATED));
            }
            _ => p.hline(HLine::new("ceiling", report.ceiling)),
        }
    });
}

/// How much retraining without each method's top-k raised the query's loss, in per cent of
/// the full-data model's loss, per kind of query (mean over queries and seeds, bootstrap 95%
/// interval).
fn removal_chart(ui: &mut Ui, removal: &RemovalReport, height: f32) {
    ui.label(format!(
        "Retrained without each query's top {} ({} queries × {} seeds; each model {}): query-loss increase, % of \
         the full-data model's.",
        removal.k,
        removal.queries.len(),
        removal.seeds.len(),
        removal.retraining.describe()
    ));
    let names: Vec<String> = removal.rows.iter().map(|r| r.method.clone()).collect();
    grouped_plot("remove-top-k-bars", names.len(), "loss increase (%)", height).show(ui, |p| {
        let mut all = Vec::new();
        for (kind, name, colour, offset) in [
            (QueryKind::HeldOut, "held-out", HELD_OUT, -0.18),
            (QueryKind::Generated, "generated", GENERATED, 0.18),
        ] {
            // No bar for a kind of query a method does not take (Journey-TRAK, held-out images).
            let values: Vec<_> = removal
                .rows
                .iter()
                .map(|r| r.percent_increase_of(kind).unwrap_or((0.0, [0.0, 0.0])))
                .collect();
            interval_bars(p, name, colour, offset, &values);
            all.extend(values);
        }
        group_labels(p, &names, &all);
        p.hline(HLine::new("", 0.0).color(egui::Color32::GRAY));
    });
}

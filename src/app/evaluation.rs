//! The Evaluation tab: how well each method's scores predict retraining, read from the file
//! `retrace eval lds --out` writes (the bundled benchmark's table by default). LDS per method on
//! held-out and on generated queries with bootstrap 95% intervals, against the ceiling that the
//! ground truth's seed-to-seed agreement sets.

use egui::Ui;
use egui_plot::{Bar, BarChart, HLine, Legend, Line, Plot};

use super::RetraceApp;
use crate::eval::table::EvalReport;

/// Colour of the held-out queries' bars and ceiling.
const HELD_OUT: egui::Color32 = egui::Color32::from_rgb(214, 96, 77);
/// Colour of the generated queries' bars and ceiling.
const GENERATED: egui::Color32 = egui::Color32::from_rgb(67, 147, 195);

/// The results file the tab reads unless another is loaded: the bundled benchmark's table.
pub fn bundled_results_path() -> std::path::PathBuf {
    crate::eval::table::Benchmark::bundled_dir().join("results.json")
}

/// Reads a results file.
pub fn load_report(path: &std::path::Path) -> Result<EvalReport, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| format!("{} is not a results file of retrace eval lds: {e}", path.display()))
}

/// Draws the Evaluation tab.
pub fn show(app: &mut RetraceApp, ui: &mut Ui) {
    if app.evaluation.is_none() {
        app.evaluation = Some(load_report(&bundled_results_path()));
    }
    let report = match app.evaluation.clone() {
        Some(Ok(report)) => report,
        Some(Err(e)) => {
            ui.label(format!("No evaluation to show: {e}"));
            ui.label("`retrace eval lds --out results.json` writes one; drop it on the window to show it.");
            if ui.button("Look again").clicked() {
                app.evaluation = None;
            }
            return;
        }
        None => return,
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
    Plot::new("lds-bars")
        .height(height)
        .legend(Legend::default())
        .y_axis_label("LDS")
        .x_axis_formatter({
            let names: Vec<String> = report.methods.iter().map(|m| m.method.clone()).collect();
            move |mark, _| {
                let i = mark.value.round();
                if (mark.value - i).abs() < 1e-6 && i >= 0.0 {
                    names.get(i as usize).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            }
        })
        .show(ui, |p| {
            for (kind, offset) in [("held-out", -0.18), ("generated", 0.18)] {
                let bars: Vec<Bar> = report
                    .methods
                    .iter()
                    .enumerate()
                    .map(|(i, m)| {
                        let value = if kind == "held-out" {
                            m.held_out.lds
                        } else {
                            m.generated.lds
                        };
                        Bar::new(i as f64 + offset, value).width(0.34).name(&m.method)
                    })
                    .collect();
                let colour = if kind == "held-out" { HELD_OUT } else { GENERATED };
                p.bar_chart(BarChart::new(kind, bars).color(colour));
                for (i, m) in report.methods.iter().enumerate() {
                    let ci = if kind == "held-out" {
                        m.held_out.ci95
                    } else {
                        m.generated.ci95
                    };
                    let x = i as f64 + offset;
                    p.line(Line::new("", vec![[x, ci[0]], [x, ci[1]]]).color(egui::Color32::GRAY));
                }
            }
            // The ceiling of each kind of query, in its bars' colour; the overall one when the
            // file has no split.
            match report.ceiling_by_kind.as_slice() {
                [held_out, generated] => {
                    p.hline(HLine::new("held-out ceiling", *held_out).color(HELD_OUT));
                    p.hline(HLine::new("generated ceiling", *generated).color(GENERATED));
                }
                _ => p.hline(HLine::new("ceiling", report.ceiling)),
            }
        });
    egui::ScrollArea::vertical().show(ui, |ui| {
        egui::Grid::new("lds-table").striped(true).show(ui, |ui| {
            for title in [
                "method",
                "LDS held-out",
                "95% CI",
                "LDS generated",
                "95% CI",
                "s / query",
            ] {
                ui.strong(title);
            }
            ui.end_row();
            for m in &report.methods {
                ui.label(&m.method);
                ui.label(format!("{:.3}", m.held_out.lds));
                ui.label(format!("[{:.3}, {:.3}]", m.held_out.ci95[0], m.held_out.ci95[1]));
                ui.label(format!("{:.3}", m.generated.lds));
                ui.label(format!("[{:.3}, {:.3}]", m.generated.ci95[0], m.generated.ci95[1]));
                ui.label(format!("{:.3}", m.seconds_per_query));
                ui.end_row();
            }
        });
    });
}

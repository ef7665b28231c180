//! The notice banner: the last error or notice (a job that failed, a file that could not be
//! read, a report written, a warning about the data), in full and wrapped across the top of the
//! window until dismissed; and, when no session could open, why.

use egui::Ui;

use super::RetraceApp;

/// Draws the banner when there is something to say.
pub fn show(app: &mut RetraceApp, ui: &mut Ui) {
    let failed_session = app.session.as_ref().err().cloned();
    if failed_session.is_none() && app.notice.is_none() {
        return;
    }
    egui::Panel::top("notice").show(ui, |ui| {
        let colour = ui.visuals().warn_fg_color;
        if let Some(e) = failed_session {
            let error = ui.visuals().error_fg_color;
            ui.add(
                egui::Label::new(egui::RichText::new(format!("retrace could not open the model: {e:#}")).color(error))
                    .wrap(),
            );
        }
        let mut dismissed = false;
        if let Some(notice) = &app.notice {
            ui.horizontal(|ui| {
                dismissed = ui.button("Dismiss").clicked();
                ui.add(egui::Label::new(egui::RichText::new(notice).color(colour)).wrap());
            });
        }
        if dismissed {
            app.notice = None;
        }
    });
}

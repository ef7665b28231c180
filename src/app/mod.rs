//! The desktop viewer (egui/eframe). Only egui lives here: the panels render what the engine's
//! jobs return ([`crate::session::Session`]) and send it new work; no tensor is ever touched.
//! One file per panel; [`state::RetraceApp`] holds the state and lays the panels out.

pub mod compare;
pub mod detail;
pub mod methods_panel;
pub mod query_panel;
pub mod ranking;
pub mod state;
pub mod status_bar;
pub mod textures;
pub mod timesteps;

pub use state::RetraceApp;

/// Opens the viewer window on `session` (or on the error that kept it from opening) and runs
/// until the window closes.
pub fn run(session: Result<crate::session::Session, String>) -> Result<(), String> {
    let options = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_inner_size([1280.0, 820.0])
            .with_title("retrace")
            .with_drag_and_drop(true),
        renderer: eframe::Renderer::Wgpu,
        ..Default::default()
    };
    eframe::run_native(
        "retrace",
        options,
        Box::new(move |cc| Ok(Box::new(RetraceApp::new(&cc.egui_ctx, session)))),
    )
    .map_err(|e| format!("cannot open the window: {e}"))
}

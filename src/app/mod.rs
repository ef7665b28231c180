//! The desktop viewer (egui/eframe). Only egui lives here: the panels render what the engine's
//! jobs return ([`crate::session::Session`]) and send it new work; no tensor is ever touched.
//! One file per panel; [`state::RetraceApp`] holds the state and lays the panels out.

pub mod compare;
pub mod detail;
pub mod dialogs;
pub mod evaluation;
pub mod frame_times;
pub mod journey_view;
pub mod layout;
pub mod methods_panel;
pub mod notice;
pub mod query_panel;
pub mod ranking;
pub mod region;
pub mod state;
pub mod status_bar;
pub mod textures;
pub mod timesteps;

pub use state::RetraceApp;

/// One row of a two-column grid: `label`, then `widget` labelled by it (for screen readers
/// and kittest queries). Returns the widget's response.
pub fn grid_row(ui: &mut egui::Ui, label: &str, widget: impl egui::Widget) -> egui::Response {
    let label = ui.label(label);
    let response = ui.add(widget).labelled_by(label.id);
    ui.end_row();
    response
}

/// What the viewer starts with besides its session: the methods ticked (the defaults when
/// empty) and the methods' parameters.
#[derive(Clone, Debug, Default)]
pub struct Start {
    /// Methods ticked at start (registry names, ensembles included); empty for the defaults.
    pub methods: Vec<String>,
    /// Parameter values.
    pub parameters: crate::attribution::Parameters,
    /// The class picked at start (a class-conditional model's label; default: the first).
    pub class: Option<u32>,
    /// The guidance scale at start (default: the model's).
    pub guidance: Option<f64>,
}

/// Opens the viewer window on `session` (or on the error that kept it from opening) and runs
/// until the window closes.
///
/// When the session computes on wgpu with a shared setup
/// ([`crate::device::choose_shared`]), the window renders with that same device and queue.
pub fn run(session: anyhow::Result<crate::session::Session>, start: Start) -> Result<(), eframe::Error> {
    // The engine's parallel loops run on rayon's global pool: its threads yield to the
    // interface too, as the job threads do ([`crate::jobs::yield_to_the_interface`]). An error
    // means the pool was already built (by a caller that chose its own): that one is kept.
    let _ = rayon::ThreadPoolBuilder::new()
        .start_handler(|_| crate::jobs::yield_to_the_interface())
        .build_global();
    let mut wgpu_options = eframe::egui_wgpu::WgpuConfiguration::default();
    if let Some(setup) = session.as_ref().ok().and_then(|s| s.device.wgpu_setup.clone()) {
        wgpu_options.wgpu_setup = shared_setup(setup);
    }
    let options = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_inner_size([1280.0, 820.0])
            .with_title("retrace")
            .with_drag_and_drop(true),
        renderer: eframe::Renderer::Wgpu,
        wgpu_options,
        ..Default::default()
    };
    eframe::run_native(
        "retrace",
        options,
        Box::new(move |cc| Ok(Box::new(RetraceApp::new(cc, session).with_start(start)))),
    )
}

/// eframe's description of burn's wgpu handles, so the window renders with burn's device.
pub fn shared_setup(setup: crate::device::WgpuSetup) -> eframe::egui_wgpu::WgpuSetup {
    eframe::egui_wgpu::WgpuSetup::Existing(eframe::egui_wgpu::WgpuSetupExisting {
        instance: setup.instance,
        adapter: setup.adapter,
        device: setup.device,
        queue: setup.queue,
    })
}

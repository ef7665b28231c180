//! The viewer's state and layout: a status bar, the query and methods panels on the left, and
//! the ranking, per-timestep and comparison views in the centre. Background jobs are polled
//! once per frame; their results land in a cache keyed by (query, method, parameters).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::textures::Thumbnails;
use crate::attribution::Parameters;
use crate::attribution::{MethodSettings, Query, Scores};
use crate::data::pixels::unit_to_bytes;
use crate::jobs::{BackgroundJob, JobError, Progress};
use crate::report::scores_file::{scores_file, write_scores_file};
use crate::session::Session;

/// A query the user has worked on.
pub struct QueryEntry {
    /// The query in the model's format.
    pub query: Query,
    /// Its pixels as bytes (C×H×W), for display.
    pub bytes: Vec<u8>,
    /// Short label for the history list.
    pub label: String,
}

/// Which view fills the centre.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    /// The ranked training images of one method.
    Ranking,
    /// Per-timestep influence plots.
    Timesteps,
    /// Methods side by side.
    Compare,
    /// LDS of every method against the benchmark's retraining ground truth.
    Evaluation,
}

/// The background work in flight (one at a time).
pub enum Work {
    /// Sampling a query, with the live preview's latest frame.
    Generate(BackgroundJob<Query>, Arc<Mutex<Option<Vec<u8>>>>),
    /// Ranking the training images for a query of the history.
    Attribute(Ranking),
}

/// A ranking in flight, and what it was started with (the user may paint, switch query or
/// change parameters meanwhile).
pub struct Ranking {
    /// The job.
    pub job: BackgroundJob<Vec<Scores>>,
    /// The query's place in the history.
    pub query: usize,
    /// The methods and parameters asked for.
    pub request: MethodSettings,
    /// The cache key of every requested method.
    pub keys: HashMap<String, String>,
    /// The notice when the job started: a ranking that succeeds clears it (it was about an
    /// earlier attempt), but not a notice raised while it ran (a file that could not be read).
    pub notice_before: Option<String>,
}

impl Work {
    /// The job's title and progress.
    pub fn status(&self) -> (&str, Progress, f64) {
        match self {
            Work::Generate(j, _) => (&j.title, j.progress(), j.elapsed()),
            Work::Attribute(r) => (&r.job.title, r.job.progress(), r.job.elapsed()),
        }
    }

    /// Asks the job to stop.
    pub fn cancel(&self) {
        match self {
            Work::Generate(j, _) => j.cancel.cancel(),
            Work::Attribute(r) => r.job.cancel.cancel(),
        }
    }
}

/// The methods ticked when the viewer opens.
pub const DEFAULT_METHODS: [&str; 2] = ["retrac", "kfac"];

/// The whole viewer state.
pub struct RetraceApp {
    /// The engine session (or why it could not open).
    pub session: Result<Arc<Session>, Arc<anyhow::Error>>,
    /// Queries worked on, oldest first.
    pub history: Vec<QueryEntry>,
    /// Index of the current query in `history`.
    pub current: Option<usize>,
    /// Sampler settings of the next generated query.
    pub sampler: crate::diffusion::SamplerConfig,
    /// Seed of the next generated query.
    pub seed: u64,
    /// The class label the next sample is generated for, and a loaded image is attributed
    /// under (a class-conditional model; unconditional models ignore it).
    pub class: u32,
    /// Which training/held-out image to pick as a query.
    pub pick_index: usize,
    /// Pick from the held-out split rather than the training set.
    pub pick_held_out: bool,
    /// Methods (registry names, ensembles the user added among them) and whether they are
    /// ticked in the methods panel.
    pub selected_methods: Vec<(String, bool)>,
    /// The methods' parameter values.
    pub parameters: Parameters,
    /// The Journey-TRAK scrubber's position (0 = the noisiest attributed step).
    pub journey_step: usize,
    /// Whether dragging on the query paints its region.
    pub painting: bool,
    /// Radius of the region brush in image pixels.
    pub brush: f32,
    /// The job in flight.
    pub work: Option<Work>,
    /// The index being built in the background (started at launch when it is not complete).
    /// Queries can be made meanwhile; ranking with methods that read the index waits for it.
    pub indexing: Option<BackgroundJob<()>>,
    /// Cached scores by (query, method, parameters).
    pub cache: HashMap<(usize, String, String), Scores>,
    /// The method whose ranking is shown.
    pub shown_method: Option<String>,
    /// Methods compared side by side.
    pub compared: Vec<String>,
    /// Ranks shown per method in the comparison.
    pub compare_rows: usize,
    /// The training image opened in the detail view.
    pub selected_train: Option<usize>,
    /// Training images whose curves the timestep view plots.
    pub plotted: Vec<usize>,
    /// The centre view.
    pub view: View,
    /// Images per side (proponents, opponents) in the ranking grid.
    pub top_k: usize,
    /// The last error or notice for the user.
    pub notice: Option<String>,
    /// Training-image textures.
    pub thumbnails: Thumbnails,
    /// Recent frame times (for the status bar).
    pub frame_times: super::frame_times::FrameTimes,
    /// Show the frame time in the status bar (off for reproducible snapshots).
    pub show_frame_time: bool,
    /// The window renders with the very wgpu device burn computes on.
    pub renderer_shared: bool,
    /// Index settings being edited in the methods panel (applied with
    /// [`Self::apply_index_settings`]); `None` without a session.
    pub index_draft: Option<crate::index::IndexSettings>,
    /// Reports being written off the UI thread.
    pub exports: Vec<BackgroundJob<String>>,
    /// Image files being read as queries off the UI thread, with their file names.
    pub loads: Vec<(BackgroundJob<Query>, String)>,
    /// An evaluation table dropped on the window, being read off the UI thread.
    pub evaluation_load: Option<BackgroundJob<crate::eval::table::EvalReport>>,
    /// The evaluation table the Evaluation tab and Compare read (loaded when first needed).
    pub evaluation: Option<Result<crate::eval::table::EvalReport, Arc<JobError>>>,
    /// The file it comes from (the headline bundled table until another is chosen or dropped).
    pub evaluation_path: std::path::PathBuf,
    /// The context to repaint when background work reports.
    repaint: egui::Context,
}

impl RetraceApp {
    /// A viewer on `session`; with no session, the window explains why.
    pub fn new(cc: &eframe::CreationContext<'_>, session: anyhow::Result<Session>) -> Self {
        let ctx = &cc.egui_ctx;
        ctx.set_theme(egui::Theme::Dark);
        let renderer_shared = match (&session, &cc.wgpu_render_state) {
            (Ok(s), Some(render)) => s.device.wgpu_setup.as_ref().is_some_and(|w| w.device == render.device),
            _ => false,
        };
        let sampler = session.as_ref().map_or_else(
            |_| crate::diffusion::SamplerConfig::new(crate::diffusion::SamplerKind::Ddim, 50),
            Session::default_sampler,
        );
        let mut app = Self {
            session: session.map(Arc::new).map_err(Arc::new),
            history: Vec::new(),
            current: None,
            sampler,
            seed: 0,
            class: 0,
            pick_index: 0,
            pick_held_out: true,
            selected_methods: crate::session::method_names()
                .into_iter()
                .map(|m| {
                    let on = DEFAULT_METHODS.contains(&m.as_str());
                    (m, on)
                })
                .collect(),
            parameters: Parameters::default(),
            journey_step: 0,
            painting: false,
            brush: 2.5,
            work: None,
            indexing: None,
            cache: HashMap::new(),
            shown_method: None,
            compared: DEFAULT_METHODS.map(String::from).to_vec(),
            compare_rows: 12,
            selected_train: None,
            plotted: Vec::new(),
            view: View::Ranking,
            top_k: 24,
            notice: None,
            thumbnails: Thumbnails::default(),
            frame_times: Default::default(),
            show_frame_time: true,
            renderer_shared,
            index_draft: None,
            exports: Vec::new(),
            loads: Vec::new(),
            evaluation_load: None,
            evaluation: None,
            evaluation_path: crate::session::bundled_evaluation(),
            repaint: ctx.clone(),
        };
        app.index_draft = app.session.as_ref().ok().map(|s| s.index.clone());
        app.notice = app.session.as_ref().ok().and_then(|s| s.model.unverified_data(&s.data));
        app.ensure_index();
        app
    }

    /// Applies the start settings: ticks `start.methods` (adding ensembles among them to the
    /// list) and takes its parameters, class and guidance scale.
    pub fn with_start(mut self, start: super::Start) -> Self {
        if !start.methods.is_empty() {
            for (m, on) in &mut self.selected_methods {
                *on = start.methods.contains(m);
            }
            for m in &start.methods {
                if !self.selected_methods.iter().any(|(s, _)| s == m) {
                    self.selected_methods.push((m.clone(), true));
                }
            }
            self.compared = start.methods.clone();
        }
        self.parameters = start.parameters;
        if let Some(class) = start.class {
            self.class = class;
        }
        if let Some(guidance) = start.guidance {
            self.sampler.guidance_scale = guidance;
        }
        self
    }

    /// Starts building the index in the background when it is missing or partial, so the
    /// first ranking need not wait for it (cancelling keeps the finished chunks).
    fn ensure_index(&mut self) {
        if let Ok(session) = &self.session
            && session.index_state() != crate::session::IndexState::Ready
        {
            self.indexing = Some(session.build_index(Self::waker(&self.repaint)));
        }
    }

    /// Switches the session to the edited index settings ([`Self::index_draft`]): their own
    /// index directory beside the current one, built in the background if it is not complete.
    /// Rankings made under other settings stay cached under those settings.
    pub fn apply_index_settings(&mut self) {
        let (Ok(session), Some(draft)) = (self.session.clone(), self.index_draft.clone()) else {
            return;
        };
        if self.work.is_some() {
            self.notice = Some("wait for the running job (or cancel it) before changing the index".into());
            return;
        }
        match draft.relocated() {
            Ok(settings) => {
                if let Some(job) = self.indexing.take() {
                    job.cancel.cancel();
                }
                self.index_draft = Some(settings.clone());
                self.session = Ok(Arc::new(session.with_index(settings)));
                self.selected_train = None;
                self.plotted.clear();
                self.ensure_index();
            }
            Err(e) => self.notice = Some(format!("cannot use these index settings: {e}")),
        }
    }

    /// Adds a query to the history and makes it current.
    pub fn push_query(&mut self, query: Query, label: String) {
        let bytes = unit_to_bytes(&query.pixels);
        self.history.push(QueryEntry { query, bytes, label });
        self.current = Some(self.history.len() - 1);
        self.selected_train = None;
        self.plotted.clear();
    }

    /// The parameters a method's cached scores are keyed by: the index settings (for methods
    /// that use the index) and the values of the method's parameters.
    pub fn parameters_key(&self, method: &str) -> String {
        let Ok(m) = crate::session::method_info(method) else {
            return String::new();
        };
        let index = match &self.session {
            Ok(s) if m.needs.index => s.index.slug(),
            _ => String::new(),
        };
        format!(
            "{index} {} {}",
            self.parameters.describe(&m.parameters),
            self.region_key()
        )
    }

    /// The current query's region, as a short fingerprint ("whole" without one): a painted
    /// region is another question, so its scores are cached apart.
    pub fn region_key(&self) -> String {
        let region = self
            .current
            .and_then(|q| self.history.get(q))
            .and_then(|e| e.query.mask.as_ref());
        match region {
            None => "whole".into(),
            Some(weights) => {
                let bytes: Vec<u8> = weights.iter().flat_map(|w| w.to_le_bytes()).collect();
                format!("region {}", &crate::files::sha256(&bytes)[..12])
            }
        }
    }

    /// The method's LDS on the benchmark (held-out and generated queries), for the viewer's
    /// index setting (query draws shared with the training images or not), if evaluated.
    pub fn method_lds(&mut self, method: &str) -> Option<(f64, f64)> {
        let shared = self.session.as_ref().ok()?.index.plan.shared_noise;
        let label = crate::session::evaluation_label(method, &self.parameters, shared);
        let report = self.evaluation_table().as_ref().ok()?;
        let row = report.methods.iter().find(|r| r.method == label)?;
        Some((row.held_out.lds, row.generated.lds))
    }

    /// The evaluation table the Evaluation tab and the methods' LDS read: the one loaded, else
    /// the bundled benchmark's, read once (or why it could not be read).
    pub fn evaluation_table(&mut self) -> &Result<crate::eval::table::EvalReport, Arc<JobError>> {
        self.evaluation.get_or_insert_with(|| {
            crate::session::load_evaluation(&self.evaluation_path).map_err(|e| Arc::new(JobError::from_job(e)))
        })
    }

    /// Scores of `method` for the current query, if computed.
    pub fn scores(&self, method: &str) -> Option<&Scores> {
        let q = self.current?;
        self.cache.get(&(q, method.to_owned(), self.parameters_key(method)))
    }

    /// Every computed method for the current query, in the methods panel's order.
    pub fn computed_methods(&self) -> Vec<String> {
        self.selected_methods
            .iter()
            .map(|(m, _)| m.clone())
            .filter(|m| self.scores(m).is_some())
            .collect()
    }

    /// Writes the report of the current query and every method computed for it to `path`
    /// (atomically, off the UI thread) as HTML or PDF, as its extension says; the notice says
    /// where once it is written ([`Self::wait_for_exports`] blocks until then).
    pub fn export_report(&mut self, path: &std::path::Path) {
        let (Ok(session), Some(q)) = (&self.session, self.current) else {
            return;
        };
        let methods: Vec<Scores> = self
            .computed_methods()
            .into_iter()
            .filter_map(|m| self.scores(&m).cloned())
            .collect();
        if methods.is_empty() {
            self.notice = Some("run a method first: there is nothing to report".into());
            return;
        }
        let session = session.clone();
        let entry = &self.history[q];
        let (query, description) = (entry.bytes.clone(), entry.query.description.clone());
        let region = entry.query.mask.clone();
        let (top_k, path) = (self.top_k, path.to_path_buf());
        let job = BackgroundJob::spawn(
            format!("writing {}", path.display()),
            Self::waker(&self.repaint),
            move |_| {
                let model = session.model.root.display().to_string();
                let input = crate::report::ReportInput {
                    query: &query,
                    query_description: &description,
                    region: region.as_deref(),
                    data: &session.data,
                    methods: &methods,
                    top_k,
                    device: &session.device.name,
                    model: &model,
                };
                crate::report::write_report(&path, &input).map(|()| format!("report written to {}", path.display()))
            },
        );
        self.exports.push(job);
    }

    /// Collects the reports that have been written, saying so (or what failed) in the notice.
    fn poll_exports(&mut self) {
        for job in std::mem::take(&mut self.exports) {
            match job.poll() {
                None => self.exports.push(job),
                Some(Ok(message)) => self.notice = Some(message),
                Some(Err(JobError::Cancelled)) => {}
                Some(Err(e)) => self.notice = Some(format!("cannot write the report: {e}")),
            }
        }
    }

    /// Adds the image files that have been read to the history (the last one read becomes the
    /// current query) and says how each was converted, or why it could not be read. A load the
    /// user cancelled is dropped at once (its thread finishes unseen).
    fn poll_loads(&mut self) {
        for (job, name) in std::mem::take(&mut self.loads) {
            if job.cancel.is_cancelled() {
                self.notice = Some(format!("stopped reading {name}"));
                continue;
            }
            match job.poll() {
                None => self.loads.push((job, name)),
                Some(Ok(mut query)) => {
                    query.condition = self.condition();
                    self.notice = Some(query.description.clone());
                    self.push_query(query, name);
                }
                Some(Err(JobError::Cancelled)) => self.notice = Some(format!("stopped reading {name}")),
                Some(Err(e)) => self.notice = Some(e.to_string()),
            }
        }
    }

    /// How far the session's index is ([`Session::index_state`]); `None` without a session.
    pub fn index_state(&self) -> Option<crate::session::IndexState> {
        Some(self.session.as_ref().ok()?.index_state())
    }

    /// Starts reading the evaluation table at `path` (as `retrace eval lds --out` writes it) for
    /// the Evaluation tab, off the UI thread; the tab shows it, or why it could not be read.
    pub fn load_evaluation(&mut self, path: &std::path::Path) {
        let path = path.to_owned();
        self.evaluation_path = path.clone();
        let title = format!("reading {}", crate::files::file_name(&path));
        self.evaluation_load = Some(BackgroundJob::spawn(title, Self::waker(&self.repaint), move |_| {
            crate::session::load_evaluation(&path)
        }));
        self.view = View::Evaluation;
    }

    /// Takes the evaluation table once it has been read.
    fn poll_evaluation_load(&mut self) {
        let Some(outcome) = self.evaluation_load.as_ref().and_then(|j| j.poll()) else {
            return;
        };
        self.evaluation_load = None;
        match outcome {
            Ok(report) => self.evaluation = Some(Ok(report)),
            Err(JobError::Cancelled) => {}
            Err(e) => self.evaluation = Some(Err(Arc::new(e))),
        }
    }

    /// Whether any background work is under way: a job, the index build, an image being read
    /// or a report being written.
    pub fn busy(&self) -> bool {
        self.work.is_some()
            || self.indexing.is_some()
            || self.evaluation_load.is_some()
            || !self.loads.is_empty()
            || !self.exports.is_empty()
    }

    /// The context background jobs repaint.
    pub fn repaint_context(&self) -> egui::Context {
        self.repaint.clone()
    }

    /// Blocks until every report being written is written (for tests and scripts).
    pub fn wait_for_exports(&mut self) {
        while !self.exports.is_empty() {
            self.poll_exports();
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// Writes every computed method's scores for the current query to `path`: CSV when it ends
    /// in `.csv`, else the JSON file `retrace attribute` writes (which `retrace report` reads).
    pub fn export_scores(&mut self, path: &std::path::Path) {
        let (Ok(session), Some(q)) = (&self.session, self.current) else {
            return;
        };
        let scores: Vec<Scores> = self
            .computed_methods()
            .into_iter()
            .filter_map(|m| self.scores(&m).cloned())
            .collect();
        if scores.is_empty() {
            self.notice = Some("run a method first: there are no scores to export".into());
            return;
        }
        let query = &self.history[q].query;
        let file = scores_file(
            &session.model.root,
            &session.data,
            query,
            None,
            &session.device.name,
            &scores,
        );
        self.notice = Some(match write_scores_file(path, &file) {
            Ok(()) => format!("scores written to {}", path.display()),
            Err(e) => format!("cannot write the scores: {e}"),
        });
    }

    /// A wake-up call for background jobs: repaint this context.
    pub fn waker(ctx: &egui::Context) -> impl Fn() + Send + Sync + Clone + 'static {
        let ctx = ctx.clone();
        move || ctx.request_repaint()
    }

    /// The ticked methods whose scores for the current query are not cached yet: what Run
    /// computes.
    pub fn methods_to_run(&self) -> Vec<String> {
        let Some(q) = self.current else { return Vec::new() };
        self.selected_methods
            .iter()
            .filter(|(m, on)| *on && !self.cache.contains_key(&(q, m.clone(), self.parameters_key(m))))
            .map(|(m, _)| m.clone())
            .collect()
    }

    /// Whether Run must wait for the index build: some method it would compute reads the index
    /// (pixel distance and MUCS do not).
    pub fn run_waits_for_index(&self) -> bool {
        let needs_index = |name: &str| crate::session::method_info(name).map(|m| m.needs.index).unwrap_or(true);
        self.indexing.is_some() && self.methods_to_run().iter().any(|m| needs_index(m))
    }

    /// Whether Run can start: a query, no job in flight, and no wait for the index build.
    pub fn can_run(&self) -> bool {
        self.current.is_some() && self.work.is_none() && !self.run_waits_for_index()
    }

    /// Starts ranking the current query with the ticked methods that are not cached yet.
    pub fn run_methods(&mut self, ctx: &egui::Context) {
        let (Ok(session), Some(q)) = (&self.session, self.current) else {
            return;
        };
        if !self.can_run() {
            return;
        }
        let wanted = self.methods_to_run();
        if wanted.is_empty() {
            self.shown_method = self.selected_methods.iter().find(|(_, on)| *on).map(|(m, _)| m.clone());
            return;
        }
        let request = MethodSettings {
            methods: wanted,
            parameters: self.parameters.clone(),
        };
        let job = session.attribute(self.history[q].query.clone(), request.clone(), Self::waker(ctx));
        let keys = request
            .methods
            .iter()
            .map(|m| (m.clone(), self.parameters_key(m)))
            .collect();
        self.work = Some(Work::Attribute(Ranking {
            job,
            query: q,
            request,
            keys,
            notice_before: self.notice.clone(),
        }));
    }

    /// The condition the class picker stands for: its class for a class-conditional model.
    pub fn condition(&self) -> crate::diffusion::Condition {
        match &self.session {
            Ok(session) if session.classes().is_some() => crate::diffusion::Condition::Class(self.class),
            _ => crate::diffusion::Condition::Unconditional,
        }
    }

    /// Starts sampling a new query with the current seed, class and sampler.
    pub fn generate(&mut self, ctx: &egui::Context) {
        let Ok(session) = &self.session else { return };
        if self.work.is_some() {
            return;
        }
        let frame = Arc::new(Mutex::new(None));
        let sink = frame.clone();
        let wake = Self::waker(ctx);
        let job = session.generate(self.seed, self.condition(), self.sampler.clone(), wake, move |bytes| {
            if let Ok(mut f) = sink.lock() {
                *f = Some(bytes);
            }
        });
        self.work = Some(Work::Generate(job, frame));
    }

    /// Collects the outcome of the index build, if it has ended.
    fn poll_indexing(&mut self) {
        let Some(outcome) = self.indexing.as_ref().and_then(|j| j.poll()) else {
            return;
        };
        self.indexing = None;
        match outcome {
            Ok(()) => {}
            Err(JobError::Cancelled) => self.notice = Some("index build paused; the next ranking resumes it".into()),
            Err(e) => self.notice = Some(e.to_string()),
        }
    }

    /// Collects the outcome of the job in flight, if it has ended.
    pub fn poll_work(&mut self) {
        self.poll_indexing();
        self.poll_exports();
        self.poll_loads();
        self.poll_evaluation_load();
        let Some(work) = self.work.take() else { return };
        match work {
            Work::Generate(job, frame) => match job.poll() {
                None => self.work = Some(Work::Generate(job, frame)),
                Some(Ok(query)) => {
                    let label = format!(
                        "seed {} ({:?}, {} steps)",
                        self.seed, self.sampler.kind, self.sampler.steps
                    );
                    self.push_query(query, label);
                    self.seed += 1;
                }
                Some(Err(JobError::Cancelled)) => self.notice = Some("sampling cancelled".into()),
                Some(Err(e)) => self.notice = Some(e.to_string()),
            },
            Work::Attribute(ranking) => match ranking.job.poll() {
                None => self.work = Some(Work::Attribute(ranking)),
                Some(Ok(scores)) => {
                    let Ranking {
                        query,
                        request,
                        keys,
                        notice_before,
                        ..
                    } = ranking;
                    for s in scores {
                        let Some(key) = keys.get(&s.method) else { continue };
                        self.cache.insert((query, s.method.clone(), key.clone()), s);
                    }
                    if self.shown_method.as_ref().is_none_or(|m| !request.methods.contains(m)) {
                        self.shown_method = request.methods.first().cloned();
                    }
                    if self.notice == notice_before {
                        self.notice = None;
                    }
                }
                Some(Err(JobError::Cancelled)) => {
                    self.notice = Some("ranking cancelled; finished index chunks are kept".into())
                }
                Some(Err(e)) => self.notice = Some(e.to_string()),
            },
        }
    }
}

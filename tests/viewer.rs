//! The desktop viewer driven through egui_kittest (rendered with wgpu; lavapipe in CI): pick a
//! query, rank with ReTrac and K-FAC, see the ranking grid, open a training image's detail view,
//! the per-timestep plots and the comparison, export HTML and PDF reports and the scores; and,
//! on a wgpu device shared with the renderer, generate a sample and drop an image file.

use crate::common;

use std::time::{Duration, Instant};

use egui_kittest::Harness;
use egui_kittest::kittest::Queryable;
use retrace::app::RetraceApp;
use retrace::device::{BackendKind, ComputeDevice};
use retrace::grad::{ProjectionConfig, TimestepPlan};
use retrace::index::Storage;
use retrace::index::{CheckpointChoice, IndexSettings};
use retrace::session::Session;

fn session(root: &std::path::Path) -> Session {
    let data = common::small_data();
    let model = common::bundled_model_for(&data, &root.join("model"));
    let held_out = retrace::data::Dataset::load(&retrace::data::DataSpec::bundled(retrace::data::Split::Test)).ok();
    Session::new(
        model,
        data,
        held_out,
        IndexSettings {
            dir: root.join("index"),
            plan: TimestepPlan::new(1000, 4, 1, 0).unwrap(),
            projection: ProjectionConfig::default(),
            checkpoints: CheckpointChoice::Last,
            storage: Storage::F32,
            measurement: retrace::diffusion::Measurement::Loss,
            batch_size: 16,
            chunk_size: 20,
        },
        ComputeDevice {
            device: common::cpu(),
            backend: BackendKind::Flex,
            name: "CPU (flex)".into(),
            reason: "test".into(),
            wgpu_setup: None,
        },
    )
}

/// An evaluation table with three rows, as `retrace eval lds --out` writes them, and a
/// regeneration section (the fuzz campaign of results files starts from it too).
pub fn evaluation_table() -> retrace::eval::table::EvalReport {
    use retrace::eval::lds::Interval;
    let interval = |v: f64| Interval {
        lds: v,
        ci95: [v - 0.1, v + 0.1],
        queries: 16,
    };
    let row = |name: &str, held_out: f64, generated: f64| retrace::eval::table::RowResult {
        method: name.into(),
        held_out: interval(held_out),
        generated: interval(generated),
        seconds_per_query: 0.5,
        per_query: Vec::new(),
        generally_influential: retrace::stats::TopKSpread {
            k: 10,
            queries: 16,
            distinct: 100,
            top10_share: 0.2,
        },
    };
    retrace::eval::table::EvalReport {
        benchmark: "test".into(),
        half: retrace::eval::QueryHalf::Report,
        ceiling: 0.6,
        ceiling_by_kind: vec![0.7, 0.5],
        subsets: 64,
        complete: true,
        index: "last-b10x1-k8x8-s0-per-example-f32".into(),
        remove_top_k: None,
        regenerate: Some(regeneration(&interval)),
        methods: vec![
            row("retrac+shared", 0.41, 0.12),
            row("kfac+shared", 0.35, 0.05),
            row("pixel", 0.1, 0.0),
        ],
    }
}

/// A regeneration section with two rows (a method and random) on 1×28×28 samples.
fn regeneration(
    interval: &dyn Fn(f64) -> retrace::eval::lds::Interval,
) -> retrace::eval::regenerate::RegenerationReport {
    use retrace::eval::regenerate::{
        CHANGE_METRICS, ChangeSummary, RegenerationExample, RegenerationReport, RegenerationRow, StoredImage,
    };
    let summary = |change: f64, ratio: Option<f64>| ChangeSummary {
        change: interval(change),
        ratio_to_random: ratio.map(interval),
        auc: ratio.map(|_| interval(0.7)),
    };
    let row = |name: &str, ratio: Option<f64>| RegenerationRow {
        method: name.into(),
        removed: 300.0,
        targets: (0..4).map(|_| summary(0.2, ratio)).collect(),
        controls: (0..4).map(|_| summary(0.1, ratio)).collect(),
        loss_increase: interval(0.05),
    };
    let image = |v: u8| StoredImage(vec![v; 784]);
    RegenerationReport {
        k: 20,
        targets: (20..40).collect(),
        controls: (0..20).collect(),
        seeds: vec![0, 1],
        retraining: retrace::eval::retraining::Retraining::Matched,
        metrics: CHANGE_METRICS.iter().map(|m| m.to_string()).collect(),
        different_sample: vec![0.5; 4],
        rows: vec![row("kfac+shared", Some(1.8)), row("random", None)],
        example: RegenerationExample {
            query: 20,
            description: "sample of the full-data model, seed 10, T-shirt/top".into(),
            shape: [1, 28, 28],
            before: image(10),
            after: vec![("kfac+shared".into(), image(200)), ("random".into(), image(30))],
        },
    }
}

/// Steps the UI until no background work is under way (or fails the test after `limit`).
fn until_idle(harness: &mut Harness<'_, RetraceApp>, limit: Duration) {
    let start = Instant::now();
    loop {
        harness.step();
        if !harness.state().busy() {
            break;
        }
        assert!(start.elapsed() < limit, "the job did not finish within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    harness.run_steps(3);
}

#[test]
fn pick_a_query_rank_with_retrac_open_a_detail_view_and_export() {
    let tmp = tempfile::tempdir().unwrap();
    let session = session(tmp.path());
    // Tall enough for the left panel of a class-conditional model (class picker and guidance
    // slider) to show the index settings' Apply button without scrolling.
    let mut harness = Harness::builder()
        .with_size(egui::vec2(1280.0, 960.0))
        .with_max_steps(8)
        .wgpu()
        .build_eframe(|cc| RetraceApp::new(cc, Ok(session)));
    harness.state_mut().show_frame_time = false;
    assert!(
        harness.state().indexing.is_some(),
        "the missing index starts building at launch"
    );
    harness.run_steps(2);

    // Pick held-out image 0 as the query; rank with ReTrac and K-FAC (a small curvature fit).
    harness.get_by_label("Use").click();
    harness.run_steps(2);
    assert_eq!(harness.state().history.len(), 1);
    harness.state_mut().parameters.set("fit-images", "4").unwrap();
    until_idle(&mut harness, Duration::from_secs(300));
    assert_eq!(harness.state().notice, None, "the index was built");
    let ticked: Vec<String> = harness
        .state()
        .selected_methods
        .iter()
        .filter(|(_, on)| *on)
        .map(|(m, _)| m.clone())
        .collect();
    assert_eq!(ticked, ["retrac", "kfac"], "the default methods");
    harness.get_by_label("Run").click();
    harness.step();
    assert!(harness.state().work.is_some(), "Run starts a background job");
    until_idle(&mut harness, Duration::from_secs(300));
    assert_eq!(harness.state().notice, None);
    assert!(harness.state().scores("retrac").is_some());
    assert!(harness.state().scores("kfac").is_some());
    assert_eq!(harness.state().shown_method.as_deref(), Some("retrac"));

    // The grid shows the top and bottom `top_k` of the 40 training images.
    let shown = harness.query_all_by_label_contains("training image #").count();
    let top_k = harness.state().top_k.min(40);
    assert_eq!(shown, 2 * top_k, "proponents and opponents");

    // Click the best-ranked image: the detail view opens with its per-timestep curve.
    let best = harness.state().scores("retrac").unwrap().ranking()[0];
    let id = harness.state().session.as_ref().unwrap().data.ids[best];
    harness
        .get_all_by_label(&format!("training image #{id}"))
        .next()
        .unwrap()
        .click();
    harness.run_steps(3);
    assert_eq!(harness.state().selected_train, Some(best));
    harness.get_by_label(&format!("Training image #{id}"));
    harness.get_by_label_contains("per timestep bucket");

    // The per-timestep view: the selected images' curves and the query's gradient norms.
    harness.get_by_label("Per-timestep").click();
    harness.run_steps(3);
    harness.get_by_label_contains("retrac: score per timestep bucket of");
    harness.get_by_label_contains("Query gradient norm per bucket");
    // Compare: ReTrac and K-FAC side by side with their agreement.
    harness.get_by_label("Compare").click();
    harness.run_steps(3);
    harness.get_by_label("Agreement");
    harness.get_by_label("retrac / kfac");
    harness.get_by_label_contains("Labels among each method's top");
    // Compare and the Evaluation tab read the evaluation table (here a made-up one; the
    // session's index shares the query's draws, so the `+shared` rows are its methods').
    harness.state_mut().evaluation = Some(Ok(evaluation_table()));
    harness.run_steps(3);
    harness.get_by_label("LDS 0.41 / 0.12");
    harness.get_by_label("Evaluation").click();
    harness.run_steps(3);
    harness.get_by_label("LDS held-out");
    // In the LDS table, and again in the regeneration's strip and table.
    assert!(harness.get_all_by_label("kfac+shared").count() >= 3);
    harness.get_by_label("[0.310, 0.510]");
    harness.get_by_label_contains("ceiling: seed-to-seed Spearman 0.600");
    // Regeneration: the sample before and after each removal, and each method's change.
    harness.get_by_label("regenerated: before");
    harness.get_by_label("regenerated: kfac+shared");
    harness.get_by_label_contains("sample of the full-data model, seed 10, T-shirt/top: before");
    assert_eq!(harness.get_all_by_label("1.80 [1.70, 1.90]").count(), 4);
    harness.get_by_label("Ranking").click();
    harness.run_steps(3);
    // The report holds the query and each side's images, inlined, and the method's name.
    let tmp_report = tmp.path().join("report.html");
    harness.state_mut().export_report(&tmp_report);
    harness.state_mut().wait_for_exports();
    let html = std::fs::read_to_string(&tmp_report).unwrap();
    harness.state_mut().notice = None;
    assert_eq!(html.matches("data:image/png;base64,").count(), 1 + 2 * 2 * top_k);
    for section in ["<h2>retrac</h2>", "<h2>kfac</h2>", "<h2>Agreement</h2>", "<svg"] {
        assert!(html.contains(section), "the report has {section}");
    }

    // The PDF report: one image object per distinct image shown (the query, and of the 40
    // training images those among the top and bottom `top_k`).
    let pdf_path = tmp.path().join("report.pdf");
    harness.state_mut().export_report(&pdf_path);
    harness.state_mut().wait_for_exports();
    assert_eq!(
        harness.state().notice.as_deref(),
        Some(format!("report written to {}", pdf_path.display()).as_str())
    );
    harness.state_mut().notice = None;
    let pdf = std::fs::read(&pdf_path).unwrap();
    assert!(pdf.starts_with(b"%PDF-"));
    let images = retrace::report::pdf::count_pdf_names(&pdf, "/Subtype/Image");
    assert_eq!(images, 1 + (2 * top_k).min(40), "the query and both sides' images");

    // The scores export is the file `retrace attribute` writes, query image included.
    let scores_path = tmp.path().join("scores.json");
    harness.state_mut().export_scores(&scores_path);
    let file: retrace::attribution::scores::AttributionFile =
        serde_json::from_slice(&std::fs::read(&scores_path).unwrap()).unwrap();
    assert_eq!(file.methods.len(), 2);
    assert_eq!(file.methods[0].ranking.len(), 40);
    assert_eq!(file.methods[0].ranking[0].id, id);
    assert!(
        file.query["image"]
            .as_str()
            .unwrap()
            .starts_with("data:image/png;base64,")
    );
    harness.state_mut().notice = None;

    // A painted region is another question: its rankings are cached apart from the whole
    // image's, differ from them, and clearing the region brings the whole-image ones back.
    let whole = harness.state().scores("retrac").unwrap().clone();
    harness.get_by_label("Paint region").click();
    harness.run_steps(2);
    let q = harness.state().current.unwrap();
    assert!(retrace::app::region::paint(
        harness.state_mut(),
        q,
        [14.0, 10.0],
        6.0,
        1.0
    ));
    harness.run_steps(2);
    harness.get_by_label_contains("attributed region: ");
    assert!(
        harness.state().scores("retrac").is_none(),
        "the region has no ranking yet"
    );
    harness.get_by_label("Run").click();
    harness.step();
    until_idle(&mut harness, Duration::from_secs(300));
    assert_eq!(harness.state().notice, None);
    let region = harness.state().scores("retrac").unwrap().clone();
    assert_ne!(region.per_bucket, whole.per_bucket);
    harness.get_by_label("Clear region").click();
    harness.get_by_label("Paint region").click();
    harness.run_steps(2);
    assert_eq!(harness.state().scores("retrac"), Some(&whole));

    // Tolerate the small rasterisation differences of another CPU under lavapipe; a changed
    // layout or missing panel still fails.
    let options = egui_kittest::SnapshotOptions::new()
        .threshold(1.0)
        .max_failed_pixels(2000);
    harness.snapshot_options("viewer_ranking_detail", &options);

    // Index settings: 2 buckets instead of 4 is another index beside the first, built in the
    // background; the 4-bucket rankings stay cached under their own settings.
    harness.get_by_label("Index settings").click();
    harness.run_steps(2);
    harness.state_mut().index_draft.as_mut().unwrap().plan.buckets = 2;
    harness.run_steps(2);
    harness.get_by_label("Apply index settings").click();
    harness.run_steps(2);
    let index = harness.state().session.as_ref().unwrap().index.clone();
    assert_eq!(index.plan.buckets, 2);
    assert_eq!(index.dir, tmp.path().join(index.slug()));
    assert!(index.slug().contains("-b2x1-"), "{}", index.slug());
    assert!(
        harness.state().indexing.is_some(),
        "the new index builds in the background"
    );
    assert!(harness.state().scores("retrac").is_none());
    until_idle(&mut harness, Duration::from_secs(300));
    for (m, on) in &mut harness.state_mut().selected_methods {
        *on = m == "retrac";
    }
    // Unticking K-FAC folds its settings away and moves the Run button: lay out first.
    harness.run_steps(2);
    harness.get_by_label("Run").click();
    harness.step();
    until_idle(&mut harness, Duration::from_secs(300));
    assert_eq!(harness.state().notice, None);
    assert_eq!(harness.state().scores("retrac").unwrap().buckets.len(), 2);
}

/// On wgpu (lavapipe here, a GPU in use), burn computes on the device the window renders with:
/// generate a sample and watch it denoise, then drop an image file on the window as the query.
#[test]
fn on_a_shared_wgpu_device_generate_a_sample_then_drop_an_image() {
    let tmp = tempfile::tempdir().unwrap();
    let mut session = session(tmp.path());
    session.device = common::shared_wgpu().clone();
    let setup = retrace::app::shared_setup(session.device.wgpu_setup.clone().unwrap());
    let mut harness = Harness::builder()
        .with_size(egui::vec2(1280.0, 820.0))
        .wgpu_setup(setup)
        .build_eframe(|cc| RetraceApp::new(cc, Ok(session)));
    assert!(harness.state().renderer_shared, "the renderer uses burn's wgpu device");
    harness.run_steps(2);
    harness.get_by_label_contains("(shared with the renderer)");
    // This test is about sampling and loading: stop the index build it does not need.
    if let Some(job) = harness.state_mut().indexing.take() {
        job.cancel.cancel();
    }

    // Generate: the query panel shows the denoising frames until the sample lands in history.
    harness.state_mut().sampler.steps = 8;
    harness.get_by_label("Generate").click();
    harness.step();
    assert!(harness.state().work.is_some(), "Generate starts a background job");
    let start = Instant::now();
    let mut saw_denoising = false;
    while harness.state().work.is_some() {
        harness.step();
        saw_denoising |= harness.query_by_label("denoising…").is_some();
        assert!(start.elapsed() < Duration::from_secs(300), "sampling did not finish");
        std::thread::sleep(Duration::from_millis(10));
    }
    harness.run_steps(2);
    assert!(saw_denoising, "the live preview was shown while sampling");
    assert_eq!(harness.state().notice, None);
    assert_eq!(harness.state().history.len(), 1);
    let generated = &harness.state().history[0];
    assert!(
        generated.query.description.contains("seed 0"),
        "{}",
        generated.query.description
    );
    assert!(generated.query.pixels.iter().all(|v| v.is_finite()));
    let spread = generated.bytes.iter().max().unwrap() - generated.bytes.iter().min().unwrap();
    assert!(spread > 32, "a sample, not a flat image (spread {spread})");

    // Drop a 40×30 colour PNG on the window: it becomes the query, converted, and the notice
    // says how.
    let dropped = tmp.path().join("dropped.png");
    image::RgbImage::from_fn(40, 30, |x, y| image::Rgb([(x * 6) as u8, (y * 8) as u8, 90]))
        .save(&dropped)
        .unwrap();
    harness
        .input_mut()
        .dropped_files
        .push(std::sync::Arc::new(DroppedPath(dropped.clone())));
    harness.step();
    assert_eq!(harness.state().loads.len(), 1, "the image is read off the UI thread");
    until_idle(&mut harness, Duration::from_secs(60));
    assert_eq!(harness.state().history.len(), 2);
    let notice = harness.state().notice.clone().unwrap_or_default();
    assert!(
        notice.contains("resized 40x30 to 28x28") && notice.contains("to grey"),
        "{notice}"
    );
    let current = harness.state().current.unwrap();
    assert_eq!(harness.state().history[current].query.shape, [1, 28, 28]);
}

/// A file dropped on the window, as egui-winit reports one on native platforms.
#[derive(Debug)]
struct DroppedPath(std::path::PathBuf);

impl egui::DroppedFile for DroppedPath {
    fn path(&self) -> &std::path::Path {
        &self.0
    }

    fn bytes(&self) -> Result<Vec<u8>, String> {
        std::fs::read(&self.0).map_err(|e| e.to_string())
    }
}

/// The viewer under faults, each of which must end in a notice with the window still working:
/// a corrupt image dropped on it, a disk that fills while a report is written (the report the
/// path held before is kept, and no partial file is left), and the index deleted at several
/// moments of a ranking (the ranking either finishes with the right scores or says what
/// happened, and the next one rebuilds the index and gives the right scores).
#[test]
fn faults_end_in_notices_and_the_window_keeps_working() {
    let tmp = tempfile::tempdir().unwrap();
    let session = session(tmp.path());
    let index_dir = session.index.dir.clone();
    let mut harness = Harness::builder()
        .with_size(egui::vec2(1280.0, 820.0))
        .build_eframe(|cc| RetraceApp::new(cc, Ok(session)));
    assert!(harness.state().indexing.is_some(), "the index builds at launch");
    until_idle(&mut harness, Duration::from_secs(300));
    harness.get_by_label("Use").click();
    harness.run_steps(2);
    // While an index build runs (here one that runs until cancelled), methods that read the
    // index wait; pixel distance and MUCS need not.
    let tick_only = |harness: &mut Harness<'_, RetraceApp>, method: &str| {
        for (m, on) in &mut harness.state_mut().selected_methods {
            *on = m == method;
        }
    };
    harness.state_mut().indexing = Some(retrace::jobs::BackgroundJob::spawn(
        "a build",
        || {},
        |job| {
            while !job.cancel.is_cancelled() {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(retrace::jobs::Cancelled)
        },
    ));
    for (method, waits) in [("retrac", true), ("kfac", true), ("pixel", false), ("mucs", false)] {
        tick_only(&mut harness, method);
        assert_eq!(harness.state().run_waits_for_index(), waits, "{method}");
        assert_eq!(harness.state().can_run(), !waits, "{method}");
    }
    harness.state().indexing.as_ref().unwrap().cancel.cancel();
    until_idle(&mut harness, Duration::from_secs(10));
    harness.state_mut().notice = None;
    tick_only(&mut harness, "retrac");
    harness.run_steps(2);
    harness.get_by_label("Run").click();
    harness.step();
    until_idle(&mut harness, Duration::from_secs(300));
    assert_eq!(harness.state().notice, None);
    let reference = harness.state().scores("retrac").unwrap().clone();

    // A truncated PNG dropped on the window: a notice naming it; the query stays.
    let png = tmp.path().join("good.png");
    image::GrayImage::from_fn(28, 28, |x, y| image::Luma([(x * 9 + y) as u8]))
        .save(&png)
        .unwrap();
    let bytes = std::fs::read(&png).unwrap();
    let corrupt = tmp.path().join("corrupt.png");
    std::fs::write(&corrupt, &bytes[..bytes.len() / 2]).unwrap();
    harness
        .input_mut()
        .dropped_files
        .push(std::sync::Arc::new(DroppedPath(corrupt.clone())));
    until_idle(&mut harness, Duration::from_secs(60));
    let notice = harness.state().notice.clone().unwrap_or_default();
    assert!(notice.contains("corrupt.png"), "the notice names the file: {notice}");
    assert_eq!(harness.state().history.len(), 1, "the corrupt image is not a query");
    assert_eq!(harness.state().scores("retrac"), Some(&reference));
    harness.get_by_label_contains("corrupt.png");
    harness.get_by_label("Dismiss").click();
    harness.run_steps(2);
    assert_eq!(harness.state().notice, None);
    assert!(
        harness.query_by_label_contains("corrupt.png").is_none(),
        "the banner is gone"
    );

    // A disk that fills while the report is written.
    match common::SmallDisk::mount(256 * 1024) {
        Some(disk) => {
            let path = disk.path().join("report.html");
            std::fs::write(&path, b"the previous report").unwrap();
            disk.fill_leaving(8 * 1024);
            harness.state_mut().export_report(&path);
            harness.state_mut().wait_for_exports();
            harness.run_steps(2);
            let notice = harness.state().notice.clone().unwrap_or_default();
            assert!(
                notice.starts_with("cannot write the report") && notice.contains("No space left on device"),
                "{notice}"
            );
            assert_eq!(std::fs::read(&path).unwrap(), b"the previous report");
            let mut names: Vec<_> = std::fs::read_dir(disk.path())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            names.sort();
            assert_eq!(names, ["filler", "report.html"], "no partial file is left behind");
            // With room made, the export works again.
            std::fs::remove_file(disk.path().join("filler")).unwrap();
            harness.state_mut().export_scores(&disk.path().join("scores.csv"));
            let notice = harness.state().notice.clone().unwrap_or_default();
            assert!(notice.starts_with("scores written to"), "{notice}");
            harness.state_mut().export_report(&path);
            harness.state_mut().wait_for_exports();
            assert!(std::fs::read_to_string(&path).unwrap().contains("<h2>retrac</h2>"));
        }
        None => eprintln!("skipped the full-disk export: this process may not mount a file system"),
    }

    // The index deleted at several moments of a ranking.
    let mut outcomes = Vec::new();
    for delay in [0u64, 10, 40, 150, 600] {
        harness.state_mut().cache.clear();
        harness.state_mut().notice = None;
        // The banner goes: lay out again before clicking.
        harness.run_steps(2);
        harness.get_by_label("Run").click();
        harness.step();
        assert!(harness.state().work.is_some());
        std::thread::sleep(Duration::from_millis(delay));
        // The job may be writing into the directory as it goes: retry until it is gone.
        while index_dir.exists() {
            let _ = std::fs::remove_dir_all(&index_dir);
        }
        until_idle(&mut harness, Duration::from_secs(300));
        let notice = harness.state().notice.clone();
        outcomes.push(
            notice
                .clone()
                .map_or("finished".to_owned(), |n| n.chars().take(60).collect()),
        );
        match notice {
            None => assert_eq!(harness.state().scores("retrac"), Some(&reference)),
            Some(notice) => {
                assert!(
                    notice.contains("removed while in use"),
                    "the notice says what happened: {notice}"
                );
                assert!(harness.state().scores("retrac").is_none());
                harness.get_by_label("Run").click();
                harness.step();
                until_idle(&mut harness, Duration::from_secs(300));
                assert_eq!(harness.state().notice, None, "the next ranking rebuilds the index");
                assert_eq!(harness.state().scores("retrac"), Some(&reference));
            }
        }
    }
    eprintln!("the index deleted during a ranking: {outcomes:?}");
}

/// Dismisses the notice with its button (the banner goes, so the layout is made again before
/// the next click), then clicks `label` and waits until the work it started has ended.
fn dismiss_then_click(harness: &mut Harness<'_, RetraceApp>, label: &str) {
    if harness.state().notice.is_some() {
        harness.get_by_label("Dismiss").click();
        harness.run_steps(2);
        assert_eq!(harness.state().notice, None);
    }
    harness.get_by_label(label).click();
    harness.step();
    until_idle(harness, Duration::from_secs(60));
}

/// A model directory without checkpoints opens: the index build and sampling say what is
/// missing and how to get it, and the window keeps working (a held-out image can still be
/// picked, and ranking says the same).
#[test]
fn a_model_directory_without_checkpoints_opens_with_a_notice() {
    let tmp = tempfile::tempdir().unwrap();
    let session = session(tmp.path());
    std::fs::remove_dir_all(session.model.root.join("checkpoints")).unwrap();
    let mut harness = Harness::builder()
        .with_size(egui::vec2(1280.0, 820.0))
        .build_eframe(|cc| RetraceApp::new(cc, Ok(session)));
    until_idle(&mut harness, Duration::from_secs(60));
    let says_what_is_missing = |notice: Option<String>| {
        let notice = notice.unwrap_or_default();
        assert!(
            notice.contains("no checkpoint") && notice.contains("retrace train"),
            "{notice}"
        );
    };
    says_what_is_missing(harness.state().notice.clone());
    dismiss_then_click(&mut harness, "Generate");
    says_what_is_missing(harness.state().notice.clone());
    assert!(harness.state().history.is_empty());
    harness.get_by_label("Use").click();
    harness.run_steps(2);
    assert_eq!(harness.state().history.len(), 1, "a held-out image is still a query");
    dismiss_then_click(&mut harness, "Run");
    says_what_is_missing(harness.state().notice.clone());
    harness.get_by_label_contains("no checkpoint");
}

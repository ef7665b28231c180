//! The desktop viewer driven through egui_kittest (rendered with wgpu; lavapipe in CI): pick a
//! query, run ReTrac, see the ranking grid, open a training image's detail view.

mod common;

use std::time::{Duration, Instant};

use egui_kittest::Harness;
use egui_kittest::kittest::Queryable;
use retrace::app::RetraceApp;
use retrace::attribution::{CheckpointChoice, IndexSettings, MethodName};
use retrace::device::{BackendKind, ComputeDevice};
use retrace::grad::{ProjectionConfig, TimestepPlan};
use retrace::index::Storage;
use retrace::session::Session;

fn session(root: &std::path::Path) -> Session {
    let data = common::small_data();
    let model = common::bundled_model_for(&data, &root.join("model"));
    let held_out = retrace::data::Dataset::load(&retrace::data::DataSpec::bundled(retrace::data::Split::Test)).ok();
    Session {
        model,
        data,
        held_out,
        index: IndexSettings {
            dir: root.join("index"),
            plan: TimestepPlan::new(1000, 4, 1, 0).unwrap(),
            projection: ProjectionConfig::default(),
            checkpoints: CheckpointChoice::Last,
            storage: Storage::F32,
            batch_size: 16,
            chunk_size: 20,
        },
        device: ComputeDevice {
            device: common::cpu(),
            backend: BackendKind::Flex,
            name: "CPU (flex)".into(),
            reason: "test".into(),
        },
    }
}

/// Steps the UI until the job in flight has ended (or fails the test after `limit`).
fn until_idle(harness: &mut Harness<'_, RetraceApp>, limit: Duration) {
    let start = Instant::now();
    loop {
        harness.step();
        if harness.state().work.is_none() && harness.state().indexing.is_none() {
            break;
        }
        assert!(start.elapsed() < limit, "the job did not finish within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    harness.run_steps(3);
}

#[test]
fn pick_a_query_rank_with_retrac_and_open_a_detail_view() {
    let tmp = tempfile::tempdir().unwrap();
    let session = session(tmp.path());
    let mut harness = Harness::builder()
        .with_size(egui::vec2(1280.0, 820.0))
        .with_max_steps(8)
        .wgpu()
        .build_eframe(|cc| RetraceApp::new(&cc.egui_ctx, Ok(session)));
    harness.state_mut().show_frame_time = false;
    assert!(
        harness.state().indexing.is_some(),
        "the missing index starts building at launch"
    );
    harness.run_steps(2);

    // Pick held-out image 0 as the query, keep only ReTrac, run.
    harness.get_by_label("Use").click();
    harness.run_steps(2);
    assert_eq!(harness.state().history.len(), 1);
    harness.get_by_label("kfac").click();
    harness.run_steps(2);
    until_idle(&mut harness, Duration::from_secs(300));
    assert_eq!(harness.state().notice, None, "the index was built");
    let ticked: Vec<MethodName> = harness
        .state()
        .selected_methods
        .iter()
        .filter(|(_, on)| *on)
        .map(|(m, _)| *m)
        .collect();
    assert_eq!(ticked, [MethodName::ReTrac]);
    harness.get_by_label("Run").click();
    harness.step();
    assert!(harness.state().work.is_some(), "Run starts a background job");
    until_idle(&mut harness, Duration::from_secs(300));
    assert_eq!(harness.state().notice, None);
    assert!(harness.state().scores(MethodName::ReTrac).is_some());

    // The grid shows the top and bottom `top_k` of the 40 training images.
    let shown = harness.query_all_by_label_contains("training image #").count();
    let top_k = harness.state().top_k.min(40);
    assert_eq!(shown, 2 * top_k, "proponents and opponents");

    // Click the best-ranked image: the detail view opens with its per-timestep curve.
    let best = harness.state().scores(MethodName::ReTrac).unwrap().ranking()[0];
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
    // The report holds the query and each side's images, inlined, and the method's name.
    let tmp_report = tmp.path().join("report.html");
    harness.state_mut().export_report(&tmp_report);
    let html = std::fs::read_to_string(&tmp_report).unwrap();
    harness.state_mut().notice = None;
    assert_eq!(html.matches("data:image/png;base64,").count(), 1 + 2 * top_k);
    assert!(
        html.contains("<h2>retrac</h2>") && html.contains("<svg"),
        "report sections"
    );

    // The scores export is the file `retrace attribute` writes, query image included.
    let scores_path = tmp.path().join("scores.json");
    harness.state_mut().export_scores(&scores_path);
    let file: retrace::attribution::scores::AttributionFile =
        serde_json::from_slice(&std::fs::read(&scores_path).unwrap()).unwrap();
    assert_eq!(file.methods.len(), 1);
    assert_eq!(file.methods[0].ranking.len(), 40);
    assert_eq!(file.methods[0].ranking[0].id, id);
    assert!(
        file.query["image"]
            .as_str()
            .unwrap()
            .starts_with("data:image/png;base64,")
    );
    harness.state_mut().notice = None;

    // Tolerate the small rasterisation differences of another CPU under lavapipe; a changed
    // layout or missing panel still fails.
    let options = egui_kittest::SnapshotOptions::new()
        .threshold(1.0)
        .max_failed_pixels(2000);
    harness.snapshot_options("viewer_ranking_detail", &options);
}

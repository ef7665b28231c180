//! Gradient features and the TracIn / ReTrac / pixel methods on the bundled model and data.

mod common;

use burn::tensor::Device;
use common::cpu;
use retrace::attribution::{CheckpointFeatures, GradientInputs, Method, ReTrac, TracIn, TrainFeatures, pixel_cosine};
use retrace::data::{DataSpec, Dataset, Split, bundled_model_dir};
use retrace::diffusion::images::bytes_to_unit;
use retrace::diffusion::{Measurement, ModelDir, Schedule, UNet};
use retrace::grad::{Examples, FeatureRun, Features, ProjectionConfig, Projector, TimestepPlan, model_layer_shapes};
use retrace::jobs::JobContext;

fn examples(data: &Dataset, idx: &[usize], ids: &[u64]) -> Examples {
    let mut pixels = Vec::new();
    for &i in idx {
        pixels.extend(bytes_to_unit(data.image(i)));
    }
    Examples {
        ids: ids.to_vec(),
        shape: [data.channels, data.height, data.width],
        pixels,
    }
}

fn projector_for(model: &UNet, shape: [usize; 3], device: &Device) -> Projector {
    Projector::new(
        ProjectionConfig::default(),
        &model_layer_shapes(model, shape, device),
        device,
    )
}

fn featurise(model: &UNet, projector: &Projector, plan: &TimestepPlan, ex: &Examples, batch: usize) -> Features {
    let schedule = Schedule::new(&Default::default());
    let run = FeatureRun {
        model,
        schedule: &schedule,
        plan,
        projector,
        measurement: Measurement::Loss,
        batch_size: batch,
        device: &cpu(),
    };
    run.run(ex, &JobContext::silent()).unwrap().unwrap()
}

#[test]
fn features_do_not_depend_on_the_batch_size() {
    let data = Dataset::load(&DataSpec::bundled(Split::Train)).unwrap();
    let dir = ModelDir::open(&bundled_model_dir()).unwrap();
    let (model, _) = dir.load_latest(&cpu()).unwrap();
    let projector = projector_for(&model, [1, 28, 28], &cpu());
    let plan = TimestepPlan::new(1000, 3, 2, 0).unwrap();
    let ex = examples(&data, &[0, 1, 2], &[0, 1, 2]);
    let a = featurise(&model, &projector, &plan, &ex, 4);
    let b = featurise(&model, &projector, &plan, &ex, 18);
    let max_diff = a
        .values
        .iter()
        .zip(&b.values)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    let scale = a.values.iter().map(|v| v.abs()).fold(0.0f32, f32::max);
    assert!(
        max_diff <= 1e-4 * scale,
        "batch 4 vs 18 differ by {max_diff} (scale {scale})"
    );
    // The first example alone gives its own rows.
    let alone = featurise(&model, &projector, &plan, &examples(&data, &[0], &[0]), 5);
    let d = alone
        .values
        .iter()
        .zip(&a.values)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(d <= 1e-4 * scale, "alone vs in a set: {d}");
}

#[test]
fn a_training_image_as_query_ranks_itself_first() {
    let data = Dataset::load(&DataSpec::bundled(Split::Train)).unwrap();
    let subset: Vec<usize> = (0..60).collect();
    let train_data = data.select(&subset);
    let dir = ModelDir::open(&bundled_model_dir()).unwrap();
    let (model, entry) = dir.load_latest(&cpu()).unwrap();
    let projector = projector_for(&model, [1, 28, 28], &cpu());
    let plan = TimestepPlan::new(1000, 4, 1, 0).unwrap();
    let train = featurise(
        &model,
        &projector,
        &plan,
        &examples(&train_data, &subset, &train_data.ids),
        32,
    );
    for target in [7usize, 33] {
        // Another id gives the query its own (t, ε) draws: no shared noise with the training copy.
        let query = featurise(
            &model,
            &projector,
            &plan,
            &examples(&train_data, &[target], &[1_000_000]),
            32,
        );
        let inputs = GradientInputs {
            checkpoints: vec![CheckpointFeatures {
                step: entry.state.step,
                learning_rate: entry.state.learning_rate,
                train: TrainFeatures::Memory(train.clone()),
                query,
            }],
            plan: plan.clone(),
            ids: train_data.ids.clone(),
            labels: train_data.labels.clone(),
            parameters: serde_json::json!({}),
            device: cpu(),
        };
        let retrac = ReTrac.score(&inputs).unwrap();
        assert_eq!(retrac.ranking()[0], target, "ReTrac top-5 {:?}", &retrac.ranking()[..5]);
        assert_eq!(retrac.buckets.len(), 4);
        let tracin = TracIn.score(&inputs).unwrap();
        assert_eq!(tracin.len(), 60);
        let pixels = bytes_to_unit(train_data.image(target));
        let pixel = pixel_cosine(&train_data, &pixels, 1000, &cpu()).unwrap();
        assert_eq!(pixel.ranking()[0], target);
        assert!((pixel.totals()[target] - 1.0).abs() < 1e-5);
    }
    assert!(
        pixel_cosine(&train_data, &[0.0; 10], 1000, &cpu())
            .unwrap_err()
            .contains("10 values")
    );
}

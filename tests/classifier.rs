//! The classifier that judges samples: trained on real images it classifies real test images
//! far above chance, it survives a save and load unchanged, and a damaged directory is refused
//! (`classifier.json` is fuzzed in `fuzz::stores`).

use crate::common;

use common::cpu;
use retrace::classifier::{
    ClassifierConfig, ClassifierInfo, ClassifierRecipe, load_classifier, save_classifier, train_classifier,
};
use retrace::data::{DataSpec, Dataset, Split};
use retrace::jobs::JobContext;

/// A classifier trained briefly on the bundled 1,000 images, saved in `dir`.
pub(crate) fn trained(dir: &std::path::Path) -> (Dataset, f64) {
    let train: Dataset = Dataset::load(&DataSpec::bundled(Split::Train)).unwrap();
    let test: Dataset = Dataset::load(&DataSpec::bundled(Split::Test)).unwrap();
    let recipe = ClassifierRecipe {
        epochs: 4,
        batch_size: 64,
        learning_rate: 2e-3,
        seed: 1,
    };
    let (net, accuracy) = train_classifier(&train, &test, &recipe, &cpu(), &JobContext::silent()).unwrap();
    let info = ClassifierInfo {
        config: ClassifierConfig::new(1, 28, 10),
        class_names: train.class_names.clone(),
        data_spec: "bundled".into(),
        data_hash: train.content_hash(),
        recipe,
        test_spec: "bundled?split=test".into(),
        test_accuracy: accuracy.clone(),
        weights_sha256: String::new(),
        command: "test".into(),
    };
    save_classifier(dir, &net, info).unwrap();
    (test, accuracy.overall)
}

#[test]
fn a_classifier_trained_on_real_images_classifies_real_test_images_and_reloads_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    let (test, accuracy) = trained(tmp.path());
    assert!(accuracy > 0.6, "test accuracy {accuracy} (chance 0.1)");
    let (net, info) = load_classifier(tmp.path(), &cpu()).unwrap();
    let reloaded = net.accuracy(&test, &cpu()).unwrap();
    assert_eq!(reloaded, info.test_accuracy, "the saved weights are the trained ones");
    // A damaged weights file is refused by its hash.
    let weights = tmp.path().join("weights.bpk");
    let mut bytes = std::fs::read(&weights).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(&weights, bytes).unwrap();
    let refusal = load_classifier(tmp.path(), &cpu()).unwrap_err().to_string();
    assert!(refusal.contains("checksum"), "{refusal}");
}

/// The feature-space baseline scores every training image by the cosine between the bundled
/// classifier's hidden features of it and of the query (checked here against those features
/// taken directly, in f64), and a perturbed copy of a training image finds its source.
#[test]
fn feature_neighbours_are_cosines_of_the_bundled_classifiers_features() {
    use burn::tensor::{Tensor, TensorData};
    use retrace::attribution::{MethodSettings, Query, attribute};
    use retrace::data::pixels::bytes_to_unit;
    let tmp = tempfile::tempdir().unwrap();
    let data = common::small_data();
    let model = common::bundled_model_for(&data, &tmp.path().join("model"));
    let source = 5;
    let query = Query::image(
        common::perturbed_copy(data.image(source), [1, 28, 28], 3),
        [1, 28, 28],
        "a shifted, noised copy",
    );
    let settings = common::independent_draw_settings(&tmp.path().join("index"), 1, 64);
    let scores = attribute(
        &model,
        &data,
        &query,
        &MethodSettings::new(&["feature-nn"]),
        &settings,
        &cpu(),
        &JobContext::silent(),
    )
    .unwrap()
    .remove(0);
    assert_eq!(common::rank_of(&scores, source), 0, "{:?}", &scores.ranking()[..5]);

    let (classifier, _) = load_classifier(&retrace::data::bundled_classifier_dir(), &cpu()).unwrap();
    let features = |pixels: Vec<f32>| -> Vec<f64> {
        let x = Tensor::<4>::from_data(TensorData::new(pixels, [1, 1, 28, 28]), &cpu());
        let values: Vec<f32> = retrace::device::read_back(classifier.features(x)).unwrap();
        values.into_iter().map(f64::from).collect()
    };
    let q = features(query.pixels.clone());
    for i in 0..data.len() {
        let t = features(bytes_to_unit(data.image(i)));
        let dot: f64 = q.iter().zip(&t).map(|(a, b)| a * b).sum();
        let norm = |v: &[f64]| v.iter().map(|a| a * a).sum::<f64>().sqrt();
        let cosine = dot / (norm(&q) * norm(&t));
        assert!(
            (scores.per_bucket[i] as f64 - cosine).abs() < 1e-5,
            "image {i}: {} vs {cosine}",
            scores.per_bucket[i]
        );
    }
}

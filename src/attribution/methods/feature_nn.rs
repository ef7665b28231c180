//! Baseline: nearest neighbours in a classifier's feature space. Every paper this project
//! implements reports a "CLIP similarity" or "DINO similarity" baseline (D-TRAK's
//! `ArtBench2/methods/00_clip`, MUCS's `clip`/`dino` metrics): the cosine between an image
//! encoder's embeddings of the query and of each training image. Those encoders' weights cannot
//! be downloaded here, so the bundled Fashion-MNIST classifier's hidden layer (64 features
//! after its ReLU, [`crate::classifier::Classifier::features`]) stands in for them: the
//! departure, named. With a region, both images are weighted by the region's pixel weights
//! first, as the pixel baseline does.
//!
//! Like the pixel baseline it has no timestep decomposition: one bucket spanning every step.

use burn::tensor::{Device, Tensor, TensorData};

use crate::attribution::context::Context;
use crate::attribution::error::AttributionError;
use crate::attribution::method::{Method, Needs};
use crate::attribution::scores::Scores;
use crate::classifier::{Classifier, load_classifier};
use crate::data::pixels::{bytes_to_unit, weighted_by_region};

/// Cosine similarity of the bundled classifier's hidden features.
pub struct FeatureNeighbours;

/// Training images featurised per batch.
const BATCH: usize = 256;

impl Method for FeatureNeighbours {
    fn name(&self) -> String {
        "feature-nn".into()
    }

    fn summary(&self) -> &'static str {
        "baseline: cosine similarity of the bundled classifier's features (the stand-in for the papers' CLIP/DINO baselines)"
    }

    fn needs(&self) -> Needs {
        Needs::default()
    }

    fn score(&self, context: &mut Context<'_>) -> Result<Scores, AttributionError> {
        let data = context.data;
        let (classifier, about) = load_classifier(&crate::data::bundled_classifier_dir(), context.device)?;
        let shape = [data.channels, data.height, data.width];
        let reads = [about.config.channels, about.config.size, about.config.size];
        if shape != reads {
            return Err(AttributionError::Request(format!(
                "feature-nn reads images with the bundled classifier, which takes {reads:?} images, not the training images' {shape:?}"
            )));
        }
        let weigh = |pixels: Vec<f32>| match &context.query.mask {
            Some(region) => weighted_by_region(&pixels, region),
            None => pixels,
        };
        let query = features(&classifier, weigh(context.query.pixels.clone()), shape, context.device);
        let mut cosines = Vec::with_capacity(data.len());
        for first in (0..data.len()).step_by(BATCH) {
            context.job.stop_if_cancelled()?;
            let last = (first + BATCH).min(data.len());
            let pixels: Vec<f32> = (first..last)
                .flat_map(|i| weigh(bytes_to_unit(data.image(i))))
                .collect();
            let train = features(&classifier, pixels, shape, context.device);
            let dots = (train.clone() * query.clone()).sum_dim(1);
            let norms =
                train.powi_scalar(2).sum_dim(1).sqrt() * query.clone().powi_scalar(2).sum().sqrt().reshape([1, 1]);
            cosines.extend(crate::device::read_back(
                (dots / norms.clamp_min(1e-12)).reshape([last - first]),
            )?);
            context
                .job
                .report("classifier features", last as u64, data.len() as u64, "");
        }
        Ok(Scores {
            method: self.name(),
            parameters: serde_json::json!({ "space": "bundled classifier's hidden features", "classifier": about.weights_sha256 }),
            buckets: vec![[0, context.model.info.schedule.steps]],
            ids: data.ids.clone(),
            labels: data.labels.clone(),
            per_bucket: cosines,
        })
    }
}

/// The classifier's features of images (`n` × C×H×W values in [−1, 1]), [n, hidden].
fn features(classifier: &Classifier, pixels: Vec<f32>, [c, h, w]: [usize; 3], device: &Device) -> Tensor<2> {
    let n = pixels.len() / (c * h * w).max(1);
    classifier.features(Tensor::<4>::from_data(TensorData::new(pixels, [n, c, h, w]), device))
}

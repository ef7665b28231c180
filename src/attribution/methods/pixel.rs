//! Baseline: cosine similarity between the query and each training image in pixel space. It has
//! no timestep decomposition, so its scores come as a single bucket spanning every step. With a
//! region, both images are weighted by the region's pixel weights before the cosine.

use burn::tensor::{Device, Tensor, TensorData};

use crate::attribution::context::Context;
use crate::attribution::error::AttributionError;
use crate::attribution::method::{Method, Needs};
use crate::attribution::scores::Scores;
use crate::data::Dataset;
use crate::data::pixels::{bytes_to_unit, weighted_by_region};

/// Pixel-space cosine similarity.
pub struct Pixel;

impl Method for Pixel {
    fn name(&self) -> String {
        "pixel".into()
    }

    fn summary(&self) -> &'static str {
        "baseline: cosine similarity between the query and each training image, in pixels"
    }

    fn needs(&self) -> Needs {
        Needs::default()
    }

    fn score(&self, context: &mut Context<'_>) -> Result<Scores, AttributionError> {
        let steps = context.model.info.schedule.steps;
        let query = match &context.query.mask {
            Some(region) => weighted_by_region(&context.query.pixels, region),
            None => context.query.pixels.clone(),
        };
        let region = context.query.mask.as_deref();
        pixel_cosine(context.data, &query, region, steps, context.device)
    }
}

/// Cosine similarity of `query` (C×H×W in [−1, 1], already weighted by `region` if any) with
/// every image of `data` weighted by `region` (H×W), over `steps`.
pub fn pixel_cosine(
    data: &Dataset,
    query: &[f32],
    region: Option<&[f32]>,
    steps: usize,
    device: &Device,
) -> Result<Scores, AttributionError> {
    let n = data.len();
    let d = data.image_len();
    if query.len() != d {
        return Err(AttributionError::Invalid(format!(
            "the query has {} values but the training images have {d} ({}×{}×{})",
            query.len(),
            data.channels,
            data.height,
            data.width
        )));
    }
    let mut train = Tensor::<2>::from_data(TensorData::new(bytes_to_unit(&data.pixels), [n, d]), device);
    if let Some(region) = region {
        let weights = weighted_by_region(&vec![1.0; d], region);
        train = train * Tensor::<2>::from_data(TensorData::new(weights, [1, d]), device);
    }
    let q = Tensor::<2>::from_data(TensorData::new(query.to_vec(), [1, d]), device);
    let dots = (train.clone() * q.clone()).sum_dim(1);
    let norms = train.powi_scalar(2).sum_dim(1).sqrt() * q.powi_scalar(2).sum().sqrt().reshape([1, 1]);
    let cos = (dots / norms.clamp_min(1e-12)).reshape([n]);
    Ok(Scores {
        method: Pixel.name(),
        parameters: serde_json::json!({ "space": "pixels in [-1, 1]" }),
        buckets: vec![[0, steps]],
        ids: data.ids.clone(),
        labels: data.labels.clone(),
        per_bucket: crate::device::read_back(cos)?,
    })
}

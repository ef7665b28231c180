//! Gradient inputs of the dot-product methods: the training features at each indexed
//! checkpoint (in memory, or read from the index block by block) with the query's, TracIn's
//! checkpoint weights, and the bucketed dot products on the device.

use std::sync::Arc;

use burn::tensor::{Device, Tensor, TensorData};

use super::error::AttributionError;
use super::scores::Scores;
use crate::grad::{Features, TimestepPlan};
use crate::index::summary::ChunkSummary;
use crate::index::{Index, SummaryPart};

/// Projected gradient features of the training set and of the query at one checkpoint.
#[derive(Clone, Debug)]
pub struct CheckpointFeatures {
    /// Training step of the checkpoint.
    pub step: usize,
    /// TracIn's weight η_c of the checkpoint: its learning rate × the training steps since the
    /// previous indexed checkpoint ([`super::products::checkpoint_weights`]).
    pub weight: f64,
    /// Training images' features [N, B, D].
    pub train: TrainFeatures,
    /// The query's features [1, B, D].
    pub query: Features,
}

/// A checkpoint's training features: in memory, or read block by block from an index, so an
/// index larger than memory can be scored.
#[derive(Clone, Debug)]
pub enum TrainFeatures {
    /// Every feature in memory.
    Memory(Features),
    /// Checkpoint `checkpoint` (manifest order) of an opened index.
    Indexed {
        /// The index.
        index: Arc<Index>,
        /// Which of its checkpoints.
        checkpoint: usize,
    },
}

/// Bytes of f32 features scored at once.
const SCORING_BLOCK_BYTES: usize = 64 << 20;

impl TrainFeatures {
    /// (training images, buckets, feature width).
    pub fn shape(&self) -> (usize, usize, usize) {
        match self {
            Self::Memory(f) => (f.examples, f.buckets, f.dim),
            Self::Indexed { index, .. } => {
                let m = &index.manifest;
                (m.examples, m.key.plan.buckets, m.dim)
            }
        }
    }

    /// Hands the features to `visit` as [n, B, D] tensors on `device`, in blocks of training
    /// images (in order), and concatenates what it returns along the first dimension.
    pub fn map_blocks(
        &self,
        device: &Device,
        mut visit: impl FnMut(Tensor<3>) -> Result<Tensor<2>, AttributionError>,
    ) -> Result<Tensor<2>, AttributionError> {
        let (n, b, d) = self.shape();
        let block = (SCORING_BLOCK_BYTES / (4 * b * d).max(1)).max(1);
        let mut parts = Vec::with_capacity(n.div_ceil(block));
        for start in (0..n).step_by(block) {
            let end = (start + block).min(n);
            let values = match self {
                Self::Memory(f) => f.values[start * b * d..end * b * d].to_vec(),
                Self::Indexed { index, checkpoint } => index.rows(*checkpoint, start, end)?.values,
            };
            let x = Tensor::<3>::from_data(TensorData::new(values, [end - start, b, d]), device);
            parts.push(visit(x)?);
        }
        if parts.is_empty() {
            return Err(AttributionError::Invalid("there is no training image to score".into()));
        }
        Ok(Tensor::cat(parts, 0))
    }
}

impl TrainFeatures {
    /// Every training image's `part` vector (its bucket-mean feature, or the mean of its
    /// unit-normalised bucket features) dotted with each row of `queries` ([count × D]): the
    /// flat [N × count] products. An index is read from its compact block — on the CPU in one
    /// fused pass, elsewhere in blocks multiplied on `device`; features in memory are summarised
    /// block by block.
    pub fn summary_products(
        &self,
        part: SummaryPart,
        queries: &[f32],
        count: usize,
        device: &Device,
    ) -> Result<Vec<f32>, AttributionError> {
        let (n, b, d) = self.shape();
        if queries.len() != count * d {
            return Err(AttributionError::Invalid(format!(
                "{} query values for {count} vectors of {d} features",
                queries.len()
            )));
        }
        if let Self::Indexed { index, checkpoint } = self {
            if *device == Device::flex() {
                return index
                    .summary_dots(*checkpoint, part, queries, count)
                    .map_err(AttributionError::from);
            }
            if let Some(client) = crate::index::gpu::gpu_client(device) {
                return index
                    .summary_dots_gpu(&client, *checkpoint, part, queries, count)
                    .map_err(AttributionError::from);
            }
        }
        let columns = Tensor::<2>::from_data(TensorData::new(queries.to_vec(), [count, d]), device).transpose();
        let block = (SCORING_BLOCK_BYTES / (4 * d).max(1)).max(1);
        let mut parts = Vec::with_capacity(n.div_ceil(block));
        for start in (0..n).step_by(block) {
            let end = (start + block).min(n);
            let values = match self {
                Self::Memory(f) => {
                    let summary = ChunkSummary::of(&f.values[start * b * d..end * b * d], end - start, b, d);
                    match part {
                        SummaryPart::Mean => summary.mean,
                        SummaryPart::UnitMean => summary.unit_mean,
                    }
                }
                Self::Indexed { index, checkpoint } => index.summary_rows(*checkpoint, part, start, end)?,
            };
            let rows = Tensor::<2>::from_data(TensorData::new(values, [end - start, d]), device);
            parts.push(rows.matmul(columns.clone()));
        }
        if parts.is_empty() {
            return Err(AttributionError::Invalid("there is no training image to score".into()));
        }
        Ok(crate::device::read_back(Tensor::cat(parts, 0))?)
    }
}

/// Everything a gradient-based method needs.
#[derive(Clone, Debug)]
pub struct GradientInputs {
    /// Per-checkpoint features.
    pub checkpoints: Vec<CheckpointFeatures>,
    /// The timestep plan the features were computed under.
    pub plan: TimestepPlan,
    /// Training image ids.
    pub ids: Vec<u64>,
    /// Training image labels.
    pub labels: Vec<u32>,
    /// Parameters to record with the scores (projection, measurement, …).
    pub parameters: serde_json::Value,
    /// Where the scoring runs.
    pub device: Device,
}

impl GradientInputs {
    /// Wraps per-bucket scores with this input's metadata.
    pub fn scores(&self, method: &str, per_bucket: Vec<f32>) -> Scores {
        let mut parameters = self.parameters.clone();
        if let Some(map) = parameters.as_object_mut() {
            map.insert("plan".into(), serde_json::to_value(&self.plan).unwrap_or_default());
            let steps: Vec<usize> = self.checkpoints.iter().map(|c| c.step).collect();
            map.insert("checkpoints".into(), serde_json::json!(steps));
            if let Some(q) = self.checkpoints.last().map(|c| &c.query)
                && q.values.len() == q.buckets * q.dim
            {
                // The query's (projected) gradient norm per bucket at the last checkpoint: the
                // timestep bias that ReTrac's normalisation removes.
                let norms: Vec<f64> = (0..q.buckets)
                    .map(|b| q.row(0, b).iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt())
                    .collect();
                map.insert("query_gradient_norms".into(), serde_json::json!(norms));
            }
        }
        Scores {
            method: method.to_owned(),
            parameters,
            buckets: (0..self.plan.buckets)
                .map(|b| {
                    let (s, e) = self.plan.bucket_range(b);
                    [s, e]
                })
                .collect(),
            ids: self.ids.clone(),
            labels: self.labels.clone(),
            per_bucket,
        }
    }
}

pub(crate) fn features_tensor(f: &crate::grad::Features, device: &Device) -> Tensor<3> {
    Tensor::from_data(
        TensorData::new(f.values.clone(), [f.examples, f.buckets, f.dim]),
        device,
    )
}

/// Rows scaled to unit norm along the last dimension (zero rows stay zero).
pub(crate) fn unit_rows(x: Tensor<3>) -> Tensor<3> {
    let norm = x.clone().powi_scalar(2).sum_dim(2).sqrt().clamp_min(1e-30);
    x / norm
}

/// Σ_c η_c ⟨q_c[b], φ_c[i, b]⟩ as tensor ops on the inputs' device, optionally with both sides
/// normalised to unit norm per (example, bucket). Returns the flat [N × B] scores.
pub fn bucket_dot_products(inputs: &GradientInputs, normalise: bool) -> Result<Vec<f32>, AttributionError> {
    let (n, b) = (inputs.ids.len(), inputs.plan.buckets);
    // An index is scored in one fused pass over its stored rows: on the CPU over the mapped
    // files, on a wgpu device by the `bucket_dots` kernel.
    let indexed: Vec<(&Arc<Index>, usize, &CheckpointFeatures)> = inputs
        .checkpoints
        .iter()
        .filter_map(|c| match &c.train {
            TrainFeatures::Indexed { index, checkpoint } => Some((index, *checkpoint, c)),
            TrainFeatures::Memory(_) => None,
        })
        .collect();
    let client = crate::index::gpu::gpu_client(&inputs.device);
    if (inputs.device == Device::flex() || client.is_some()) && indexed.len() == inputs.checkpoints.len() {
        let mut total = vec![0f32; n * b];
        for (index, checkpoint, c) in indexed {
            let dots = match &client {
                Some(client) => index.bucket_dots_gpu(client, checkpoint, &c.query.values, normalise),
                None => index.bucket_dots(checkpoint, &c.query.values, normalise),
            }?;
            for (t, v) in total.iter_mut().zip(dots) {
                *t += v * c.weight as f32;
            }
        }
        return Ok(total);
    }
    let mut total = Tensor::<2>::zeros([n, b], &inputs.device);
    for c in &inputs.checkpoints {
        let mut query = features_tensor(&c.query, &inputs.device);
        if normalise {
            query = unit_rows(query);
        }
        // [B, D, 1]: each bucket's query as a column, so a batched matmul over buckets gives
        // every per-bucket dot product without materialising the [n, B, D] product.
        let columns = query.reshape([b, c.query.dim, 1]);
        let dots = c.train.map_blocks(&inputs.device, |mut train| {
            if normalise {
                train = unit_rows(train);
            }
            let rows = train.dims()[0];
            Ok(train
                .swap_dims(0, 1)
                .matmul(columns.clone())
                .reshape([b, rows])
                .transpose())
        })?;
        total = total + dots * c.weight;
    }
    Ok(crate::device::read_back(total)?)
}

//! TRAK's kernel, shared by TRAK, D-TRAK and Journey-TRAK: the weighted training features
//! Ψ = Φ(ΦᵀΦ + λI)⁻¹ of an index's last checkpoint ([`TrakKernel`]), stored beside the index
//! so each query costs one product, with λ relative to the mean squared feature norm (see
//! `methods/trak.rs` for why), and the damping parameters of the methods that read it.

use std::path::PathBuf;

use burn::tensor::{Tensor, TensorData};

use super::ridge::RidgeKernel;
use crate::attribution::error::AttributionError;
use crate::attribution::parameter::{Parameter, Range};
use crate::attribution::scores::Scores;
use crate::device::read_back;
use crate::diffusion::Measurement;
use crate::files::{sha256, write_atomic};
use crate::index::{Index, SummaryPart};

/// The damping parameter's range: a factor of the mean squared feature norm.
const DAMPING_RANGE: Range = Range::Number {
    min: 1e-8,
    max: 1e6,
    log: true,
};

/// What a damping parameter does.
const DAMPING_DOC: &str = "λ of the kernel (ΦᵀΦ + λI)⁻¹, as a factor of the mean squared feature norm";

// The defaults were chosen on the development queries of the bundled benchmark (README): the
// LDS of TRAK peaks at 10, of D-TRAK at 0.1, over 1e-3 … 1e5.

/// TRAK's damping (Journey-TRAK reads it too).
pub const TRAK_DAMPING: Parameter = Parameter {
    key: "trak-damping",
    doc: DAMPING_DOC,
    default: "10",
    range: DAMPING_RANGE,
};

/// D-TRAK's damping.
pub const DTRAK_DAMPING: Parameter = Parameter {
    key: "dtrak-damping",
    doc: DAMPING_DOC,
    default: "0.1",
    range: DAMPING_RANGE,
};

/// Adds the kernel's settings to the scores' parameters.
pub fn record(scores: &mut Scores, output: Measurement, damping: f64, kernel: &TrakKernel) {
    if let Some(map) = scores.parameters.as_object_mut() {
        map.insert("measurement".into(), serde_json::json!(output));
        map.insert("damping".into(), serde_json::json!(damping));
        map.insert("lambda".into(), serde_json::json!(kernel.lambda));
    }
}

/// The weighted training features Ψ = Φ(ΦᵀΦ + λI)⁻¹ (N × d) of an index's last checkpoint, for
/// one damping: every TRAK score is Ψ φ_q.
pub struct TrakKernel {
    /// Ψ, row-major.
    pub weighted: Vec<f32>,
    /// Training images.
    pub rows: usize,
    /// Feature width.
    pub dim: usize,
    /// The absolute λ (damping × mean squared feature norm).
    pub lambda: f64,
}

/// Version of the kernel file layout.
const KERNEL_FORMAT_VERSION: u32 = 1;

impl TrakKernel {
    /// The kernel's file beside the index (`trak-kernel-…` on the bucket means, as files made
    /// before DAS were named; `trak-kernel-unit-…` on the unit-normalised features).
    fn path(index: &Index, damping: f64, part: SummaryPart) -> PathBuf {
        let on = match part {
            SummaryPart::Mean => "",
            SummaryPart::UnitMean => "unit-",
        };
        index
            .dir
            .join(format!("trak-kernel-{on}damping{damping:e}.safetensors"))
    }

    /// What the file must match: the index's key, the damping and the features' part.
    fn key(index: &Index, damping: f64, part: SummaryPart) -> String {
        let key = serde_json::to_vec(&index.manifest.key).expect("an index key serialises");
        let on = match part {
            SummaryPart::Mean => String::new(),
            SummaryPart::UnitMean => " unit".to_owned(),
        };
        format!(
            "v{KERNEL_FORMAT_VERSION} damping {damping:e}{on} index {}",
            sha256(&key)
        )
    }

    /// Loads the kernel stored beside `index` for `damping` on `part`, or fits and stores it.
    pub fn load_or_fit(index: &Index, damping: f64, part: SummaryPart) -> Result<Self, AttributionError> {
        let path = Self::path(index, damping, part);
        let key = Self::key(index, damping, part);
        if let Ok(bytes) = std::fs::read(&path)
            && let Some(kernel) = Self::decode(&bytes, &key)
        {
            return Ok(kernel);
        }
        let kernel = Self::fit(index, damping, part)?;
        kernel.save(&path, &key)?;
        Ok(kernel)
    }

    /// Fits the kernel on the compact block's `part` (the bucket means for TRAK, the means of
    /// the unit-normalised bucket features for DAS) at the index's last checkpoint.
    pub fn fit(index: &Index, damping: f64, part: SummaryPart) -> Result<Self, AttributionError> {
        let m = &index.manifest;
        let last = m
            .checkpoints
            .len()
            .checked_sub(1)
            .ok_or_else(|| AttributionError::Invalid("the index holds no checkpoint".into()))?;
        let (rows, dim) = (m.examples, m.dim);
        let features = index.summary_rows(last, part, 0, rows)?;
        Self::from_features(&features, rows, dim, damping)
    }

    /// Fits the kernel of `features` (rows × dim) with λ = damping × the mean squared row norm.
    pub fn from_features(features: &[f32], rows: usize, dim: usize, damping: f64) -> Result<Self, AttributionError> {
        let mean_square = features.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / rows.max(1) as f64;
        let lambda = damping * mean_square.max(f64::MIN_POSITIVE);
        let weighted = RidgeKernel::fit(features, rows, dim, lambda)?.weighted_features(features)?;
        Ok(Self {
            weighted,
            rows,
            dim,
            lambda,
        })
    }

    fn save(&self, path: &std::path::Path, key: &str) -> Result<(), AttributionError> {
        let bytes: Vec<u8> = self.weighted.iter().flat_map(|v| v.to_le_bytes()).collect();
        let metadata = std::collections::HashMap::from([
            ("key".to_owned(), key.to_owned()),
            ("lambda".to_owned(), self.lambda.to_string()),
        ]);
        let encoded = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![self.rows, self.dim], &bytes)
            .and_then(|view| safetensors::serialize([("weighted", view)], Some(metadata)))
            .map_err(|e| AttributionError::Invalid(format!("cannot serialise TRAK's kernel: {e}")))?;
        write_atomic(path, &crate::files::canonical_safetensors(encoded))?;
        Ok(())
    }

    /// The kernel in `bytes` if it is an intact file for `key`.
    fn decode(bytes: &[u8], key: &str) -> Option<Self> {
        let (_, meta) = safetensors::SafeTensors::read_metadata(bytes).ok()?;
        let metadata = meta.metadata().as_ref()?;
        if metadata.get("key")? != key {
            return None;
        }
        let lambda: f64 = metadata.get("lambda")?.parse().ok()?;
        let tensors = safetensors::SafeTensors::deserialize(bytes).ok()?;
        let view = tensors.tensor("weighted").ok()?;
        let [rows, dim] = <[usize; 2]>::try_from(view.shape().to_vec()).ok()?;
        let weighted: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        (weighted.len() == rows * dim && weighted.iter().all(|v| v.is_finite())).then_some(Self {
            weighted,
            rows,
            dim,
            lambda,
        })
    }

    /// S[i, b] = Ψ_i · φ_{q,b} / B for the query's bucket features `query` (B × d, row-major):
    /// the flat [N × B] scores, whose sum over buckets is Ψ_i · φ̄_q.
    pub fn scores(
        &self,
        query: &[f32],
        buckets: usize,
        device: &burn::tensor::Device,
    ) -> Result<Vec<f32>, AttributionError> {
        if query.len() != buckets * self.dim {
            return Err(AttributionError::Invalid(format!(
                "the query has {} feature values, the kernel {buckets} × {}",
                query.len(),
                self.dim
            )));
        }
        if *device == burn::tensor::Device::flex() {
            let queries: Vec<f32> = query.iter().map(|v| v / buckets as f32).collect();
            return Ok(crate::index::scan::row_products(
                &self.weighted,
                self.dim,
                &queries,
                buckets,
            ));
        }
        let psi = Tensor::<2>::from_data(TensorData::new(self.weighted.clone(), [self.rows, self.dim]), device);
        let q = Tensor::<2>::from_data(TensorData::new(query.to_vec(), [buckets, self.dim]), device);
        Ok(read_back(psi.matmul(q.transpose()) / buckets as f64)?)
    }
}

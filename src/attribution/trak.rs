//! TRAK and D-TRAK for diffusion models (Park et al. 2023, "TRAK: Attributing Model Behavior
//! at Scale"; Zheng et al. 2024, "Intriguing Properties of Data Attribution on Diffusion
//! Models"), as D-TRAK's code computes them (`sail-sg/D-TRAK`, notes in
//! `docs/research/trak.md`): every image's feature φ is its projected gradient of an output
//! function, averaged over timesteps, at the final checkpoint, and
//!
//! τ(q, i) = φ_qᵀ (ΦᵀΦ + λI)⁻¹ φ_i,
//!
//! with Φ the training features stacked. TRAK differentiates the training loss; D-TRAK the
//! square norm of the predicted noise, ‖ε_θ(x_t, t)‖² (averaged over pixels, as their code
//! does), on both sides. There is no out-to-loss reweighting (Q = I) in either, as in their
//! code. A positive score marks a proponent (the image lowers the query's loss), their sign.
//!
//! Departures from their code, each for a reason:
//! - the features are the index's: LoGra-projected, per timestep bucket, with the index's (t, ε)
//!   draws; a training image's φ is the mean of its bucket features (their mean over K
//!   timesteps, projected: projection is linear). The query's bucket features split its score
//!   into buckets, S[i, b] = φ_{q,b}ᵀ (ΦᵀΦ + λI)⁻¹ φ_i / B, which sum to τ(q, i);
//! - λ is relative: λ = damping × the mean squared feature norm (the mean diagonal of ΦΦᵀ), so
//!   one default carries across models and projection widths, where their absolute λ
//!   (swept over 1e-2…5e6 on the LDS benchmark itself) depends on the feature scale. The
//!   default was chosen on the development queries of the bundled benchmark (README);
//! - the kernel is factored in the smaller of its primal and dual forms
//!   ([`super::ridge::RidgeKernel`]), and the weighted features Φ(ΦᵀΦ + λI)⁻¹ are stored beside
//!   the index, so each query costs one product.

use std::path::PathBuf;

use burn::tensor::{Tensor, TensorData};

use super::Scores;
use super::context::Context;
use super::registry::{Method, Needs, Parameter, Range, choices};
use super::ridge::RidgeKernel;
use crate::device::read_back;
use crate::diffusion::Measurement;
use crate::files::{sha256, write_atomic};
use crate::index::{Index, SummaryPart};

/// A TRAK-style method: its name, output function and damping parameter.
pub struct Trak {
    /// "trak" or "dtrak".
    pub name: &'static str,
    /// The parameter holding the relative damping.
    pub damping_key: &'static str,
    /// The parameter choosing the output function, if the method has one (D-TRAK); TRAK
    /// always differentiates the loss.
    pub output_key: Option<&'static str>,
}

impl Trak {
    /// TRAK with the training loss as output function.
    pub const TRAK: Self = Self {
        name: "trak",
        damping_key: "trak-damping",
        output_key: None,
    };
    /// D-TRAK: the square norm of the predicted noise (or another output, a parameter).
    pub const DTRAK: Self = Self {
        name: "dtrak",
        damping_key: "dtrak-damping",
        output_key: Some("dtrak-output"),
    };

    /// The output function the features differentiate.
    pub fn output(&self, context: &Context<'_>) -> Result<Measurement, String> {
        match self.output_key {
            Some(key) => context.parameters.choice(key),
            None => Ok(Measurement::Loss),
        }
    }
}

/// The damping parameter's range: a factor of the mean squared feature norm.
const DAMPING_RANGE: Range = Range::Number {
    min: 1e-8,
    max: 1e6,
    log: true,
};

impl Method for Trak {
    fn name(&self) -> String {
        self.name.into()
    }

    fn summary(&self) -> &'static str {
        match self.output_key {
            None => "TRAK: projected loss gradients through the kernel (ΦᵀΦ+λI)⁻¹ (Park et al. 2023)",
            Some(_) => "D-TRAK: TRAK with gradients of ‖ε_θ‖² on both sides (Zheng et al. 2024)",
        }
    }

    fn parameters(&self) -> Vec<Parameter> {
        let mut out = vec![Parameter {
            key: self.damping_key,
            doc: "λ of the kernel (ΦᵀΦ + λI)⁻¹, as a factor of the mean squared feature norm",
            // Chosen on the development queries of the bundled benchmark (README): the LDS of
            // TRAK peaks at 10, of D-TRAK at 0.1, over 1e-3 … 1e5.
            default: match self.output_key {
                None => "10",
                Some(_) => "0.1",
            },
            range: DAMPING_RANGE,
        }];
        if let Some(key) = self.output_key {
            out.push(Parameter {
                key,
                doc: "the output function both sides differentiate: D-TRAK's square norm, or the loss (TRAK)",
                default: "square-norm",
                range: Range::Choice(choices::<Measurement>),
            });
        }
        out
    }

    fn needs(&self) -> Needs {
        Needs {
            index: true,
            ..Needs::default()
        }
    }

    fn score(&self, context: &mut Context<'_>) -> Result<Option<Scores>, String> {
        let output = self.output(context)?;
        let damping = context.parameters.number(self.damping_key)?;
        let Some(query) = context.projected_query(output)? else {
            return Ok(None);
        };
        let Some(kernel) = context.trak_kernel(output, damping)? else {
            return Ok(None);
        };
        let Some(inputs) = context.last_checkpoint_inputs()? else {
            return Ok(None);
        };
        let per_bucket = kernel.scores(&query.values, query.buckets, context.device)?;
        let mut scores = inputs.scores(self.name, per_bucket);
        record(&mut scores, output, damping, &kernel);
        Ok(Some(scores))
    }
}

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
    /// The kernel's file beside the index.
    fn path(index: &Index, damping: f64) -> PathBuf {
        index.dir.join(format!("trak-kernel-damping{damping:e}.safetensors"))
    }

    /// What the file must match: the index's key and the damping.
    fn key(index: &Index, damping: f64) -> Result<String, String> {
        let key = serde_json::to_vec(&index.manifest.key).map_err(|e| e.to_string())?;
        Ok(format!(
            "v{KERNEL_FORMAT_VERSION} damping {damping:e} index {}",
            sha256(&key)
        ))
    }

    /// Loads the kernel stored beside `index` for `damping`, or fits and stores it.
    pub fn load_or_fit(index: &Index, damping: f64) -> Result<Self, String> {
        let path = Self::path(index, damping);
        let key = Self::key(index, damping)?;
        if let Ok(bytes) = std::fs::read(&path)
            && let Some(kernel) = Self::decode(&bytes, &key)
        {
            return Ok(kernel);
        }
        let kernel = Self::fit(index, damping)?;
        kernel.save(&path, &key)?;
        Ok(kernel)
    }

    /// Fits the kernel on the mean (over buckets) features of the index's last checkpoint.
    pub fn fit(index: &Index, damping: f64) -> Result<Self, String> {
        let m = &index.manifest;
        let last = m
            .checkpoints
            .len()
            .checked_sub(1)
            .ok_or("the index holds no checkpoint")?;
        let (rows, dim) = (m.examples, m.dim);
        let mean = index
            .summary_rows(last, SummaryPart::Mean, 0, rows)
            .map_err(|e| e.to_string())?;
        Self::from_features(&mean, rows, dim, damping)
    }

    /// Fits the kernel of `features` (rows × dim) with λ = damping × the mean squared row norm.
    pub fn from_features(features: &[f32], rows: usize, dim: usize, damping: f64) -> Result<Self, String> {
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

    fn save(&self, path: &std::path::Path, key: &str) -> Result<(), String> {
        let bytes: Vec<u8> = self.weighted.iter().flat_map(|v| v.to_le_bytes()).collect();
        let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![self.rows, self.dim], &bytes)
            .map_err(|e| e.to_string())?;
        let metadata = std::collections::HashMap::from([
            ("key".to_owned(), key.to_owned()),
            ("lambda".to_owned(), self.lambda.to_string()),
        ]);
        let encoded = safetensors::serialize([("weighted", view)], Some(metadata)).map_err(|e| e.to_string())?;
        let encoded = crate::files::canonical_safetensors(encoded);
        write_atomic(path, &encoded).map_err(|e| e.to_string())
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
    pub fn scores(&self, query: &[f32], buckets: usize, device: &burn::tensor::Device) -> Result<Vec<f32>, String> {
        if query.len() != buckets * self.dim {
            return Err(format!(
                "the query has {} feature values, the kernel {buckets} × {}",
                query.len(),
                self.dim
            ));
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
        read_back(psi.matmul(q.transpose()) / buckets as f64)
    }
}

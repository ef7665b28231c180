//! K-FAC and EK-FAC influence functions for diffusion models (Mlodozeniec et al. 2024):
//! τ(q, i) = ∇m(q)ᵀ (G + λI)⁻¹ ∇ℓ(i), with G the K-FAC (or EK-FAC) approximation of the GGN of
//! the training loss at the final checkpoint, m the query's measurement (loss, ELBO-weighted
//! loss or square norm) and ℓ the training loss. A positive score means that removing image i
//! is predicted to raise the query's measurement: i is a proponent.
//!
//! The query is preconditioned, not the training set: its exact per-bucket gradients are
//! multiplied by (G + λI)⁻¹ layer by layer ([`crate::curvature::Preconditioner`]), projected
//! with the index's projection, and dotted with the indexed training features. Both gradients
//! are means over the diffusion steps; bucket b's score is the share of the query's bucket-b
//! gradient: S[i, b] = 1/B · q̃_bᵀ φ̄_i, where φ̄_i is the training image's mean feature over
//! buckets, so Σ_b S[i, b] is the influence on the whole measurement.

use burn::tensor::Tensor;

use crate::attribution::context::Context;
use crate::attribution::error::AttributionError;
use crate::attribution::inputs::GradientInputs;
use crate::attribution::method::{Method, Needs};
use crate::attribution::parameter::{Parameter, Range, choices};
use crate::attribution::products::curvature::CurvatureSettings;
use crate::attribution::scores::Scores;
use crate::curvature::{Damping, Eigenvalues, Fisher, Preconditioner, Sharing};
use crate::device::read_back;
use crate::diffusion::Measurement;
use crate::index::SummaryPart;

/// How the damping parameter is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DampingScale {
    /// λ = damping × each layer's mean eigenvalue (scale-free).
    Relative,
    /// λ = damping for every layer.
    Absolute,
}

/// The parameters K-FAC and EK-FAC share.
pub const PARAMETERS: [Parameter; 6] = [
    Parameter {
        key: "measurement",
        doc: "what the query's gradient differentiates: the loss, the ELBO-weighted loss or D-TRAK's square norm",
        default: "loss",
        range: Range::Choice(choices::<Measurement>),
    },
    Parameter {
        key: "damping",
        doc: "λ added to the curvature's eigenvalues (a factor of each layer's mean eigenvalue, or absolute)",
        default: "0.1",
        range: Range::Number {
            min: 1e-12,
            max: 1e6,
            log: true,
        },
    },
    Parameter {
        key: "damping-scale",
        doc: "relative: damping × each layer's mean eigenvalue; absolute: damping itself",
        default: "relative",
        range: Range::Choice(choices::<DampingScale>),
    },
    Parameter {
        key: "curvature",
        doc: "the GGN (one Monte Carlo output gradient per point) or the empirical Fisher",
        default: "ggn",
        range: Range::Choice(choices::<Fisher>),
    },
    Parameter {
        key: "sharing",
        doc: "K-FAC-expand or K-FAC-reduce over convolution positions and attention tokens",
        default: "expand",
        range: Range::Choice(choices::<Sharing>),
    },
    Parameter {
        key: "fit-images",
        doc: "training images the curvature is fitted on (a seeded subset)",
        default: "64",
        range: Range::Integer {
            min: 1,
            max: 10_000_000,
        },
    },
];

/// An influence-function method: K-FAC or EK-FAC eigenvalues.
pub struct KfacInfluence {
    /// "kfac" or "ekfac".
    pub name: &'static str,
    /// Which eigenvalues precondition.
    pub eigenvalues: Eigenvalues,
}

impl KfacInfluence {
    /// K-FAC: the Kronecker product of the factors' eigenvalues.
    pub const KFAC: Self = Self {
        name: "kfac",
        eigenvalues: Eigenvalues::Kfac,
    };
    /// EK-FAC: eigenvalues refitted in the Kronecker eigenbasis (George et al. 2018).
    pub const EKFAC: Self = Self {
        name: "ekfac",
        eigenvalues: Eigenvalues::Ekfac,
    };
}

impl Method for KfacInfluence {
    fn name(&self) -> String {
        self.name.into()
    }

    fn summary(&self) -> &'static str {
        match self.eigenvalues {
            Eigenvalues::Kfac => "K-FAC influence function ∇m(q)ᵀ(G+λI)⁻¹∇ℓ(i) (Mlodozeniec et al. 2024)",
            Eigenvalues::Ekfac => {
                "EK-FAC influence function, eigenvalues corrected in the K-FAC eigenbasis (Mlodozeniec et al. 2024)"
            }
        }
    }

    fn parameters(&self) -> Vec<Parameter> {
        PARAMETERS.to_vec()
    }

    fn needs(&self) -> Needs {
        Needs {
            index: true,
            curvature: true,
            ..Needs::default()
        }
    }

    fn score(&self, context: &mut Context<'_>) -> Result<Scores, AttributionError> {
        let p = context.parameters;
        let measurement: Measurement = p.choice("measurement")?;
        let damping = match p.choice::<DampingScale>("damping-scale")? {
            DampingScale::Relative => Damping::Relative(p.number("damping")?),
            DampingScale::Absolute => Damping::Absolute(p.number("damping")?),
        };
        let settings = CurvatureSettings {
            fisher: p.choice("curvature")?,
            sharing: p.choice("sharing")?,
            fit_images: p.integer("fit-images")?,
            corrected: self.eigenvalues == Eigenvalues::Ekfac,
        };
        let curvature = context.curvature(settings)?;
        let gradients = context.query_gradients(measurement)?;
        let index = context.index()?;
        let inputs = context.last_checkpoint_inputs(context.index_settings.measurement)?;
        let device = context.device;
        let preconditioner = Preconditioner::new(&curvature.layers, self.eigenvalues, damping, device)?;
        // [B, D]: the preconditioned query, projected, one row per bucket.
        let query = index.projector.project_full(&preconditioner.apply(&gradients)?);
        let mut result = inputs.scores(self.name, preconditioned_scores(&inputs, query)?);
        if let Some(map) = result.parameters.as_object_mut() {
            map.extend([
                ("measurement".into(), serde_json::json!(measurement)),
                ("damping".into(), serde_json::json!(damping)),
                ("curvature".into(), serde_json::json!(curvature.key.fit.fisher)),
                ("sharing".into(), serde_json::json!(curvature.key.fit.sharing)),
                ("fit_images".into(), serde_json::json!(curvature.key.fit_images)),
                ("fit_plan".into(), serde_json::json!(curvature.key.fit.plan)),
                (
                    "mean_layer_damping".into(),
                    serde_json::json!(
                        preconditioner.damping.iter().sum::<f64>() / preconditioner.damping.len().max(1) as f64
                    ),
                ),
            ]);
        }
        Ok(result)
    }
}

/// S[i, b] = 1/B · q̃_bᵀ φ̄_i at the inputs' last checkpoint, for the preconditioned, projected
/// query `query` [B, D]: the flat [N × B] scores, read from the index's compact block (the
/// bucket-mean features φ̄).
pub fn preconditioned_scores(inputs: &GradientInputs, query: Tensor<2>) -> Result<Vec<f32>, AttributionError> {
    let last = inputs
        .checkpoints
        .last()
        .ok_or_else(|| AttributionError::Invalid("influence functions need an indexed checkpoint".into()))?;
    let [b, d] = query.dims();
    let (_, train_b, train_d) = last.train.shape();
    if (train_b, train_d) != (b, d) {
        return Err(AttributionError::Invalid(format!(
            "the preconditioned query has {b}×{d} features but the index {train_b}×{train_d}"
        )));
    }
    let queries = read_back(query / b as f64)?;
    last.train
        .summary_products(SummaryPart::Mean, &queries, b, &inputs.device)
}

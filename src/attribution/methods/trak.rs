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
//!   ([`crate::attribution::products::ridge::RidgeKernel`]), and the weighted features Φ(ΦᵀΦ + λI)⁻¹ are stored beside
//!   the index, so each query costs one product.

use crate::attribution::context::Context;
use crate::attribution::error::AttributionError;
use crate::attribution::method::{Method, Needs};
use crate::attribution::parameter::{Parameter, Range, choices};
use crate::attribution::products::trak_kernel::{DTRAK_DAMPING, TRAK_DAMPING, record};
use crate::attribution::scores::Scores;
use crate::diffusion::Measurement;
use crate::index::SummaryPart;

/// A TRAK-style method: its name, output function and damping parameter.
pub struct Trak {
    /// "trak" or "dtrak".
    pub name: &'static str,
    /// The parameter holding the relative damping.
    pub damping: Parameter,
    /// The parameter choosing the output function, if the method has one (D-TRAK); TRAK
    /// always differentiates the loss.
    pub output_key: Option<&'static str>,
}

impl Trak {
    /// TRAK with the training loss as output function.
    pub const TRAK: Self = Self {
        name: "trak",
        damping: TRAK_DAMPING,
        output_key: None,
    };
    /// D-TRAK: the square norm of the predicted noise (or another output, a parameter).
    pub const DTRAK: Self = Self {
        name: "dtrak",
        damping: DTRAK_DAMPING,
        output_key: Some("dtrak-output"),
    };

    /// The output function the features differentiate.
    pub fn output(&self, context: &Context<'_>) -> Result<Measurement, AttributionError> {
        match self.output_key {
            Some(key) => context.parameters.choice(key),
            None => Ok(Measurement::Loss),
        }
    }
}

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
        let mut out = vec![self.damping];
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

    fn score(&self, context: &mut Context<'_>) -> Result<Scores, AttributionError> {
        let output = self.output(context)?;
        let damping = context.parameters.number(self.damping.key)?;
        let query = context.projected_query(output)?;
        let kernel = context.trak_kernel(output, damping, SummaryPart::Mean)?;
        let inputs = context.last_checkpoint_inputs(output)?;
        let per_bucket = kernel.scores(&query.values, query.buckets, context.device)?;
        let mut scores = inputs.scores(self.name, per_bucket);
        record(&mut scores, output, damping, &kernel);
        Ok(scores)
    }
}

//! Journey-TRAK (Georgiev et al. 2023, "The Journey, Not the Destination: How Data Guides
//! Diffusion Models"), after their code (`MadryLab/journey-TRAK`, notes in
//! `docs/research/trak.md` §3): a generated sample is attributed step by step along its
//! sampling trajectory. At sampling step s (evaluated at diffusion step t_s) the model's
//! estimate of the clean image x̂₀⁽ˢ⁾ is noised back to t_s with fresh noise, and the gradient
//! of the ordinary diffusion loss there (ε-target, as theirs) is the step's feature φ_s — the
//! mean over `journey-draws` noises (theirs: 20 resamplings, summed; a mean only rescales). Each
//! step is scored against the TRAK training features through the same kernel as TRAK
//! (`trak-damping`): τ_s(i) = φ_sᵀ(ΦᵀΦ + λI)⁻¹φ_i.
//!
//! The scores have one bucket per attributed step (ordered by t), S[i, s] = τ_s(i) / S, so the
//! per-step plot is influence over the denoising, and the total is the mean over steps — the
//! aggregation D-TRAK's re-implementation reports (their code itself only shows steps).
//!
//! Departures: the trajectory is the query's own sampler's (retrace samples with DDIM or DDPM
//! at any step count; theirs is the 1,000-step DDPM); `journey-steps` steps spread evenly over
//! it are attributed (theirs: one or two chosen t); training features are the index's (see
//! `methods/trak.rs`).

use crate::attribution::context::Context;
use crate::attribution::error::AttributionError;
use crate::attribution::method::{Method, Needs};
use crate::attribution::parameter::{Parameter, Range};
use crate::attribution::products::trak_kernel::{TRAK_DAMPING, record};
use crate::attribution::query::Query;
use crate::attribution::scores::Scores;
use crate::diffusion::Measurement;
use crate::grad::{Examples, FeatureRun, TimestepPlan};
use crate::index::SummaryPart;

/// Journey-TRAK.
pub struct Journey;

/// Journey-TRAK's own parameters (it shares TRAK's damping).
pub const PARAMETERS: [Parameter; 2] = [
    Parameter {
        key: "journey-steps",
        doc: "sampling steps attributed, spread evenly over the trajectory",
        default: "10",
        range: Range::Integer { min: 1, max: 1000 },
    },
    Parameter {
        key: "journey-draws",
        doc: "fresh noises x̂₀ is re-noised with at each step (their code: 20)",
        default: "20",
        range: Range::Integer { min: 1, max: 1000 },
    },
];

/// `count` indices spread evenly over 0..len, first and last included.
pub fn spread(len: usize, count: usize) -> Vec<usize> {
    let count = count.clamp(1, len.max(1));
    if count == 1 {
        return vec![len.saturating_sub(1)];
    }
    let mut out: Vec<usize> = (0..count)
        .map(|k| ((k * (len - 1)) as f64 / (count - 1) as f64).round() as usize)
        .collect();
    out.dedup();
    out
}

impl Method for Journey {
    fn name(&self) -> String {
        "journey".into()
    }

    fn summary(&self) -> &'static str {
        "Journey-TRAK: TRAK of every sampling step's x̂₀, influence over the denoising (Georgiev et al. 2023)"
    }

    fn parameters(&self) -> Vec<Parameter> {
        let mut out = vec![TRAK_DAMPING];
        out.extend(PARAMETERS);
        out
    }

    fn needs(&self) -> Needs {
        Needs {
            index: true,
            trajectory: true,
            ..Needs::default()
        }
    }

    fn applies_to(&self, query: &Query) -> Result<(), AttributionError> {
        match &query.trajectory {
            Some(t) if !t.steps.is_empty() => Ok(()),
            _ => Err(AttributionError::Request(
                "journey attributes a generated sample's denoising steps; this query was not generated here".into(),
            )),
        }
    }

    fn score(&self, context: &mut Context<'_>) -> Result<Scores, AttributionError> {
        self.applies_to(context.query)?;
        let Some(trajectory) = context.query.trajectory.clone() else {
            return Err(AttributionError::Request("journey needs a generated query".into()));
        };
        let p = context.parameters;
        let (damping, steps, draws) = (
            p.number(TRAK_DAMPING.key)?,
            p.integer("journey-steps")?,
            p.integer("journey-draws")?,
        );
        let index = context.index()?;
        let model = context.last_model()?;
        let inputs = context.last_checkpoint_inputs(Measurement::Loss)?;
        let kernel = context.trak_kernel(Measurement::Loss, damping, SummaryPart::Mean)?;
        let schedule = context.schedule();
        // The query's shape, region (on the network's grid) and condition; each step's x̂₀
        // replaces its values.
        let query = Examples {
            log_variance: None,
            ..context.query_example()?
        };
        let mut chosen = spread(trajectory.steps.len(), steps);
        // Buckets in order of t, like every method's.
        chosen.sort_by_key(|&s| trajectory.steps[s]);
        // Every attributed step's features as one [S, d] query, scored in one product:
        // S[i, s] = Ψ_i · φ_s / S.
        let mut steps_features = Vec::new();
        for &s in &chosen {
            let t = trajectory.steps[s];
            let plan = TimestepPlan::pinned(schedule.len(), t, draws, index.manifest.key.plan.seed ^ 0x6a6f_7572)?;
            let run = FeatureRun {
                model: &model.1,
                schedule: &schedule,
                plan: &plan,
                projector: &index.projector,
                measurement: Measurement::Loss,
                batch_size: context.index_settings.batch_size,
                device: context.device,
            };
            let example = Examples {
                ids: vec![s as u64],
                values: trajectory.predicted_clean(s).to_vec(),
                ..query.clone()
            };
            let features = run.run(&example, context.job)?;
            steps_features.extend(features.values);
        }
        let per_bucket = kernel.scores(&steps_features, chosen.len(), context.device)?;
        let mut scores = inputs.scores("journey", per_bucket);
        scores.buckets = chosen
            .iter()
            .map(|&s| [trajectory.steps[s], trajectory.steps[s] + 1])
            .collect();
        record(&mut scores, Measurement::Loss, damping, &kernel);
        if let Some(map) = scores.parameters.as_object_mut() {
            map.insert("trajectory_steps".into(), serde_json::json!(chosen));
            map.insert("draws_per_step".into(), serde_json::json!(draws));
            map.remove("query_gradient_norms");
        }
        Ok(scores)
    }
}

#[cfg(test)]
mod tests {
    use super::spread;

    #[test]
    fn steps_spread_evenly_with_both_ends() {
        assert_eq!(spread(50, 5), vec![0, 12, 25, 37, 49]);
        assert_eq!(spread(3, 10), vec![0, 1, 2]);
        assert_eq!(spread(50, 1), vec![49]);
    }
}

//! The curvature K-FAC and EK-FAC precondition with: fitted at an index's last checkpoint on a
//! seeded subset of the training images, stored beside the index, and loaded from there by the
//! next request with the same settings (a damaged stored fit is fitted again).

use burn::tensor::Device;

use crate::attribution::error::AttributionError;
use crate::curvature::store::CURVATURE_FORMAT_VERSION;
use crate::curvature::{
    CurvatureFit, CurvatureKey, Fisher, FitConfig, LayerEigen, Sharing, load_curvature, save_curvature,
};
use crate::diffusion::images::TrainingInputs;
use crate::diffusion::noise::{permutation, stream};
use crate::diffusion::{CheckpointEntry, Network, Schedule};
use crate::grad::{Examples, TimestepPlan};
use crate::index::Index;
use crate::jobs::JobContext;

/// A fitted curvature at the index's last checkpoint.
pub struct Curvature {
    /// What it was fitted from and with.
    pub key: CurvatureKey,
    /// Per-layer eigenbases and eigenvalues (EK-FAC's corrected ones when asked for).
    pub layers: Vec<LayerEigen>,
}

/// What curvature a method asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CurvatureSettings {
    /// Monte Carlo GGN or empirical Fisher.
    pub fisher: Fisher,
    /// How shared positions are treated (expand or reduce).
    pub sharing: Sharing,
    /// Training images the factors are fitted on.
    pub fit_images: usize,
    /// Whether EK-FAC's corrected eigenvalues are needed.
    pub corrected: bool,
}

impl Curvature {
    /// The curvature of `settings` for `index` at its last checkpoint `model`: loaded from
    /// beside the index, or fitted on a seeded choice of the training `inputs` and stored there.
    #[allow(clippy::too_many_arguments)]
    pub fn fit_or_load(
        settings: &CurvatureSettings,
        index: &Index,
        model: &(CheckpointEntry, Network),
        schedule: &Schedule,
        inputs: TrainingInputs<'_>,
        batch_size: usize,
        device: &Device,
        job: &JobContext,
    ) -> Result<Self, AttributionError> {
        let (entry, net) = model;
        let data = inputs.data;
        let index_plan = &index.manifest.key.plan;
        let fit = FitConfig {
            fisher: settings.fisher,
            sharing: settings.sharing,
            // Independent (t, ε) per fitted image: the curvature is an expectation over them.
            plan: TimestepPlan {
                shared_noise: false,
                seed: index_plan.seed.wrapping_add(1),
                ..index_plan.clone()
            },
        };
        let mut chosen = permutation(&mut stream("curvature-fit", &[index_plan.seed]), data.len());
        chosen.truncate(settings.fit_images.clamp(1, data.len().max(1)));
        chosen.sort_unstable();
        let key = CurvatureKey {
            format_version: CURVATURE_FORMAT_VERSION,
            checkpoint_hash: entry.state.weights_sha256.clone(),
            data_hash: data.content_hash(),
            fit,
            fit_images: chosen.len(),
            layer_shapes: index.manifest.key.layer_shapes.clone(),
        };
        let fit_examples = Examples::from_dataset(data, inputs.latents, &chosen);
        let fitter = CurvatureFit {
            model: net,
            schedule,
            config: &key.fit,
            examples: &fit_examples,
            batch_size,
            device,
        };
        // A damaged or truncated stored fit is not an error: it is fitted again and replaced.
        let stored = load_curvature(&index.dir, &key).unwrap_or_else(|damage| {
            job.report(
                "refitting the curvature",
                0,
                1,
                format!("the stored fit is damaged and is fitted again: {damage}"),
            );
            None
        });
        let layers = match stored {
            Some(mut layers) => {
                if settings.corrected && layers.iter().any(|l| l.corrected.is_none()) {
                    fitter.correct(&mut layers, job)?;
                    save_curvature(&index.dir, &key, &layers)?;
                }
                layers
            }
            None => {
                let layers = fitter.run(settings.corrected, job)?;
                save_curvature(&index.dir, &key, &layers)?;
                layers
            }
        };
        Ok(Self { key, layers })
    }
}

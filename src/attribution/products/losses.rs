//! Losses under fixed draws, what MUCS scores with: the fixed scoring draws ([`ScoringDraws`]),
//! the loss of every training image under every draw ([`loss_matrix`]), and the original
//! model's matrix kept in a file beside the model's indexes ([`original_losses`]), the same for
//! every query.

use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};

use crate::attribution::error::AttributionError;
use crate::diffusion::images::TrainingInputs;
use crate::diffusion::noise::{gaussian, stream};
use crate::diffusion::train::noise_images;
use crate::diffusion::{CheckpointEntry, Condition, Measurement, Network, Schedule};
use crate::files::{sha256, write_atomic};
use crate::jobs::JobContext;

/// The fixed scoring draws: steps t_j (noisiest first) and noises ε_j.
#[derive(Clone, Debug, PartialEq)]
pub struct ScoringDraws {
    /// t_j.
    pub steps: Vec<usize>,
    /// ε_j, each the network's C×H×W, concatenated.
    pub noise: Vec<f32>,
}

impl ScoringDraws {
    /// `count` draws for a model of `steps_t` diffusion steps and images of `pixels` values:
    /// the first `count` of ⌊count / 0.7⌋ evenly spaced steps from T − 1 down to 0, each with a
    /// seeded Gaussian ε.
    pub fn new(count: usize, steps_t: usize, pixels: usize) -> Self {
        let grid = ((count as f64 / 0.7).floor() as usize).max(count).max(2);
        let last = steps_t.saturating_sub(1) as f64;
        let steps = (0..count)
            .map(|j| (last * (1.0 - j as f64 / (grid - 1) as f64)).round() as usize)
            .collect();
        let noise = gaussian(&mut stream("mucs-scoring-noise", &[count as u64]), count * pixels);
        Self { steps, noise }
    }

    /// `count` draws at the evenly spaced steps 0, T/count, 2·T/count, … (DAS's grid of
    /// timesteps), each with a Gaussian ε seeded under `domain`.
    pub fn evenly_spaced(count: usize, steps_t: usize, pixels: usize, domain: &str) -> Self {
        let stride = (steps_t / count.max(1)).max(1);
        let steps = (0..count)
            .map(|j| (j * stride).min(steps_t.saturating_sub(1)))
            .collect();
        let noise = gaussian(&mut stream(domain, &[count as u64]), count * pixels);
        Self { steps, noise }
    }

    /// A digest of the draws (their steps and noise), for cache keys.
    pub fn digest(&self) -> String {
        let mut bytes: Vec<u8> = self.steps.iter().flat_map(|t| (*t as u64).to_le_bytes()).collect();
        bytes.extend(self.noise.iter().flat_map(|v| v.to_le_bytes()));
        sha256(&bytes)
    }

    /// Number of draws.
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    /// True when there is no draw.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }
}

/// The loss of every image (dataset order) under every draw: [N × J], row-major.
pub fn loss_matrix(
    net: &Network,
    schedule: &Schedule,
    inputs: TrainingInputs<'_>,
    draws: &ScoringDraws,
    device: &Device,
    job: &JobContext,
    stage: &str,
) -> Result<Vec<f32>, AttributionError> {
    let data = inputs.data;
    let (n, j, input_len) = (data.len(), draws.len(), inputs.input_len());
    // Whole images per batch, about 128 (image, draw) pairs.
    let images_per_batch = (128 / j.max(1)).max(1);
    let mut out = Vec::with_capacity(n * j);
    for start in (0..n).step_by(images_per_batch) {
        job.stop_if_cancelled()?;
        let end = (start + images_per_batch).min(n);
        let mut x0 = Vec::with_capacity((end - start) * j * input_len);
        for i in start..end {
            for draw in 0..j {
                // A latent model's image takes its own latent draw under every scoring draw.
                x0.extend(inputs.clean(i, "mucs-scoring-latent", &[j as u64, draw as u64]));
            }
        }
        let rows = (end - start) * j;
        let [c, h, w] = inputs.shape();
        let shape = [rows, c, h, w];
        let x0 = Tensor::<4>::from_data(TensorData::new(x0, shape), device);
        let ts: Vec<usize> = (start..end).flat_map(|_| draws.steps.iter().copied()).collect();
        let noise: Vec<f32> = (start..end).flat_map(|_| draws.noise.iter().copied()).collect();
        let encoding = net.condition_encoding();
        let conditions: Vec<Condition> = (start..end)
            .flat_map(|i| std::iter::repeat_n(Condition::Class(data.labels[i]), j))
            .collect();
        let batch = noise_images(schedule, x0, &ts, noise).conditioned(&encoding, &conditions)?;
        let prediction = batch.predict(net);
        let losses = Measurement::Loss.evaluate(schedule, prediction, batch.noise, &ts);
        out.extend(crate::device::read_back(losses)?);
        job.report(stage, end as u64, n as u64, "");
    }
    if let Some(bad) = out.iter().position(|v| !v.is_finite()) {
        return Err(AttributionError::NonFinite(format!(
            "training image {} has a non-finite loss",
            bad / j.max(1)
        )));
    }
    Ok(out)
}

/// The loss of every training image under every draw of `draws` with the checkpoint `model`
/// ([N × J]; MUCS's L_o, DAS's training residuals): the same for every query, so it is kept in
/// a file `name-KEY.f32` in `cache_dir` (beside the model's indexes) and computed once per
/// model, data and draws.
#[allow(clippy::too_many_arguments)]
pub fn original_losses(
    model: &(CheckpointEntry, Network),
    schedule: &Schedule,
    inputs: TrainingInputs<'_>,
    draws: &ScoringDraws,
    name: &str,
    cache_dir: &Path,
    device: &Device,
    job: &JobContext,
) -> Result<Vec<f32>, AttributionError> {
    let key = format!(
        "v2 {} {} {} {}",
        model.0.state.weights_sha256,
        inputs.fingerprint(),
        draws.digest(),
        schedule.len()
    );
    let path = cache_dir.join(format!("{name}-{}.f32", &sha256(key.as_bytes())[..16]));
    let expected = inputs.data.len() * draws.len();
    if let Ok(bytes) = std::fs::read(&path)
        && bytes.len() == expected * 4
    {
        let values: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if values.iter().all(|v| v.is_finite()) {
            return Ok(values);
        }
    }
    let values = loss_matrix(
        &model.1,
        schedule,
        inputs,
        draws,
        device,
        job,
        &format!("losses of the training images ({name})"),
    )?;
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    write_atomic(&path, &bytes)?;
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scoring_draws_take_the_noisiest_seventy_percent_of_the_steps() {
        let d = ScoringDraws::new(100, 1000, 4);
        assert_eq!(d.steps[0], 999);
        assert!(d.steps.windows(2).all(|w| w[0] > w[1]));
        assert!((290..=310).contains(&d.steps[99]), "{}", d.steps[99]);
        assert_eq!(d.noise.len(), 400);
        assert_eq!(d, ScoringDraws::new(100, 1000, 4), "fixed draws");
        let grid = ScoringDraws::evenly_spaced(10, 1000, 4, "test");
        assert_eq!(grid.steps, (0..10).map(|j| 100 * j).collect::<Vec<_>>());
        assert_ne!(
            grid.digest(),
            ScoringDraws::evenly_spaced(10, 1000, 4, "other").digest()
        );
    }
}

//! NDA, nonparametric data attribution (Zhao, Du, Zheng, Pang, Lin, ICML 2026, arXiv
//! 2510.14269; reference code `sail-sg/NDA`, `CIFAR2/nda_single_scale.py`). Gradient-free and
//! model-free: it reads the posterior weights of the optimal (empirical) denoiser, restricted to
//! patches. The query x is noised once at a fixed step t, x_t = √ᾱ_t x + √(1−ᾱ_t) ε; every
//! k×k patch P_p(x_t) of it spreads one unit of weight over every patch of every scaled training
//! image, s·P_q(y_i) with s = √ᾱ_t, by a softmax over all (i, q):
//!
//! w_{p,i,q} = softmax_{(i,q)}(−‖P_p(x_t) − s·P_q(y_i)‖² / (2σ²)), σ² = 1 − ᾱ_t,
//!
//! and training image i scores τ_i = Σ_p Σ_{q ∈ top-K_q w_{p,i,·}} w_{p,i,q}: the weight its K
//! best-matching patches take from every query patch. Patches are zero-padded at the border and
//! the padded entries of both sides get `nda-mask` added, so a border patch matches border
//! patches at the same offset (the reference's `mask_value`). Defaults are the reference
//! scripts' (`run_score_orig.sh`: t = 100, 7×7 patches, K = 100, mask 10).
//!
//! As in the reference, ε is one fixed draw per t, the same for every query (retrace's keyed
//! stream instead of the torch seed `e_seed·1000 + t`). Departures: a painted region weights
//! each query patch by the region's weight at its centre (the reference has no regions); a
//! latent model's queries are matched in pixels against the training pixels, with the model's
//! schedule giving ᾱ_t (the reference is pixel-space only). The distances are one matrix
//! product per chunk of training images on the compute device; the softmax runs online over
//! the chunks (per query patch a running maximum and normaliser), so memory stays at one chunk
//! plus one log-weight per (query patch, training image).

use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;

use crate::attribution::context::Context;
use crate::attribution::error::AttributionError;
use crate::attribution::method::{Method, Needs};
use crate::attribution::parameter::{Parameter, Range};
use crate::attribution::scores::Scores;
use crate::data::Dataset;
use crate::data::pixels::bytes_to_unit;
use crate::diffusion::Schedule;
use crate::diffusion::noise::{gaussian, stream};
use crate::jobs::JobContext;

/// Nonparametric data attribution.
pub struct Nda;

const STEP: Parameter = Parameter {
    key: "nda-t",
    doc: "the diffusion step the query is noised at (reference scripts: 100)",
    default: "100",
    range: Range::Integer { min: 0, max: 100_000 },
};
const PATCH: Parameter = Parameter {
    key: "nda-patch",
    doc: "side of the square patches, odd (reference scripts: 7 at 32 px)",
    default: "7",
    range: Range::Integer { min: 1, max: 63 },
};
const TOP: Parameter = Parameter {
    key: "nda-topk",
    doc: "patches of a training image that count per query patch, its K best (reference scripts: 100; 0 counts all)",
    default: "100",
    range: Range::Integer { min: 0, max: 1_000_000 },
};
const MASK: Parameter = Parameter {
    key: "nda-mask",
    doc: "value added to padded patch entries on both sides, so border patches match border patches (reference scripts: 10)",
    default: "10",
    range: Range::Number {
        min: 0.0,
        max: 1e6,
        log: false,
    },
};

/// Training images whose patches are compared at once (64 images of 28×28 against 784 query
/// patches: 39 M distances, 157 MB).
const CHUNK_IMAGES: usize = 64;

impl Method for Nda {
    fn name(&self) -> String {
        "nda".into()
    }

    fn summary(&self) -> &'static str {
        "gradient-free: the optimal denoiser's posterior weight that each training image's patches take from the noised query's patches (Zhao et al.)"
    }

    fn parameters(&self) -> Vec<Parameter> {
        vec![STEP, PATCH, TOP, MASK]
    }

    fn needs(&self) -> Needs {
        Needs::default()
    }

    fn score(&self, context: &mut Context<'_>) -> Result<Scores, AttributionError> {
        let schedule = Schedule::new(&context.model.info.schedule);
        let t = context.parameters.integer(STEP.key)?;
        let patch = context.parameters.integer(PATCH.key)?;
        let settings = NdaSettings {
            patch,
            top: context.parameters.integer(TOP.key)?,
            mask_value: context.parameters.number(MASK.key)? as f32,
        };
        if t >= schedule.len() {
            return Err(AttributionError::Request(format!(
                "nda-t = {t}: the model's schedule has steps 0 to {}",
                schedule.len() - 1
            )));
        }
        if patch.is_multiple_of(2) {
            return Err(AttributionError::Request(format!(
                "nda-patch = {patch}: patches need a centre pixel, so an odd side"
            )));
        }
        let data = context.data;
        let shape = [data.channels, data.height, data.width];
        if context.query.pixels.len() != data.image_len() {
            return Err(AttributionError::Request(format!(
                "the query has {} values but the training images {:?}",
                context.query.pixels.len(),
                shape
            )));
        }
        let (s, sigma) = schedule.noising_weights(t);
        let noise = gaussian(&mut stream("nda-noise", &[t as u64]), data.image_len());
        let noised: Vec<f32> = context
            .query
            .pixels
            .iter()
            .zip(&noise)
            .map(|(x, e)| s as f32 * x + sigma as f32 * e)
            .collect();
        let region = context
            .query
            .mask
            .clone()
            .unwrap_or_else(|| vec![1.0; data.height * data.width]);
        let scores = patch_posterior_scores(
            &noised,
            &region,
            data,
            s as f32,
            sigma,
            &settings,
            context.device,
            context.job,
        )?;
        Ok(Scores {
            method: self.name(),
            parameters: serde_json::json!({
                "t": t, "patch": patch, "topk": settings.top, "mask_value": settings.mask_value,
                "space": "pixels",
            }),
            buckets: vec![[t, t + 1]],
            ids: data.ids.clone(),
            labels: data.labels.clone(),
            per_bucket: scores.into_iter().map(|v| v as f32).collect(),
        })
    }
}

/// How patches are cut and counted.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NdaSettings {
    /// Patch side (odd).
    pub patch: usize,
    /// Best patches of a training image counted per query patch (0: all).
    pub top: usize,
    /// Added to padded entries on both sides.
    pub mask_value: f32,
}

/// Every k×k patch of a C×H×W image, one per pixel (row-major), each C·k·k values (channel,
/// then row, then column of the patch), padded entries set to `pad`.
pub fn patches(image: &[f32], [c, h, w]: [usize; 3], k: usize, pad: f32) -> Vec<f32> {
    let r = k / 2;
    let mut out = Vec::with_capacity(h * w * c * k * k);
    for y in 0..h {
        for x in 0..w {
            for ch in 0..c {
                for dy in 0..k {
                    for dx in 0..k {
                        let (yy, xx) = ((y + dy) as isize - r as isize, (x + dx) as isize - r as isize);
                        let inside = yy >= 0 && xx >= 0 && (yy as usize) < h && (xx as usize) < w;
                        out.push(if inside {
                            image[(ch * h + yy as usize) * w + xx as usize]
                        } else {
                            pad
                        });
                    }
                }
            }
        }
    }
    out
}

/// Per query patch: the log of the weight every training image takes (relative to nothing),
/// with a running maximum and normaliser of the softmax over all (image, position).
struct PatchRow {
    log_weights: Vec<f32>,
    max: f64,
    normaliser: f64,
}

/// τ_i of every training image (see the module docs) for the noised query `noised` (C×H×W),
/// each query patch weighted by `region` (H×W) at its centre, training images scaled by `s`,
/// the softmax at temperature 2σ².
#[allow(clippy::too_many_arguments)]
pub fn patch_posterior_scores(
    noised: &[f32],
    region: &[f32],
    data: &Dataset,
    s: f32,
    sigma: f64,
    settings: &NdaSettings,
    device: &burn::tensor::Device,
    job: &JobContext,
) -> Result<Vec<f64>, AttributionError> {
    scores_in_chunks(noised, region, data, s, sigma, settings, CHUNK_IMAGES, device, job)
}

/// [`patch_posterior_scores`] comparing `chunk` training images at a time.
#[allow(clippy::too_many_arguments)]
fn scores_in_chunks(
    noised: &[f32],
    region: &[f32],
    data: &Dataset,
    s: f32,
    sigma: f64,
    settings: &NdaSettings,
    chunk: usize,
    device: &burn::tensor::Device,
    job: &JobContext,
) -> Result<Vec<f64>, AttributionError> {
    let shape = [data.channels, data.height, data.width];
    let positions = data.height * data.width;
    let dim = data.channels * settings.patch * settings.patch;
    let query = patches(noised, shape, settings.patch, settings.mask_value);
    let query_norms: Vec<f32> = query.chunks(dim).map(|p| p.iter().map(|v| v * v).sum()).collect();
    let query_tensor = Tensor::<2>::from_data(TensorData::new(query, [positions, dim]), device);
    let temperature = 2.0 * sigma * sigma;
    let top = if settings.top == 0 {
        positions
    } else {
        settings.top.min(positions)
    };
    let mut rows: Vec<PatchRow> = (0..positions)
        .map(|_| PatchRow {
            log_weights: vec![0.0; data.len()],
            max: f64::NEG_INFINITY,
            normaliser: 0.0,
        })
        .collect();
    for first in (0..data.len()).step_by(chunk.max(1)) {
        job.stop_if_cancelled()?;
        let last = (first + chunk.max(1)).min(data.len());
        let train: Vec<f32> = (first..last)
            .flat_map(|i| {
                let scaled: Vec<f32> = bytes_to_unit(data.image(i)).iter().map(|v| s * v).collect();
                patches(&scaled, shape, settings.patch, settings.mask_value)
            })
            .collect();
        let train_norms: Vec<f32> = train.chunks(dim).map(|p| p.iter().map(|v| v * v).sum()).collect();
        let columns = train_norms.len();
        let train_tensor = Tensor::<2>::from_data(TensorData::new(train, [columns, dim]), device);
        // [query patches, chunk positions]: ⟨P_p(x_t), s·P_q(y_i)⟩.
        let dots = crate::device::read_back(query_tensor.clone().matmul(train_tensor.transpose()))?;
        rows.par_iter_mut().enumerate().for_each(|(p, row)| {
            let mut logits = vec![0f32; positions];
            let mut scratch = vec![0f32; positions];
            for (slot, image) in (first..last).enumerate() {
                for (q, logit) in logits.iter_mut().enumerate() {
                    let column = slot * positions + q;
                    let distance = (query_norms[p] + train_norms[column] - 2.0 * dots[p * columns + column]).max(0.0);
                    *logit = -(distance as f64 / temperature) as f32;
                }
                let local_max = logits.iter().fold(f32::NEG_INFINITY, |m, &l| m.max(l)) as f64;
                let all: f64 = logits.iter().map(|&l| (l as f64 - local_max).exp()).sum();
                scratch.copy_from_slice(&logits);
                let best = if top < positions {
                    scratch.select_nth_unstable_by(top - 1, |a, b| b.total_cmp(a));
                    &scratch[..top]
                } else {
                    &scratch[..]
                };
                let kept: f64 = best.iter().map(|&l| (l as f64 - local_max).exp()).sum();
                row.log_weights[image] = (local_max + kept.ln()) as f32;
                let max = row.max.max(local_max);
                row.normaliser = row.normaliser * (row.max - max).exp() + all * (local_max - max).exp();
                row.max = max;
            }
        });
        job.report("patch matching", last as u64, data.len() as u64, "");
    }
    let mut scores = vec![0f64; data.len()];
    for (row, &weight) in rows.iter().zip(region) {
        if weight == 0.0 {
            continue;
        }
        for (score, &log_weight) in scores.iter_mut().zip(&row.log_weights) {
            *score += weight as f64 * (log_weight as f64 - row.max).exp() / row.normaliser;
        }
    }
    Ok(scores)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diffusion::noise::below;

    /// A patch is the image around its centre, padded entries set to the pad value.
    #[test]
    fn patches_are_centred_and_padded() {
        let image: Vec<f32> = (0..2 * 3 * 3).map(|v| v as f32).collect();
        let all = patches(&image, [2, 3, 3], 3, -1.0);
        assert_eq!(all.len(), 9 * 18);
        // The centre pixel's patch is the whole image, channel by channel.
        assert_eq!(&all[4 * 18..5 * 18], image.as_slice());
        // The top-left pixel's patch: its first row and column are padding.
        let corner = &all[..9];
        assert_eq!(corner, &[-1.0, -1.0, -1.0, -1.0, 0.0, 1.0, -1.0, 3.0, 4.0]);
    }

    /// The chunked, online softmax equals the formula computed directly in f64, over every
    /// (image, position) at once, for a region and for a top-K.
    #[test]
    fn scores_equal_the_posterior_weights_computed_directly() {
        let (c, h, w, n) = (2, 5, 4, 5);
        let mut rng = stream("nda-test", &[1]);
        let data = Dataset {
            name: "test".into(),
            channels: c,
            height: h,
            width: w,
            pixels: (0..n * c * h * w).map(|_| below(&mut rng, 256) as u8).collect(),
            labels: vec![0; n],
            ids: (0..n as u64).collect(),
            class_names: vec!["a".into()],
        };
        let noised: Vec<f32> = gaussian(&mut rng, c * h * w);
        let region: Vec<f32> = (0..h * w).map(|p| (p % 3) as f32 / 2.0).collect();
        let (s, sigma) = (0.8f32, 0.9f64);
        let settings = NdaSettings {
            patch: 3,
            top: 4,
            mask_value: 10.0,
        };
        let device = burn::tensor::Device::flex();
        let got = scores_in_chunks(
            &noised,
            &region,
            &data,
            s,
            sigma,
            &settings,
            2,
            &device,
            &JobContext::silent(),
        )
        .unwrap();

        let shape = [c, h, w];
        let dim = c * 9;
        let query = patches(&noised, shape, 3, 10.0);
        let train: Vec<Vec<f32>> = (0..n)
            .map(|i| {
                let scaled: Vec<f32> = bytes_to_unit(data.image(i)).iter().map(|v| s * v).collect();
                patches(&scaled, shape, 3, 10.0)
            })
            .collect();
        let mut want = vec![0f64; n];
        for p in 0..h * w {
            let x = &query[p * dim..(p + 1) * dim];
            let logits: Vec<Vec<f64>> = train
                .iter()
                .map(|t| {
                    t.chunks(dim)
                        .map(|y| {
                            -x.iter().zip(y).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>() / (2.0 * sigma * sigma)
                        })
                        .collect()
                })
                .collect();
            let max = logits.iter().flatten().fold(f64::NEG_INFINITY, |m, &l| m.max(l));
            let z: f64 = logits.iter().flatten().map(|l| (l - max).exp()).sum();
            for (i, row) in logits.iter().enumerate() {
                let mut weights: Vec<f64> = row.iter().map(|l| (l - max).exp() / z).collect();
                weights.sort_by(|a, b| b.total_cmp(a));
                want[i] += region[p] as f64 * weights[..4].iter().sum::<f64>();
            }
        }
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-4 * w.abs().max(1e-3), "{got:?} vs {want:?}");
        }
        // Counting every position, each query patch hands out its whole unit of weight.
        let all = NdaSettings { top: 0, ..settings };
        let total: f64 = scores_in_chunks(
            &noised,
            &vec![1.0; h * w],
            &data,
            s,
            sigma,
            &all,
            3,
            &device,
            &JobContext::silent(),
        )
        .unwrap()
        .iter()
        .sum();
        assert!((total - (h * w) as f64).abs() < 1e-3, "{total}");
    }
}

//! The timestep plan: which (t, ε) pairs every example is evaluated at. The T diffusion steps are
//! split into B equal buckets; every example gets `draws` pairs per bucket. A pair's step is drawn
//! from a stream keyed by (seed, key, bucket, draw) and its noise from one keyed by
//! (seed, key, t, draw), so any example's pairs can be regenerated alone — in any batch, on any
//! backend — and every score can be decomposed over buckets.
//!
//! The key is the example's id when `shared_noise` is off. With `shared_noise` on (the default)
//! every example — training images and query alike — uses the same pairs ("common random
//! numbers"): differences between training images' scores then come from the images, not from
//! their noise draws, and a query that is itself a training image meets exactly the gradients of
//! its copy. With one draw per bucket, independent draws left a training image used as the query
//! outside ReTrac's top 5 of 60 on the bundled model; shared draws rank it first.

use serde::{Deserialize, Serialize};

use super::GradError;
use crate::diffusion::noise::{below, gaussian, stream};

/// Buckets × draws over the diffusion steps, with the seed of its randomness.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TimestepPlan {
    /// Number of diffusion steps T.
    pub steps: usize,
    /// Number of equal buckets B over 0..T.
    pub buckets: usize,
    /// (t, ε) draws per bucket and example.
    pub draws: usize,
    /// Seed of the draws.
    pub seed: u64,
    /// Use the same (t, ε) pairs for every example instead of drawing them per example id.
    pub shared_noise: bool,
    /// Evaluate every draw at this one step instead of across the buckets (one bucket): a
    /// trajectory step of Journey-TRAK.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinned_step: Option<usize>,
}

/// One evaluation point of one example.
#[derive(Clone, Debug, PartialEq)]
pub struct PlanPoint {
    /// Bucket index.
    pub bucket: usize,
    /// Draw index within the bucket.
    pub draw: usize,
    /// Diffusion step, inside the bucket's range.
    pub t: usize,
}

impl TimestepPlan {
    /// A plan with `buckets` buckets of `draws` draws over `steps` steps.
    pub fn new(steps: usize, buckets: usize, draws: usize, seed: u64) -> Result<Self, GradError> {
        if buckets == 0 || draws == 0 || buckets > steps {
            return Err(GradError::Invalid(format!(
                "a plan needs 1..={steps} buckets and at least one draw (got {buckets} × {draws})"
            )));
        }
        Ok(Self {
            steps,
            buckets,
            draws,
            seed,
            shared_noise: true,
            pinned_step: None,
        })
    }

    /// One bucket of `draws` draws, all at step `t` of `steps`.
    pub fn pinned(steps: usize, t: usize, draws: usize, seed: u64) -> Result<Self, GradError> {
        if t >= steps {
            return Err(GradError::Invalid(format!("step {t} is outside 0..{steps}")));
        }
        Ok(Self {
            pinned_step: Some(t),
            ..Self::new(steps, 1, draws, seed)?
        })
    }

    /// The step range `[start, end)` of bucket `b`.
    pub fn bucket_range(&self, b: usize) -> (usize, usize) {
        (b * self.steps / self.buckets, (b + 1) * self.steps / self.buckets)
    }

    /// Points per example (buckets × draws).
    pub fn points_per_example(&self) -> usize {
        self.buckets * self.draws
    }

    /// The key of example `id`'s draws.
    fn key(&self, id: u64) -> u64 {
        if self.shared_noise { u64::MAX } else { id }
    }

    /// Every point of example `id`, bucket-major.
    pub fn points(&self, id: u64) -> Vec<PlanPoint> {
        let id = self.key(id);
        let mut out = Vec::with_capacity(self.points_per_example());
        for bucket in 0..self.buckets {
            let (start, end) = self.bucket_range(bucket);
            for draw in 0..self.draws {
                let mut rng = stream("plan-t", &[self.seed, id, bucket as u64, draw as u64]);
                out.push(PlanPoint {
                    bucket,
                    draw,
                    t: self.pinned_step.unwrap_or_else(|| start + below(&mut rng, end - start)),
                });
            }
        }
        out
    }

    /// The noise of example `id` at point `p` (`pixels` values).
    pub fn noise(&self, id: u64, p: &PlanPoint, pixels: usize) -> Vec<f32> {
        let id = self.key(id);
        gaussian(
            &mut stream("plan-noise", &[self.seed, id, p.t as u64, p.draw as u64]),
            pixels,
        )
    }

    /// The standard-normal draw ε_z that turns example `id`'s latent distribution into its clean
    /// latent at point `p` (`values` values): keyed like [`Self::noise`], from its own stream.
    pub fn latent_noise(&self, id: u64, p: &PlanPoint, values: usize) -> Vec<f32> {
        let id = self.key(id);
        gaussian(
            &mut stream("plan-latent", &[self.seed, id, p.t as u64, p.draw as u64]),
            values,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_cover_every_bucket_and_reproduce() {
        let shared = TimestepPlan::new(1000, 10, 2, 7).unwrap();
        assert_eq!(shared.points(1), shared.points(2));
        assert_eq!(
            shared.noise(1, &shared.points(1)[0], 8),
            shared.noise(2, &shared.points(1)[0], 8)
        );
        let plan = TimestepPlan {
            shared_noise: false,
            ..shared
        };
        let pts = plan.points(42);
        assert_eq!(pts.len(), 20);
        for p in &pts {
            let (s, e) = plan.bucket_range(p.bucket);
            assert!(s <= p.t && p.t < e);
        }
        assert_eq!(pts, plan.points(42));
        assert_ne!(pts, plan.points(43));
        assert_eq!(plan.noise(42, &pts[3], 16), plan.noise(42, &pts[3], 16));
        assert!(TimestepPlan::new(1000, 0, 1, 0).is_err());
        assert_eq!(plan.bucket_range(9), (900, 1000));
        let pinned = TimestepPlan::pinned(1000, 321, 3, 0).unwrap();
        let points = pinned.points(5);
        assert!(points.len() == 3 && points.iter().all(|p| p.t == 321 && p.bucket == 0));
        assert_ne!(pinned.noise(5, &points[0], 8), pinned.noise(5, &points[1], 8));
        assert!(TimestepPlan::pinned(1000, 1000, 1, 0).is_err());
    }
}

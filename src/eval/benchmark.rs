//! An LDS benchmark (Park et al. 2023; Zheng et al. 2024, D-TRAK; Mlodozeniec et al. 2024): what
//! is retrained (a data set, an architecture and a training recipe), on which random α-subsets
//! and with which seeds, which queries are measured (held-out images and samples of the
//! full-data model, each split into a development and a reported half), and with which fixed
//! (t, ε) draws their losses are measured.
//!
//! The specification is one JSON file, `benchmark.json`; everything else (the subsets, the
//! draws) is derived from its seeds, so two machines that read the same file build the same
//! ground truth.

use serde::{Deserialize, Serialize};

use super::error::EvalError;
use crate::data::Dataset;
use crate::diffusion::noise::{below, gaussian, permutation, stream};
use crate::diffusion::{
    Condition, InitFrom, LrSchedule, SamplerConfig, SamplerKind, ScheduleConfig, TrainRecipe, UNetConfig,
};

/// Version of the benchmark and ground-truth files; bumped on incompatible changes.
pub const BENCHMARK_FORMAT_VERSION: u32 = 1;

/// How every model of the benchmark is trained.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BenchmarkTraining {
    /// Peak learning rate (AdamW).
    pub learning_rate: f64,
    /// Linear warm-up steps.
    pub warmup_steps: usize,
    /// Learning rate after the warm-up.
    pub lr_schedule: LrSchedule,
    /// Examples per step.
    pub batch_size: usize,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// Epochs of the full-data model.
    pub full_epochs: usize,
    /// Epochs of every subset model (full_epochs / α gives both the same number of steps).
    pub subset_epochs: usize,
    /// Seed of the full-data model.
    pub full_seed: u64,
    /// Label dropout of a class-conditional benchmark's models (what guidance needs).
    #[serde(default, skip_serializing_if = "crate::diffusion::model_info::is_zero")]
    pub label_dropout: f64,
    /// The pretrained weights every model is fine-tuned from (absent: every model trains from
    /// a seeded random initialisation). A fine-tune benchmark attributes a fine-tune, as
    /// D-TRAK's ArtBench benchmarks and most users do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<InitFrom>,
}

/// The specification of an LDS benchmark: `benchmark.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BenchmarkSpec {
    /// File format version ([`BENCHMARK_FORMAT_VERSION`]).
    pub format_version: u32,
    /// Training data spec: the full training set the subsets are drawn from.
    pub data: String,
    /// Content hash of the training data (checked before any work starts).
    pub data_hash: String,
    /// Number of training images N.
    pub data_len: usize,
    /// Data spec of the held-out query images (the test split of the same classes).
    pub held_out: String,
    /// Architecture of every model.
    pub unet: UNetConfig,
    /// Noise schedule of every model.
    pub schedule: ScheduleConfig,
    /// Training recipe.
    pub training: BenchmarkTraining,
    /// Number of random subsets M.
    pub subsets: usize,
    /// Fraction α of the training set in every subset.
    pub alpha: f64,
    /// Training seeds of the subset models (each subset is trained once per seed).
    pub seeds: Vec<u64>,
    /// Seed of the subsets.
    pub mask_seed: u64,
    /// Queries of each kind (held-out and generated); the first half of each is the
    /// development half, the second the reported half.
    pub queries_per_kind: usize,
    /// DDIM steps of the generated queries.
    pub sampler_steps: usize,
    /// (t, ε) draws per query of the loss measurement, the same for every model.
    pub draws: usize,
    /// Seed of the measurement draws.
    pub draw_seed: u64,
    /// A class-conditional benchmark: the guidance scale its generated queries are sampled
    /// with. Every query then carries a class (the classes take turns, so each half holds every
    /// class), and its loss is measured under that class. Absent: an unconditional benchmark.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guidance: Option<f64>,
}

/// Most training images a benchmark draws subsets from.
pub const MAX_DATA_LEN: usize = 10_000_000;
/// Most subsets of a benchmark.
pub const MAX_SUBSETS: usize = 10_000;
/// Most training seeds per subset.
pub const MAX_SEEDS: usize = 100;
/// Most queries of each kind.
pub const MAX_QUERIES_PER_KIND: usize = 10_000;
/// Most (t, ε) draws per query.
pub const MAX_DRAWS: usize = 1_000_000;

impl BenchmarkSpec {
    /// Checks the numbers fit together before any work starts.
    pub fn validate(&self) -> Result<(), EvalError> {
        if self.format_version != BENCHMARK_FORMAT_VERSION {
            return Err(EvalError::Invalid(format!(
                "benchmark format version {} but this retrace reads {BENCHMARK_FORMAT_VERSION}",
                self.format_version
            )));
        }
        match (self.unet.condition_encoding().is_conditional(), self.guidance) {
            (true, None) => {
                return Err(EvalError::Invalid(
                    "a class-conditional U-Net needs a guidance scale for its generated queries".into(),
                ));
            }
            (false, Some(_)) => {
                return Err(EvalError::Invalid(
                    "a guidance scale, but the U-Net is unconditional (use a class-conditional one)".into(),
                ));
            }
            _ => {}
        }
        if let Some(w) = self.guidance
            && !(0.0..=crate::diffusion::sampler::MAX_GUIDANCE_SCALE).contains(&w)
        {
            return Err(EvalError::Invalid(format!("guidance scale {w} out of range")));
        }
        if !(0.0..1.0).contains(&self.training.label_dropout) {
            return Err(EvalError::Invalid(format!(
                "label dropout {} is not a probability below 1",
                self.training.label_dropout
            )));
        }
        let caps = [
            ("training images", self.data_len, MAX_DATA_LEN),
            ("subsets", self.subsets, MAX_SUBSETS),
            ("seeds", self.seeds.len(), MAX_SEEDS),
            ("queries per kind", self.queries_per_kind, MAX_QUERIES_PER_KIND),
            ("draws", self.draws, MAX_DRAWS),
            ("sampler steps", self.sampler_steps, self.schedule.steps),
        ];
        if let Some((what, value, cap)) = caps.iter().find(|(_, value, cap)| value > cap) {
            return Err(EvalError::Invalid(format!(
                "{value} {what}: a benchmark takes at most {cap}"
            )));
        }
        if !(self.alpha > 0.0 && self.alpha < 1.0) {
            return Err(EvalError::Invalid(format!(
                "α must lie strictly between 0 and 1, not {}",
                self.alpha
            )));
        }
        if self.subset_size() == 0 || self.subset_size() >= self.data_len {
            return Err(EvalError::Invalid(format!(
                "α = {} of {} images gives subsets of {} images",
                self.alpha,
                self.data_len,
                self.subset_size()
            )));
        }
        if self.subsets < 2 || self.seeds.is_empty() {
            return Err(EvalError::Invalid(
                "a benchmark needs at least 2 subsets and one seed".into(),
            ));
        }
        let mut seeds = self.seeds.clone();
        seeds.sort_unstable();
        seeds.dedup();
        if seeds.len() != self.seeds.len() {
            return Err(EvalError::Invalid(format!("the seeds {:?} repeat", self.seeds)));
        }
        if self.queries_per_kind < 2 || self.draws < 2 {
            return Err(EvalError::Invalid(
                "a benchmark needs at least 2 queries per kind and 2 draws per query".into(),
            ));
        }
        if self.training.batch_size == 0 || self.training.full_epochs == 0 || self.training.subset_epochs == 0 {
            return Err(EvalError::Invalid("batch size and epochs must be positive".into()));
        }
        self.schedule.validate()?;
        Ok(self.unet.validate()?)
    }

    /// The sampler of the generated queries: DDIM with the benchmark's steps, guided at the
    /// benchmark's scale in a class-conditional benchmark.
    pub fn query_sampler(&self) -> SamplerConfig {
        SamplerConfig {
            guidance_scale: self.guidance.unwrap_or(1.0),
            ..SamplerConfig::new(SamplerKind::Ddim, self.sampler_steps)
        }
    }

    /// The class of query `i` of its kind in a class-conditional benchmark over `classes`: the
    /// classes take turns, so that every class has queries in both halves ([`half_of`] splits
    /// by position). `None` in an unconditional benchmark.
    pub fn query_class(&self, i: usize, classes: &[u32]) -> Option<u32> {
        self.guidance
            .and_then(|_| (!classes.is_empty()).then(|| classes[i % classes.len()]))
    }

    /// Images per subset: ⌊αN⌉.
    pub fn subset_size(&self) -> usize {
        (self.alpha * self.data_len as f64).round() as usize
    }

    /// The sorted training-set indices of subset `m`.
    pub fn subset(&self, m: usize) -> Vec<usize> {
        let mut chosen = permutation(&mut stream("lds-subset", &[self.mask_seed, m as u64]), self.data_len);
        chosen.truncate(self.subset_size());
        chosen.sort_unstable();
        chosen
    }

    /// Every (subset, seed) model of the benchmark, subset-major.
    pub fn models(&self) -> Vec<ModelKey> {
        (0..self.subsets)
            .flat_map(|subset| self.seeds.iter().map(move |&seed| ModelKey { subset, seed }))
            .collect()
    }

    /// The training recipe of a model trained with `seed`.
    pub fn recipe(&self, seed: u64, command: String) -> TrainRecipe {
        let t = &self.training;
        let steps_per_epoch = self.subset_size().div_ceil(t.batch_size);
        TrainRecipe {
            learning_rate: t.learning_rate,
            warmup_steps: t.warmup_steps,
            lr_schedule: t.lr_schedule,
            batch_size: t.batch_size,
            weight_decay: t.weight_decay,
            seed,
            label_dropout: t.label_dropout,
            excluded: Vec::new(),
            init: t.init.clone(),
            // About four checkpoints per subset model: the unit of resumption.
            checkpoint_every: (steps_per_epoch * t.subset_epochs).div_ceil(4).max(1),
            command,
        }
    }

    /// Checks that `data` is the benchmark's training set.
    pub fn check_data(&self, data: &Dataset) -> Result<(), EvalError> {
        if data.len() != self.data_len || data.content_hash() != self.data_hash {
            return Err(EvalError::Invalid(format!(
                "{} holds {} images (hash {}…) but the benchmark was made for {} images of {} (hash {}…)",
                data.name,
                data.len(),
                crate::files::short_hash(&data.content_hash()),
                self.data_len,
                self.data,
                crate::files::short_hash(&self.data_hash)
            )));
        }
        Ok(())
    }

    /// The fixed measurement draws of query `q`: `draws` (t, ε) pairs, t stratified over the
    /// diffusion steps (draw k lies in the k-th of `draws` equal strata).
    pub fn measurement_draws(&self, q: usize, pixels: usize) -> Vec<(usize, Vec<f32>)> {
        let steps = self.schedule.steps;
        (0..self.draws)
            .map(|k| {
                let mut rng = stream("lds-measure", &[self.draw_seed, q as u64, k as u64]);
                let (start, end) = (
                    k * steps / self.draws,
                    ((k + 1) * steps / self.draws).max(k * steps / self.draws + 1),
                );
                let t = (start + below(&mut rng, end - start)).min(steps - 1);
                (t, gaussian(&mut rng, pixels))
            })
            .collect()
    }
}

/// One subset model: subset index and training seed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ModelKey {
    /// Subset index m.
    pub subset: usize,
    /// Training seed.
    pub seed: u64,
}

impl ModelKey {
    /// File-name stem: `m007-s1`.
    pub fn stem(&self) -> String {
        format!("m{:03}-s{}", self.subset, self.seed)
    }
}

/// Where a query comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum QueryKind {
    /// A held-out (test-split) image of the training classes.
    HeldOut,
    /// A sample of the full-data model.
    Generated,
}

impl QueryKind {
    /// Both kinds, in report order.
    pub const ALL: [QueryKind; 2] = [QueryKind::HeldOut, QueryKind::Generated];

    /// The name used in tables and files.
    pub fn name(self) -> &'static str {
        match self {
            QueryKind::HeldOut => "held_out",
            QueryKind::Generated => "generated",
        }
    }
}

/// Which half of the queries a query belongs to: development queries choose defaults, reported
/// queries give the figures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum QueryHalf {
    /// Used to choose defaults.
    Dev,
    /// Used only to report.
    Report,
}

/// One query of the benchmark.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BenchmarkQuery {
    /// Held-out or generated.
    pub kind: QueryKind,
    /// Development or reported half.
    pub half: QueryHalf,
    /// Its origin: the test image's id, or the sampler seed.
    pub source: u64,
    /// Its class in a class-conditional benchmark: the class a generated query was sampled
    /// for, a held-out image's label. Its loss is measured, and it is attributed, under it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<u32>,
    /// C×H×W bytes.
    #[serde(with = "base64_bytes")]
    pub pixels: Vec<u8>,
}

impl BenchmarkQuery {
    /// A short description (`held-out test image 17`, `sample of the full-data model, seed 3,
    /// Sneaker`), naming its class from `class_names` where it has one.
    pub fn describe(&self, class_names: &[String]) -> String {
        let what = match self.kind {
            QueryKind::HeldOut => format!("held-out test image {}", self.source),
            QueryKind::Generated => format!("sample of the full-data model, seed {}", self.source),
        };
        match self.class {
            Some(c) => {
                let name = class_names
                    .get(c as usize)
                    .cloned()
                    .unwrap_or_else(|| format!("class {c}"));
                format!("{what}, {name}")
            }
            None => what,
        }
    }

    /// The condition the query is measured and attributed under.
    pub fn condition(&self) -> Condition {
        self.class.map_or(Condition::Unconditional, Condition::Class)
    }
}

/// The queries' half for position `i` of `n` queries of one kind: the first ⌈n/2⌉ develop.
pub fn half_of(i: usize, n: usize) -> QueryHalf {
    if i < n.div_ceil(2) {
        QueryHalf::Dev
    } else {
        QueryHalf::Report
    }
}

/// Serde helper: bytes as one base64 string.
pub(crate) mod base64_bytes {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> BenchmarkSpec {
        BenchmarkSpec {
            format_version: BENCHMARK_FORMAT_VERSION,
            data: "x".into(),
            data_hash: "0".repeat(64),
            data_len: 10,
            held_out: "y".into(),
            unet: UNetConfig::named("tiny", 1, 8).unwrap(),
            schedule: ScheduleConfig::default(),
            training: BenchmarkTraining {
                learning_rate: 1e-3,
                warmup_steps: 0,
                lr_schedule: LrSchedule::Cosine,
                batch_size: 4,
                weight_decay: 0.0,
                full_epochs: 1,
                subset_epochs: 2,
                full_seed: 0,
                label_dropout: 0.0,
                init: None,
            },
            subsets: 4,
            alpha: 0.5,
            seeds: vec![0, 1],
            mask_seed: 3,
            queries_per_kind: 2,
            sampler_steps: 10,
            draws: 8,
            draw_seed: 0,
            guidance: None,
        }
    }

    #[test]
    fn subsets_are_seeded_halves_and_draws_are_stratified() {
        let s = spec();
        assert!(s.validate().is_ok());
        assert_eq!(s.subset(1).len(), 5);
        assert_eq!(s.subset(1), s.subset(1));
        assert_ne!(s.subset(1), s.subset(2));
        assert!(s.subset(0).windows(2).all(|w| w[0] < w[1]));
        assert_eq!(s.models().len(), 8);
        let draws = s.measurement_draws(0, 4);
        for (k, (t, eps)) in draws.iter().enumerate() {
            assert!(*t >= k * 1000 / 8 && *t < (k + 1) * 1000 / 8);
            assert_eq!(eps.len(), 4);
        }
        assert_eq!(draws, s.measurement_draws(0, 4));
        assert_ne!(draws, s.measurement_draws(1, 4));
        assert!(BenchmarkSpec { alpha: 1.0, ..spec() }.validate().is_err());
        assert!(
            BenchmarkSpec {
                seeds: vec![1, 1],
                ..spec()
            }
            .validate()
            .is_err()
        );
        // A class-conditional U-Net needs a guidance scale (its queries carry classes), and only
        // it takes one.
        let conditional = BenchmarkSpec {
            unet: s.unet.clone().with_classes(10),
            ..spec()
        };
        assert!(conditional.validate().unwrap_err().to_string().contains("guidance"));
        assert!(
            BenchmarkSpec {
                guidance: Some(2.0),
                ..conditional.clone()
            }
            .validate()
            .is_ok()
        );
        assert!(
            BenchmarkSpec {
                guidance: Some(2.0),
                ..spec()
            }
            .validate()
            .is_err()
        );
        let guided = BenchmarkSpec {
            guidance: Some(2.0),
            ..conditional
        };
        assert_eq!(guided.query_sampler().guidance_scale, 2.0);
        assert_eq!(guided.query_class(13, &[0, 4, 9]), Some(4));
        assert_eq!(s.query_class(13, &[0, 4, 9]), None);
        assert_eq!(half_of(0, 4), QueryHalf::Dev);
        assert_eq!(half_of(2, 4), QueryHalf::Report);
    }
}

//! What the methods of one attribution request share: the model, the data, the query and the
//! parameters, and the engine's expensive products, each made at most once per request and only
//! when a method asks for it (the index, the query's features at every checkpoint, the fitted
//! curvature, the query's exact gradients, other methods' scores). Every product returns
//! `Ok(None)` when the job is cancelled.

use std::collections::HashMap;
use std::sync::Arc;

use burn::tensor::{Device, Tensor};

use super::mucs::{ScoringDraws, loss_matrix};
use super::registry::{self, Parameters};
use super::run::IndexSettings;
use super::tracin::checkpoint_weights;
use super::trak::TrakKernel;
use super::{CheckpointFeatures, GradientInputs, Query, Scores, TrainFeatures};
use crate::curvature::store::CURVATURE_FORMAT_VERSION;
use crate::curvature::{
    CurvatureFit, CurvatureKey, Fisher, FitConfig, LayerEigen, Sharing, load_curvature, save_curvature,
};
use crate::data::Dataset;
use crate::diffusion::noise::{permutation, stream};
use crate::diffusion::{CheckpointEntry, Measurement, ModelDir, Schedule, UNet};
use crate::files::{sha256, write_atomic};
use crate::grad::{Examples, FeatureRun, Features, TimestepPlan};
use crate::index::Index;
use crate::jobs::JobContext;

/// A fitted curvature at the index's last checkpoint.
pub struct Curvature {
    /// What it was fitted from and with.
    pub key: CurvatureKey,
    /// Per-layer eigenbases and eigenvalues (EK-FAC's corrected ones when asked for).
    pub layers: Vec<LayerEigen>,
}

/// One attribution request's shared inputs and lazily made products.
pub struct Context<'a> {
    /// The model directory.
    pub model: &'a ModelDir,
    /// Its training data.
    pub data: &'a Dataset,
    /// The query.
    pub query: &'a Query,
    /// How training images become features.
    pub index_settings: &'a IndexSettings,
    /// The methods' parameter values.
    pub parameters: &'a Parameters,
    /// Where the work runs.
    pub device: &'a Device,
    /// Progress and cancellation.
    pub job: &'a JobContext,
    indexes: HashMap<Measurement, Arc<Index>>,
    projected_queries: HashMap<Measurement, Features>,
    inputs: Option<GradientInputs>,
    last_model: Option<Arc<(CheckpointEntry, UNet)>>,
    final_model: Option<Arc<(CheckpointEntry, UNet)>>,
    curvature: Option<(Fisher, Sharing, usize, Arc<Curvature>)>,
    query_gradients: HashMap<Measurement, Vec<Tensor<3>>>,
    kernels: HashMap<(Measurement, u64), Arc<TrakKernel>>,
    scores: HashMap<String, Scores>,
}

impl<'a> Context<'a> {
    /// A request's context; nothing is computed yet.
    pub fn new(
        model: &'a ModelDir,
        data: &'a Dataset,
        query: &'a Query,
        index_settings: &'a IndexSettings,
        parameters: &'a Parameters,
        device: &'a Device,
        job: &'a JobContext,
    ) -> Self {
        Self {
            model,
            data,
            query,
            index_settings,
            parameters,
            device,
            job,
            indexes: HashMap::new(),
            projected_queries: HashMap::new(),
            inputs: None,
            last_model: None,
            final_model: None,
            curvature: None,
            query_gradients: HashMap::new(),
            kernels: HashMap::new(),
            scores: HashMap::new(),
        }
    }

    /// The index, built (or resumed) if needed and opened.
    pub fn index(&mut self) -> Result<Option<Arc<Index>>, String> {
        self.index_for(self.index_settings.measurement)
    }

    /// The index of the training gradients of `measurement` (the loss for every method but
    /// D-TRAK), with the request's other settings, in its own directory beside the request's.
    pub fn index_for(&mut self, measurement: Measurement) -> Result<Option<Arc<Index>>, String> {
        if let Some(index) = self.indexes.get(&measurement) {
            return Ok(Some(index.clone()));
        }
        let settings = if measurement == self.index_settings.measurement {
            self.index_settings.clone()
        } else {
            self.index_settings.for_measurement(measurement)?
        };
        let Some(index) = settings.ensure(self.model, self.data, self.device, self.job)? else {
            return Ok(None);
        };
        let index = Arc::new(index);
        self.indexes.insert(measurement, index.clone());
        Ok(Some(index))
    }

    /// The query's projected per-bucket features [1, B, D] of `measurement` at the index's last
    /// checkpoint, under the index's plan and projection.
    pub fn projected_query(&mut self, measurement: Measurement) -> Result<Option<Features>, String> {
        if let Some(f) = self.projected_queries.get(&measurement) {
            return Ok(Some(f.clone()));
        }
        let Some(index) = self.index_for(measurement)? else {
            return Ok(None);
        };
        let job = self.job;
        let Some(features) = self.query_run(&index, measurement, |run, query| run.run(query, job))? else {
            return Ok(None);
        };
        self.projected_queries.insert(measurement, features.clone());
        Ok(Some(features))
    }

    /// The noise schedule of the model.
    pub fn schedule(&self) -> Schedule {
        Schedule::new(&self.model.info.schedule)
    }

    /// The query as a one-example set; its id keys nothing under shared noise.
    pub fn query_example(&self) -> Examples {
        Examples {
            ids: vec![u64::MAX],
            shape: self.query.shape,
            pixels: self.query.pixels.clone(),
            region: self.query.mask.clone(),
        }
    }

    /// The index's checkpoint entries in the model directory, oldest first, found by their
    /// weights' hash (the index is keyed by it; a step number alone can be re-assigned, as a
    /// diffusers model's guessed final step).
    fn indexed_entries(&self, index: &Index) -> Result<Vec<CheckpointEntry>, String> {
        let all = self.model.checkpoints().map_err(|e| e.to_string())?;
        index
            .manifest
            .key
            .checkpoint_hashes
            .iter()
            .map(|hash| {
                all.iter()
                    .find(|c| &c.state.weights_sha256 == hash)
                    .cloned()
                    .ok_or_else(|| "an indexed checkpoint is missing from the model".to_owned())
            })
            .collect()
    }

    /// The model at its newest checkpoint, with its entry (no index needed).
    pub fn final_model(&mut self) -> Result<Option<Arc<(CheckpointEntry, UNet)>>, String> {
        if self.final_model.is_none() {
            let entry = self.model.latest_required().map_err(|e| e.to_string())?;
            let net = self.model.load_model(&entry, self.device).map_err(|e| e.to_string())?;
            self.final_model = Some(Arc::new((entry, net)));
        }
        Ok(self.final_model.clone())
    }

    /// The loss of every training image under every draw of `draws` with the newest
    /// checkpoint ([N × J], MUCS's L_o): the same for every query, so it is kept in a file in
    /// the model's cache directory (beside its indexes) and computed once per model and draws.
    pub fn original_losses(&mut self, draws: &ScoringDraws) -> Result<Option<Vec<f32>>, String> {
        let Some(model) = self.final_model()? else {
            return Ok(None);
        };
        let key = format!(
            "v1 {} {} {} {}",
            model.0.state.weights_sha256,
            self.data.content_hash(),
            draws.len(),
            self.model.info.schedule.steps
        );
        let path = self
            .index_settings
            .dir
            .with_file_name(format!("mucs-original-losses-{}.f32", &sha256(key.as_bytes())[..16]));
        let expected = self.data.len() * draws.len();
        if let Ok(bytes) = std::fs::read(&path)
            && bytes.len() == expected * 4
        {
            let values: Vec<f32> = bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            if values.iter().all(|v| v.is_finite()) {
                return Ok(Some(values));
            }
        }
        let schedule = self.schedule();
        let Some(values) = loss_matrix(
            &model.1,
            &schedule,
            self.data,
            draws,
            self.device,
            self.job,
            "scoring the original model",
        )?
        else {
            return Ok(None);
        };
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        write_atomic(&path, &bytes).map_err(|e| e.to_string())?;
        Ok(Some(values))
    }

    /// The model at the index's last checkpoint, with its entry.
    pub fn last_model(&mut self) -> Result<Option<Arc<(CheckpointEntry, UNet)>>, String> {
        if self.last_model.is_none() {
            let Some(index) = self.index()? else { return Ok(None) };
            let entry = self
                .indexed_entries(&index)?
                .pop()
                .ok_or("the index holds no checkpoint")?;
            let net = self.model.load_model(&entry, self.device).map_err(|e| e.to_string())?;
            self.last_model = Some(Arc::new((entry, net)));
        }
        Ok(self.last_model.clone())
    }

    fn base_inputs(&self, index: &Arc<Index>, checkpoints: Vec<CheckpointFeatures>) -> GradientInputs {
        GradientInputs {
            checkpoints,
            plan: index.manifest.key.plan.clone(),
            ids: self.data.ids.clone(),
            labels: self.data.labels.clone(),
            parameters: serde_json::json!({
                "projection": index.manifest.key.projection,
                "measurement": Measurement::Loss,
                "storage": index.manifest.key.storage,
                "query": self.query.description,
            }),
            device: self.device.clone(),
        }
    }

    /// The training features and the query's loss features at every indexed checkpoint, with
    /// TracIn's checkpoint weights: the inputs of the dot-product methods.
    pub fn gradient_inputs(&mut self) -> Result<Option<GradientInputs>, String> {
        if self.inputs.is_none() {
            let Some(index) = self.index()? else { return Ok(None) };
            let schedule = self.schedule();
            let entries = self.indexed_entries(&index)?;
            // TracIn's weights from the model's own record of each checkpoint's step and rate.
            let weights = checkpoint_weights(
                &entries
                    .iter()
                    .map(|c| (c.state.step, c.state.learning_rate))
                    .collect::<Vec<_>>(),
            );
            let query = self.query_example();
            let mut checkpoints = Vec::new();
            for (i, entry) in entries.iter().enumerate() {
                let net = self.model.load_model(entry, self.device).map_err(|e| e.to_string())?;
                let run = FeatureRun {
                    model: &net,
                    schedule: &schedule,
                    plan: &index.manifest.key.plan,
                    projector: &index.projector,
                    measurement: Measurement::Loss,
                    batch_size: self.index_settings.batch_size,
                    device: self.device,
                };
                let Some(features) = run.run(&query, self.job)? else {
                    return Ok(None);
                };
                checkpoints.push(CheckpointFeatures {
                    step: entry.state.step,
                    weight: weights[i],
                    train: TrainFeatures::Indexed {
                        index: index.clone(),
                        checkpoint: i,
                    },
                    query: features,
                });
            }
            // The last checkpoint's loss features of the query are TRAK's too: kept for it (the
            // projection does not depend on the measurement an index holds).
            if let Some(last) = checkpoints.last() {
                self.projected_queries.insert(Measurement::Loss, last.query.clone());
            }
            self.inputs = Some(self.base_inputs(&index, checkpoints));
        }
        Ok(self.inputs.clone())
    }

    /// The training features at the index's last checkpoint, without the query's (the inputs
    /// of methods that featurise the query their own way).
    pub fn last_checkpoint_inputs(&mut self) -> Result<Option<GradientInputs>, String> {
        let Some(index) = self.index()? else { return Ok(None) };
        let last = index
            .manifest
            .checkpoints
            .len()
            .checked_sub(1)
            .ok_or("the index holds no checkpoint")?;
        let checkpoint = CheckpointFeatures {
            step: index.manifest.checkpoints[last].step,
            weight: 1.0,
            train: TrainFeatures::Indexed {
                index: index.clone(),
                checkpoint: last,
            },
            query: Features {
                values: Vec::new(),
                examples: 0,
                buckets: index.manifest.key.plan.buckets,
                dim: index.manifest.dim,
            },
        };
        Ok(Some(self.base_inputs(&index, vec![checkpoint])))
    }

    /// The curvature fitted (or loaded from beside the index) at the index's last checkpoint
    /// with the given settings on `fit_images` seeded training images; with EK-FAC's corrected
    /// eigenvalues when `corrected`.
    pub fn curvature(
        &mut self,
        fisher: Fisher,
        sharing: Sharing,
        fit_images: usize,
        corrected: bool,
    ) -> Result<Option<Arc<Curvature>>, String> {
        if let Some((f, s, n, c)) = &self.curvature
            && (*f, *s, *n) == (fisher, sharing, fit_images)
            && (!corrected || c.layers.iter().all(|l| l.corrected.is_some()))
        {
            return Ok(Some(c.clone()));
        }
        let Some(index) = self.index()? else { return Ok(None) };
        let Some(model) = self.last_model()? else {
            return Ok(None);
        };
        let (entry, net) = (&model.0, &model.1);
        let schedule = self.schedule();
        let index_plan = &index.manifest.key.plan;
        let fit = FitConfig {
            fisher,
            sharing,
            // Independent (t, ε) per fitted image: the curvature is an expectation over them.
            plan: TimestepPlan {
                shared_noise: false,
                seed: index_plan.seed.wrapping_add(1),
                ..index_plan.clone()
            },
        };
        let data = self.data;
        let mut chosen = permutation(&mut stream("curvature-fit", &[index_plan.seed]), data.len());
        chosen.truncate(fit_images.clamp(1, data.len().max(1)));
        chosen.sort_unstable();
        let key = CurvatureKey {
            format_version: CURVATURE_FORMAT_VERSION,
            checkpoint_hash: entry.state.weights_sha256.clone(),
            data_hash: data.content_hash(),
            fit,
            fit_images: chosen.len(),
            layer_shapes: index.manifest.key.layer_shapes.clone(),
        };
        let fit_examples = Examples::from_dataset(data, &chosen);
        let fitter = CurvatureFit {
            model: net,
            schedule: &schedule,
            config: &key.fit,
            examples: &fit_examples,
            batch_size: self.index_settings.batch_size,
            device: self.device,
        };
        // A damaged or truncated stored fit is not an error: it is fitted again and replaced.
        let stored = load_curvature(&index.dir, &key).unwrap_or_else(|damage| {
            self.job.report(
                "refitting the curvature",
                0,
                1,
                format!("the stored fit is damaged and is fitted again: {damage}"),
            );
            None
        });
        let layers = match stored {
            Some(mut layers) => {
                if corrected && layers.iter().any(|l| l.corrected.is_none()) {
                    if !fitter.correct(&mut layers, self.job)? {
                        return Ok(None);
                    }
                    save_curvature(&index.dir, &key, &layers)?;
                }
                layers
            }
            None => {
                let Some(layers) = fitter.run(corrected, self.job)? else {
                    return Ok(None);
                };
                save_curvature(&index.dir, &key, &layers)?;
                layers
            }
        };
        let curvature = Arc::new(Curvature { key, layers });
        self.curvature = Some((fisher, sharing, fit_images, curvature.clone()));
        Ok(Some(curvature))
    }

    /// Runs `visit` with a featurisation of `measurement` under `index`'s plan and projection
    /// at the index's last checkpoint, and the query as its example.
    fn query_run<T>(
        &mut self,
        index: &Index,
        measurement: Measurement,
        visit: impl FnOnce(&FeatureRun<'_>, &Examples) -> Result<Option<T>, String>,
    ) -> Result<Option<T>, String> {
        let Some(model) = self.last_model()? else {
            return Ok(None);
        };
        let schedule = self.schedule();
        let run = FeatureRun {
            model: &model.1,
            schedule: &schedule,
            plan: &index.manifest.key.plan,
            projector: &index.projector,
            measurement,
            batch_size: self.index_settings.batch_size,
            device: self.device,
        };
        visit(&run, &self.query_example())
    }

    /// The query's exact (unprojected) per-bucket gradients of `measurement` at the index's
    /// last checkpoint, under the index's timestep plan.
    pub fn query_gradients(&mut self, measurement: Measurement) -> Result<Option<Vec<Tensor<3>>>, String> {
        if let Some(g) = self.query_gradients.get(&measurement) {
            return Ok(Some(g.clone()));
        }
        let Some(index) = self.index()? else { return Ok(None) };
        let job = self.job;
        let Some(gradients) = self.query_run(&index, measurement, |run, query| run.bucket_gradients(query, job))?
        else {
            return Ok(None);
        };
        self.query_gradients.insert(measurement, gradients.clone());
        Ok(Some(gradients))
    }

    /// TRAK's kernel of the index of `measurement` with relative `damping`, loaded from beside
    /// the index or fitted there, once per request (TRAK and Journey-TRAK share it).
    pub fn trak_kernel(&mut self, measurement: Measurement, damping: f64) -> Result<Option<Arc<TrakKernel>>, String> {
        let key = (measurement, damping.to_bits());
        if let Some(kernel) = self.kernels.get(&key) {
            return Ok(Some(kernel.clone()));
        }
        let Some(index) = self.index_for(measurement)? else {
            return Ok(None);
        };
        let kernel = Arc::new(TrakKernel::load_or_fit(&index, damping)?);
        self.kernels.insert(key, kernel.clone());
        Ok(Some(kernel))
    }

    /// The scores of the method called `name` for this query, computed once per request (an
    /// ensemble reuses its members' scores, and a member asked for on its own is not redone).
    pub fn scores_of(&mut self, name: &str) -> Result<Option<Scores>, String> {
        if let Some(s) = self.scores.get(name) {
            return Ok(Some(s.clone()));
        }
        let method = registry::lookup(name)?;
        let Some(scores) = method.score(self)? else {
            return Ok(None);
        };
        scores.check_finite()?;
        self.scores.insert(name.to_owned(), scores.clone());
        Ok(Some(scores))
    }
}

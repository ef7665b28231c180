//! What the methods of one attribution request share: the model, the data, the query and the
//! parameters, and the engine's expensive products, each made at most once per request and only
//! when a method asks for it (the index, the query's features at every checkpoint, the fitted
//! curvature, the query's exact gradients, the scores of methods already run). The products
//! themselves are made in `products/` and in the layers below; the context only keeps them.
//! Every product returns [`AttributionError::Cancelled`] when the job is cancelled.

use std::collections::HashMap;
use std::sync::Arc;

use burn::tensor::{Device, Tensor};

use super::error::AttributionError;
use super::inputs::{CheckpointFeatures, GradientInputs, TrainFeatures};
use super::parameter::ParameterValues;
use super::products::checkpoint_weights;
use super::products::curvature::{Curvature, CurvatureSettings};
use super::products::losses::{ScoringDraws, original_losses};
use super::products::trak_kernel::TrakKernel;
use super::query::Query;
use super::scores::Scores;
use crate::data::Dataset;
use crate::diffusion::images::TrainingInputs;
use crate::diffusion::latent::{LatentDistributions, LatentSpace, training_latents};
use crate::diffusion::{CheckpointEntry, Measurement, ModelDir, Network, Schedule};
use crate::grad::{Examples, FeatureRun, Features, GradError};
use crate::index::{Index, IndexSettings, SummaryPart};
use crate::jobs::JobContext;

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
    /// Every parameter's value.
    pub parameters: &'a ParameterValues,
    /// Where the work runs.
    pub device: &'a Device,
    /// Progress and cancellation.
    pub job: &'a JobContext,
    indexes: HashMap<Measurement, Arc<Index>>,
    projected_queries: HashMap<Measurement, Features>,
    inputs: Option<GradientInputs>,
    last_model: Option<Arc<(CheckpointEntry, Network)>>,
    final_model: Option<Arc<(CheckpointEntry, Network)>>,
    curvature: Option<(CurvatureSettings, Arc<Curvature>)>,
    query_gradients: HashMap<Measurement, Vec<Tensor<3>>>,
    kernels: HashMap<(Measurement, u64, SummaryPart), Arc<TrakKernel>>,
    scores: HashMap<String, Scores>,
    latent_space: Option<Option<Arc<LatentSpace>>>,
    training_latents: Option<Option<Arc<LatentDistributions>>>,
    query_example: Option<Examples>,
}

impl<'a> Context<'a> {
    /// A request's context; nothing is computed yet.
    pub fn new(
        model: &'a ModelDir,
        data: &'a Dataset,
        query: &'a Query,
        index_settings: &'a IndexSettings,
        parameters: &'a ParameterValues,
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
            latent_space: None,
            training_latents: None,
            query_example: None,
        }
    }

    /// A latent model's autoencoder, loaded once per request; `None` for a pixel-space model.
    pub fn latent_space(&mut self) -> Result<Option<Arc<LatentSpace>>, AttributionError> {
        if let Some(space) = &self.latent_space {
            return Ok(space.clone());
        }
        let space = self.model.latent_space(self.device)?.map(Arc::new);
        self.latent_space = Some(space.clone());
        Ok(space)
    }

    /// A latent model's training latents (from the cache, encoding what it lacks); `None` for a
    /// pixel-space model.
    pub fn training_latents(&mut self) -> Result<Option<Arc<LatentDistributions>>, AttributionError> {
        if let Some(latents) = &self.training_latents {
            return Ok(latents.clone());
        }
        let latents = training_latents(self.model, self.data, self.device, self.job)?.map(Arc::new);
        self.training_latents = Some(latents.clone());
        Ok(latents)
    }

    /// The index, built (or resumed) if needed and opened.
    pub fn index(&mut self) -> Result<Arc<Index>, AttributionError> {
        self.index_for(self.index_settings.measurement)
    }

    /// The index of the training gradients of `measurement` (the loss for every method but
    /// D-TRAK), with the request's other settings, in its own directory beside the request's.
    pub fn index_for(&mut self, measurement: Measurement) -> Result<Arc<Index>, AttributionError> {
        if let Some(index) = self.indexes.get(&measurement) {
            return Ok(index.clone());
        }
        let settings = if measurement == self.index_settings.measurement {
            self.index_settings.clone()
        } else {
            self.index_settings.for_measurement(measurement)?
        };
        let index = settings.ensure(self.model, self.data, self.device, self.job)?;
        let index = Arc::new(index);
        self.indexes.insert(measurement, index.clone());
        Ok(index)
    }

    /// The query's projected per-bucket features [1, B, D] of `measurement` at the index's last
    /// checkpoint, under the index's plan and projection.
    pub fn projected_query(&mut self, measurement: Measurement) -> Result<Features, AttributionError> {
        if let Some(f) = self.projected_queries.get(&measurement) {
            return Ok(f.clone());
        }
        let index = self.index_for(measurement)?;
        let job = self.job;
        let features = self.query_run(&index, measurement, |run, query| run.run(query, job))?;
        self.projected_queries.insert(measurement, features.clone());
        Ok(features)
    }

    /// The noise schedule of the model.
    pub fn schedule(&self) -> Schedule {
        Schedule::new(&self.model.info.schedule)
    }

    /// The query as a one-example set in the network's space; its id keys nothing under shared
    /// noise. For a latent model: a generated query's latent as it is, a loaded image encoded
    /// to its latent distribution, a painted region averaged onto the latent grid.
    pub fn query_example(&mut self) -> Result<Examples, AttributionError> {
        if let Some(example) = &self.query_example {
            return Ok(example.clone());
        }
        let query = self.query;
        let example = match self.latent_space()? {
            None => Examples {
                ids: vec![u64::MAX],
                shape: query.shape,
                values: query.pixels.clone(),
                log_variance: None,
                region: query.mask.clone(),
                conditions: vec![query.condition],
            },
            Some(space) => {
                let shape = self.model.info.architecture.shape();
                let (values, log_variance) = match &query.latent {
                    Some(latent) => (latent.clone(), None),
                    None => {
                        let encoded = space.encode(&query.pixels, query.shape, self.device)?;
                        (encoded.mean, Some(encoded.log_variance))
                    }
                };
                Examples {
                    ids: vec![u64::MAX],
                    shape,
                    values,
                    log_variance,
                    region: query
                        .mask
                        .as_ref()
                        .map(|mask| space.region_to_latent(mask, query.shape[1], query.shape[2])),
                    conditions: vec![query.condition],
                }
            }
        };
        self.query_example = Some(example.clone());
        Ok(example)
    }

    /// The index's checkpoint entries in the model directory, oldest first, found by their
    /// weights' hash (the index is keyed by it; a step number alone can be re-assigned, as a
    /// diffusers model's guessed final step).
    fn indexed_entries(&self, index: &Index) -> Result<Vec<CheckpointEntry>, AttributionError> {
        let all = self.model.checkpoints()?;
        index
            .manifest
            .key
            .checkpoint_hashes
            .iter()
            .map(|hash| {
                all.iter()
                    .find(|c| &c.state.weights_sha256 == hash)
                    .cloned()
                    .ok_or_else(|| AttributionError::Invalid("an indexed checkpoint is missing from the model".into()))
            })
            .collect()
    }

    /// The model at its newest checkpoint, with its entry (no index needed).
    pub fn final_model(&mut self) -> Result<Arc<(CheckpointEntry, Network)>, AttributionError> {
        if let Some(model) = &self.final_model {
            return Ok(model.clone());
        }
        let entry = self.model.latest_required()?;
        let net = self.model.load_model(&entry, self.device)?;
        let model = Arc::new((entry, net));
        self.final_model = Some(model.clone());
        Ok(model)
    }

    /// The loss of every training image under every draw of `draws` with the newest
    /// checkpoint ([N × J]: MUCS's L_o, DAS's residuals), kept beside the model's indexes under
    /// `name` ([`original_losses`]).
    pub fn original_losses(&mut self, draws: &ScoringDraws, name: &str) -> Result<Vec<f32>, AttributionError> {
        let model = self.final_model()?;
        let latents = self.training_latents()?;
        let cache_dir = self.index_settings.dir.parent().unwrap_or(std::path::Path::new("."));
        original_losses(
            &model,
            &self.schedule(),
            TrainingInputs {
                data: self.data,
                latents: latents.as_deref(),
            },
            draws,
            name,
            cache_dir,
            self.device,
            self.job,
        )
    }

    /// The model at the index's last checkpoint, with its entry.
    pub fn last_model(&mut self) -> Result<Arc<(CheckpointEntry, Network)>, AttributionError> {
        if let Some(model) = &self.last_model {
            return Ok(model.clone());
        }
        let index = self.index()?;
        let entry = self
            .indexed_entries(&index)?
            .pop()
            .ok_or_else(|| AttributionError::Invalid("the index holds no checkpoint".into()))?;
        let net = self.model.load_model(&entry, self.device)?;
        let model = Arc::new((entry, net));
        self.last_model = Some(model.clone());
        Ok(model)
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
    pub fn gradient_inputs(&mut self) -> Result<GradientInputs, AttributionError> {
        if let Some(inputs) = &self.inputs {
            return Ok(inputs.clone());
        }
        let index = self.index()?;
        let schedule = self.schedule();
        let entries = self.indexed_entries(&index)?;
        // TracIn's weights from the model's own record of each checkpoint's step and rate.
        let weights = checkpoint_weights(
            &entries
                .iter()
                .map(|c| (c.state.step, c.state.learning_rate))
                .collect::<Vec<_>>(),
        );
        let query = self.query_example()?;
        let mut checkpoints = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            let net = self.model.load_model(entry, self.device)?;
            let run = FeatureRun {
                model: &net,
                schedule: &schedule,
                plan: &index.manifest.key.plan,
                projector: &index.projector,
                measurement: Measurement::Loss,
                batch_size: self.index_settings.batch_size,
                device: self.device,
            };
            let features = run.run(&query, self.job)?;
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
        let inputs = self.base_inputs(&index, checkpoints);
        self.inputs = Some(inputs.clone());
        Ok(inputs)
    }

    /// The training features at the last checkpoint of the index of `measurement` (the one the
    /// method reads, so that no other index is built for it), without the query's (the inputs
    /// of methods that featurise the query their own way).
    pub fn last_checkpoint_inputs(&mut self, measurement: Measurement) -> Result<GradientInputs, AttributionError> {
        let index = self.index_for(measurement)?;
        let last = index
            .manifest
            .checkpoints
            .len()
            .checked_sub(1)
            .ok_or_else(|| AttributionError::Invalid("the index holds no checkpoint".into()))?;
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
        Ok(self.base_inputs(&index, vec![checkpoint]))
    }

    /// The curvature of `settings` fitted (or loaded from beside the index) at the index's last
    /// checkpoint ([`Curvature::fit_or_load`]).
    pub fn curvature(&mut self, settings: CurvatureSettings) -> Result<Arc<Curvature>, AttributionError> {
        if let Some((kept, c)) = &self.curvature
            && (kept.fisher, kept.sharing, kept.fit_images) == (settings.fisher, settings.sharing, settings.fit_images)
            && (!settings.corrected || c.layers.iter().all(|l| l.corrected.is_some()))
        {
            return Ok(c.clone());
        }
        let index = self.index()?;
        let model = self.last_model()?;
        let schedule = self.schedule();
        let latents = self.training_latents()?;
        let curvature = Curvature::fit_or_load(
            &settings,
            &index,
            &model,
            &schedule,
            TrainingInputs {
                data: self.data,
                latents: latents.as_deref(),
            },
            self.index_settings.batch_size,
            self.device,
            self.job,
        )?;
        let curvature = Arc::new(curvature);
        self.curvature = Some((settings, curvature.clone()));
        Ok(curvature)
    }

    /// Runs `visit` with a featurisation of `measurement` under `index`'s plan and projection
    /// at the index's last checkpoint, and the query as its example.
    fn query_run<T>(
        &mut self,
        index: &Index,
        measurement: Measurement,
        visit: impl FnOnce(&FeatureRun<'_>, &Examples) -> Result<T, GradError>,
    ) -> Result<T, AttributionError> {
        let model = self.last_model()?;
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
        let query = self.query_example()?;
        Ok(visit(&run, &query)?)
    }

    /// The query's exact (unprojected) per-bucket gradients of `measurement` at the index's
    /// last checkpoint, under the index's timestep plan.
    pub fn query_gradients(&mut self, measurement: Measurement) -> Result<Vec<Tensor<3>>, AttributionError> {
        if let Some(g) = self.query_gradients.get(&measurement) {
            return Ok(g.clone());
        }
        let index = self.index()?;
        let job = self.job;
        let gradients = self.query_run(&index, measurement, |run, query| run.bucket_gradients(query, job))?;
        self.query_gradients.insert(measurement, gradients.clone());
        Ok(gradients)
    }

    /// TRAK's kernel of the index of `measurement` on the compact block's `part` with relative
    /// `damping`, loaded from beside the index or fitted there, once per request (TRAK and
    /// Journey-TRAK share it; DAS's is on the unit-normalised features).
    pub fn trak_kernel(
        &mut self,
        measurement: Measurement,
        damping: f64,
        part: SummaryPart,
    ) -> Result<Arc<TrakKernel>, AttributionError> {
        let key = (measurement, damping.to_bits(), part);
        if let Some(kernel) = self.kernels.get(&key) {
            return Ok(kernel.clone());
        }
        let index = self.index_for(measurement)?;
        let kernel = Arc::new(TrakKernel::load_or_fit(&index, damping, part)?);
        self.kernels.insert(key, kernel.clone());
        Ok(kernel)
    }

    /// The scores of the method called `name` if a method of this request computed them
    /// already ([`super::method::scores_of`]).
    pub fn computed_scores(&self, name: &str) -> Option<Scores> {
        self.scores.get(name).cloned()
    }

    /// Keeps the scores of the method called `name` for the rest of the request.
    pub fn keep_scores(&mut self, name: &str, scores: &Scores) {
        self.scores.insert(name.to_owned(), scores.clone());
    }
}

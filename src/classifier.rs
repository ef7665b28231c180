//! A small image classifier that judges generated samples: does a class-conditional model's
//! sample of a class look like that class? It is trained once on the real training split
//! (`retrace eval train-classifier`), reports its accuracy on the real test split, and is kept
//! in a directory of its own (`classifier.json` + `weights.bpk`), checked by hash on load.
//!
//! Architecture: two 3×3 convolutions (ReLU, 2×2 max-pooling after each), a hidden layer and
//! a linear read-out, trained with AdamW on cross-entropy, batches and order drawn from keyed
//! streams like every other training in retrace.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::store::ModuleRecord;
use burn::tensor::activation::{log_softmax, relu};
use burn::tensor::{Bytes, Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::data::Dataset;
use crate::device::DeviceError;
use crate::diffusion::images::batch_tensor;
use crate::diffusion::noise::{permutation, stream};
use crate::files::FileError;
use crate::files::{sha256, write_atomic};
use crate::jobs::JobContext;

/// Why a classifier could not be trained, saved or loaded.
#[derive(Debug, thiserror::Error)]
pub enum ClassifierError {
    /// The request, the data or the classifier's files do not fit together.
    #[error("{0}")]
    Invalid(String),
    /// `classifier.json` is not the JSON it should be.
    #[error("{path}: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        #[source]
        source: serde_json::Error,
    },
    /// A file cannot be read or written.
    #[error(transparent)]
    File(#[from] FileError),
    /// A tensor could not be read back from the device.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// The job was cancelled.
    #[error("cancelled")]
    Cancelled,
}

crate::jobs::cancellable_error!(ClassifierError {});

/// The description file of a classifier directory.
pub const CLASSIFIER_FILE: &str = "classifier.json";
const WEIGHTS_FILE: &str = "weights.bpk";

/// Architecture of a [`Classifier`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassifierConfig {
    /// Image channels.
    pub channels: usize,
    /// Image side (divisible by 4).
    pub size: usize,
    /// Number of classes.
    pub classes: usize,
    /// Channels of the two convolutions.
    pub widths: [usize; 2],
    /// Width of the hidden layer.
    pub hidden: usize,
}

impl ClassifierConfig {
    /// The default architecture for `classes` classes of `channels`×`size`×`size` images.
    pub fn new(channels: usize, size: usize, classes: usize) -> Self {
        Self {
            channels,
            size,
            classes,
            widths: [32, 64],
            hidden: 64,
        }
    }

    /// Checks that the sizes fit together.
    pub fn validate(&self) -> Result<(), ClassifierError> {
        let all = [
            self.channels,
            self.size,
            self.classes,
            self.widths[0],
            self.widths[1],
            self.hidden,
        ];
        if all.contains(&0) || all.iter().any(|&v| v > 4096) {
            return Err(ClassifierError::Invalid(format!(
                "classifier sizes {all:?}: each must be 1 to 4096"
            )));
        }
        if !self.size.is_multiple_of(4) || self.classes < 2 {
            return Err(ClassifierError::Invalid(format!(
                "a classifier of {}×{} images and {} classes: the side must be divisible by 4, and there \
                 must be two classes or more",
                self.size, self.size, self.classes
            )));
        }
        Ok(())
    }

    fn build(&self, device: &Device) -> Classifier {
        let conv = |cin: usize, cout: usize| {
            Conv2dConfig::new([cin, cout], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device)
        };
        let flat = self.widths[1] * (self.size / 4) * (self.size / 4);
        Classifier {
            conv1: conv(self.channels, self.widths[0]),
            conv2: conv(self.widths[0], self.widths[1]),
            hidden: LinearConfig::new(flat, self.hidden).init(device),
            output: LinearConfig::new(self.hidden, self.classes).init(device),
            pool: MaxPool2dConfig::new([2, 2]).init(),
        }
    }
}

/// The classifier network.
#[derive(Module, Debug)]
pub struct Classifier {
    /// First convolution.
    pub conv1: Conv2d,
    /// Second convolution.
    pub conv2: Conv2d,
    /// Hidden layer on the flattened features.
    pub hidden: Linear,
    /// Read-out to class logits.
    pub output: Linear,
    /// 2×2 max-pooling.
    pub pool: MaxPool2d,
}

impl Classifier {
    /// Class logits of images in [−1, 1] ([batch, C, H, W] → [batch, classes]).
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        self.output.forward(self.features(x))
    }

    /// The hidden layer's activations (after its ReLU) of images in [−1, 1]: the features the
    /// read-out separates the classes with ([batch, C, H, W] → [batch, hidden]).
    pub fn features(&self, x: Tensor<4>) -> Tensor<2> {
        let h = self.pool.forward(relu(self.conv1.forward(x)));
        let h = self.pool.forward(relu(self.conv2.forward(h)));
        let [b, c, hh, ww] = h.dims();
        relu(self.hidden.forward(h.reshape([b, c * hh * ww])))
    }

    /// The most likely class of every image (values in [−1, 1], image-major).
    pub fn predict(&self, pixels: &[f32], shape: [usize; 3], device: &Device) -> Result<Vec<u32>, ClassifierError> {
        Ok(self
            .per_image(pixels, shape, device, Self::forward)?
            .iter()
            .map(|logits| {
                logits
                    .iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .map_or(0, |(i, _)| i as u32)
            })
            .collect())
    }

    /// The hidden features ([`Self::features`]) of every image (values in [−1, 1],
    /// image-major), one vector per image.
    pub fn embed(&self, pixels: &[f32], shape: [usize; 3], device: &Device) -> Result<Vec<Vec<f32>>, ClassifierError> {
        self.per_image(pixels, shape, device, Self::features)
    }

    /// `layer`'s output row of every image, in batches of 256.
    fn per_image(
        &self,
        pixels: &[f32],
        shape: [usize; 3],
        device: &Device,
        layer: fn(&Self, Tensor<4>) -> Tensor<2>,
    ) -> Result<Vec<Vec<f32>>, ClassifierError> {
        let per_image = shape.iter().product::<usize>().max(1);
        let mut out = Vec::with_capacity(pixels.len() / per_image);
        for chunk in pixels.chunks(per_image * 256) {
            let n = chunk.len() / per_image;
            let x = Tensor::<4>::from_data(
                TensorData::new(chunk.to_vec(), [n, shape[0], shape[1], shape[2]]),
                device,
            );
            let values = crate::device::read_back(layer(self, x))?;
            let width = values.len() / n.max(1);
            out.extend(values.chunks(width.max(1)).take(n).map(<[f32]>::to_vec));
        }
        Ok(out)
    }

    /// The share of `data`'s images classified as their label, in all and per class.
    pub fn accuracy(&self, data: &Dataset, device: &Device) -> Result<Accuracy, ClassifierError> {
        let pixels: Vec<f32> = (0..data.len())
            .flat_map(|i| crate::data::pixels::bytes_to_unit(data.image(i)))
            .collect();
        let predicted = self.predict(&pixels, [data.channels, data.height, data.width], device)?;
        Ok(Accuracy::of(&predicted, &data.labels, data.class_names.len()))
    }
}

/// Accuracy overall and per class.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Accuracy {
    /// Share of all images classified right.
    pub overall: f64,
    /// Share per class (NaN-free: a class without images has 0).
    pub per_class: Vec<f64>,
    /// Images per class.
    pub counts: Vec<usize>,
}

impl Accuracy {
    /// The accuracy of `predicted` labels against `truth`, over `classes` classes.
    pub fn of(predicted: &[u32], truth: &[u32], classes: usize) -> Self {
        let (mut right, mut counts) = (vec![0usize; classes], vec![0usize; classes]);
        for (&p, &t) in predicted.iter().zip(truth) {
            if let Some(count) = counts.get_mut(t as usize) {
                *count += 1;
                right[t as usize] += usize::from(p == t);
            }
        }
        let total: usize = counts.iter().sum();
        Self {
            overall: right.iter().sum::<usize>() as f64 / total.max(1) as f64,
            per_class: right
                .iter()
                .zip(&counts)
                .map(|(&r, &c)| r as f64 / c.max(1) as f64)
                .collect(),
            counts,
        }
    }
}

/// Training settings of a classifier.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassifierRecipe {
    /// Passes over the training split.
    pub epochs: usize,
    /// Images per step.
    pub batch_size: usize,
    /// AdamW learning rate.
    pub learning_rate: f64,
    /// Seed of initialisation and order.
    pub seed: u64,
}

/// `classifier.json`: what the classifier is, what it was trained on and how well it does.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassifierInfo {
    /// The architecture.
    pub config: ClassifierConfig,
    /// Class names, by label.
    pub class_names: Vec<String>,
    /// Spec of the training split.
    pub data_spec: String,
    /// Content hash of the training split.
    pub data_hash: String,
    /// How it was trained.
    pub recipe: ClassifierRecipe,
    /// Spec of the test split it was measured on.
    pub test_spec: String,
    /// Its accuracy there.
    pub test_accuracy: Accuracy,
    /// SHA-256 of `weights.bpk`.
    pub weights_sha256: String,
    /// The command line that trained it.
    pub command: String,
}

/// Trains a classifier on `train` and measures it on `test`, reporting progress to `job`.
pub fn train_classifier(
    train: &Dataset,
    test: &Dataset,
    recipe: &ClassifierRecipe,
    device: &Device,
    job: &JobContext,
) -> Result<(Classifier, Accuracy), ClassifierError> {
    let config = ClassifierConfig::new(train.channels, train.height, train.class_names.len());
    config.validate()?;
    if train.height != train.width || recipe.epochs == 0 || recipe.batch_size == 0 {
        return Err(ClassifierError::Invalid(
            "a classifier needs square images, one epoch or more and a batch of one or more".into(),
        ));
    }
    let ad = device.clone().autodiff();
    let mut net = crate::device::drawing(&ad, Some(recipe.seed), || config.build(&ad));
    let mut optim: ModuleOptimizer = AdamWConfig::new().with_weight_decay(1e-4).init();
    let per_epoch = train.len().div_ceil(recipe.batch_size);
    let total = per_epoch * recipe.epochs;
    for step in 0..total {
        job.stop_if_cancelled()?;
        let (epoch, within) = (step / per_epoch, step % per_epoch);
        let order = permutation(
            &mut stream("classifier-order", &[recipe.seed, epoch as u64]),
            train.len(),
        );
        let indices: Vec<usize> = order
            .iter()
            .skip(within * recipe.batch_size)
            .take(recipe.batch_size)
            .copied()
            .collect();
        let x = batch_tensor(train, &indices, &ad);
        let mut onehot = vec![0.0f32; indices.len() * config.classes];
        for (k, &i) in indices.iter().enumerate() {
            onehot[k * config.classes + train.labels[i] as usize] = 1.0;
        }
        let targets = Tensor::<2>::from_data(TensorData::new(onehot, [indices.len(), config.classes]), &ad);
        let loss = -(log_softmax(net.forward(x), 1) * targets).sum_dim(1).mean();
        let value = loss.clone().into_scalar::<f32>();
        if !value.is_finite() {
            return Err(ClassifierError::Invalid(format!(
                "classifier training diverged at step {step}"
            )));
        }
        let grads = GradientsParams::from_grads(loss.backward(), &net);
        net = optim.step(recipe.learning_rate, net, grads);
        job.report(
            "training the classifier",
            step as u64 + 1,
            total as u64,
            format!("loss {value:.3}"),
        );
    }
    let net = net.valid();
    let accuracy = net.accuracy(test, device)?;
    Ok((net, accuracy))
}

/// Writes a classifier directory: the weights, then `classifier.json` with their hash.
pub fn save_classifier(dir: &Path, net: &Classifier, mut info: ClassifierInfo) -> Result<(), ClassifierError> {
    crate::files::create_dir_all(dir)?;
    let weights = net
        .clone()
        .into_record()
        .into_bytes()
        .map_err(|e| ClassifierError::Invalid(format!("cannot serialise the classifier: {e}")))?;
    info.weights_sha256 = sha256(&weights);
    write_atomic(&dir.join(WEIGHTS_FILE), &weights)?;
    write_atomic(
        &dir.join(CLASSIFIER_FILE),
        &serde_json::to_vec_pretty(&info).expect("the description serialises"),
    )?;
    Ok(())
}

/// Opens a classifier directory: its description, and the weights checked against their hash.
pub fn load_classifier(dir: &Path, device: &Device) -> Result<(Classifier, ClassifierInfo), ClassifierError> {
    let path = dir.join(CLASSIFIER_FILE);
    let bytes = crate::files::read(&path)?;
    let info: ClassifierInfo = serde_json::from_slice(&bytes).map_err(|source| ClassifierError::Json {
        path: path.clone(),
        source,
    })?;
    info.config.validate()?;
    let weights_path: PathBuf = dir.join(WEIGHTS_FILE);
    let weights = crate::files::read(&weights_path)?;
    if sha256(&weights) != info.weights_sha256 {
        return Err(ClassifierError::Invalid(format!(
            "{}: checksum mismatch with {CLASSIFIER_FILE}: the file is corrupt or truncated",
            weights_path.display()
        )));
    }
    let record = ModuleRecord::from_bytes(Bytes::from_bytes_vec(weights))
        .map_err(|e| ClassifierError::Invalid(format!("{}: unreadable weights: {e}", weights_path.display())))?;
    let net = info.config.build(device).try_load_record(record).map_err(|e| {
        ClassifierError::Invalid(format!(
            "{}: weights do not fit the architecture: {e}",
            weights_path.display()
        ))
    })?;
    Ok((net, info))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accuracy_counts_per_class_and_ignores_unknown_labels() {
        let a = Accuracy::of(&[0, 1, 1, 2], &[0, 1, 0, 7], 3);
        assert_eq!(a.counts, vec![2, 1, 0]);
        assert!((a.overall - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(a.per_class, vec![0.5, 1.0, 0.0]);
    }
}

//! Conversions between byte images and model tensors in [−1, 1] (the host-side pixel helpers
//! are in [`crate::data::pixels`]), and the training images as the network takes them
//! ([`TrainingInputs`]: pixels, or a latent model's latent draws).

use burn::tensor::{Device, Tensor, TensorData};

use super::latent::LatentDistributions;
use super::noise::{gaussian, stream};
use crate::data::Dataset;
use crate::data::pixels::{bytes_to_unit, unit_to_bytes};

/// The images `indices` of a dataset as a [n, C, H, W] tensor in [−1, 1].
pub fn batch_tensor(data: &Dataset, indices: &[usize], device: &Device) -> Tensor<4> {
    let mut values = Vec::with_capacity(indices.len() * data.image_len());
    for &i in indices {
        values.extend(bytes_to_unit(data.image(i)));
    }
    Tensor::from_data(
        TensorData::new(values, [indices.len(), data.channels, data.height, data.width]),
        device,
    )
}

/// Reads a [n, C, H, W] tensor back as `n` byte images.
pub fn tensor_to_images(x: Tensor<4>) -> Result<Vec<Vec<u8>>, crate::device::DeviceError> {
    let [n, c, h, w] = x.dims();
    let values = crate::device::read_back(x)?;
    Ok(values.chunks(c * h * w).take(n).map(unit_to_bytes).collect())
}

/// The training images as the network takes them: their pixels, or for a latent model their
/// latent distributions, from which every use draws its own latent from a keyed stream (as
/// diffusers' training draws `latent_dist.sample()` afresh per step).
#[derive(Clone, Copy, Debug)]
pub struct TrainingInputs<'a> {
    /// The images, their labels and ids.
    pub data: &'a Dataset,
    /// For a latent model, every image's latent distribution (model units).
    pub latents: Option<&'a LatentDistributions>,
}

impl<'a> TrainingInputs<'a> {
    /// A pixel-space model's inputs: the images themselves.
    pub fn pixels(data: &'a Dataset) -> Self {
        Self { data, latents: None }
    }

    /// C×H×W of one input.
    pub fn shape(&self) -> [usize; 3] {
        match self.latents {
            None => [self.data.channels, self.data.height, self.data.width],
            Some(latents) => latents.shape,
        }
    }

    /// What the inputs are, for cache keys: the data's content hash, and for latents the
    /// autoencoder's.
    pub fn fingerprint(&self) -> String {
        match self.latents {
            None => self.data.content_hash(),
            Some(latents) => format!("{} latents {}", self.data.content_hash(), latents.vae_sha256),
        }
    }

    /// Values per input.
    pub fn input_len(&self) -> usize {
        self.shape().iter().product()
    }

    /// Image `i`'s clean input: its pixels in [−1, 1], or a latent drawn with the standard
    /// normal stream (`domain`, `key` followed by the image's id).
    pub fn clean(&self, i: usize, domain: &str, key: &[u64]) -> Vec<f32> {
        match self.latents {
            None => bytes_to_unit(self.data.image(i)),
            Some(latents) => {
                let mut full = key.to_vec();
                full.push(self.data.ids[i]);
                latents.draw(i, &gaussian(&mut stream(domain, &full), latents.latent_len()))
            }
        }
    }

    /// The clean inputs of images `indices` as a [n, C, H, W] tensor, drawn as [`Self::clean`].
    pub fn batch(&self, indices: &[usize], domain: &str, key: &[u64], device: &Device) -> Tensor<4> {
        if self.latents.is_none() {
            return batch_tensor(self.data, indices, device);
        }
        let [c, h, w] = self.shape();
        let values = indices.iter().flat_map(|&i| self.clean(i, domain, key)).collect();
        Tensor::from_data(TensorData::new(values, [indices.len(), c, h, w]), device)
    }
}

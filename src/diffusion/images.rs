//! Conversions between byte images and model tensors in [−1, 1] (the host-side pixel helpers
//! are in [`crate::data::pixels`]).

use burn::tensor::{Device, Tensor, TensorData};

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

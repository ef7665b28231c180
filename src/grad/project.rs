//! Factored random projection of per-example gradients (LoGra, Choe et al. 2024). Every layer
//! gets seeded Gaussian matrices P_in (d_in × k_in) and P_out (d_out × k_out) with entries of
//! variance 1/k, and example i's gradient Σ_p g_p a_pᵀ becomes
//! Σ_p (P_outᵀ g_p)(P_inᵀ a_p)ᵀ = P_outᵀ G P_in, a k_out × k_in matrix, computed from the
//! captured activations and output gradients without forming G. Because E[P Pᵀ] = I for each
//! factor, inner products of projected gradients are unbiased estimates of the exact ones.

use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::LayerGrads;
use crate::diffusion::noise::{gaussian, stream};

/// Settings of a projection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ProjectionConfig {
    /// Input-side dimension per layer.
    pub k_in: usize,
    /// Output-side dimension per layer.
    pub k_out: usize,
    /// Seed of the random matrices.
    pub seed: u64,
}

impl Default for ProjectionConfig {
    fn default() -> Self {
        Self {
            k_in: 16,
            k_out: 16,
            seed: 0,
        }
    }
}

/// The projection matrices of every captured layer, in capture order.
#[derive(Clone, Debug)]
pub struct Projector {
    /// The settings.
    pub config: ProjectionConfig,
    /// Per layer: (P_in [d_in, k_in], P_out [d_out, k_out]).
    pub layers: Vec<(Tensor<2>, Tensor<2>)>,
}

fn gaussian_matrix(rows: usize, cols: usize, key: &[u64], device: &Device) -> Tensor<2> {
    let scale = 1.0 / (cols as f32).sqrt();
    let values: Vec<f32> = gaussian(&mut stream("projection", key), rows * cols)
        .into_iter()
        .map(|v| v * scale)
        .collect();
    Tensor::from_data(TensorData::new(values, [rows, cols]), device)
}

impl Projector {
    /// Projection matrices for layers of the given (d_in, d_out) shapes. A dimension no larger
    /// than its k is kept exactly (identity) instead of being projected up.
    pub fn new(config: ProjectionConfig, shapes: &[(usize, usize)], device: &Device) -> Self {
        let side = |d: usize, k: usize, key: [u64; 3]| {
            if d <= k {
                Tensor::<2>::eye(d, device)
            } else {
                gaussian_matrix(d, k, &key, device)
            }
        };
        let layers = shapes
            .iter()
            .enumerate()
            .map(|(l, &(d_in, d_out))| {
                (
                    side(d_in, config.k_in, [config.seed, l as u64, 0]),
                    side(d_out, config.k_out, [config.seed, l as u64, 1]),
                )
            })
            .collect();
        Self { config, layers }
    }

    /// Feature width of every layer (k_out' · k_in').
    pub fn layer_widths(&self) -> Vec<usize> {
        self.layers.iter().map(|(pi, po)| pi.dims()[1] * po.dims()[1]).collect()
    }

    /// Total feature width.
    pub fn dim(&self) -> usize {
        self.layer_widths().iter().sum()
    }

    /// Projected per-example gradients of captured layers: [B, dim].
    pub fn project(&self, layers: &[LayerGrads]) -> Tensor<2> {
        assert_eq!(
            layers.len(),
            self.layers.len(),
            "projection built for another layer set"
        );
        let parts: Vec<Tensor<2>> = layers
            .iter()
            .zip(&self.layers)
            .map(|(layer, (p_in, p_out))| {
                let b = layer.output_grads.dims()[0];
                let a = layer.project_activations(p_in.clone());
                let g = layer.output_grads.clone().matmul(p_out.clone().unsqueeze::<3>());
                let f = g.swap_dims(1, 2).matmul(a);
                let [_, ko, ki] = f.dims();
                f.reshape([b, ko * ki])
            })
            .collect();
        Tensor::cat(parts, 1)
    }

    /// Projects batches of full per-layer gradient matrices ([B, d_out, d_in] each, capture
    /// order): [B, dim], the same features [`Self::project`] gives for captured layers.
    pub fn project_full(&self, grads: &[Tensor<3>]) -> Tensor<2> {
        let parts: Vec<Tensor<2>> = grads
            .iter()
            .zip(&self.layers)
            .map(|(g, (p_in, p_out))| {
                let b = g.dims()[0];
                let f = p_out
                    .clone()
                    .transpose()
                    .unsqueeze::<3>()
                    .matmul(g.clone())
                    .matmul(p_in.clone().unsqueeze::<3>());
                let [_, ko, ki] = f.dims();
                f.reshape([b, ko * ki])
            })
            .collect();
        Tensor::cat(parts, 1)
    }
}

/// (d_in, d_out) of every Linear/Conv2d of `model` for images of `shape`, from one capture.
pub fn model_layer_shapes(
    model: &crate::diffusion::Network,
    shape: [usize; 3],
    device: &Device,
) -> Vec<(usize, usize)> {
    let (model, ad) = super::frozen_on_autodiff(model, device);
    let x = Tensor::<4>::zeros([1, shape[0], shape[1], shape[2]], &ad);
    let t = Tensor::<1>::zeros([1], &ad);
    let condition = model.condition_encoding().class_zero_rows(1, &ad);
    let (layers, _) = super::capture_layers(&model, x, t, condition, |p| p.powi_scalar(2).sum().reshape([1]));
    layer_shapes(&layers)
}

/// (d_in, d_out) of every captured layer, for [`Projector::new`].
pub fn layer_shapes(layers: &[LayerGrads]) -> Vec<(usize, usize)> {
    layers.iter().map(|l| (l.d_in(), l.output_grads.dims()[2])).collect()
}

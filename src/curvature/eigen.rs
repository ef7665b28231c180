//! Eigendecomposition of the Kronecker factors, the EK-FAC eigenvalue correction, and the
//! damped inverse applied to a gradient.
//!
//! With A = Q_A diag(λ_A) Q_Aᵀ and S = Q_S diag(λ_S) Q_Sᵀ, the layer's curvature A ⊗ S has
//! eigenvectors Q_A ⊗ Q_S and eigenvalues λ_S,i λ_A,j, so for a gradient V (d_out × d_in)
//! (A ⊗ S + λI)⁻¹ vec(V) = vec(Q_S [(Q_Sᵀ V Q_A) ⊘ (Λ + λ)] Q_Aᵀ), Λ_ij = λ_S,i λ_A,j.
//! EK-FAC (George et al. 2018) keeps the eigenbasis but replaces Λ by the second moment of the
//! per-point gradients in that basis, Λ_ij = 1/N Σ_n (Q_Sᵀ G_n Q_A)_ij², which is the exact
//! diagonal of the curvature in the Kronecker eigenbasis.
//!
//! Eigendecompositions run on the host in f64 with nalgebra (burn has no symmetric eigensolver).

use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::{CurvatureError, LayerFactors};
use crate::grad::LayerGrads;

/// One layer's eigenbasis and eigenvalues, on the host.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerEigen {
    /// d_in (+1 with a bias).
    pub d_in: usize,
    /// d_out.
    pub d_out: usize,
    /// Eigenvectors of A as columns, row-major d_in × d_in.
    pub q_a: Vec<f32>,
    /// Eigenvalues of A (clamped at 0).
    pub lambda_a: Vec<f32>,
    /// Eigenvectors of S as columns, row-major d_out × d_out.
    pub q_s: Vec<f32>,
    /// Eigenvalues of S (clamped at 0).
    pub lambda_s: Vec<f32>,
    /// EK-FAC's corrected eigenvalues, d_out × d_in, once fitted.
    pub corrected: Option<Vec<f32>>,
}

/// Symmetric eigendecomposition of a row-major n × n matrix: (eigenvectors as columns,
/// row-major; eigenvalues, clamped at 0 since the factors are positive semi-definite).
fn symmetric_eigen(n: usize, m: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let mat = nalgebra::DMatrix::<f64>::from_fn(n, n, |i, j| 0.5 * (m[i * n + j] as f64 + m[j * n + i] as f64));
    let eig = mat.symmetric_eigen();
    let mut q = vec![0.0f32; n * n];
    for i in 0..n {
        for j in 0..n {
            q[i * n + j] = eig.eigenvectors[(i, j)] as f32;
        }
    }
    (q, eig.eigenvalues.iter().map(|&v| v.max(0.0) as f32).collect())
}

impl LayerEigen {
    /// Eigendecomposes a layer's factors.
    pub fn new(f: &LayerFactors) -> Self {
        let (q_a, lambda_a) = symmetric_eigen(f.d_in, &f.a);
        let (q_s, lambda_s) = symmetric_eigen(f.d_out, &f.s);
        Self {
            d_in: f.d_in,
            d_out: f.d_out,
            q_a,
            lambda_a,
            q_s,
            lambda_s,
            corrected: None,
        }
    }

    /// K-FAC's eigenvalues λ_S,i λ_A,j, row-major d_out × d_in.
    pub fn kronecker_eigenvalues(&self) -> Vec<f32> {
        self.lambda_s
            .iter()
            .flat_map(|s| self.lambda_a.iter().map(move |a| s * a))
            .collect()
    }
}

/// Which eigenvalues the preconditioner uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Eigenvalues {
    /// Products of the factors' eigenvalues (K-FAC).
    Kfac,
    /// Eigenvalues corrected in the Kronecker eigenbasis (EK-FAC).
    Ekfac,
}

/// Damping λ added to every eigenvalue.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Damping {
    /// λ = factor × the mean eigenvalue of each layer (scale-free; the default, 0.1, follows
    /// kronfluence's heuristic).
    Relative(f64),
    /// The same λ for every layer.
    Absolute(f64),
}

impl Default for Damping {
    fn default() -> Self {
        Damping::Relative(0.1)
    }
}

/// Accumulates EK-FAC's corrected eigenvalues from per-point gradients, on the device.
pub struct EigenCorrection {
    bases: Vec<(Tensor<2>, Tensor<2>)>,
    sums: Vec<Tensor<2>>,
    points: usize,
}

fn matrix(values: &[f32], rows: usize, cols: usize, device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(values.to_vec(), [rows, cols]), device)
}

impl EigenCorrection {
    /// Starts a correction in the bases of `layers`.
    pub fn new(layers: &[LayerEigen], device: &Device) -> Self {
        Self {
            bases: layers
                .iter()
                .map(|l| {
                    (
                        matrix(&l.q_a, l.d_in, l.d_in, device),
                        matrix(&l.q_s, l.d_out, l.d_out, device),
                    )
                })
                .collect(),
            sums: Vec::new(),
            points: 0,
        }
    }

    /// Adds one batch of captures (each example is one point): Σ_n ((g Q_S)ᵀ (a Q_A))².
    pub fn add(&mut self, layers: &[LayerGrads]) {
        for (l, (layer, (q_a, q_s))) in layers.iter().zip(&self.bases).enumerate() {
            let a = layer.activations().matmul(q_a.clone().unsqueeze::<3>());
            let g = layer.output_grads.clone().matmul(q_s.clone().unsqueeze::<3>());
            let rotated = g.swap_dims(1, 2).matmul(a);
            let [_, o, i] = rotated.dims();
            let squares = rotated.powi_scalar(2).sum_dim(0).reshape([o, i]);
            if let Some(sum) = self.sums.get_mut(l) {
                *sum = sum.clone() + squares;
            } else {
                self.sums.push(squares);
            }
        }
        self.points += layers.first().map_or(0, |l| l.output_grads.dims()[0]);
    }

    /// Stores the corrected eigenvalues into `layers`.
    pub fn finish(self, layers: &mut [LayerEigen]) -> Result<(), CurvatureError> {
        if self.points == 0 {
            return Err(CurvatureError::Invalid("no point to correct the eigenvalues on".into()));
        }
        for (layer, sum) in layers.iter_mut().zip(self.sums) {
            layer.corrected = Some(crate::device::read_back(sum / self.points as f64)?);
        }
        Ok(())
    }
}

/// The damped inverse curvature of every layer, on a device.
pub struct Preconditioner {
    layers: Vec<(Tensor<2>, Tensor<2>, Tensor<2>)>,
    /// The damping λ of every layer.
    pub damping: Vec<f64>,
}

impl Preconditioner {
    /// Builds the preconditioner from eigendecompositions. Fails for EK-FAC when the correction
    /// was not fitted.
    pub fn new(
        layers: &[LayerEigen],
        eigenvalues: Eigenvalues,
        damping: Damping,
        device: &Device,
    ) -> Result<Self, CurvatureError> {
        let mut out = Vec::with_capacity(layers.len());
        let mut lambdas = Vec::with_capacity(layers.len());
        for l in layers {
            let values = match eigenvalues {
                Eigenvalues::Kfac => l.kronecker_eigenvalues(),
                Eigenvalues::Ekfac => l.corrected.clone().ok_or_else(|| {
                    CurvatureError::Invalid("EK-FAC needs corrected eigenvalues, which were not fitted".into())
                })?,
            };
            let lambda = match damping {
                Damping::Absolute(v) => v,
                Damping::Relative(f) => f * values.iter().map(|&v| v as f64).sum::<f64>() / values.len().max(1) as f64,
            };
            // A layer whose curvature is all zero (no signal reached it) gets a tiny positive
            // damping instead of a division by zero.
            let lambda = if lambda > 0.0 { lambda } else { 1e-12 };
            let inverse: Vec<f32> = values.iter().map(|&v| (1.0 / (v as f64 + lambda)) as f32).collect();
            out.push((
                matrix(&l.q_a, l.d_in, l.d_in, device),
                matrix(&l.q_s, l.d_out, l.d_out, device),
                matrix(&inverse, l.d_out, l.d_in, device),
            ));
            lambdas.push(lambda);
        }
        Ok(Self {
            layers: out,
            damping: lambdas,
        })
    }

    /// Applies (curvature + λI)⁻¹ to a batch of per-layer gradients [B, d_out, d_in].
    pub fn apply(&self, grads: &[Tensor<3>]) -> Result<Vec<Tensor<3>>, CurvatureError> {
        if grads.len() != self.layers.len() {
            return Err(CurvatureError::Invalid(format!(
                "the curvature has {} layers but the gradient {}",
                self.layers.len(),
                grads.len()
            )));
        }
        Ok(grads
            .iter()
            .zip(&self.layers)
            .map(|(v, (q_a, q_s, inverse))| {
                let rotated = q_s
                    .clone()
                    .transpose()
                    .unsqueeze::<3>()
                    .matmul(v.clone())
                    .matmul(q_a.clone().unsqueeze::<3>());
                let scaled = rotated * inverse.clone().unsqueeze::<3>();
                q_s.clone()
                    .unsqueeze::<3>()
                    .matmul(scaled)
                    .matmul(q_a.clone().transpose().unsqueeze::<3>())
            })
            .collect())
    }
}

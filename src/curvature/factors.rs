//! Kronecker factors of the curvature, one pair per Linear/Conv2d layer (Martens & Grosse 2015;
//! Grosse & Martens 2016 for convolutions). For a layer `out_p = W a_p` applied at positions p
//! (pixels of a convolution, tokens of an attention projection), the curvature block of W is
//! approximated by A ⊗ S with A from the inputs a and S from the output gradients g.
//!
//! How the shared positions enter (Eschenhagen et al. 2023, used for diffusion models by
//! Mlodozeniec et al. 2024):
//! - **expand** treats every position as an example of its own:
//!   A = 1/(N·P) Σ_n Σ_p a_{n,p} a_{n,p}ᵀ, S = 1/N Σ_n Σ_p g_{n,p} g_{n,p}ᵀ;
//! - **reduce** aggregates over positions first:
//!   A = 1/N Σ_n ā_n ā_nᵀ with ā_n = 1/P Σ_p a_{n,p}, S = 1/N Σ_n ḡ_n ḡ_nᵀ with ḡ_n = Σ_p g_{n,p}.
//!
//! Here n runs over (training image, t, ε) points. Both are exact where the layer has one
//! position and the output Hessian is constant (a linear regression layer).

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::grad::LayerGrads;

/// How a layer's shared positions enter the factors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Sharing {
    /// Every position is an example of its own (K-FAC-expand).
    Expand,
    /// Positions are aggregated before the outer products (K-FAC-reduce).
    Reduce,
}

/// One layer's factors as host matrices (row-major, f32).
#[derive(Clone, Debug, PartialEq)]
pub struct LayerFactors {
    /// Width of the inputs, d_in (+1 with a bias).
    pub d_in: usize,
    /// Width of the outputs, d_out.
    pub d_out: usize,
    /// A: d_in × d_in.
    pub a: Vec<f32>,
    /// S: d_out × d_out.
    pub s: Vec<f32>,
}

/// Running sums of the factors of every layer, on the device the captures live on.
pub struct FactorAccumulator {
    sharing: Sharing,
    sums: Vec<(Tensor<2>, Tensor<2>)>,
    /// Rows that entered A (points × positions under expand, points under reduce), per layer.
    a_rows: Vec<usize>,
    points: usize,
}

/// aᵀa for a [rows, d] matrix.
fn gram(x: Tensor<2>) -> Tensor<2> {
    x.clone().transpose().matmul(x)
}

impl FactorAccumulator {
    /// An empty accumulator.
    pub fn new(sharing: Sharing) -> Self {
        Self {
            sharing,
            sums: Vec::new(),
            a_rows: Vec::new(),
            points: 0,
        }
    }

    /// Adds one batch of captured layers: each example of the batch is one point.
    pub fn add(&mut self, layers: &[LayerGrads]) {
        for (l, layer) in layers.iter().enumerate() {
            let a = layer.activations();
            let g = layer.output_grads.clone();
            let [b, p, d_in] = a.dims();
            let d_out = g.dims()[2];
            let (a_sum, s_sum, rows) = match self.sharing {
                Sharing::Expand => (gram(a.reshape([b * p, d_in])), gram(g.reshape([b * p, d_out])), b * p),
                Sharing::Reduce => (
                    gram(a.mean_dim(1).reshape([b, d_in])),
                    gram(g.sum_dim(1).reshape([b, d_out])),
                    b,
                ),
            };
            if let Some((sa, ss)) = self.sums.get_mut(l) {
                *sa = sa.clone() + a_sum;
                *ss = ss.clone() + s_sum;
                self.a_rows[l] += rows;
            } else {
                self.sums.push((a_sum, s_sum));
                self.a_rows.push(rows);
            }
        }
        self.points += layers.first().map_or(0, |l| l.output_grads.dims()[0]);
    }

    /// Points added so far.
    pub fn points(&self) -> usize {
        self.points
    }

    /// The normalised factors, read back to the host.
    pub fn finish(self) -> Result<Vec<LayerFactors>, String> {
        if self.points == 0 {
            return Err("no point to fit the curvature on".into());
        }
        self.sums
            .into_iter()
            .zip(self.a_rows)
            .map(|((a, s), rows)| {
                let (d_in, d_out) = (a.dims()[0], s.dims()[0]);
                Ok(LayerFactors {
                    d_in,
                    d_out,
                    a: crate::device::read_back(a / rows as f64)?,
                    s: crate::device::read_back(s / self.points as f64)?,
                })
            })
            .collect()
    }
}

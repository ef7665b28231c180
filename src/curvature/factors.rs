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
use burn::tensor::ops::PadMode;
use serde::{Deserialize, Serialize};

use super::CurvatureError;
use crate::grad::{LayerGrads, LayerInput};

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

/// Σ_{n,p} a_{n,p} a_{n,p}ᵀ over the unfolded patches of a stride-1, undilated convolution's
/// input ([B, C, H, W], kernel kh×kw, symmetric zero padding), with the bias's row and column
/// (patch sums and count) when `bias`: the same matrix as the Gram of the unfolded patches,
/// computed without unfolding them. Block (o, o') of the Gram — kernel offsets o and o', every
/// channel pair — is Σ_n S_{n,o} S_{n,o'}ᵀ for the padded input shifted by o (S: [C, P]); only
/// the k²(k²+1)/2 blocks on and above the diagonal are multiplied, the rest are their
/// transposes. For a 3×3 kernel that is 45 of 81 block products and no [B·P, C·9] copy.
fn conv_patch_gram(input: &Tensor<4>, kernel: [usize; 2], padding: [usize; 2], bias: bool) -> Tensor<2> {
    let [b, c, h, w] = input.dims();
    let ([kh, kw], [ph, pw]) = (kernel, padding);
    let padded = if ph + pw > 0 {
        input.clone().pad((pw, pw, ph, ph), PadMode::Constant(0.0))
    } else {
        input.clone()
    };
    let (ho, wo) = (h + 2 * ph + 1 - kh, w + 2 * pw + 1 - kw);
    let k2 = kh * kw;
    let shifted: Vec<Tensor<3>> = (0..k2)
        .map(|o| {
            let (u, v) = (o / kw, o % kw);
            padded
                .clone()
                .slice([0..b, 0..c, u..u + ho, v..v + wo])
                .reshape([b, c, ho * wo])
        })
        .collect();
    let mut blocks: Vec<Option<Tensor<2>>> = vec![None; k2 * k2];
    for o in 0..k2 {
        for o2 in o..k2 {
            let block = shifted[o]
                .clone()
                .matmul(shifted[o2].clone().swap_dims(1, 2))
                .sum_dim(0)
                .reshape([c, c]);
            if o2 != o {
                blocks[o2 * k2 + o] = Some(block.clone().transpose());
            }
            blocks[o * k2 + o2] = Some(block);
        }
    }
    // (o, o', c, c') → rows (c, o), columns (c', o'): the unfold's channel-major order.
    let gram = Tensor::stack::<3>(blocks.into_iter().flatten().collect(), 0)
        .reshape([k2, k2, c, c])
        .permute([2, 0, 3, 1])
        .reshape([c * k2, c * k2]);
    if !bias {
        return gram;
    }
    let sums: Vec<Tensor<1>> = shifted
        .iter()
        .map(|s| s.clone().sum_dim(2).sum_dim(0).reshape([c]))
        .collect();
    let sums = Tensor::stack::<2>(sums, 0).transpose().reshape([c * k2, 1]);
    let count = Tensor::<2>::full([1, 1], (b * ho * wo) as f32, &gram.device());
    let top = Tensor::cat(vec![gram, sums.clone()], 1);
    let bottom = Tensor::cat(vec![sums.transpose(), count], 1);
    Tensor::cat(vec![top, bottom], 0)
}

/// Σ_{n,p} a_{n,p} a_{n,p}ᵀ of a layer's activations (bias last): blockwise from shifted views
/// for a stride-1 undilated convolution, from the unfolded patches otherwise.
fn activation_gram(layer: &LayerGrads) -> Tensor<2> {
    match &layer.input {
        LayerInput::Conv { input, kernel, options } if options.stride == [1, 1] && options.dilation == [1, 1] => {
            conv_patch_gram(input, *kernel, options.padding, layer.bias.is_some())
        }
        _ => {
            let a = layer.activations();
            let [b, p, d] = a.dims();
            gram(a.reshape([b * p, d]))
        }
    }
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
            let g = layer.output_grads.clone();
            let [b, p, d_out] = g.dims();
            let (a_sum, s_sum, rows) = match self.sharing {
                Sharing::Expand => (activation_gram(layer), gram(g.reshape([b * p, d_out])), b * p),
                Sharing::Reduce => {
                    let a = layer.activations();
                    let d_in = a.dims()[2];
                    (
                        gram(a.mean_dim(1).reshape([b, d_in])),
                        gram(g.sum_dim(1).reshape([b, d_out])),
                        b,
                    )
                }
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
    pub fn finish(self) -> Result<Vec<LayerFactors>, CurvatureError> {
        if self.points == 0 {
            return Err(CurvatureError::Invalid("no point to fit the curvature on".into()));
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

#[cfg(test)]
mod tests {
    use burn::tensor::ops::UnfoldOptions;
    use burn::tensor::{Device, Distribution};

    use super::*;

    #[test]
    fn the_blockwise_patch_gram_equals_the_gram_of_the_unfolded_patches() {
        let device = Device::flex();
        let input = Tensor::<4>::random([3, 4, 6, 5], Distribution::Normal(0.0, 1.0), &device);
        for (kernel, padding, bias) in [
            ([3, 3], [1, 1], true),
            ([3, 3], [0, 0], false),
            ([1, 1], [0, 0], true),
            ([3, 2], [1, 0], true),
        ] {
            let patches =
                burn::tensor::module::unfold4d(input.clone(), kernel, UnfoldOptions::new([1, 1], padding, [1, 1]))
                    .swap_dims(1, 2);
            let [b, p, d] = patches.dims();
            let patches = if bias {
                Tensor::cat(vec![patches, Tensor::ones([b, p, 1], &device)], 2)
            } else {
                patches
            };
            let expected = gram(patches.reshape([b * p, d + usize::from(bias)]));
            let got = conv_patch_gram(&input, kernel, padding, bias);
            assert_eq!(got.dims(), expected.dims(), "{kernel:?} {padding:?}");
            got.into_data()
                .assert_approx_eq::<f32>(&expected.into_data(), burn::tensor::Tolerance::absolute(1e-4));
        }
    }
}

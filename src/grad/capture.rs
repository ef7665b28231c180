//! Layer capture. burn has neither per-sample gradients nor hooks, so every Linear and Conv2d
//! output gets a zero "probe" tensor with `require_grad` added to it ([`CaptureTape`]); one
//! batched backward then yields ∂ℓ/∂output for every example at once (the probe's gradient),
//! while the layer inputs are kept from the forward pass. For a convolution the input is
//! unfolded into patches, so both kinds of layer become `out = W a + b` per position p, and
//! example i's weight gradient is `Σ_p g_{i,p} [a_{i,p}; 1]ᵀ` (bias as the last column).
//!
//! The objective is summed over the batch (not averaged), so each example's gradients are
//! those of its own loss.

use burn::module::ParamId;
use burn::nn::conv::Conv2d;
use burn::nn::{Linear, PaddingConfig2d};
use burn::tensor::module::{conv2d, unfold4d};
use burn::tensor::ops::{ConvOptions, PadMode, UnfoldOptions};
use burn::tensor::{Gradients, Tensor};

use crate::diffusion::{Denoiser, Tape};

/// Which kind of layer a capture comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerKind {
    /// A 2-D convolution (activations are unfolded patches).
    Conv,
    /// A linear layer.
    Dense,
}

/// A layer's input as captured: kept raw, unfolded only when full activations are asked for.
#[derive(Clone, Debug)]
pub enum LayerInput {
    /// A convolution's input [B, C_in, H, W] and geometry.
    Conv {
        /// The input feature map.
        input: Tensor<4>,
        /// Kernel size.
        kernel: [usize; 2],
        /// Unfold options (stride, symmetric padding, dilation).
        options: UnfoldOptions,
    },
    /// A linear layer's input [B, P, d_in].
    Dense(Tensor<3>),
}

/// One layer's captured tensors for a batch.
#[derive(Clone, Debug)]
pub struct LayerGrads {
    /// Id of the layer's weight parameter.
    pub weight: ParamId,
    /// Id of the layer's bias parameter, if it has one.
    pub bias: Option<ParamId>,
    /// Conv or dense.
    pub kind: LayerKind,
    /// The layer's input.
    pub input: LayerInput,
    /// Gradients of the objective with respect to the outputs: [B, P, d_out].
    pub output_grads: Tensor<3>,
}

impl LayerGrads {
    /// Width of the activations, d_in (+1 with a bias).
    pub fn d_in(&self) -> usize {
        let raw = match &self.input {
            LayerInput::Conv { input, kernel, .. } => input.dims()[1] * kernel[0] * kernel[1],
            LayerInput::Dense(x) => x.dims()[2],
        };
        raw + usize::from(self.bias.is_some())
    }

    /// Activations [B, P, d_in(+1)]: unfolded patches for a convolution, with a trailing column
    /// of ones when the layer has a bias.
    pub fn activations(&self) -> Tensor<3> {
        let a = match &self.input {
            LayerInput::Conv { input, kernel, options } => patches(input.clone(), *kernel, options).swap_dims(1, 2),
            LayerInput::Dense(x) => x.clone(),
        };
        with_bias_column(a, self.bias.is_some())
    }

    /// Activations projected by `p_in` ([d_in(+1), k]): [B, P, k]. For a convolution this is a
    /// convolution with k output channels whose kernels are P_in's columns, so the patches are
    /// never unfolded.
    pub fn project_activations(&self, p_in: Tensor<2>) -> Tensor<3> {
        let [d, k] = p_in.dims();
        let has_bias = self.bias.is_some();
        let weights = if has_bias {
            p_in.clone().narrow(0, 0, d - 1)
        } else {
            p_in.clone()
        };
        let bias_row = has_bias.then(|| p_in.narrow(0, d - 1, 1).reshape([k]));
        match &self.input {
            LayerInput::Conv { input, kernel, options } => {
                let cin = input.dims()[1];
                let w = weights.transpose().reshape([k, cin, kernel[0], kernel[1]]);
                let conv = ConvOptions::new(options.stride, options.padding, options.dilation, 1);
                let y = conv2d(input.clone(), w, bias_row, conv);
                let [b, _, h, wd] = y.dims();
                y.reshape([b, k, h * wd]).swap_dims(1, 2)
            }
            LayerInput::Dense(x) => {
                let y = x.clone().matmul(weights.unsqueeze::<3>());
                match bias_row {
                    Some(r) => y + r.reshape([1, 1, k]),
                    None => y,
                }
            }
        }
    }

    /// Per-example weight gradients [B, d_out, d_in(+1)] (bias in the last column).
    pub fn per_example(&self) -> Tensor<3> {
        self.output_grads.clone().swap_dims(1, 2).matmul(self.activations())
    }
}

/// The unfolded patches [B, C·kh·kw, P] of a convolution's input, as `unfold4d` gives them.
/// burn unfolds a padded input by convolving it with one-hot kernels (C·kh·kw output channels:
/// as costly as a Gram matrix of the patches, and half the K-FAC factor pass before this); the
/// input is padded here instead, so that the unpadded unfold takes burn's path of strided views.
fn patches(input: Tensor<4>, kernel: [usize; 2], options: &UnfoldOptions) -> Tensor<3> {
    let [ph, pw] = options.padding;
    if options.dilation != [1, 1] {
        return unfold4d(input, kernel, options.clone());
    }
    let padded = if ph + pw > 0 {
        input.pad((pw, pw, ph, ph), PadMode::Constant(0.0))
    } else {
        input
    };
    unfold4d(padded, kernel, UnfoldOptions::new(options.stride, [0, 0], [1, 1]))
}

enum Probe {
    Conv(Tensor<4>),
    Dense(Tensor<3>),
}

struct Pending {
    weight: ParamId,
    bias: Option<ParamId>,
    kind: LayerKind,
    input: LayerInput,
    probe: Probe,
}

/// A [`Tape`] that keeps every layer's input and adds a zero probe to its output.
#[derive(Default)]
pub struct CaptureTape {
    pending: Vec<Pending>,
}

/// Appends a column of ones ([B, P, d] → [B, P, d+1]) when the layer has a bias.
fn with_bias_column(a: Tensor<3>, has_bias: bool) -> Tensor<3> {
    if !has_bias {
        return a;
    }
    let [b, p, _] = a.dims();
    let ones = Tensor::<3>::ones([b, p, 1], &a.device());
    Tensor::cat(vec![a, ones], 2)
}

impl Tape for CaptureTape {
    fn conv(&mut self, conv: &Conv2d, input: &Tensor<4>, output: Tensor<4>) -> Tensor<4> {
        let padding = match conv.padding {
            PaddingConfig2d::Valid => [0, 0],
            PaddingConfig2d::Explicit(top, left, bottom, right) if top == bottom && left == right => [top, left],
            ref other => panic!("gradient capture supports valid or symmetric explicit padding, not {other:?}"),
        };
        let options = UnfoldOptions::new(conv.stride, padding, conv.dilation);
        let probe = Tensor::<4>::zeros(output.dims(), &output.device()).require_grad();
        self.pending.push(Pending {
            weight: conv.weight.id,
            bias: conv.bias.as_ref().map(|b| b.id),
            kind: LayerKind::Conv,
            input: LayerInput::Conv {
                input: input.clone().inner(),
                kernel: conv.kernel_size,
                options,
            },
            probe: Probe::Conv(probe.clone()),
        });
        output + probe
    }

    fn dense(&mut self, dense: &Linear, input: &Tensor<3>, output: Tensor<3>) -> Tensor<3> {
        let probe = Tensor::<3>::zeros(output.dims(), &output.device()).require_grad();
        self.pending.push(Pending {
            weight: dense.weight.id,
            bias: dense.bias.as_ref().map(|b| b.id),
            kind: LayerKind::Dense,
            input: LayerInput::Dense(input.clone().inner()),
            probe: Probe::Dense(probe.clone()),
        });
        output + probe
    }
}

impl CaptureTape {
    /// Reads the probes' gradients after the backward pass.
    pub fn finish(self, grads: &Gradients) -> Vec<LayerGrads> {
        self.pending
            .into_iter()
            .map(|p| {
                let output_grads = match p.probe {
                    Probe::Conv(probe) => {
                        let [b, c, h, w] = probe.dims();
                        let g = probe
                            .grad(grads)
                            .unwrap_or_else(|| Tensor::zeros([b, c, h, w], &probe.device().inner()));
                        g.reshape([b, c, h * w]).swap_dims(1, 2)
                    }
                    Probe::Dense(probe) => {
                        let dims = probe.dims();
                        probe
                            .grad(grads)
                            .unwrap_or_else(|| Tensor::zeros(dims, &probe.device().inner()))
                    }
                };
                LayerGrads {
                    weight: p.weight,
                    bias: p.bias,
                    kind: p.kind,
                    input: p.input,
                    output_grads,
                }
            })
            .collect()
    }
}

/// Runs `model` (on an autodiff device, parameters need not require gradients) on `x_t` at
/// steps `t` under the condition rows `condition`, backpropagates `objective(prediction)` — a per-example objective summed over the
/// batch — and returns every layer's activations and output gradients, plus the objective's
/// per-example values.
pub fn capture_layers<M: Denoiser>(
    model: &M,
    x_t: Tensor<4>,
    t: Tensor<1>,
    condition: Option<Tensor<2>>,
    objective: impl FnOnce(Tensor<4>) -> Tensor<1>,
) -> (Vec<LayerGrads>, Tensor<1>) {
    let mut tape = CaptureTape::default();
    let prediction = model.predict_with(x_t, t, condition, &mut tape);
    let per_example = objective(prediction);
    let grads = per_example.clone().sum().backward();
    (tape.finish(&grads), per_example.inner())
}

/// `model` moved to the autodiff twin of `device` with its parameters frozen (no parameter
/// gradients): what every capture runs on. Returns the model and the autodiff device.
pub fn frozen_on_autodiff<M: Denoiser>(model: &M, device: &burn::tensor::Device) -> (M, burn::tensor::Device) {
    let ad = device.clone().autodiff();
    (model.clone().to_device(&ad).train().no_grad(), ad)
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, Distribution, Tensor};

    use super::*;

    #[test]
    fn patches_equal_burns_unfold_for_every_geometry() {
        let device = Device::flex();
        let input = Tensor::<4>::random([2, 3, 7, 6], Distribution::Normal(0.0, 1.0), &device);
        for (kernel, stride, padding) in [
            ([3, 3], [1, 1], [1, 1]),
            ([3, 3], [2, 2], [1, 1]),
            ([1, 1], [1, 1], [0, 0]),
            ([3, 2], [1, 2], [0, 1]),
        ] {
            let options = UnfoldOptions::new(stride, padding, [1, 1]);
            let expected = unfold4d(input.clone(), kernel, options.clone());
            let got = patches(input.clone(), kernel, &options);
            assert_eq!(got.dims(), expected.dims(), "{kernel:?} {stride:?} {padding:?}");
            got.into_data()
                .assert_approx_eq::<f32>(&expected.into_data(), burn::tensor::Tolerance::absolute(1e-6));
        }
    }
}

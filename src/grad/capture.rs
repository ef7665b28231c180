//! Layer capture. burn has neither per-sample gradients nor hooks, so every Linear and Conv2d
//! output gets a zero "probe" tensor with `require_grad` added to it ([`CaptureTape`]); one
//! batched backward then yields ∂ℓ/∂output for every example at once (the probe's gradient),
//! while the layer inputs are kept from the forward pass. For a convolution the input is
//! unfolded into patches, so both kinds of layer become `out = W a + b` per position p, and
//! example i's weight gradient is `Σ_p g_{i,p} [a_{i,p}; 1]ᵀ` (bias as the last column).
//!
//! The objective is summed over the batch (not averaged), so each example's gradients are
//! those of its own loss.

use std::collections::HashMap;

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::nn::conv::Conv2d;
use burn::nn::{Linear, PaddingConfig2d};
use burn::tensor::module::unfold4d;
use burn::tensor::ops::UnfoldOptions;
use burn::tensor::{Gradients, Tensor};

use crate::diffusion::{Tape, UNet};

/// Which kind of layer a capture comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerKind {
    /// A 2-D convolution (activations are unfolded patches).
    Conv,
    /// A linear layer.
    Dense,
}

/// One layer's captured tensors for a batch, both laid out [batch, positions, features].
#[derive(Clone, Debug)]
pub struct LayerGrads {
    /// Id of the layer's weight parameter.
    pub weight: ParamId,
    /// Id of the layer's bias parameter, if it has one.
    pub bias: Option<ParamId>,
    /// Conv or dense.
    pub kind: LayerKind,
    /// Inputs, with a trailing column of ones when the layer has a bias: [B, P, d_in(+1)].
    pub activations: Tensor<3>,
    /// Gradients of the objective with respect to the outputs: [B, P, d_out].
    pub output_grads: Tensor<3>,
}

impl LayerGrads {
    /// Per-example weight gradients [B, d_out, d_in(+1)] (bias in the last column).
    pub fn per_example(&self) -> Tensor<3> {
        self.output_grads
            .clone()
            .swap_dims(1, 2)
            .matmul(self.activations.clone())
    }
}

enum Probe {
    Conv(Tensor<4>),
    Dense(Tensor<3>),
}

struct Pending {
    weight: ParamId,
    bias: Option<ParamId>,
    kind: LayerKind,
    activations: Tensor<3>,
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
        let patches = unfold4d(input.clone().inner(), conv.kernel_size, options).swap_dims(1, 2);
        let probe = Tensor::<4>::zeros(output.dims(), &output.device()).require_grad();
        self.pending.push(Pending {
            weight: conv.weight.id,
            bias: conv.bias.as_ref().map(|b| b.id),
            kind: LayerKind::Conv,
            activations: with_bias_column(patches, conv.bias.is_some()),
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
            activations: with_bias_column(input.clone().inner(), dense.bias.is_some()),
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
                    activations: p.activations,
                    output_grads,
                }
            })
            .collect()
    }
}

/// Runs `model` (on an autodiff device, parameters need not require gradients) on `x_t` at
/// steps `t`, backpropagates `objective(prediction)` — a per-example objective summed over the
/// batch — and returns every layer's activations and output gradients, plus the objective's
/// per-example values.
pub fn capture_layers(
    model: &UNet,
    x_t: Tensor<4>,
    t: Tensor<1>,
    objective: impl FnOnce(Tensor<4>) -> Tensor<1>,
) -> (Vec<LayerGrads>, Tensor<1>) {
    let mut tape = CaptureTape::default();
    let prediction = model.forward_with(x_t, t, &mut tape);
    let per_example = objective(prediction);
    let grads = per_example.clone().sum().backward();
    (tape.finish(&grads), per_example.inner())
}

/// Dotted module path of every parameter ("down_blocks.0.resnets.0.conv1.weight"), by id.
pub fn layer_names<M: Module>(module: &M) -> HashMap<ParamId, String> {
    struct Names {
        path: Vec<String>,
        names: HashMap<ParamId, String>,
    }
    impl ModuleVisitor for Names {
        fn enter_module(&mut self, name: &str, _container: &str) {
            self.path.push(name.to_owned());
        }
        fn exit_module(&mut self, _name: &str, _container: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.names.insert(param.id, self.path.join("."));
        }
    }
    let mut v = Names {
        path: Vec::new(),
        names: HashMap::new(),
    };
    module.visit(&mut v);
    v.names
}

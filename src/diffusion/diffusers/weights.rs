//! `diffusion_pytorch_model.safetensors` read into a [`UNet`] and written from one, through
//! burn's safetensors store: PyTorch's layout (Linear weights [out, in], GroupNorm
//! `weight`/`bias`) by burn's PyTorch adapters, and the few module paths where retrace's names
//! differ from diffusers' by regex key remapping. Weights saved in half precision are widened
//! to f32. Attention blocks saved by diffusers before 0.12 (`query`, `key`, `value`,
//! `proj_attn`) are read too, as diffusers itself converts them.

use burn::module::Module;
use burn::store::burn_pack::Tensor as PackTensor;
use burn::store::{
    BurnToPyTorchAdapter, FloatCastAdapter, ModuleAdapter, ModuleContext, ModuleSnapshot, PyTorchToBurnAdapter,
    SafetensorsStore,
};
use burn::tensor::{DType, Device};

use crate::diffusion::error::ModelError;
use crate::diffusion::vae::{AutoencoderKL, VaeConfig};
use crate::diffusion::{Architecture, Network};

/// diffusers' module paths → retrace's, applied to the file's keys when loading.
const FROM_DIFFUSERS: [(&str, &str); 8] = [
    (r"^class_embedding\.linear_", "class_timestep_embedding.linear_"),
    (r"^(down_blocks\.\d+)\.downsamplers\.", "${1}.resamplers."),
    (r"^(up_blocks\.\d+)\.upsamplers\.", "${1}.resamplers."),
    (r"\.to_out\.0\.", ".to_out."),
    (r"(attentions\.\d+)\.query\.", "${1}.to_q."),
    (r"(attentions\.\d+)\.key\.", "${1}.to_k."),
    (r"(attentions\.\d+)\.value\.", "${1}.to_v."),
    (r"(attentions\.\d+)\.proj_attn\.", "${1}.to_out."),
];

/// retrace's module paths → diffusers', applied when saving.
const TO_DIFFUSERS: [(&str, &str); 4] = [
    (r"^class_timestep_embedding\.", "class_embedding."),
    (r"^(down_blocks\.\d+)\.resamplers\.", "${1}.downsamplers."),
    (r"^(up_blocks\.\d+)\.resamplers\.", "${1}.upsamplers."),
    (r"\.to_out\.", ".to_out.0."),
];

/// diffusers' `DiTTransformer2DModel` paths → retrace's [`DiT`]'s.
const DIT_FROM_DIFFUSERS: [(&str, &str); 5] = [
    (r"^pos_embed\.proj\.", "patch_embed."),
    (r"\.class_embedder\.embedding_table\.", ".class_embedder."),
    (r"\.to_out\.0\.", ".to_out."),
    (r"\.ff\.net\.0\.proj\.", ".ff.proj_in."),
    (r"\.ff\.net\.2\.", ".ff.proj_out."),
];

/// retrace's [`DiT`] paths → diffusers'.
const DIT_TO_DIFFUSERS: [(&str, &str); 5] = [
    (r"^patch_embed\.", "pos_embed.proj."),
    (r"\.class_embedder\.", ".class_embedder.embedding_table."),
    (r"\.to_out\.", ".to_out.0."),
    (r"\.ff\.proj_in\.", ".ff.net.0.proj."),
    (r"\.ff\.proj_out\.", ".ff.net.2."),
];

/// diffusers' `AutoencoderKL` paths → retrace's (old attention names as diffusers reads them).
const VAE_FROM_DIFFUSERS: [(&str, &str); 7] = [
    (r"^(encoder\.down_blocks\.\d+)\.downsamplers\.", "${1}.resamplers."),
    (r"^(decoder\.up_blocks\.\d+)\.upsamplers\.", "${1}.resamplers."),
    (r"\.to_out\.0\.", ".to_out."),
    (r"(attentions\.\d+)\.query\.", "${1}.to_q."),
    (r"(attentions\.\d+)\.key\.", "${1}.to_k."),
    (r"(attentions\.\d+)\.value\.", "${1}.to_v."),
    (r"(attentions\.\d+)\.proj_attn\.", "${1}.to_out."),
];

/// Whether the tensor at module path `name` is a class-embedding table: a bias-free Linear in
/// retrace ([classes, dim], burn's [in, out]) that diffusers holds as an `nn.Embedding` of the
/// same [classes, dim] layout, so the one kind of Linear weight not transposed between the two
/// (the U-Net's `class_embedding`, a DiT block's `class_embedder`).
fn is_class_table(name: &str) -> bool {
    name == "class_embedding.weight" || name.ends_with(".class_embedder.weight")
}

/// burn's PyTorch layout conversion (`inner`) for every tensor but the class-embedding table.
#[derive(Clone)]
struct EmbeddingTableAsIs<A>(A);

impl<A: ModuleAdapter + Clone + 'static> ModuleAdapter for EmbeddingTableAsIs<A> {
    fn adapt(&self, tensor: PackTensor, ctx: ModuleContext<'_>) -> PackTensor {
        if is_class_table(&tensor.name) {
            tensor
        } else {
            self.0.adapt(tensor, ctx)
        }
    }

    fn get_alternative_param_name(&self, param_name: &str, module_type: &str) -> Option<String> {
        self.0.get_alternative_param_name(param_name, module_type)
    }

    fn clone_box(&self) -> Box<dyn ModuleAdapter> {
        Box::new(self.clone())
    }
}

/// How many names an error lists before "…".
const LISTED: usize = 6;

fn listed(names: &[String]) -> String {
    let mut shown: Vec<&str> = names.iter().take(LISTED).map(String::as_str).collect();
    if names.len() > LISTED {
        shown.push("…");
    }
    shown.join(", ")
}

/// Builds `architecture`'s network on `device` with the weights of a diffusers safetensors
/// file's bytes (a `UNet2DModel`'s or a `DiTTransformer2DModel`'s). Every tensor must be
/// present with its shape, and the file must hold nothing else: otherwise the error names the
/// tensors that disagree.
pub fn load_network(bytes: Vec<u8>, architecture: &Architecture, device: &Device) -> Result<Network, ModelError> {
    // A DiT's parameter count is exact: a file too small to hold it in half precision is refused
    // before the network (possibly large, from a damaged config) is built.
    if let Architecture::DiT(config) = architecture {
        let parameters = config.estimated_parameters();
        if (bytes.len() as f64) < 2.0 * parameters {
            return Err(ModelError::Weights(format!(
                "config.json describes {parameters:.0} parameters, more than the {} bytes of weights can hold",
                bytes.len()
            )));
        }
    }
    Ok(match (architecture, architecture.init(device)) {
        (Architecture::UNet(_), Network::UNet(model)) => Network::UNet(load_into(bytes, &FROM_DIFFUSERS, model)?),
        (Architecture::DiT(_), Network::DiT(model)) => Network::DiT(load_into(bytes, &DIT_FROM_DIFFUSERS, model)?),
        _ => unreachable!("an architecture builds its own family"),
    })
}

/// `config`'s autoencoder on `device` with the weights of a diffusers `AutoencoderKL`
/// safetensors file.
pub fn load_vae_weights(bytes: Vec<u8>, config: &VaeConfig, device: &Device) -> Result<AutoencoderKL, ModelError> {
    load_into(bytes, &VAE_FROM_DIFFUSERS, config.init(device))
}

/// `model` with the weights of a diffusers safetensors file, its keys renamed by `remaps`.
fn load_into<M: Module>(bytes: Vec<u8>, remaps: &[(&str, &str)], mut model: M) -> Result<M, ModelError> {
    let mut store = remaps
        .iter()
        .fold(SafetensorsStore::from_bytes(Some(bytes)), |s, (from, to)| {
            s.with_key_remapping(*from, *to)
        })
        .with_from_adapter(EmbeddingTableAsIs(PyTorchToBurnAdapter).chain(FloatCastAdapter::to(DType::F32)))
        .allow_partial(true)
        .validate(false);
    let result = model
        .load_from(&mut store)
        .map_err(|e| ModelError::Weights(format!("unreadable safetensors weights: {e}")))?;
    if !result.errors.is_empty() {
        let errors: Vec<String> = result.errors.iter().map(|e| e.to_string()).collect();
        return Err(ModelError::Weights(format!(
            "the weights do not fit the architecture config.json describes: {}",
            listed(&errors)
        )));
    }
    if !result.missing.is_empty() {
        let missing: Vec<String> = result.missing.iter().map(|(path, _)| path.clone()).collect();
        return Err(ModelError::Weights(format!(
            "config.json describes {} tensors the weights lack: {}",
            missing.len(),
            listed(&missing)
        )));
    }
    if !result.unused.is_empty() {
        return Err(ModelError::Weights(format!(
            "the weights hold {} tensors config.json does not describe: {}",
            result.unused.len(),
            listed(&result.unused)
        )));
    }
    Ok(model)
}

/// The bytes of a diffusers `diffusion_pytorch_model.safetensors` holding `model`'s weights.
pub fn save_network(model: &Network) -> Result<Vec<u8>, ModelError> {
    match model {
        Network::UNet(model) => save_from(model, &TO_DIFFUSERS),
        Network::DiT(model) => save_from(model, &DIT_TO_DIFFUSERS),
    }
}

/// [`save_network`] for any module, its keys renamed by `remaps`.
fn save_from<M: Module>(model: &M, remaps: &[(&str, &str)]) -> Result<Vec<u8>, ModelError> {
    let mut store = remaps
        .iter()
        .fold(SafetensorsStore::from_bytes(None), |s, (from, to)| {
            s.with_key_remapping(*from, *to)
        })
        .with_to_adapter(EmbeddingTableAsIs(BurnToPyTorchAdapter))
        .metadata("format", "pt");
    model
        .clone()
        .no_grad()
        .save_into(&mut store)
        .map_err(|e| ModelError::Weights(format!("cannot serialise the weights: {e}")))?;
    store
        .get_bytes()
        .map_err(|e| ModelError::Weights(format!("cannot serialise the weights: {e}")))
}

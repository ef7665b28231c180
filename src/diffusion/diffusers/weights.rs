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
use crate::diffusion::{UNet, UNetConfig};

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

/// The class-embedding table's module path: a bias-free Linear in retrace ([classes, dim], burn's
/// [in, out]) that diffusers holds as an `nn.Embedding` of the same [classes, dim] layout, so it
/// is the one Linear weight that is not transposed between the two.
const CLASS_TABLE: &str = "class_embedding.weight";

/// burn's PyTorch layout conversion (`inner`) for every tensor but the class-embedding table.
#[derive(Clone)]
struct EmbeddingTableAsIs<A>(A);

impl<A: ModuleAdapter + Clone + 'static> ModuleAdapter for EmbeddingTableAsIs<A> {
    fn adapt(&self, tensor: PackTensor, ctx: ModuleContext<'_>) -> PackTensor {
        if tensor.name == CLASS_TABLE {
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

/// Builds `config`'s network on `device` with the weights of a diffusers safetensors file's
/// bytes. Every tensor must be present with its shape, and the file must hold nothing else:
/// otherwise the error names the tensors that disagree.
pub fn load_unet(bytes: Vec<u8>, config: &UNetConfig, device: &Device) -> Result<UNet, ModelError> {
    let mut store = FROM_DIFFUSERS
        .iter()
        .fold(SafetensorsStore::from_bytes(Some(bytes)), |s, (from, to)| {
            s.with_key_remapping(*from, *to)
        })
        .with_from_adapter(EmbeddingTableAsIs(PyTorchToBurnAdapter).chain(FloatCastAdapter::to(DType::F32)))
        .allow_partial(true)
        .validate(false);
    let mut model = config.init(device);
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
pub fn save_unet(model: &UNet) -> Result<Vec<u8>, ModelError> {
    let mut store = TO_DIFFUSERS
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

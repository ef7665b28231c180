//! diffusers interoperability: models written by PyTorch open and predict what PyTorch
//! predicted, retrace's models export to diffusers and back unchanged, and directories that do
//! not fit are refused by name before any work starts.

use crate::common;

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::{Tensor, TensorData};
use common::cpu;
use retrace::diffusion::diffusers::export_pipeline;
use retrace::diffusion::{Condition, ModelDir, ModelFormat, UNetConfig};

fn fixture(name: &str) -> PathBuf {
    common::diffusers_fixture(name)
}

/// A tensor of `io.safetensors` as f32 values and its shape.
fn io_tensor(dir: &Path, name: &str) -> (Vec<f32>, Vec<usize>) {
    tensor_of(&dir.join("io.safetensors"), name)
}

/// A tensor of the safetensors file `path` as f32 values and its shape.
fn tensor_of(path: &Path, name: &str) -> (Vec<f32>, Vec<usize>) {
    let bytes = std::fs::read(path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let view = file.tensor(name).unwrap();
    let values = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    (values, view.shape().to_vec())
}

fn max_abs_difference(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// The model's prediction for `sample` ([B, C, H, W] values) at `timesteps`, under the class
/// `labels` of a class-conditional model (none for an unconditional one).
fn predict_under(model: &ModelDir, sample: &[f32], shape: &[usize], timesteps: &[f32], labels: &[f32]) -> Vec<f32> {
    let (net, _) = model.load_latest(&cpu()).unwrap();
    let dims: [usize; 4] = shape.try_into().unwrap();
    let x = Tensor::<4>::from_data(TensorData::new(sample.to_vec(), dims), &cpu());
    let t = Tensor::<1>::from_floats(timesteps, &cpu());
    let conditions: Vec<Condition> = labels.iter().map(|&l| Condition::Class(l as u32)).collect();
    let rows = net.condition_encoding().rows(&conditions, &cpu()).unwrap();
    assert_eq!(
        rows.is_some(),
        !labels.is_empty(),
        "a conditional model reads its labels"
    );
    net.forward(x, t, rows).into_data().try_to_vec::<f32>().unwrap()
}

/// The ε half of a learned-variance output ([B, 2C, H, W] values → [B, C, H, W]); the output
/// itself when it has `channels` channels.
fn noise_half(output: &[f32], shape: &[usize], channels: usize) -> Vec<f32> {
    let [b, c, h, w]: [usize; 4] = shape.try_into().unwrap();
    if c == channels {
        return output.to_vec();
    }
    (0..b)
        .flat_map(|i| output[i * c * h * w..][..channels * h * w].iter().copied())
        .collect()
}

#[test]
fn models_written_by_pytorch_predict_what_pytorch_predicted() {
    for name in [
        "ddpm-pipeline",
        "options-unet",
        "class-unet",
        "class-timestep-unet",
        "dit",
        "ldm-pipeline",
    ] {
        let dir = fixture(name);
        let model = ModelDir::open(&dir).unwrap();
        assert!(matches!(model.format, ModelFormat::Diffusers(_)), "{name}");
        // Without retrace's provenance file the model names no training data: a warning says so.
        let data = retrace::data::Dataset::load(&"bundled?subset=4".parse().unwrap()).unwrap();
        let warning = model.unverified_data(&data).expect("a warning");
        assert!(warning.contains("records no hash"), "{warning}");
        let (sample, shape) = io_tensor(&dir, "sample");
        let (timesteps, _) = io_tensor(&dir, "timesteps");
        let (expected, _) = io_tensor(&dir, "output");
        let labels = if model.info.architecture.condition_encoding().is_conditional() {
            io_tensor(&dir, "class_labels").0
        } else {
            Vec::new()
        };
        let expected = noise_half(&expected, &io_tensor(&dir, "output").1, shape[1]);
        let error = max_abs_difference(&predict_under(&model, &sample, &shape, &timesteps, &labels), &expected);
        eprintln!("{name}: max |retrace − PyTorch| = {error:e}");
        assert!(error <= 1e-4, "{name}: max abs error {error}");
    }
}

#[test]
fn the_ddpm_cifar10_preset_has_the_parameters_diffusers_counts() {
    let counted: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("ddpm-cifar10-parameters.json")).unwrap()).unwrap();
    let net = UNetConfig::named("ddpm-cifar10", 3, 32).unwrap().init(&cpu());
    assert_eq!(net.num_params() as u64, counted["parameters"].as_u64().unwrap());
}

#[test]
fn export_then_import_gives_identical_weights_outputs_and_provenance() {
    let bundled = ModelDir::open(&retrace::data::bundled_model_dir()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("pipeline");
    let last = bundled.latest().unwrap().unwrap();
    export_pipeline(&bundled, &last, &out, &cpu()).unwrap();
    let weights = out.join("unet/diffusion_pytorch_model.safetensors");
    let first = std::fs::read(&weights).unwrap();
    // Exporting again replaces the earlier export, with the same bytes.
    export_pipeline(&bundled, &last, &out, &cpu()).unwrap();
    assert_eq!(std::fs::read(&weights).unwrap(), first);
    for file in [
        "model_index.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "scheduler/scheduler_config.json",
    ] {
        assert!(out.join(file).is_file(), "{file}");
    }
    let imported = ModelDir::open(&out).unwrap();
    let data = retrace::data::Dataset::load(&"bundled".parse().unwrap()).unwrap();
    assert_eq!(
        imported.unverified_data(&data),
        None,
        "the provenance file names the data"
    );
    assert_eq!(imported.info, bundled.info);
    let entries = imported.checkpoints().unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].state.step, last.state.step);
    let (original, _) = bundled.load_latest(&cpu()).unwrap();
    let (reloaded, _) = imported.load_latest(&cpu()).unwrap();
    assert_eq!(common::param_values(&original), common::param_values(&reloaded));
    let shape = [2, 1, 28, 28];
    let sample: Vec<f32> = (0..2 * 28 * 28).map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0).collect();
    let timesteps = [10.0, 900.0];
    // The bundled model is class-conditional: a sneaker and the null class.
    let labels = [7.0, 10.0];
    assert_eq!(
        predict_under(&bundled, &sample, &shape, &timesteps, &labels),
        predict_under(&imported, &sample, &shape, &timesteps, &labels)
    );
    // The export recorded the training data, so the bundled data still fits it.
    let data = retrace::data::Dataset::load(&imported.data_spec(None).unwrap().parse().unwrap()).unwrap();
    imported.check_data(&data).unwrap();
    // A directory holding something else is not overwritten.
    let foreign = tmp.path().join("foreign");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("notes.txt"), "mine").unwrap();
    let refused = export_pipeline(&bundled, &last, &foreign, &cpu())
        .unwrap_err()
        .to_string();
    assert!(refused.contains("not an earlier retrace export"), "{refused}");
    assert!(foreign.join("notes.txt").is_file());
}

#[test]
fn pytorch_loads_an_export_and_predicts_what_retrace_predicts() {
    // tests/fixtures/diffusers/bundled-export holds what PyTorch loaded from `retrace export` of
    // the bundled model (scripts/check-diffusers-export.py): every tensor name and shape, and
    // its prediction for a fixed input; class-export the same for the class-conditional
    // class-unet fixture exported by retrace (its class table is the one weight not transposed),
    // and dit-export for the DiT fixture (`transformer/`, every block's class table).
    // Today's export must match both.
    let bundled = ModelDir::open(&retrace::data::bundled_model_dir()).unwrap();
    check_export(&bundled, "bundled-export");
    check_export(&ModelDir::open(&fixture("class-unet")).unwrap(), "class-export");
    check_export(&ModelDir::open(&fixture("dit")).unwrap(), "dit-export");
}

/// Exports `model` and checks it against what PyTorch loaded from an earlier export (`seen`).
fn check_export(model: &ModelDir, seen: &str) {
    let seen = fixture(seen);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("pipeline");
    export_pipeline(model, &model.latest().unwrap().unwrap(), &out, &cpu()).unwrap();
    let network = if out.join("transformer").is_dir() {
        "transformer"
    } else {
        "unet"
    };
    let bytes = std::fs::read(out.join(network).join("diffusion_pytorch_model.safetensors")).unwrap();
    let exported = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let shapes: std::collections::BTreeMap<String, Vec<usize>> = exported
        .tensors()
        .into_iter()
        .map(|(name, view)| (name, view.shape().to_vec()))
        .collect();
    let loaded: std::collections::BTreeMap<String, Vec<usize>> =
        serde_json::from_slice(&std::fs::read(seen.join("keys.json")).unwrap()).unwrap();
    assert_eq!(shapes, loaded);
    let (sample, shape) = io_tensor(&seen, "sample");
    let (timesteps, _) = io_tensor(&seen, "timesteps");
    let (expected, output_shape) = io_tensor(&seen, "output");
    let expected = noise_half(&expected, &output_shape, shape[1]);
    let labels = if model.info.architecture.condition_encoding().is_conditional() {
        io_tensor(&seen, "class_labels").0
    } else {
        Vec::new()
    };
    let imported = ModelDir::open(&out).unwrap();
    assert_eq!(imported.info.architecture, model.info.architecture);
    let error = max_abs_difference(
        &predict_under(&imported, &sample, &shape, &timesteps, &labels),
        &expected,
    );
    eprintln!("{}: max |retrace − PyTorch| = {error:e}", seen.display());
    assert!(error <= 1e-4, "max abs error {error}");
}

/// Copies a fixture into `to` and applies `edit` to it.
fn edited_copy(name: &str, to: &Path, edit: impl FnOnce(&Path)) -> PathBuf {
    let from = fixture(name);
    let dir = to.join(name);
    for entry in walk(&from) {
        let target = dir.join(entry.strip_prefix(&from).unwrap());
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(&entry, target).unwrap();
    }
    edit(&dir);
    dir
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

fn edit_json(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut value: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    edit(&mut value);
    std::fs::write(path, serde_json::to_vec(&value).unwrap()).unwrap();
}

/// The error of loading the model in `dir` and its newest weights.
fn load_error(dir: &Path) -> String {
    match ModelDir::open(dir) {
        Err(e) => e.to_string(),
        Ok(model) => model
            .load_latest(&cpu())
            .expect_err("the damaged model loads")
            .to_string(),
    }
}

#[test]
fn directories_that_do_not_fit_are_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let case = |label: &str, edit: Box<dyn FnOnce(&Path)>, expected: &[&str]| {
        let dir = edited_copy("ddpm-pipeline", &tmp.path().join(label), edit);
        let message = load_error(&dir);
        for part in expected {
            assert!(message.contains(part), "{label}: {message:?} lacks {part:?}");
        }
    };
    // An autoencoder beside a network that does not take its latents is refused by name.
    case(
        "latent",
        Box::new(|d| {
            let vae = fixture("vae");
            std::fs::create_dir_all(d.join("vae")).unwrap();
            for file in ["config.json", "diffusion_pytorch_model.safetensors"] {
                std::fs::copy(vae.join(file), d.join("vae").join(file)).unwrap();
            }
        }),
        &["takes 3 channels", "autoencoder's latents have 4"],
    );
    case(
        "widths",
        Box::new(|d| {
            edit_json(&d.join("unet/config.json"), |c| {
                c["block_out_channels"] = serde_json::json!([8, 16, 32])
            })
        }),
        &["do not fit", "down_blocks.2"],
    );
    case(
        "levels",
        Box::new(|d| {
            edit_json(&d.join("unet/config.json"), |c| {
                c["block_out_channels"] = serde_json::json!([8, 16]);
                c["down_block_types"] = serde_json::json!(["DownBlock2D", "AttnDownBlock2D"]);
                c["up_block_types"] = serde_json::json!(["AttnUpBlock2D", "UpBlock2D"]);
            })
        }),
        &["do not fit", "up_blocks.0"],
    );
    case(
        "block",
        Box::new(|d| {
            edit_json(&d.join("unet/config.json"), |c| {
                c["down_block_types"][0] = serde_json::json!("CrossAttnDownBlock2D")
            })
        }),
        &["unsupported down block type", "CrossAttnDownBlock2D"],
    );
    case(
        "scheduler",
        Box::new(|d| std::fs::remove_file(d.join("scheduler/scheduler_config.json")).unwrap()),
        &["without a scheduler config", "scheduler_config.json"],
    );
    case(
        "prediction",
        Box::new(|d| {
            edit_json(&d.join("scheduler/scheduler_config.json"), |c| {
                c["prediction_type"] = serde_json::json!("v_prediction")
            })
        }),
        &["prediction_type", "v_prediction"],
    );
    case(
        "pickle",
        Box::new(|d| {
            std::fs::rename(
                d.join("unet/diffusion_pytorch_model.safetensors"),
                d.join("unet/diffusion_pytorch_model.bin"),
            )
            .unwrap()
        }),
        &["pickle", "safe_serialization"],
    );
    case(
        "truncated",
        Box::new(|d| {
            let path = d.join("unet/diffusion_pytorch_model.safetensors");
            let bytes = std::fs::read(&path).unwrap();
            std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        }),
        &["unreadable safetensors"],
    );
    // A model with no recorded data asks for it; data of another shape is refused.
    let model = ModelDir::open(&fixture("options-unet")).unwrap();
    let asked = model.data_spec(None).unwrap_err().to_string();
    assert!(asked.contains("--data"), "{asked}");
    let grey = common::small_data();
    let refused = model.check_data(&grey).unwrap_err();
    assert!(
        refused.to_string().contains("1×28×28") && refused.to_string().contains("1×8×8"),
        "{refused}"
    );
}

/// diffusers' `AutoencoderKL`, written by PyTorch with every weight randomised: retrace's
/// encoder gives PyTorch's latent mean and log-variance, its decoder PyTorch's image.
#[test]
fn an_autoencoder_written_by_pytorch_encodes_and_decodes_as_pytorch_does() {
    let dir = fixture("vae");
    let (config, vae) = retrace::diffusion::diffusers::vae::load_vae(&dir, &cpu()).unwrap();
    assert_eq!(config.latent_size(16), 8);
    let io = dir.join("vae-io.safetensors");
    let tensor = |name: &str| {
        let (values, shape) = tensor_of(&io, name);
        let dims: [usize; 4] = shape.as_slice().try_into().unwrap();
        Tensor::<4>::from_data(TensorData::new(values, dims), &cpu())
    };
    let moments = vae.encode(tensor("image"));
    let values = |t: Tensor<4>| t.into_data().try_to_vec::<f32>().unwrap();
    let mean_error = max_abs_difference(&values(moments.mean), &tensor_of(&io, "mean").0);
    let variance_error = max_abs_difference(&values(moments.log_variance), &tensor_of(&io, "log_variance").0);
    let decode_error = max_abs_difference(&values(vae.decode(tensor("latent"))), &tensor_of(&io, "decoded").0);
    eprintln!(
        "vae: max |retrace − PyTorch| = {mean_error:e} (μ), {variance_error:e} (log σ²), {decode_error:e} (decoded)"
    );
    assert!(mean_error.max(variance_error).max(decode_error) <= 1e-4);
}

/// A latent diffusion pipeline laid out as the K-FAC paper's ArtBench model (unet/, vae/,
/// scheduler/ with scaled_linear betas): it opens as a latent model of 1×28×28 images whose
/// latent space gives PyTorch's `latent_dist` in model units (μ·s, log σ² + 2 log s) and
/// decodes as PyTorch does; its U-Net matches in `models_written_by_pytorch_…` above.
#[test]
fn a_latent_pipeline_written_by_pytorch_opens_and_its_latent_space_matches_pytorch() {
    let dir = fixture("ldm-pipeline");
    let model = ModelDir::open(&dir).unwrap();
    assert!(model.info.is_latent());
    assert_eq!(model.info.architecture.shape(), [4, 14, 14]);
    assert_eq!(model.info.image_shape(), [1, 28, 28]);
    assert_eq!(
        model.info.schedule.beta_schedule,
        retrace::diffusion::schedule::BetaSchedule::ScaledLinear
    );
    let space = model
        .latent_space(&cpu())
        .unwrap()
        .expect("a latent model has an autoencoder");
    let io = dir.join("ldm-io.safetensors");
    let scale = space.config.scaling_factor as f32;
    let encoded = space.encode(&tensor_of(&io, "image").0, [1, 28, 28], &cpu()).unwrap();
    let scaled_mean: Vec<f32> = tensor_of(&io, "mean").0.iter().map(|m| m * scale).collect();
    let scaled_log_variance: Vec<f32> = tensor_of(&io, "log_variance")
        .0
        .iter()
        .map(|v| v + 2.0 * scale.ln())
        .collect();
    let (latent, _) = tensor_of(&io, "latent");
    let decoded = space.decode_host(&latent, [4, 14, 14], &cpu()).unwrap();
    let expected_decoded: Vec<f32> = tensor_of(&io, "decoded").0.iter().map(|v| v.clamp(-1.0, 1.0)).collect();
    let errors = [
        max_abs_difference(&encoded.mean, &scaled_mean),
        max_abs_difference(&encoded.log_variance, &scaled_log_variance),
        max_abs_difference(&decoded, &expected_decoded),
    ];
    eprintln!("ldm-pipeline: max |retrace − PyTorch| = {errors:?} (μ·s, log σ² + 2 log s, decoded)");
    assert!(errors.iter().all(|&e| e <= 1e-4), "{errors:?}");
}

/// The K-FAC paper's ArtBench latent U-Net (BrunoKM/diffusion-influence,
/// scripts/model_configs/unet_artbench.json) opens as it is.
#[test]
fn the_kfac_papers_artbench_latent_unet_config_opens() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("config.json");
    let config = serde_json::json!({
        "_class_name": "UNet2DModel", "_diffusers_version": "0.27.2", "act_fn": "silu",
        "add_attention": true, "attention_head_dim": 8, "attn_norm_num_groups": null,
        "block_out_channels": [128, 256, 256, 256], "center_input_sample": false,
        "class_embed_type": null,
        "down_block_types": ["AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "DownBlock2D"],
        "downsample_padding": 1, "downsample_type": "conv", "dropout": 0.0, "flip_sin_to_cos": true,
        "freq_shift": 0, "in_channels": 4, "layers_per_block": 2, "mid_block_scale_factor": 1,
        "norm_eps": 1e-05, "norm_num_groups": 32, "num_class_embeds": null, "num_train_timesteps": null,
        "out_channels": 4, "resnet_time_scale_shift": "default", "sample_size": 32,
        "time_embedding_type": "positional",
        "up_block_types": ["UpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D"],
        "upsample_type": "conv"
    });
    std::fs::write(&path, serde_json::to_vec(&config).unwrap()).unwrap();
    let architecture = retrace::diffusion::diffusers::read_architecture(&path).unwrap();
    assert_eq!(architecture.shape(), [4, 32, 32]);
    let unet = architecture.as_unet().unwrap();
    assert_eq!(unet.attention, vec![true, true, true, false]);
    assert_eq!(unet.layers_per_block, 2);
}

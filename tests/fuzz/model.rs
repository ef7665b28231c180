//! Fuzzing model directories: `model.json`, a checkpoint's `state.json`, weights and optimizer
//! state, and a diffusers model's `config.json` and safetensors weights.

use std::path::{Path, PathBuf};

use burn::optim::{AdamWConfig, ModuleOptimizer};
use retrace::diffusion::ModelDir;

use super::{Parser, Shape, campaign};
use crate::common::{self, cpu};

/// What `retrace info` and the commands that load a model read: the description, the list of
/// checkpoints, and every checkpoint's weights.
fn open_and_load(root: &Path) -> Result<ModelDir, String> {
    let dir = ModelDir::open(root).map_err(|e| e.to_string())?;
    assert!(dir.info.architecture.estimated_parameters() <= retrace::diffusion::unet::MAX_PARAMETERS);
    for checkpoint in dir.checkpoints().map_err(|e| e.to_string())? {
        dir.load_model(&checkpoint, &cpu()).map_err(|e| e.to_string())?;
    }
    Ok(dir)
}

fn newest_checkpoint(root: &Path) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    dirs.sort();
    dirs.pop().unwrap()
}

/// Rewrites the newest checkpoint's recorded weight digest to match the file's bytes.
fn reseal_weights(checkpoint: &Path, state_seed: &serde_json::Value) {
    let weights = std::fs::read(checkpoint.join("weights.bpk")).unwrap();
    let mut state = state_seed.clone();
    state["weights_sha256"] = retrace::files::sha256(&weights).into();
    std::fs::write(checkpoint.join("state.json"), serde_json::to_vec(&state).unwrap()).unwrap();
}

#[test]
fn model_descriptions() {
    let tmp = tempfile::tempdir().unwrap();
    common::tiny_trained_model(tmp.path());
    let path = tmp.path().join("model.json");
    // A latent model's description too (an autoencoder in it, vae/ beside it): every input is
    // tried on both directories, and opens when either takes it.
    let latent_root = tmp.path().join("latent");
    common::tiny_latent_model(&latent_root);
    let latent_path = latent_root.join("model.json");
    let parser = Parser {
        name: "model-json",
        seeds: vec![std::fs::read(&path).unwrap(), std::fs::read(&latent_path).unwrap()],
        shape: Shape::Json,
    };
    campaign(parser, |input, _| {
        std::fs::write(&path, input).unwrap();
        std::fs::write(&latent_path, input).unwrap();
        let dir = open_and_load(tmp.path())
            .or_else(|pixel| open_and_load(&latent_root).map_err(|latent| format!("{pixel}; {latent}")))?;
        dir.data_spec(None).map_err(|e| e.to_string())?;
        Ok(())
    });
}

#[test]
fn checkpoint_states() {
    let tmp = tempfile::tempdir().unwrap();
    common::tiny_trained_model(tmp.path());
    let state = newest_checkpoint(tmp.path()).join("state.json");
    model_file_campaign("checkpoint-state", tmp.path(), &state, Shape::Json);
}

#[test]
fn checkpoint_weights() {
    let tmp = tempfile::tempdir().unwrap();
    common::tiny_trained_model(tmp.path());
    let checkpoint = newest_checkpoint(tmp.path());
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(checkpoint.join("state.json")).unwrap()).unwrap();
    let path = checkpoint.join("weights.bpk");
    // The same weights stored in half precision (a bundled checkpoint) seed the campaign too.
    let half = tempfile::tempdir().unwrap();
    let dir = ModelDir::open(tmp.path()).unwrap();
    let (net, newest) = dir.load_latest(&cpu()).unwrap();
    let halved = ModelDir::create(half.path(), dir.info.clone()).unwrap();
    let halved = halved.save_half_precision(&net, newest.state).unwrap();
    let half_seed = std::fs::read(halved.dir.join("weights.bpk")).unwrap();
    let parser = Parser {
        name: "checkpoint-weights",
        seeds: vec![std::fs::read(&path).unwrap(), half_seed.clone()],
        shape: Shape::Binary,
    };
    campaign(parser, |input, reseal| {
        std::fs::write(&path, input).unwrap();
        // The half-precision seed comes with its own recorded digest.
        if reseal || input == half_seed.as_slice() {
            reseal_weights(&checkpoint, &state);
        } else {
            std::fs::write(checkpoint.join("state.json"), serde_json::to_vec(&state).unwrap()).unwrap();
        }
        open_and_load(tmp.path()).map(|_| ())
    });
}

#[test]
fn optimizer_states() {
    common::before_restoring_optimizer_state();
    let tmp = tempfile::tempdir().unwrap();
    let dir = common::tiny_trained_model(tmp.path());
    let checkpoint = dir.latest().unwrap().unwrap();
    let path = checkpoint.dir.join("optimizer.bpk");
    let parser = Parser {
        name: "optimizer-state",
        seeds: vec![std::fs::read(&path).unwrap()],
        shape: Shape::Binary,
    };
    campaign(parser, |input, reseal| {
        std::fs::write(&path, input).unwrap();
        let mut checkpoint = checkpoint.clone();
        if reseal {
            checkpoint.state.optimizer_sha256 = Some(retrace::files::sha256(input));
        }
        let fresh: ModuleOptimizer = AdamWConfig::new().init();
        dir.load_optimizer(&checkpoint, fresh).map_err(|e| e.to_string())?;
        Ok(())
    });
}

/// A copy of the `options-unet` diffusers fixture (a bare UNet2DModel with non-default options).
fn diffusers_copy(root: &Path) -> PathBuf {
    fixture_copy("options-unet", root)
}

/// A copy of the bare diffusers fixture `name` in `root`.
fn fixture_copy(name: &str, root: &Path) -> PathBuf {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/diffusers")
        .join(name);
    for file in [
        "config.json",
        "scheduler_config.json",
        "diffusion_pytorch_model.safetensors",
    ] {
        std::fs::copy(fixture.join(file), root.join(file)).unwrap();
    }
    root.to_owned()
}

/// A campaign on one file of the model in `root`: each input is written over `file`, then the
/// model is opened and every checkpoint loaded.
fn model_file_campaign(name: &'static str, root: &Path, file: &Path, shape: Shape) {
    let parser = Parser {
        name,
        seeds: vec![std::fs::read(file).unwrap()],
        shape,
    };
    campaign(parser, |input, _| {
        std::fs::write(file, input).unwrap();
        open_and_load(root).map(|_| ())
    });
}

#[test]
fn diffusers_configs() {
    let tmp = tempfile::tempdir().unwrap();
    let root = diffusers_copy(tmp.path());
    model_file_campaign("diffusers-config", &root, &root.join("config.json"), Shape::Json);
}

#[test]
fn diffusers_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let root = diffusers_copy(tmp.path());
    let weights = root.join("diffusion_pytorch_model.safetensors");
    model_file_campaign("diffusers-weights", &root, &weights, Shape::Safetensors);
}

/// The class-conditional fixture's config (`num_class_embeds`, `class_embed_type`) under
/// mutation.
#[test]
fn class_conditional_diffusers_configs() {
    let tmp = tempfile::tempdir().unwrap();
    let root = fixture_copy("class-unet", tmp.path());
    model_file_campaign("diffusers-class-config", &root, &root.join("config.json"), Shape::Json);
}

/// The class-conditional fixture's weights under mutation, the class table among them (the one
/// Linear weight read untransposed); a test of its own, so that a long run can take the
/// configs and the weights on separate cores.
#[test]
fn class_conditional_diffusers_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let root = fixture_copy("class-unet", tmp.path());
    let weights = root.join("diffusion_pytorch_model.safetensors");
    model_file_campaign("diffusers-class-weights", &root, &weights, Shape::Safetensors);
}

/// The DiT fixture: `DiTTransformer2DModel` configs and weights under mutation.
#[test]
fn dit_diffusers_models() {
    let tmp = tempfile::tempdir().unwrap();
    let root = fixture_copy("dit", tmp.path());
    model_file_campaign("diffusers-dit-config", &root, &root.join("config.json"), Shape::Json);
    let root = fixture_copy("dit", tmp.path());
    let weights = root.join("diffusion_pytorch_model.safetensors");
    model_file_campaign("diffusers-dit-weights", &root, &weights, Shape::Safetensors);
}

/// A diffusers `AutoencoderKL` directory (a latent pipeline's `vae/`): config and weights under
/// mutation, read by the autoencoder's loader.
#[test]
fn autoencoders() {
    let tmp = tempfile::tempdir().unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/diffusers/vae");
    for file in ["config.json", "diffusion_pytorch_model.safetensors"] {
        std::fs::copy(fixture.join(file), tmp.path().join(file)).unwrap();
    }
    for (name, file, shape) in [
        ("vae-config", "config.json", Shape::Json),
        ("vae-weights", "diffusion_pytorch_model.safetensors", Shape::Safetensors),
    ] {
        let path = tmp.path().join(file);
        let original = std::fs::read(&path).unwrap();
        let parser = Parser {
            name,
            seeds: vec![original.clone()],
            shape,
        };
        campaign(parser, |input, _| {
            std::fs::write(&path, input).unwrap();
            retrace::diffusion::diffusers::vae::load_vae(tmp.path(), &cpu())
                .map(|_| ())
                .map_err(|e| e.to_string())
        });
        std::fs::write(&path, original).unwrap();
    }
}

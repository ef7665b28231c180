//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::Path;

use burn::tensor::Device;
use retrace::data::{DataSpec, Dataset};
use retrace::diffusion::checkpoint::FORMAT_VERSION;
use retrace::diffusion::{Architecture, ModelDir, ModelInfo, ScheduleConfig, TrainRecipe, UNetConfig};

/// Where Debian's dataset-fashion-mnist package installs the data.
pub const FASHION_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// The first `n` real Fashion-MNIST training images.
pub fn fashion_subset(n: usize) -> Dataset {
    let spec: DataSpec = format!("fashion-mnist:{FASHION_DIR}?subset={n}").parse().unwrap();
    Dataset::load(&spec).expect("Fashion-MNIST is installed (apt-get install dataset-fashion-mnist)")
}

/// The diffusers fixture `name` (tests/fixtures/diffusers/NAME, written by
/// scripts/make-diffusers-fixtures.py).
pub fn diffusers_fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/diffusers")
        .join(name)
}

/// The `tiny` U-Net for 1×28×28 images.
pub fn tiny_unet_config() -> UNetConfig {
    UNetConfig::named("tiny", 1, 28).unwrap()
}

/// [`tiny_unet_config`] as the architecture the engine builds.
pub fn tiny_config() -> Architecture {
    tiny_unet_config().into()
}

/// The description of a model of architecture `unet` to be trained on `data` with the tests'
/// recipe (learning rate 2e-3, 5 warm-up steps, seed 7).
pub fn test_model_info(
    architecture: impl Into<Architecture>,
    data: &Dataset,
    batch_size: usize,
    checkpoint_every: usize,
) -> ModelInfo {
    ModelInfo {
        format_version: FORMAT_VERSION,
        architecture: architecture.into(),
        schedule: ScheduleConfig::default(),
        data_spec: data.name.clone(),
        data_hash: data.content_hash(),
        data_len: data.len(),
        class_names: data.class_names.clone(),
        train: TrainRecipe {
            label_dropout: 0.0,
            learning_rate: 2e-3,
            warmup_steps: 5,
            lr_schedule: Default::default(),
            batch_size,
            weight_decay: 0.0,
            seed: 7,
            checkpoint_every,
            excluded: Vec::new(),
            init: None,
            command: "test".into(),
        },
        vae: None,
    }
}

/// A fresh model directory for `data` with the tiny architecture.
pub fn tiny_model_dir(root: &Path, data: &Dataset, batch_size: usize, checkpoint_every: usize) -> ModelDir {
    ModelDir::create(root, test_model_info(tiny_config(), data, batch_size, checkpoint_every)).unwrap()
}

/// Index settings for tests that query with a perturbed copy of a training image: 4 timestep
/// buckets of `draws` draws each, the query's (t, ε) its own (nothing shared with its source's
/// training features), k = 8, the last checkpoint, f32, in `dir`.
pub fn independent_draw_settings(dir: &Path, draws: usize, chunk_size: usize) -> retrace::index::IndexSettings {
    let mut plan = retrace::grad::TimestepPlan::new(1000, 4, draws, 0).unwrap();
    plan.shared_noise = false;
    retrace::index::IndexSettings {
        dir: dir.to_owned(),
        plan,
        projection: retrace::grad::ProjectionConfig {
            k_in: 8,
            k_out: 8,
            seed: 0,
        },
        checkpoints: retrace::index::CheckpointChoice::Last,
        storage: retrace::index::Storage::F32,
        measurement: retrace::diffusion::Measurement::Loss,
        batch_size: 16,
        chunk_size,
    }
}

/// burn's wgpu runtime, brought up once for the whole test binary by
/// [`retrace::device::choose_shared`] (lavapipe in CI), with the setup a renderer can share: every
/// test that computes on wgpu uses this one, so the test that shares it with the viewer's
/// window does not depend on which test touched wgpu first.
pub fn shared_wgpu() -> &'static retrace::device::ComputeDevice {
    static SHARED: std::sync::OnceLock<retrace::device::ComputeDevice> = std::sync::OnceLock::new();
    SHARED.get_or_init(|| {
        let chosen = retrace::device::choose_shared(Some(retrace::device::DeviceRequest::Wgpu)).unwrap();
        assert!(
            chosen.wgpu_setup.is_some(),
            "burn's wgpu runtime started: {}",
            chosen.reason
        );
        chosen
    })
}

/// The wgpu device of [`shared_wgpu`].
pub fn wgpu() -> Device {
    shared_wgpu().device.clone()
}

/// The CPU device every test computes on unless it compares backends.
pub fn cpu() -> Device {
    Device::flex()
}

/// Every parameter value of a module, in visiting order.
pub fn param_values<M: burn::module::Module>(module: &M) -> Vec<f32> {
    struct Collect(Vec<f32>);
    impl burn::module::ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<burn::tensor::Tensor<D>>) {
            self.0.extend(param.val().into_data().try_to_vec::<f32>().unwrap());
        }
    }
    let mut c = Collect(Vec::new());
    module.visit(&mut c);
    c.0
}

/// Cancels its job once the job reports `at` units done.
struct CancelAt(usize, retrace::jobs::CancelToken);

impl retrace::jobs::ProgressSink for CancelAt {
    fn update(&self, p: &retrace::jobs::Progress) {
        if p.done as usize >= self.0 {
            self.1.cancel();
        }
    }
}

/// A job context that cancels itself once `at` units of work are reported done.
pub fn job_cancelled_at(at: usize) -> retrace::jobs::JobContext {
    let cancel = retrace::jobs::CancelToken::new();
    retrace::jobs::JobContext {
        cancel: cancel.clone(),
        progress: std::sync::Arc::new(CancelAt(at, cancel)),
    }
}

/// The first 40 images of the bundled training set.
pub fn small_data() -> Dataset {
    let data = Dataset::load(&DataSpec::bundled(retrace::data::Split::Train)).unwrap();
    data.select(&(0..40).collect::<Vec<_>>())
}

/// A copy of the bundled model (newest checkpoint) recorded as trained on `data`.
pub fn bundled_model_for(data: &Dataset, root: &std::path::Path) -> ModelDir {
    let bundled = ModelDir::open(&retrace::data::bundled_model_dir()).unwrap();
    let mut info = bundled.info.clone();
    info.data_hash = data.content_hash();
    info.data_len = data.len();
    let dir = ModelDir::create(root, info).unwrap();
    let last = bundled.latest().unwrap().unwrap();
    let target = root.join("checkpoints").join(last.dir.file_name().unwrap());
    std::fs::create_dir_all(&target).unwrap();
    for f in ["weights.bpk", "state.json"] {
        std::fs::copy(last.dir.join(f), target.join(f)).unwrap();
    }
    dir
}

/// A perturbed copy of a training image (C×H×W bytes) in [−1, 1]: shifted one pixel to the
/// right (the new first column is background) and noised with N(0, 0.05²), seeded. As a query,
/// it is close to its source without being it.
pub fn perturbed_copy(bytes: &[u8], [c, h, w]: [usize; 3], seed: u64) -> Vec<f32> {
    let unit = retrace::data::pixels::bytes_to_unit(bytes);
    let noise =
        retrace::diffusion::noise::gaussian(&mut retrace::diffusion::noise::stream("perturb", &[seed]), unit.len());
    let mut out = vec![-1.0f32; unit.len()];
    for ch in 0..c {
        for y in 0..h {
            for x in 1..w {
                out[(ch * h + y) * w + x] = unit[(ch * h + y) * w + x - 1];
            }
        }
    }
    out.iter()
        .zip(&noise)
        .map(|(v, n)| (v + 0.05 * n).clamp(-1.0, 1.0))
        .collect()
}

/// Position of training image `source` in a ranking (0 = first).
pub fn rank_of(scores: &retrace::attribution::Scores, source: usize) -> usize {
    scores.ranking().iter().position(|&i| i == source).unwrap()
}

/// A synthetic index of `images` images × `buckets` buckets of random features (the layer
/// shapes give an odd feature width), in `storage`, written to `dir` and opened.
pub fn synthetic_index(
    dir: &std::path::Path,
    images: usize,
    buckets: usize,
    storage: retrace::index::Storage,
) -> retrace::index::Index {
    let projection = retrace::grad::ProjectionConfig {
        k_in: 16,
        k_out: 16,
        seed: 0,
    };
    let layer_shapes = [(3, 5), (7, 1), (3, 3)];
    let manifest =
        retrace::perf::query::synthetic_manifest(projection, &layer_shapes, buckets, storage, images, 10, &cpu())
            .unwrap();
    let (key, dim) = (manifest.key.clone(), manifest.dim);
    let values = retrace::diffusion::noise::gaussian(
        &mut retrace::diffusion::noise::stream("synthetic-index", &[images as u64]),
        images * buckets * dim,
    );
    let row = buckets * dim;
    retrace::index::write_index(dir, manifest, |_, start, end| values[start * row..end * row].to_vec()).unwrap();
    retrace::index::Index::open(dir, &key, &cpu()).unwrap()
}

/// A job context that keeps every progress message it is given.
pub fn recording_job() -> (retrace::jobs::JobContext, std::sync::Arc<Recorder>) {
    let recorder = std::sync::Arc::new(Recorder::default());
    let job = retrace::jobs::JobContext {
        cancel: retrace::jobs::CancelToken::new(),
        progress: recorder.clone(),
    };
    (job, recorder)
}

/// The messages a job reported, in order.
#[derive(Default)]
pub struct Recorder(std::sync::Mutex<Vec<String>>);

impl Recorder {
    /// Every message so far.
    pub fn messages(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

impl retrace::jobs::ProgressSink for Recorder {
    fn update(&self, progress: &retrace::jobs::Progress) {
        self.0.lock().unwrap().push(progress.message.clone());
    }
}

/// A tiny model trained for two steps on 8 bundled images, a checkpoint after each, the last
/// with its optimizer state.
pub fn tiny_trained_model(root: &Path) -> ModelDir {
    let data = retrace::data::Dataset::load(&"bundled?subset=8".parse().unwrap()).unwrap();
    let dir = tiny_model_dir(root, &data, 4, 1);
    assert_eq!(train_one_epoch(&dir, &data).step, 2);
    dir
}

/// Trains the model in `dir` for one epoch of `data` on the CPU.
fn train_one_epoch(dir: &ModelDir, data: &Dataset) -> retrace::diffusion::train::TrainOutcome {
    retrace::diffusion::train::train(
        dir,
        data,
        &retrace::diffusion::train::TrainLength { epochs: 1 },
        false,
        &cpu(),
        &retrace::jobs::JobContext::silent(),
    )
    .unwrap()
}

/// A tiny latent diffusion model in `root` (the `tiny` U-Net on 4×14×14 latents of the
/// ldm-pipeline fixture's autoencoder), trained for one epoch on 8 bundled images.
pub fn tiny_latent_model(root: &Path) -> ModelDir {
    let data = retrace::data::Dataset::load(&"bundled?subset=8".parse().unwrap()).unwrap();
    let vae = retrace::diffusion::latent::install_vae(&diffusers_fixture("ldm-pipeline").join("vae"), root).unwrap();
    let mut info = test_model_info(UNetConfig::named("tiny", 4, 14).unwrap(), &data, 4, 1);
    info.vae = Some(vae);
    let dir = ModelDir::create(root, info).unwrap();
    train_one_epoch(&dir, &data);
    dir
}

/// A number from the environment variable `name` (underscores allowed, as in `1_000_000`),
/// or `default` when it is unset or not a number: how the campaigns take their sizes and seeds.
pub fn env_number<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// To be called before anything restores optimizer state in this process. burn-optim restores
/// it onto burn's default device, which is wgpu when `BURN_DEVICE` is unset (the binary sets
/// it to flex; the tests cannot without racing other threads), and a default wgpu brought up
/// first makes [`shared_wgpu`]'s own setup fail ("Service already initialized"). Bringing the
/// shared runtime up first makes the default device join it, whatever order the tests run in.
pub fn before_restoring_optimizer_state() {
    shared_wgpu();
}

/// A file system of `bytes` bytes mounted for a test (tmpfs; unmounted when dropped), to fill
/// up; `None` where the test may not mount one (it needs root). Where `RETRACE_REQUIRE_TMPFS`
/// is set (CI sets it where a mount works), failing to mount fails the test instead, so the
/// tests that need one cannot pass by skipping.
pub struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// Mounts one, or `None` where this process may not.
    pub fn mount(bytes: usize) -> Option<Self> {
        let dir = tempfile::tempdir().ok()?;
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            mounted || std::env::var_os("RETRACE_REQUIRE_TMPFS").is_none(),
            "cannot mount a tmpfs, and RETRACE_REQUIRE_TMPFS is set"
        );
        mounted.then_some(Self { dir })
    }

    /// Fills it up but for about `bytes` bytes, with a file named `filler`.
    pub fn fill_leaving(&self, bytes: usize) {
        let filler = self.path().join("filler");
        let mut size = 0usize;
        let block = vec![0u8; 4096];
        let mut file = std::fs::File::create(&filler).unwrap();
        use std::io::Write;
        while file.write_all(&block).and_then(|_| file.sync_all()).is_ok() {
            size += block.len();
        }
        drop(file);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&filler)
            .unwrap()
            .set_len(size.saturating_sub(bytes) as u64)
            .unwrap();
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(self.dir.path()).status();
    }
}

//! The DDPM on real data: training lowers the loss, checkpoints are exact and resumable,
//! samplers are deterministic, and flex and wgpu compute the same network.

use crate::common;

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use common::{cpu, fashion_subset, tiny_config, tiny_model_dir};
use retrace::diffusion::images::batch_tensor;
use retrace::diffusion::train::{TrainLength, batch_plan, diffusion_loss, noise_images, train};
use retrace::diffusion::{Condition, Network, SamplerConfig, SamplerKind, Schedule, sample};
use retrace::jobs::JobContext;

fn flat(model: &Network) -> Vec<f32> {
    common::param_values(model)
}

/// Loss on a fixed batch of 64 images with fixed timesteps and noise.
fn eval_loss(model: &Network, data: &retrace::data::Dataset, device: &Device) -> f32 {
    let schedule = Schedule::new(&Default::default());
    let (_, ts, noise) = batch_plan(999, 0, 64, 64, schedule.len(), data.image_len());
    let idx: Vec<usize> = (0..64).collect();
    let batch = noise_images(&schedule, batch_tensor(data, &idx, device), &ts, noise);
    diffusion_loss(model, &batch).into_scalar::<f32>()
}

#[test]
fn tiny_training_on_fashion_mnist_lowers_the_loss() {
    let data = fashion_subset(256);
    let root = tempfile::tempdir().unwrap();
    let dir = tiny_model_dir(root.path(), &data, 32, 1000);
    let device = cpu();
    let before = eval_loss(&tiny_config().init(&device), &data, &device);
    // Initialisation is seeded by the recipe: the first model is reproducible.
    let init = tiny_config().init_seeded(&device, 7);
    let outcome = train(
        &dir,
        &data,
        &TrainLength { epochs: 4 },
        false,
        &device,
        &JobContext::silent(),
    )
    .unwrap();
    assert_eq!(outcome.step, 32);
    let (trained, _) = dir.load_latest(&device).unwrap();
    let after = eval_loss(&trained, &data, &device);
    let at_init = eval_loss(&init, &data, &device);
    assert!(
        after < 0.6 * at_init.min(before),
        "loss {at_init} → {after} after 32 steps"
    );
}

#[test]
fn interrupted_training_resumes_to_the_same_weights() {
    common::before_restoring_optimizer_state();
    let data = fashion_subset(64);
    let device = cpu();
    let straight = tempfile::tempdir().unwrap();
    let a = tiny_model_dir(straight.path(), &data, 16, 8);
    let length = TrainLength { epochs: 6 }; // 24 steps
    train(&a, &data, &length, false, &device, &JobContext::silent()).unwrap();

    let broken = tempfile::tempdir().unwrap();
    let b = tiny_model_dir(broken.path(), &data, 16, 8);
    let job = common::job_cancelled_at(10);
    let first = train(&b, &data, &length, false, &device, &job).unwrap();
    assert!(first.cancelled && first.step == 10, "stopped at {}", first.step);
    assert_eq!(
        b.latest().unwrap().unwrap().state.step,
        10,
        "cancelling saves a checkpoint"
    );
    let err = train(&b, &data, &length, false, &device, &JobContext::silent()).unwrap_err();
    assert!(err.to_string().contains("--resume"), "{err}");
    let second = train(&b, &data, &length, true, &device, &JobContext::silent()).unwrap();
    assert_eq!(second.step, 24);

    let steps: Vec<usize> = b.checkpoints().unwrap().iter().map(|c| c.state.step).collect();
    assert_eq!(steps, vec![8, 10, 16, 24]);
    let (wa, _) = a.load_latest(&device).unwrap();
    let (wb, _) = b.load_latest(&device).unwrap();
    let (fa, fb) = (flat(&wa), flat(&wb));
    let max_diff = fa.iter().zip(&fb).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    assert!(max_diff < 1e-5, "resumed weights differ by {max_diff}");
    // Only the newest checkpoint keeps optimizer state.
    let with_optim: Vec<bool> = b
        .checkpoints()
        .unwrap()
        .iter()
        .map(|c| c.dir.join("optimizer.bpk").exists())
        .collect();
    assert_eq!(with_optim, vec![false, false, false, true]);
}

/// A run that excludes an image replays the run that keeps it: identical up to the first step
/// whose batch held the image, and then far closer to it than a fresh run without the image
/// with the same seed (what the counterfactual evaluations retrain; `retrace::eval::retraining`).
#[test]
fn a_run_without_an_image_replays_the_run_with_it() {
    let data = fashion_subset(32);
    let device = cpu();
    let schedule = Schedule::new(&Default::default());
    let length = TrainLength { epochs: 3 }; // 4 steps of 8 per epoch, 12 in all
    // The first image of step 3, the last batch of the first epoch.
    let (late, _, _) = batch_plan(7, 3, 8, data.len(), schedule.len(), data.image_len());
    let excluded = late[0];
    let run = |data: &retrace::data::Dataset, excluded: Vec<usize>| {
        let root = tempfile::tempdir().unwrap();
        let mut info = common::test_model_info(tiny_config(), data, 8, 3);
        info.train.excluded = excluded;
        let dir = retrace::diffusion::ModelDir::create(root.path(), info).unwrap();
        train(&dir, data, &length, false, &device, &JobContext::silent()).unwrap();
        let weights: Vec<Vec<f32>> = dir
            .checkpoints()
            .unwrap()
            .iter()
            .map(|c| flat(&dir.load_model(c, &device).unwrap()))
            .collect();
        weights
    };
    let distance = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f32>().sqrt();
    let full = run(&data, Vec::new());
    let matched = run(&data, vec![excluded]);
    assert_eq!(full.len(), 4);
    assert_eq!(distance(&full[0], &matched[0]), 0.0, "steps 0–2 never saw the image");
    let keep: Vec<usize> = (0..data.len()).filter(|&i| i != excluded).collect();
    let fresh = run(&data.select(&keep), Vec::new());
    let (near, far) = (distance(&full[3], &matched[3]), distance(&full[3], &fresh[3]));
    assert!(near > 0.0, "the image's absence changes the run");
    assert!(
        near < far / 3.0,
        "matched run {near} from the reference, fresh run {far}"
    );

    // Exclusions that name no image are refused.
    let root = tempfile::tempdir().unwrap();
    let mut info = common::test_model_info(tiny_config(), &data, 8, 3);
    info.train.excluded = vec![40];
    let dir = retrace::diffusion::ModelDir::create(root.path(), info).unwrap();
    let error = train(&dir, &data, &length, false, &device, &JobContext::silent()).unwrap_err();
    assert!(error.to_string().contains("below 32"), "{error}");
}

/// A checkpoint stored in half precision is half the bytes and loads to every weight rounded to
/// f16 (what a bundled model is made of), then checked like any other.
#[test]
fn a_half_precision_checkpoint_loads_to_rounded_weights() {
    let data = fashion_subset(16);
    let device = cpu();
    let (full, half) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let model = tiny_config().init_seeded(&device, 3);
    let state = |step| retrace::diffusion::checkpoint::CheckpointState {
        step,
        epoch: 1.0,
        learning_rate: 0.0,
        loss: 0.1,
        weights_sha256: String::new(),
        optimizer_sha256: None,
    };
    let a = tiny_model_dir(full.path(), &data, 16, 1);
    let b = tiny_model_dir(half.path(), &data, 16, 1);
    let entry_a = a.save(&model, None, state(5)).unwrap();
    let entry_b = b.save_half_precision(&model, state(5)).unwrap();
    let size = |e: &retrace::diffusion::checkpoint::CheckpointEntry| {
        std::fs::metadata(e.dir.join("weights.bpk")).unwrap().len()
    };
    assert!(
        size(&entry_b) * 10 < size(&entry_a) * 6,
        "{} vs {} bytes",
        size(&entry_b),
        size(&entry_a)
    );
    let original = flat(&model);
    let loaded = flat(&b.load_latest(&device).unwrap().0);
    assert_eq!(loaded.len(), original.len());
    for (x, y) in original.iter().zip(&loaded) {
        assert_eq!(*y, half::f16::from_f32(*x).to_f32());
    }
    assert_ne!(loaded, original, "rounded, not copied");
}

#[test]
fn checkpoints_round_trip_exactly_and_reject_damage() {
    let data = fashion_subset(16);
    let root = tempfile::tempdir().unwrap();
    let dir = tiny_model_dir(root.path(), &data, 16, 1);
    let device = cpu();
    let model = tiny_config().init(&device);
    let state = retrace::diffusion::CheckpointState {
        step: 3,
        epoch: 3.0,
        learning_rate: 1e-3,
        loss: 0.5,
        weights_sha256: String::new(),
        optimizer_sha256: None,
    };
    let entry = dir.save(&model, None, state).unwrap();
    let loaded = dir.load_model(&entry, &device).unwrap();
    assert_eq!(flat(&model), flat(&loaded));

    // A NaN in the weights is refused with the parameter's name.
    let Network::UNet(poisoned) = model.clone() else {
        unreachable!("the tiny config is a U-Net")
    };
    let mut bad = poisoned.conv_in.clone();
    let w = bad.weight.val();
    let nan = Tensor::<4>::from_data(
        TensorData::new(vec![f32::NAN; w.shape().num_elements()], w.dims()),
        &device,
    );
    bad.weight = bad.weight.map(|_| nan);
    let poisoned = Network::UNet(retrace::diffusion::UNet {
        conv_in: bad,
        ..poisoned
    });
    let state = retrace::diffusion::CheckpointState {
        step: 4,
        epoch: 4.0,
        learning_rate: 1e-3,
        loss: 0.5,
        weights_sha256: String::new(),
        optimizer_sha256: None,
    };
    let entry = dir.save(&poisoned, None, state).unwrap();
    let err = dir.load_model(&entry, &device).unwrap_err().to_string();
    assert!(err.contains("conv_in") && err.contains("NaN"), "{err}");

    // A truncated weights file fails its checksum.
    let weights = entry.dir.join("weights.bpk");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let err = dir.load_model(&entry, &device).unwrap_err().to_string();
    assert!(err.contains("checksum mismatch"), "{err}");
}

#[test]
fn samplers_are_deterministic_for_a_seed() {
    let device = cpu();
    let model = tiny_config().init_seeded(&device, 1);
    let schedule = Schedule::new(&Default::default());
    for kind in [SamplerKind::Ddpm, SamplerKind::Ddim] {
        let config = SamplerConfig::new(kind, 8);
        let run = |seeds: &[u64]| {
            sample(
                &model,
                &schedule,
                &config,
                [1, 28, 28],
                seeds,
                &vec![Condition::Unconditional; seeds.len()],
                &device,
                |_| true,
            )
            .unwrap()
            .unwrap()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap()
        };
        let a = run(&[3, 4]);
        assert_eq!(a, run(&[3, 4]), "{kind:?} repeats");
        assert_eq!(
            &a[..784],
            &run(&[3])[..],
            "{kind:?}: an image depends only on its own seed"
        );
        assert_ne!(&a[..784], &a[784..], "{kind:?}: seeds differ");
    }
    let mut calls = 0;
    let stopped = sample(
        &model,
        &schedule,
        &SamplerConfig::new(SamplerKind::Ddim, 8),
        [1, 28, 28],
        &[0],
        &[Condition::Unconditional],
        &device,
        |step| {
            calls += 1;
            let clean = step.predicted_clean.clone().into_data().try_to_vec::<f32>().unwrap();
            assert!(clean.iter().all(|v| v.abs() <= 1.0), "the clean estimate is clipped");
            step.done < 3
        },
    );
    assert!(
        stopped.unwrap().is_none() && calls == 3,
        "the observer can stop sampling"
    );
}

#[test]
fn flex_and_wgpu_compute_the_same_forward_pass() {
    let flex = cpu();
    let model = tiny_config().init_seeded(&flex, 5);
    let record = model.clone().into_record().into_bytes().unwrap();
    let gpu = common::wgpu();
    let on_gpu = tiny_config()
        .init(&gpu)
        .load_record(burn::store::ModuleRecord::from_bytes(record).unwrap());
    let data = fashion_subset(4);
    let idx = [0, 1, 2, 3];
    let t = [0.0f32, 10.0, 500.0, 999.0];
    let out = |m: &Network, d: &Device| {
        m.forward(
            batch_tensor(&data, &idx, d),
            Tensor::<1>::from_floats(t.as_slice(), d),
            None,
        )
        .into_data()
        .try_to_vec::<f32>()
        .unwrap()
    };
    let (a, b) = (out(&model, &flex), out(&on_gpu, &gpu));
    let scale = a.iter().map(|v| v.abs()).fold(0.0f32, f32::max);
    let max_diff = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    assert!(
        max_diff <= 1e-4 * scale.max(1.0),
        "flex vs wgpu differ by {max_diff} (scale {scale})"
    );
}

#[test]
fn bundled_model_samples_the_same_on_flex_and_wgpu() {
    // The bundled model is class-conditional: three classes under guidance 2 (two passes per
    // step, the null class's and the class's) and one with no class (the null class alone).
    let dir = retrace::diffusion::ModelDir::open(&retrace::data::bundled_model_dir()).unwrap();
    let schedule = Schedule::new(&dir.info.schedule);
    let config = SamplerConfig::for_model(SamplerKind::Ddim, 20, &dir.info.architecture.condition_encoding());
    assert_eq!(config.guidance_scale, 2.0);
    let run = |device: &Device| {
        let (model, _) = dir.load_latest(device).unwrap();
        let conditions = [
            Condition::Class(7),
            Condition::Class(0),
            Condition::Class(9),
            Condition::Unconditional,
        ];
        let x = sample(
            &model,
            &schedule,
            &config,
            [1, 28, 28],
            &[0, 1, 2, 3],
            &conditions,
            device,
            |_| true,
        )
        .unwrap()
        .unwrap();
        x.into_data().try_to_vec::<f32>().unwrap()
    };
    let (a, b) = (run(&cpu()), run(&common::wgpu()));
    let max_diff = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    assert!(
        max_diff < 1e-3,
        "20 DDIM steps differ by {max_diff} between flex and wgpu"
    );
}

#[test]
fn a_damaged_checkpoint_state_is_named_with_its_fix_and_info_still_lists_the_others() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = common::tiny_trained_model(tmp.path());
    let first = dir.checkpoints().unwrap()[0].dir.clone();
    std::fs::write(first.join("state.json"), b"{\"step\": 1, \"epo").unwrap();

    // Commands that need every checkpoint stop, naming the file and the fix.
    let err = dir.checkpoints().unwrap_err().to_string();
    assert!(err.contains("state.json") && err.contains("delete"), "{err}");
    let (good, damaged) = dir.scan_checkpoints().unwrap();
    assert_eq!(good.iter().map(|c| c.state.step).collect::<Vec<_>>(), [2]);
    assert_eq!(damaged.len(), 1);
    assert_eq!(damaged[0].dir, first);

    // `retrace info` lists the good checkpoint and reports the damaged one.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_retrace"))
        .args(["info", tmp.path().to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(text.contains("checkpoint step       2"), "{text}");
    assert!(
        text.contains("damaged checkpoint")
            && text.contains("retrace train --data 'bundled?subset=8' --out")
            && text.contains("--resume"),
        "{text}"
    );
}

/// A checkpoint that does not fit on the disk fails with the system's error and leaves nothing
/// behind (no partial checkpoint, no temporary directory), so the disk is no fuller for it.
#[test]
fn a_checkpoint_that_does_not_fit_on_the_disk_leaves_nothing_behind() {
    let Some(disk) = common::SmallDisk::mount(64 * 1024) else {
        eprintln!("skipped: this process may not mount a file system");
        return;
    };
    let data = retrace::data::Dataset::load(&"bundled?subset=8".parse().unwrap()).unwrap();
    let dir = tiny_model_dir(&disk.path().join("model"), &data, 4, 1);
    let error = train(
        &dir,
        &data,
        &TrainLength { epochs: 1 },
        false,
        &cpu(),
        &JobContext::silent(),
    )
    .unwrap_err()
    .to_string();
    assert!(error.contains("No space left on device"), "{error}");
    let left: Vec<_> = std::fs::read_dir(dir.root.join("checkpoints"))
        .map(|entries| entries.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left behind: {left:?}");
    assert!(dir.latest().unwrap().is_none());
}

/// Seeded initialisations made at the same time in one process (two trainings, a viewer job
/// beside another) each give the weights their seed gives alone.
#[test]
fn seeded_initialisations_side_by_side_give_each_seeds_weights() {
    let config = tiny_config();
    let alone: Vec<Vec<f32>> = (0..2)
        .map(|seed| common::param_values(&config.init_seeded(&cpu(), seed)))
        .collect();
    assert_ne!(alone[0], alone[1]);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..2u64)
            .map(|seed| {
                let config = &config;
                scope.spawn(move || {
                    (0..6)
                        .map(|_| common::param_values(&config.init_seeded(&cpu(), seed)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for (seed, worker) in workers.into_iter().enumerate() {
            for weights in worker.join().unwrap() {
                assert!(
                    weights == alone[seed],
                    "seed {seed} gave other weights beside another initialisation"
                );
            }
        }
    });
}

/// A command whose reader goes away (`retrace methods | head -1`) ends as other command-line
/// tools do, by SIGPIPE, and does not report the failed write as an internal error.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn a_closed_output_pipe_ends_a_command_quietly() {
    use std::os::unix::process::ExitStatusExt;
    // A pipe whose reading end is closed before the command starts: its first write fails.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_retrace"))
        .arg("methods")
        .stdout(writer)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("internal error"), "{stderr}");
    assert_eq!(
        output.status.signal(),
        Some(libc::SIGPIPE),
        "{:?}: {stderr}",
        output.status
    );
}

//! The kill campaign: `retrace train`, `retrace index`, the curvature fit (of `retrace
//! attribute --method ekfac`) and `retrace eval build-lds` are killed with SIGKILL at random
//! moments, resumed, and must end with the same bytes as an uninterrupted run; after every kill,
//! every file the job has made visible must be complete (its checksum holds, it parses).
//!
//! `RETRACE_KILLS` sets the kills per job (2 by default, which CI runs; `scripts/kill-campaign`
//! runs 20), `RETRACE_KILL_SEED` the seed of the moments (0 by default), and
//! `RETRACE_KILL_REPORT` a file that receives one JSON line per job. The jobs run the `retrace`
//! binary of this build (or `RETRACE_BIN`), with relative paths inside one directory per run, so that the command
//! lines a model records are the same in every run.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};

/// The small model every job starts from or makes: the tiny U-Net on 48 bundled images.
const TRAIN: &[&str] = &[
    "train",
    "--data",
    "bundled?subset=48",
    "--config",
    "tiny",
    "--epochs",
    "5",
    "--batch-size",
    "12",
    "--checkpoint-every",
    "4",
    "--warmup",
    "2",
    "--seed",
    "3",
    "--out",
    "model",
];

/// The index and attribution settings the index and curvature jobs share.
const INDEX_SETTINGS: &[&str] = &[
    "--model",
    "model",
    "--data",
    "bundled?subset=48",
    "--index",
    "index",
    "--buckets",
    "2",
    "--draws",
    "1",
    "--projection-k",
    "8",
    "--checkpoints",
    "all",
];

/// A job of the campaign.
struct Job {
    /// Name in reports.
    name: &'static str,
    /// What the run directory holds before the job starts (copied from the reference runs of
    /// the jobs before).
    inputs: Vec<&'static str>,
    /// Removes from a run directory, after the inputs are copied, what the job itself makes
    /// (the reference directory the inputs come from holds it already).
    clear: fn(&Path),
    /// The command line.
    args: Vec<String>,
    /// The command line that resumes it, given the run directory.
    resume: fn(&Path, &[String]) -> Vec<String>,
    /// The files the job makes, by path under the run directory, as compared between runs.
    outputs: fn(&Path) -> BTreeMap<String, Vec<u8>>,
    /// Checks that every file the job has made visible is complete.
    check: fn(&Path) -> Result<(), String>,
}

fn retrace() -> Command {
    // RETRACE_BIN runs another copy of the binary (a long campaign beside a rebuild).
    let binary = std::env::var("RETRACE_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_retrace").to_owned());
    let mut command = Command::new(binary);
    command
        .env("RETRACE_DEVICE", "cpu")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

/// Runs `args` in `dir` to its end.
fn run_to_end(dir: &Path, args: &[String]) -> Duration {
    let started = Instant::now();
    let output = retrace().args(args).current_dir(dir).output().unwrap();
    assert!(
        output.status.success(),
        "retrace {args:?} in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    started.elapsed()
}

/// Every file under `dir`, by relative path.
fn files_under(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let name = path.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                out.insert(name, std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

fn copy_tree(from: &Path, to: &Path) {
    for (name, bytes) in files_under(from) {
        let path = to.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
}

/// A JSON file with every timing (`…seconds`) zeroed: the one part of a result that differs
/// between two uninterrupted runs.
fn without_timings(bytes: &[u8]) -> Vec<u8> {
    fn zero(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(fields) => {
                for (key, v) in fields.iter_mut() {
                    if key.ends_with("seconds") {
                        *v = serde_json::json!(0);
                    } else {
                        zero(v);
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(zero),
            _ => {}
        }
    }
    let mut value: serde_json::Value = serde_json::from_slice(bytes).unwrap();
    zero(&mut value);
    serde_json::to_vec(&value).unwrap()
}

/// Every checkpoint of the model in `root` loads (weights checked against their digests) and
/// the newest one's optimizer state reads.
fn check_model(root: &Path) -> Result<(), String> {
    crate::common::before_restoring_optimizer_state();
    if !root.join("model.json").exists() {
        return Ok(());
    }
    let dir = retrace::diffusion::ModelDir::open(root).map_err(|e| e.to_string())?;
    let device = burn::tensor::Device::flex();
    for checkpoint in dir.checkpoints().map_err(|e| e.to_string())? {
        dir.load_model(&checkpoint, &device).map_err(|e| e.to_string())?;
        if checkpoint.dir.join("optimizer.bpk").exists() {
            let fresh: burn::optim::ModuleOptimizer = burn::optim::AdamWConfig::new().init();
            dir.load_optimizer(&checkpoint, fresh).map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// The index's manifest holds its checksum, and every chunk and compact block it lists as
/// written matches its digest.
fn check_index(root: &Path) -> Result<(), String> {
    let dir = root.join("index");
    let Ok(bytes) = std::fs::read(dir.join("manifest.json")) else {
        return Ok(());
    };
    let manifest: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| format!("manifest: {e}"))?;
    if retrace::index::seal_manifest(manifest.clone()) != manifest {
        return Err("the manifest does not match its checksum".into());
    }
    for checkpoint in manifest["checkpoints"].as_array().unwrap() {
        let step = checkpoint["step"].as_u64().unwrap();
        for (list, suffix) in [("chunks", "bin"), ("summaries", "summary.bin")] {
            for (k, digest) in checkpoint[list].as_array().unwrap().iter().enumerate() {
                let Some(digest) = digest.as_str() else { continue };
                let path = dir.join(format!("ckpt-{step:07}-chunk-{k:05}.{suffix}"));
                let file = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                if retrace::files::sha256(&file) != digest {
                    return Err(format!("{} does not match its digest", path.display()));
                }
            }
        }
    }
    Ok(())
}

/// A curvature file, once visible, is the complete one (the reference's bytes are compared at
/// the end; here it must read as safetensors with its payload checksum).
fn check_curvature(root: &Path) -> Result<(), String> {
    for path in std::fs::read_dir(root.join("index"))
        .unwrap()
        .map(|e| e.unwrap().path())
    {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("curvature-") && name.ends_with(".safetensors") {
            let bytes = std::fs::read(&path).unwrap();
            let tensors = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| format!("{name}: {e}"))?;
            let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| e.to_string())?;
            let mut names = tensors.names();
            names.sort();
            let payload: Vec<u8> = names
                .iter()
                .flat_map(|n| tensors.tensor(n).unwrap().data().to_vec())
                .collect();
            let recorded = header
                .metadata()
                .as_ref()
                .and_then(|m| m.get("payload_sha256").cloned());
            if recorded.as_deref() != Some(retrace::files::sha256(&payload).as_str()) {
                return Err(format!("{name}: checksum mismatch"));
            }
        }
    }
    check_index(root)
}

/// The LDS build's results parse, its models' checkpoints load, and its ground truth reads.
fn check_lds(root: &Path) -> Result<(), String> {
    let dir = root.join("lds");
    for sub in ["results"] {
        if let Ok(entries) = std::fs::read_dir(dir.join(sub)) {
            for path in entries
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|e| e == "json"))
            {
                let bytes = std::fs::read(&path).unwrap();
                serde_json::from_slice::<serde_json::Value>(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
            }
        }
    }
    check_model(&dir.join("full"))?;
    if let Ok(entries) = std::fs::read_dir(dir.join("models")) {
        for model in entries.map(|e| e.unwrap().path()) {
            check_model(&model)?;
        }
    }
    let truth = dir.join("ground-truth.json");
    if truth.exists() {
        retrace::eval::ground_truth::GroundTruth::load(&truth).map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

fn jobs() -> Vec<Job> {
    let index_args: Vec<String> = ["index"].iter().chain(INDEX_SETTINGS).map(|s| s.to_string()).collect();
    let mut fit_args: Vec<String> = ["attribute"]
        .iter()
        .chain(INDEX_SETTINGS)
        .map(|s| s.to_string())
        .collect();
    fit_args.extend(strings(&[
        "--seed",
        "5",
        "--method",
        "ekfac",
        "--fit-images",
        "48",
        "--out",
        "scores.json",
    ]));
    vec![
        Job {
            name: "train",
            inputs: vec![],
            clear: |_| (),
            args: strings(TRAIN),
            resume: |dir, args| {
                // What a user does: the same command, plus --resume once the model exists.
                let mut args = args.to_vec();
                if dir.join("model").join("model.json").exists() {
                    args.push("--resume".into());
                }
                args
            },
            outputs: |dir| files_under(&dir.join("model")),
            check: |dir| check_model(&dir.join("model")),
        },
        Job {
            name: "index",
            inputs: vec!["model"],
            clear: |_| (),
            args: index_args,
            resume: |_, args| args.to_vec(),
            outputs: |dir| {
                let mut files = files_under(&dir.join("index"));
                // When the last full verification happened (modification times) differs.
                files.remove("verified.json");
                files
            },
            check: check_index,
        },
        Job {
            name: "curvature-fit",
            inputs: vec!["model", "index"],
            clear: |dir| {
                for path in std::fs::read_dir(dir.join("index")).unwrap().map(|e| e.unwrap().path()) {
                    if path.file_name().unwrap().to_string_lossy().starts_with("curvature-") {
                        std::fs::remove_file(path).unwrap();
                    }
                }
            },
            args: fit_args,
            resume: |_, args| args.to_vec(),
            outputs: |dir| {
                let mut files: BTreeMap<String, Vec<u8>> = files_under(&dir.join("index"))
                    .into_iter()
                    .filter(|(name, _)| name.starts_with("curvature-"))
                    .collect();
                assert_eq!(files.len(), 1, "one curvature file");
                files.insert("scores.json".into(), std::fs::read(dir.join("scores.json")).unwrap());
                files
            },
            check: check_curvature,
        },
        Job {
            name: "build-lds",
            inputs: vec![],
            clear: |_| (),
            args: strings(&[
                "eval",
                "build-lds",
                "--out",
                "lds",
                "--data",
                "bundled?subset=32",
                "--held-out",
                "bundled?split=test&subset=8",
                "--config",
                "tiny",
                "--epochs",
                "4",
                "--batch-size",
                "16",
                "--warmup",
                "2",
                "--subsets",
                "3",
                "--seeds",
                "1",
                "--queries",
                "2",
                "--draws",
                "2",
                "--sampler-steps",
                "5",
                "--alpha",
                "0.5",
            ]),
            resume: |_, args| args.to_vec(),
            outputs: |dir| {
                files_under(&dir.join("lds"))
                    .into_iter()
                    .map(|(name, bytes)| {
                        let bytes = if name.ends_with(".json") {
                            without_timings(&bytes)
                        } else {
                            bytes
                        };
                        (name, bytes)
                    })
                    .collect()
            },
            check: check_lds,
        },
    ]
}

#[test]
fn killed_jobs_resume_to_the_bytes_of_an_uninterrupted_run() {
    let kills = crate::common::env_number("RETRACE_KILLS", 2usize);
    let seed = crate::common::env_number("RETRACE_KILL_SEED", 0u64);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let tmp = tempfile::tempdir().unwrap();
    let reference = tmp.path().join("reference");
    std::fs::create_dir_all(&reference).unwrap();
    for job in jobs() {
        let duration = run_to_end(&reference, &job.args);
        let expected = (job.outputs)(&reference);
        assert!(!expected.is_empty(), "{}: the job made no files", job.name);
        let (mut killed, mut runs, mut moments) = (0, 0, Vec::new());
        let started = Instant::now();
        while killed < kills {
            runs += 1;
            let dir = tmp.path().join(format!("{}-{runs}", job.name));
            std::fs::create_dir_all(&dir).unwrap();
            for input in &job.inputs {
                copy_tree(&reference.join(input), &dir.join(input));
            }
            (job.clear)(&dir);
            // Up to three kills in one run directory, each at a random moment of an attempt.
            for attempt in 0..3 {
                let args = if attempt == 0 {
                    job.args.clone()
                } else {
                    (job.resume)(&dir, &job.args)
                };
                let moment = duration.mul_f64(rng.random_range(0.0..1.0));
                let mut child = retrace()
                    .args(&args)
                    .current_dir(&dir)
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap();
                std::thread::sleep(moment);
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                child.kill().unwrap();
                child.wait().unwrap();
                killed += 1;
                moments.push(moment.as_secs_f64() / duration.as_secs_f64());
                if let Err(e) = (job.check)(&dir) {
                    panic!(
                        "{}: after a kill at {moment:?}, a visible file is incomplete: {e}",
                        job.name
                    );
                }
            }
            run_to_end(&dir, &(job.resume)(&dir, &job.args));
            let actual = (job.outputs)(&dir);
            let differing: Vec<&String> = expected
                .keys()
                .chain(actual.keys())
                .filter(|name| expected.get(*name) != actual.get(*name))
                .collect();
            assert!(
                differing.is_empty(),
                "{}: after {killed} kills, resumed, these files differ from the uninterrupted run's: {differing:?}",
                job.name
            );
        }
        moments.sort_by(f64::total_cmp);
        let line = serde_json::json!({
            "job": job.name,
            "kills": killed,
            "runs": runs,
            "seed": seed,
            "uninterrupted_seconds": duration.as_secs_f64(),
            "campaign_seconds": started.elapsed().as_secs_f64(),
            "earliest_kill": moments.first(),
            "latest_kill": moments.last(),
            "files_compared": expected.len(),
        });
        println!("kill {line}");
        if let Ok(report) = std::env::var("RETRACE_KILL_REPORT") {
            use std::io::Write;
            if let Ok(mut file) = std::fs::OpenOptions::new().create(true).append(true).open(report) {
                let _ = writeln!(file, "{line}");
            }
        }
    }
}

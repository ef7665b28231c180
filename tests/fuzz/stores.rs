//! Fuzzing what retrace stores and reads back: the index (manifest, chunk files, compact
//! blocks), curvature files, scores files and LDS ground truths.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use retrace::curvature::store::{CurvatureKey, load_curvature, save_curvature};
use retrace::index::{Index, IndexKey, Storage, SummaryPart, Verification, seal_manifest};
use retrace::jobs::JobContext;

use super::{Parser, Shape, campaign};
use crate::common::{self, cpu};

/// Every file of a directory, by name.
fn files_of(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect()
}

/// Puts a directory back as `files` had it (an open may have added or rewritten files).
fn restore(dir: &Path, files: &BTreeMap<String, Vec<u8>>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if !files.contains_key(path.file_name().unwrap().to_str().unwrap()) {
            std::fs::remove_file(&path).unwrap();
        }
    }
    for (name, bytes) in files {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

/// A small f16 index (12 images, 3 buckets, chunks of 10), its files and key.
fn small_index(dir: &Path) -> (IndexKey, BTreeMap<String, Vec<u8>>) {
    let index = common::synthetic_index(dir, 12, 3, Storage::F16);
    let _ = std::fs::remove_file(dir.join("verified.json"));
    (index.manifest.key.clone(), files_of(dir))
}

/// What the methods read of an opened index: every feature, both compact-block parts, the
/// bucket norms and the per-bucket dot products.
fn open_and_read(dir: &Path, key: &IndexKey) -> Result<(), String> {
    let index =
        Index::open_with(dir, key, Verification::Full, &cpu(), &JobContext::silent()).map_err(|e| e.to_string())?;
    let m = &index.manifest;
    let (b, d) = (m.key.plan.buckets, m.dim);
    for i in 0..m.checkpoints.len() {
        let features = index.features(i).map_err(|e| e.to_string())?;
        assert_eq!(features.values.len(), m.examples * b * d);
        for part in [SummaryPart::Mean, SummaryPart::UnitMean] {
            let dots = index
                .summary_dots(i, part, &vec![0.5; 2 * d], 2)
                .map_err(|e| e.to_string())?;
            assert_eq!(dots.len(), m.examples * 2);
        }
        assert_eq!(index.bucket_norms(i).map_err(|e| e.to_string())?.len(), m.examples * b);
        let cosines = index
            .bucket_dots(i, &vec![1.0; b * d], true)
            .map_err(|e| e.to_string())?;
        assert_eq!(cosines.len(), m.examples * b);
    }
    Ok(())
}

/// The manifest's JSON with `edit` applied and its checksum made right again.
fn resealed_manifest(manifest: &[u8], edit: impl FnOnce(&mut serde_json::Value)) -> Option<Vec<u8>> {
    let mut value: serde_json::Value = serde_json::from_slice(manifest).ok()?;
    edit(&mut value);
    serde_json::to_vec_pretty(&seal_manifest(value)).ok()
}

#[test]
fn index_manifests() {
    let tmp = tempfile::tempdir().unwrap();
    let (key, pristine) = small_index(tmp.path());
    let parser = Parser {
        name: "index-manifest",
        seeds: vec![pristine["manifest.json"].clone()],
        shape: Shape::Json,
    };
    campaign(parser, |input, reseal| {
        restore(tmp.path(), &pristine);
        let bytes = if reseal {
            resealed_manifest(input, |_| ()).unwrap_or_else(|| input.to_vec())
        } else {
            input.to_vec()
        };
        std::fs::write(tmp.path().join("manifest.json"), bytes).unwrap();
        open_and_read(tmp.path(), &key)
    });
}

/// A campaign on one data file of the index (`which` names its manifest list and position);
/// resealed inputs have their digest in the manifest updated, so the reader sees the damage.
fn index_file_campaign(name: &'static str, file: &str, list: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let (key, pristine) = small_index(tmp.path());
    let parser = Parser {
        name,
        seeds: vec![pristine[file].clone()],
        shape: Shape::Binary,
    };
    let manifest = pristine["manifest.json"].clone();
    campaign(parser, |input, reseal| {
        restore(tmp.path(), &pristine);
        std::fs::write(tmp.path().join(file), input).unwrap();
        if reseal {
            let digest = retrace::files::sha256(input);
            let sealed = resealed_manifest(&manifest, |m| m["checkpoints"][0][list][0] = digest.into()).unwrap();
            std::fs::write(tmp.path().join("manifest.json"), sealed).unwrap();
        }
        open_and_read(tmp.path(), &key)
    });
}

#[test]
fn index_chunks() {
    index_file_campaign("index-chunk", "ckpt-0000001-chunk-00000.bin", "chunks");
}

#[test]
fn index_compact_blocks() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, pristine) = small_index(tmp.path());
    let name = pristine
        .keys()
        .find(|n| n.contains("summary"))
        .expect("the index has compact blocks")
        .clone();
    index_file_campaign("index-summary", &name, "summaries");
}

/// A curvature key and two layers of seeded factors, as a fit stores them.
fn curvature_fixture() -> (CurvatureKey, Vec<retrace::curvature::LayerEigen>) {
    use retrace::curvature::{FitConfig, LayerEigen, fit::Fisher};
    let layer_shapes = vec![(3, 2), (4, 3)];
    let key = CurvatureKey {
        format_version: retrace::curvature::store::CURVATURE_FORMAT_VERSION,
        checkpoint_hash: retrace::files::sha256(b"checkpoint"),
        data_hash: retrace::files::sha256(b"data"),
        fit: FitConfig {
            fisher: Fisher::Ggn,
            sharing: retrace::curvature::Sharing::Expand,
            plan: retrace::grad::TimestepPlan::new(1000, 2, 1, 0).unwrap(),
        },
        fit_images: 8,
        layer_shapes: layer_shapes.clone(),
    };
    let mut rng = retrace::diffusion::noise::stream("curvature-fuzz", &[]);
    let layers = layer_shapes
        .iter()
        .enumerate()
        .map(|(l, &(d_in, d_out))| LayerEigen {
            d_in,
            d_out,
            q_a: retrace::diffusion::noise::gaussian(&mut rng, d_in * d_in),
            lambda_a: vec![1.0; d_in],
            q_s: retrace::diffusion::noise::gaussian(&mut rng, d_out * d_out),
            lambda_s: vec![0.5; d_out],
            corrected: (l == 1).then(|| vec![0.25; d_in * d_out]),
        })
        .collect();
    (key, layers)
}

/// A damaged curvature file with its payload checksum made right again, when its header still
/// reads; the bytes as they are otherwise.
fn resealed_curvature(bytes: &[u8]) -> Vec<u8> {
    let reseal = || -> Option<Vec<u8>> {
        let tensors = safetensors::SafeTensors::deserialize(bytes).ok()?;
        let length = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?) as usize;
        let mut header: serde_json::Value = serde_json::from_slice(bytes.get(8..8 + length)?).ok()?;
        let mut names: Vec<&str> = tensors.names();
        names.sort();
        let mut payload = Vec::new();
        for n in names {
            payload.extend_from_slice(tensors.tensor(n).ok()?.data());
        }
        header
            .get_mut("__metadata__")?
            .as_object_mut()?
            .insert("payload_sha256".into(), retrace::files::sha256(&payload).into());
        let header = serde_json::to_vec(&header).ok()?;
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(&header);
        out.extend_from_slice(&bytes[8 + length..]);
        Some(out)
    };
    reseal().unwrap_or_else(|| bytes.to_vec())
}

#[test]
fn curvature_files() {
    let tmp = tempfile::tempdir().unwrap();
    let (key, layers) = curvature_fixture();
    let path: PathBuf = save_curvature(tmp.path(), &key, &layers).unwrap();
    let parser = Parser {
        name: "curvature",
        seeds: vec![std::fs::read(&path).unwrap()],
        shape: Shape::Safetensors,
    };
    campaign(parser, |input, reseal| {
        let bytes = if reseal {
            resealed_curvature(input)
        } else {
            input.to_vec()
        };
        std::fs::write(&path, bytes).unwrap();
        let loaded = load_curvature(tmp.path(), &key)
            .map_err(|e| e.to_string())?
            .expect("the file exists");
        assert_eq!(loaded.len(), layers.len());
        Ok(())
    });
}

#[test]
fn scores_files() {
    use retrace::attribution::scores::{AttributionFile, MethodResult};
    let data = retrace::data::Dataset::load(&"bundled?subset=20".parse().unwrap()).unwrap();
    let scores = |method: &str, offset: f32| retrace::attribution::Scores {
        method: method.into(),
        parameters: serde_json::json!({"checkpoints": "all"}),
        buckets: vec![[0, 500], [500, 1000]],
        ids: data.ids.clone(),
        labels: data.labels.clone(),
        per_bucket: (0..data.len() * 2).map(|v| (v as f32 * 0.37 + offset).sin()).collect(),
    };
    let file = AttributionFile {
        retrace_version: "test".into(),
        model: "model".into(),
        data: data.name.clone(),
        query: serde_json::json!({
            "description": "training image 3",
            "image": retrace::report::png_data_uri(data.image(3), [1, 28, 28], 1),
            "region": vec![1.0f32; 28 * 28],
        }),
        device: "flex".into(),
        methods: vec![
            MethodResult::from_scores(&scores("tracin", 0.0), &data.class_names),
            MethodResult::from_scores(&scores("retrac", 1.0), &data.class_names),
        ],
    };
    let parser = Parser {
        name: "scores-json",
        seeds: vec![serde_json::to_vec_pretty(&file).unwrap()],
        shape: Shape::Json,
    };
    campaign(parser, |input, _| {
        let file = retrace::report::read_scores_file(input).map_err(|e| e.to_string())?;
        let parts = retrace::report::ScoresForReport::of(&file, &data).map_err(|e| e.to_string())?;
        assert_eq!(parts.query.len(), 28 * 28);
        Ok(())
    });
}

#[test]
fn lds_ground_truths() {
    use retrace::eval::ground_truth::GroundTruth;
    // The bundled ground truth cut to its first two subsets and one query of each kind and
    // half, reassembled
    // so that it is self-consistent (its masks follow from its seeds).
    let bundled = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/lds/ground-truth.json");
    let truth = GroundTruth::load(&bundled).unwrap();
    let mut spec = truth.spec.clone();
    spec.subsets = 2;
    spec.queries_per_kind = 2;
    use retrace::eval::benchmark::{QueryHalf, QueryKind};
    let keep: Vec<usize> = QueryKind::ALL
        .into_iter()
        .flat_map(|kind| [QueryHalf::Dev, QueryHalf::Report].map(|half| truth.query_indices(kind, half)[0]))
        .collect();
    let cut = |m: &retrace::eval::ground_truth::ModelResult| retrace::eval::ground_truth::ModelResult {
        losses: keep.iter().map(|&q| m.losses[q]).collect(),
        even_losses: keep.iter().map(|&q| m.even_losses[q]).collect(),
        ..m.clone()
    };
    let models = truth
        .models
        .iter()
        .filter(|m| m.key.is_some_and(|k| k.subset < 2))
        .map(cut)
        .collect();
    let queries = keep.iter().map(|&q| truth.queries[q].clone()).collect();
    let small = GroundTruth::assemble(spec, truth.commands.clone(), queries, cut(&truth.full), models).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("ground-truth.json");
    let parser = Parser {
        name: "ground-truth",
        seeds: vec![serde_json::to_vec_pretty(&small).unwrap()],
        shape: Shape::Json,
    };
    campaign(parser, |input, _| {
        std::fs::write(&path, input).unwrap();
        GroundTruth::load(&path).map(|_| ()).map_err(|e| e.to_string())
    });
}

/// A results file (`retrace eval lds --out`, with the sections of `remove-topk` and
/// `regenerate`), as the viewer's Evaluation tab reads it: refused with a reason, or shown.
#[test]
fn results_files() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("results.json");
    let parser = Parser {
        name: "results-json",
        seeds: vec![serde_json::to_vec_pretty(&crate::viewer::evaluation_table()).unwrap()],
        shape: Shape::Json,
    };
    campaign(parser, |input, _| {
        std::fs::write(&path, input).unwrap();
        let report = retrace::eval::table::EvalReport::load(&path).map_err(|e| e.to_string())?;
        // What the viewer indexes holds.
        if let Some(r) = &report.regenerate {
            let [c, h, w] = r.example.shape;
            assert_eq!(r.example.before.0.len(), c * h * w);
            assert!(r.rows.iter().all(|row| row.targets.len() == r.metrics.len()));
        }
        Ok(())
    });
}

/// A classifier directory's `classifier.json` (the weights' hash, the architecture).
#[test]
fn classifier_descriptions() {
    let tmp = tempfile::tempdir().unwrap();
    crate::classifier::trained(tmp.path());
    let path = tmp.path().join(retrace::classifier::CLASSIFIER_FILE);
    let parser = Parser {
        name: "classifier-json",
        seeds: vec![std::fs::read(&path).unwrap()],
        shape: Shape::Json,
    };
    campaign(parser, |input, _| {
        std::fs::write(&path, input).unwrap();
        retrace::classifier::load_classifier(tmp.path(), &crate::common::cpu())
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
}

/// A latent cache chunk (a latent model's training images' μ and log σ² with their keys).
#[test]
fn latent_cache_chunks() {
    use retrace::diffusion::latent::LatentDistributions;
    use retrace::diffusion::latent::cache::{ChunkKey, chunk_bytes, read_chunk};
    let key = ChunkKey {
        data_hash: retrace::files::sha256(b"data"),
        vae_sha256: retrace::files::sha256(b"vae"),
        first: 256,
        count: 3,
        shape: [2, 2, 2],
    };
    let values = |seed: u64| {
        retrace::diffusion::noise::gaussian(&mut retrace::diffusion::noise::stream("fuzz-latents", &[seed]), 24)
    };
    let latents = LatentDistributions {
        vae_sha256: key.vae_sha256.clone(),
        shape: key.shape,
        mean: values(0),
        log_variance: values(1),
    };
    let parser = Parser {
        name: "latent-cache",
        seeds: vec![chunk_bytes(&key, &latents)],
        shape: Shape::Safetensors,
    };
    campaign(parser, |input, _| {
        read_chunk(input, &key).map(|_| ()).map_err(|e| e.to_string())
    });
}

//! Colour end to end: CIFAR-10 binary batches read as CIFAR-2, a model trained on them samples
//! in colour, every method attributes an RGB query and the report shows it in colour; and a
//! model written by PyTorch (diffusers) gets attributions on an RGB image folder.

use crate::common;

use std::path::Path;

use common::cpu;
use retrace::attribution::{MethodSettings, Query, attribute, registry};
use retrace::data::{DataSpec, Dataset};
use retrace::diffusion::train::{TrainLength, train};
use retrace::diffusion::{ModelDir, UNetConfig};
use retrace::index::IndexSettings;
use retrace::jobs::JobContext;

/// A synthetic 3×`size`×`size` picture: a coloured square on a coloured gradient, both
/// depending on `i`, so that every image differs from every other in colour and layout.
fn picture(i: usize, size: usize) -> Vec<u8> {
    let background = [(i * 53) % 256, (i * 97 + 40) % 256, (i * 151 + 90) % 256];
    let square = [(i * 71 + 128) % 256, (i * 29) % 256, (i * 113 + 60) % 256];
    let (x0, y0, side) = ((i * 7) % (size / 2), (i * 11) % (size / 2), size / 3 + i % (size / 4));
    let mut out = vec![0u8; 3 * size * size];
    for c in 0..3 {
        for y in 0..size {
            for x in 0..size {
                let inside = (x0..x0 + side).contains(&x) && (y0..y0 + side).contains(&y);
                let v = if inside {
                    square[c]
                } else {
                    (background[c] + y * 64 / size) % 256
                };
                out[(c * size + y) * size + x] = v as u8;
            }
        }
    }
    out
}

/// Writes CIFAR-10 binary batches (`data_batch_1..5.bin`, `test_batch.bin`) of synthetic
/// pictures to `dir`, with labels cycling through automobile (1), horse (7) and cat (3).
fn write_cifar_batches(dir: &Path, per_batch: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let labels = [1u8, 7, 3];
    let names: Vec<String> = (1..=5)
        .map(|b| format!("data_batch_{b}.bin"))
        .chain(["test_batch.bin".into()])
        .collect();
    for (b, name) in names.iter().enumerate() {
        let mut bytes = Vec::new();
        for j in 0..per_batch {
            let i = b * per_batch + j;
            bytes.push(labels[i % 3]);
            bytes.extend(picture(i, 32));
        }
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

fn index_settings(dir: &Path) -> IndexSettings {
    common::independent_draw_settings(dir, 2, 10)
}

/// How far down the 24 training images a method may rank the source of a perturbed copy on the
/// briefly trained RGB model, queried with independent draws (4 buckets × 2 draws). Measured
/// with two initialisations of the same seed (burn's lazy parameters drew in first-use order,
/// now in module order): pixel 0 and 0, K-FAC 0 and 5, EK-FAC 0 and 2, D-TRAK 0 and 0, TRAK 1
/// and 3, MUCS 1 and 2, TracIn 2 and 1 (ReTrac 3 and 2, its bucket variant 2 and 3; printed
/// only, as in tests/index.rs). K-FAC, the coarsest curvature (no eigenvalue correction), moves
/// most between initialisations: it may rank the source within the top quarter. With 2 buckets
/// × 1 draw and 40 epochs the gradient methods rank it 6–16: too few draws for a model this
/// little trained.
const SOURCE_RANK_LIMIT: [(&str, usize); 7] = [
    ("pixel", 1),
    ("tracin", 5),
    ("kfac", 6),
    ("ekfac", 5),
    ("trak", 5),
    ("dtrak", 5),
    ("mucs", 5),
];

#[test]
fn cifar2_trains_samples_attributes_and_reports_in_colour() {
    let tmp = tempfile::tempdir().unwrap();
    let cifar = tmp.path().join("cifar-10-batches-bin");
    write_cifar_batches(&cifar, 12);
    let spec: DataSpec = format!("cifar2:{}?subset=24", cifar.display()).parse().unwrap();
    let data = Dataset::load(&spec).unwrap();
    assert_eq!((data.len(), data.channels, data.height), (24, 3, 32));
    assert!(data.labels.iter().all(|&l| l == 1 || l == 7));
    assert_eq!(data.class_name(0), "automobile");

    let info = common::test_model_info(UNetConfig::named("tiny", 3, 32).unwrap(), &data, 8, 1000);
    let model = ModelDir::create(&tmp.path().join("model"), info).unwrap();
    let job = JobContext::silent();
    train(&model, &data, &TrainLength { epochs: 100 }, false, &cpu(), &job).unwrap();

    // Sampling gives colour images.
    let sampler = retrace::diffusion::SamplerConfig::new(retrace::diffusion::SamplerKind::Ddim, 10);
    let generated = retrace::attribution::query::generate_query(
        &model,
        2,
        Default::default(),
        &sampler,
        &cpu(),
        &job,
        |_, _, _| {},
    )
    .unwrap();
    assert_eq!(generated.shape, [3, 32, 32]);
    let plane = 32 * 32;
    let (red, green) = (&generated.pixels[..plane], &generated.pixels[plane..2 * plane]);
    assert!(
        red.iter().zip(green).any(|(r, g)| (r - g).abs() > 0.05),
        "the sample has colour"
    );

    // Every method attributes a perturbed RGB copy of training image 5.
    let query = Query::image(
        common::perturbed_copy(data.image(5), [3, 32, 32], 1),
        [3, 32, 32],
        "training image 5, shifted one pixel and noised",
    );
    // The feature-space baseline reads images with the bundled Fashion-MNIST classifier, which
    // takes 1×28×28 images: on RGB data it says so instead of guessing.
    let refused = attribute(
        &model,
        &data,
        &query,
        &MethodSettings::new(&["feature-nn"]),
        &index_settings(&tmp.path().join("index")),
        &cpu(),
        &job,
    )
    .unwrap_err()
    .to_string();
    assert!(
        refused.contains("[1, 28, 28]") && refused.contains("[3, 32, 32]"),
        "{refused}"
    );
    let mut methods = MethodSettings {
        methods: registry::names()
            .into_iter()
            .filter(|m| m != "journey" && m != "feature-nn")
            .collect(),
        ..Default::default()
    };
    for pair in [
        "mucs-batch=8",
        "mucs-draws=10",
        "mucs-tolerance=0.8",
        "mucs-null-images=24",
        "das-residual-steps=10",
    ] {
        methods.parameters.set_pair(pair).unwrap();
    }
    let settings = index_settings(&tmp.path().join("index"));
    let scores = attribute(&model, &data, &query, &methods, &settings, &cpu(), &job).unwrap();
    for s in &scores {
        assert_eq!(s.len(), 24);
        assert!(s.per_bucket.iter().all(|v| v.is_finite()), "{}", s.method);
        eprintln!("{}: source at rank {}", s.method, common::rank_of(s, 5));
    }
    for (method, limit) in SOURCE_RANK_LIMIT {
        let s = scores.iter().find(|s| s.method == method).unwrap();
        assert!(
            common::rank_of(s, 5) < limit,
            "{method}: rank {}",
            common::rank_of(s, 5)
        );
    }
    // Journey-TRAK attributes the generated sample's trajectory.
    let mut journey = MethodSettings::new(&["journey"]);
    journey.parameters.set("journey-steps", "3").unwrap();
    journey.parameters.set("journey-draws", "2").unwrap();
    let steps = attribute(&model, &data, &generated, &journey, &settings, &cpu(), &job).unwrap();
    assert_eq!(steps[0].buckets.len(), 3);

    // The report shows the query in colour.
    let query_bytes = retrace::data::pixels::unit_to_bytes(&query.pixels);
    let input = retrace::report::ReportInput {
        query: &query_bytes,
        query_description: &query.description,
        region: None,
        data: &data,
        methods: &scores,
        top_k: 3,
        device: "CPU (flex)",
        model: "tiny RGB",
    };
    let html =
        String::from_utf8(retrace::report::render(&input, retrace::report::ReportFormat::Html).unwrap()).unwrap();
    let first = html.split("src=\"").nth(1).unwrap().split('"').next().unwrap();
    let (shown, shape) = retrace::report::decode_png_data_uri(first, 3).unwrap();
    assert_eq!(shape[0], 3);
    assert!(
        shown.chunks(3).any(|p| p[0] != p[1] || p[1] != p[2]),
        "the report's query image is in colour"
    );
}

fn flex() -> retrace::device::ComputeDevice {
    retrace::device::ComputeDevice {
        device: cpu(),
        backend: retrace::device::BackendKind::Flex,
        name: "CPU (flex)".into(),
        reason: "test".into(),
        wgpu_setup: None,
    }
}

#[test]
fn a_model_written_by_pytorch_attributes_an_rgb_image_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path().join("images");
    for i in 0..12 {
        let class = folder.join(if i % 2 == 0 { "cars" } else { "horses" });
        std::fs::create_dir_all(&class).unwrap();
        let pixels = picture(i, 8);
        let image = image::RgbImage::from_fn(8, 8, |x, y| {
            let at = |c: usize| pixels[(c * 8 + y as usize) * 8 + x as usize];
            image::Rgb([at(0), at(1), at(2)])
        });
        image.save(class.join(format!("{i:02}.png"))).unwrap();
    }
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/diffusers/ddpm-pipeline");
    let spec = format!("folder:{}", folder.display());
    let session = retrace::session::Session::open(&fixture, Some(&spec), flex()).unwrap();
    assert_eq!(session.shape(), [3, 8, 8]);
    let data = &session.data;
    let query = Query::image(
        common::perturbed_copy(data.image(4), [3, 8, 8], 2),
        [3, 8, 8],
        "image 4, shifted and noised",
    );
    let methods = MethodSettings::new(&["tracin", "kfac", "trak", "pixel"]);
    let settings = index_settings(&tmp.path().join("index"));
    let scores = attribute(
        &session.model,
        data,
        &query,
        &methods,
        &settings,
        &cpu(),
        &JobContext::silent(),
    )
    .unwrap();
    assert_eq!(scores.len(), 4);
    for s in &scores {
        assert_eq!(s.len(), 12);
        assert!(s.per_bucket.iter().all(|v| v.is_finite()), "{}", s.method);
        // A model that records no training step still weighs its one checkpoint (TracIn
        // multiplies by the steps since the previous checkpoint).
        let totals = s.totals();
        assert!(
            totals.iter().any(|&v| v != totals[0]),
            "{}: every score is {}",
            s.method,
            totals[0]
        );
    }
    assert_eq!(common::rank_of(&scores[3], 4), 0, "pixel distance finds the source");
    // Data of another shape is refused before any work starts.
    let grey = retrace::session::Session::open(&fixture, Some("bundled"), flex());
    let refused = grey.err().unwrap();
    assert!(
        refused.to_string().contains("1×28×28") && refused.to_string().contains("3×8×8"),
        "{refused}"
    );
}

/// D-TRAK's CIFAR-2 protocol as a preset, in miniature: `--preset dtrak-cifar2` on synthetic
/// CIFAR-10 batches with the sizes cut down on the command line builds a complete ground truth
/// whose recipe is D-TRAK's where not overridden (CIFAR-2 of the given directory, 1,000
/// held-out images at most, weight decay 1e-6, learning rate 1e-4, subsets trained for as many
/// epochs as the full model).
#[test]
fn the_dtrak_cifar2_preset_builds_a_miniature_ground_truth() {
    let tmp = tempfile::tempdir().unwrap();
    let cifar = tmp.path().join("cifar");
    write_cifar_batches(&cifar, 12);
    let out = tmp.path().join("lds");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_retrace"))
        .args([
            "--device",
            "cpu",
            "eval",
            "build-lds",
            "--preset",
            "dtrak-cifar2",
            "--data-dir",
        ])
        .arg(&cifar)
        .arg("--out")
        .arg(&out)
        .args([
            "--config",
            "tiny",
            "--epochs",
            "1",
            "--subset-epochs",
            "2",
            "--batch-size",
            "16",
            "--warmup",
            "1",
            "--subsets",
            "2",
            "--seeds",
            "1",
            "--queries",
            "2",
            "--sampler-steps",
            "4",
            "--draws",
            "4",
        ])
        .status()
        .unwrap();
    assert!(status.success());
    let truth = retrace::eval::GroundTruth::load(&out.join("ground-truth.json")).unwrap();
    let spec = &truth.spec;
    assert_eq!(spec.data, format!("cifar2:{}", cifar.display()));
    assert_eq!(
        spec.held_out,
        format!("cifar2:{}?split=test&subset=1000", cifar.display())
    );
    assert_eq!(spec.data_len, 40, "the automobiles and horses of 60 images");
    assert_eq!((spec.training.learning_rate, spec.training.weight_decay), (1e-4, 1e-6));
    assert_eq!((spec.training.full_epochs, spec.training.subset_epochs), (1, 2));
    assert_eq!((spec.subsets, spec.seeds.clone(), spec.draws), (2, vec![0], 4));
    assert_eq!(truth.models.len(), 2);
    assert!(truth.full.losses.iter().all(|l| l.is_finite() && *l > 0.0));
}

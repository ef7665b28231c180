//! Does a class-conditional model generate the class it is asked for? Samples of every class
//! (seeds 0, 1, … under that class, with the sampler's guidance) are given to a
//! [`Classifier`]; the share it assigns to the class asked for is set beside its accuracy on
//! real test images of that class, the most a sample can be expected to reach.

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use super::EvalError;
use super::benchmark::{BenchmarkQuery, QueryKind};
use crate::classifier::{Accuracy, Classifier, ClassifierInfo};
use crate::diffusion::latent::to_images;
use crate::diffusion::{Condition, ModelDir, SamplerConfig, Schedule, sample};
use crate::jobs::JobContext;

/// One class's row.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassShare {
    /// The class label.
    pub class: u32,
    /// Its name.
    pub name: String,
    /// Samples generated for it.
    pub samples: usize,
    /// Share of them the classifier assigns to it.
    pub share: f64,
    /// The classes the samples were assigned to, by count (label → count), for the confusions.
    pub assigned: Vec<usize>,
    /// The classifier's accuracy on real test images of the class.
    pub real_accuracy: f64,
}

/// The judgement of a model's samples.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassFidelity {
    /// The sampler (with its guidance).
    pub sampler: SamplerConfig,
    /// Per class.
    pub classes: Vec<ClassShare>,
    /// Share over all samples.
    pub overall: f64,
    /// The classifier's accuracy over all real test images.
    pub real_accuracy: f64,
}

/// Samples `per_class` images (seeds 0..per_class) of every class of the class-conditional
/// model in `model` with `sampler`, and judges them with `classifier`.
pub fn judge_samples(
    model: &ModelDir,
    classifier: &(Classifier, ClassifierInfo),
    per_class: usize,
    sampler: &SamplerConfig,
    device: &Device,
    job: &JobContext,
) -> Result<ClassFidelity, EvalError> {
    let (net_info, (classifier, about)) = (&model.info, classifier);
    let encoding = net_info.architecture.condition_encoding();
    if !encoding.is_conditional() {
        return Err(EvalError::Invalid(
            "the model is unconditional: there is no class to judge its samples against".into(),
        ));
    }
    let shape = net_info.image_shape();
    let judged = [about.config.channels, about.config.size, about.config.size];
    if shape != judged {
        return Err(EvalError::Invalid(format!(
            "the model makes {shape:?} images but the classifier reads {judged:?}"
        )));
    }
    sampler.validate(net_info.schedule.steps)?;
    let (net, _) = model.load_latest(device)?;
    let latent_space = model.latent_space(device)?;
    let schedule = Schedule::new(&net_info.schedule);
    let classes = about.class_names.len();
    let seeds: Vec<u64> = (0..per_class.max(1) as u64).collect();
    let mut rows = Vec::with_capacity(classes);
    let (mut right, mut total) = (0usize, 0usize);
    for class in 0..classes as u32 {
        job.stop_if_cancelled()?;
        let conditions = vec![Condition::Class(class); seeds.len()];
        let sampled = sample(
            &net,
            &schedule,
            sampler,
            net_info.architecture.shape(),
            &seeds,
            &conditions,
            device,
            |step| {
                job.report(
                    &format!("sampling class {class}"),
                    step.done as u64,
                    step.total as u64,
                    "",
                );
                !job.cancel.is_cancelled()
            },
        )?
        .ok_or(EvalError::Cancelled)?;
        let pixels = crate::device::read_back(to_images(latent_space.as_ref(), sampled))?;
        let predicted = classifier.predict(&pixels, shape, device)?;
        let mut assigned = vec![0usize; classes];
        for &p in &predicted {
            if let Some(count) = assigned.get_mut(p as usize) {
                *count += 1;
            }
        }
        let hits = assigned[class as usize];
        right += hits;
        total += predicted.len();
        rows.push(ClassShare {
            class,
            name: about.class_names[class as usize].clone(),
            samples: predicted.len(),
            share: hits as f64 / predicted.len().max(1) as f64,
            assigned,
            real_accuracy: about
                .test_accuracy
                .per_class
                .get(class as usize)
                .copied()
                .unwrap_or(0.0),
        });
    }
    Ok(ClassFidelity {
        sampler: sampler.clone(),
        classes: rows,
        overall: right as f64 / total.max(1) as f64,
        real_accuracy: about.test_accuracy.overall,
    })
}

/// How many of a class-conditional benchmark's generated queries `classifier` assigns to the
/// class they were generated for (the check that a benchmark's samples look like their class);
/// `Ok(None)` when no generated query carries a class.
pub fn generated_query_share(
    queries: &[BenchmarkQuery],
    classifier: &(Classifier, ClassifierInfo),
    shape: [usize; 3],
    device: &Device,
) -> Result<Option<Accuracy>, EvalError> {
    let (classifier, about) = classifier;
    let judged = [about.config.channels, about.config.size, about.config.size];
    if shape != judged {
        return Err(EvalError::Invalid(format!(
            "the benchmark's images are {shape:?} but the classifier reads {judged:?}"
        )));
    }
    let generated: Vec<&BenchmarkQuery> = queries
        .iter()
        .filter(|q| q.kind == QueryKind::Generated && q.class.is_some())
        .collect();
    if generated.is_empty() {
        return Ok(None);
    }
    let pixels: Vec<f32> = generated
        .iter()
        .flat_map(|q| crate::data::pixels::bytes_to_unit(&q.pixels))
        .collect();
    let predicted = classifier.predict(&pixels, shape, device)?;
    let asked: Vec<u32> = generated.iter().filter_map(|q| q.class).collect();
    Ok(Some(Accuracy::of(&predicted, &asked, about.class_names.len())))
}

impl ClassFidelity {
    /// A Markdown table: per class, the share of samples assigned to it beside the classifier's
    /// accuracy on real images, and the class most often confused with it.
    pub fn table(&self) -> String {
        let mut out =
            String::from("| class | samples as asked | real test images | most confused with |\n|---|---|---|---|\n");
        for row in &self.classes {
            let confusion = row
                .assigned
                .iter()
                .enumerate()
                .filter(|&(c, &n)| c != row.class as usize && n > 0)
                .max_by_key(|&(_, &n)| n)
                .map_or_else(
                    || "—".to_owned(),
                    |(c, n)| {
                        let name = self.classes.get(c).map_or("?", |r| r.name.as_str());
                        format!("{name} ({n})")
                    },
                );
            out.push_str(&format!(
                "| {} {} | {:.0}% of {} | {:.0}% | {confusion} |\n",
                row.class,
                row.name,
                100.0 * row.share,
                row.samples,
                100.0 * row.real_accuracy
            ));
        }
        out.push_str(&format!(
            "| all | {:.1}% | {:.1}% | |\n",
            100.0 * self.overall,
            100.0 * self.real_accuracy
        ));
        out
    }
}

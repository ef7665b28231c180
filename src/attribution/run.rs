//! One attribution request end to end: the request (methods and parameters) and [`attribute`],
//! which runs the methods over one shared [`Context`]. The CLI, the viewer and the evaluation
//! all call it.

use burn::tensor::Device;

use super::context::Context;
use super::error::AttributionError;
use super::method::scores_of;
use super::query::Query;
use super::registry::{Parameters, Registry};
use super::scores::Scores;
use crate::data::Dataset;
use crate::diffusion::ModelDir;
use crate::index::IndexSettings;
use crate::jobs::JobContext;

/// What to compute for a query: the methods (registry names, [`super::registry::lookup`]) and
/// their parameters.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MethodSettings {
    /// Methods, in the order their scores are returned.
    pub methods: Vec<String>,
    /// Parameter values (defaults where not set).
    pub parameters: Parameters,
}

impl MethodSettings {
    /// `methods` with default parameters.
    pub fn new(methods: &[&str]) -> Self {
        Self {
            methods: methods.iter().map(|m| m.to_string()).collect(),
            parameters: Parameters::default(),
        }
    }
}

/// Runs the requested built-in methods for `query` ([`attribute_in`] with
/// [`Registry::builtin`]).
pub fn attribute(
    model: &ModelDir,
    data: &Dataset,
    query: &Query,
    request: &MethodSettings,
    settings: &IndexSettings,
    device: &Device,
    job: &JobContext,
) -> Result<Vec<Scores>, AttributionError> {
    attribute_in(Registry::builtin(), model, data, query, request, settings, device, job)
}

/// Runs the requested methods of `registry` for `query`, returning their scores in the order
/// asked: each method takes what it needs from one shared [`Context`], so the index, the
/// query's features and the curvature are made once.
#[allow(clippy::too_many_arguments)]
pub fn attribute_in(
    registry: &Registry,
    model: &ModelDir,
    data: &Dataset,
    query: &Query,
    request: &MethodSettings,
    settings: &IndexSettings,
    device: &Device,
    job: &JobContext,
) -> Result<Vec<Scores>, AttributionError> {
    let model_shape = model.info.image_shape();
    if query.shape != model_shape {
        return Err(AttributionError::Request(format!(
            "the query is {:?} but the model takes {:?}",
            query.shape, model_shape
        )));
    }
    if let Some(region) = &query.mask {
        check_region(region, model_shape[1], model_shape[2])?;
    }
    // Refuse an unknown name, or a query a method cannot take, before any work starts.
    let methods = request
        .methods
        .iter()
        .map(|name| {
            let method = registry.lookup(name)?;
            method
                .applies_to(query)
                .map_err(|e| AttributionError::Request(format!("{name}: {e}")))?;
            Ok(method)
        })
        .collect::<Result<Vec<_>, AttributionError>>()?;
    let values = request.parameters.values_in(registry);
    let mut context = Context::new(model, data, query, settings, &values, device, job);
    let mut out = Vec::with_capacity(methods.len());
    for method in &methods {
        let scores = scores_of(method.as_ref(), &mut context)?;
        out.push(scores);
    }
    Ok(out)
}

/// Checks a region's weights: H×W of them, each in [0, 1], not all zero.
pub fn check_region(region: &[f32], height: usize, width: usize) -> Result<(), AttributionError> {
    if region.len() != height * width {
        return Err(AttributionError::Request(format!(
            "the region has {} pixels but the model takes {height}×{width} images",
            region.len()
        )));
    }
    if let Some(bad) = region.iter().find(|w| !(0.0..=1.0).contains(*w)) {
        return Err(AttributionError::Request(format!(
            "region weights lie in [0, 1]; found {bad}"
        )));
    }
    if region.iter().all(|&w| w == 0.0) {
        return Err(AttributionError::Request(
            "the region is empty: paint or pass a mask with some white pixels".into(),
        ));
    }
    Ok(())
}

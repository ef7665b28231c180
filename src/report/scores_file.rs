//! The scores file of `retrace attribute` and of the viewer's export, written by one writer
//! ([`scores_file`], [`write_scores_file`]), and read back for a report: every method's scores
//! in the training data's order, the query image and its region, each checked against the data.

use std::path::Path;

use super::ReportError;
use crate::attribution::scores::{AttributionFile, MethodResult};
use crate::attribution::{Query, Scores};
use crate::data::Dataset;
use crate::data::pixels::unit_to_bytes;

/// The scores file of `scores` (one per method) for `query` (generated with `seed`, if it was),
/// attributed with the model in `model` on `data` on the device named `device`.
pub fn scores_file(
    model: &Path,
    data: &Dataset,
    query: &Query,
    seed: Option<u64>,
    device: &str,
    scores: &[Scores],
) -> AttributionFile {
    AttributionFile {
        retrace_version: crate::VERSION.to_owned(),
        model: model.display().to_string(),
        data: data.name.clone(),
        query: serde_json::json!({
            "description": query.description,
            "seed": seed,
            "region": query.mask,
            "image": super::png_data_uri(&unit_to_bytes(&query.pixels), query.shape, 1),
        }),
        device: device.to_owned(),
        methods: scores
            .iter()
            .map(|s| MethodResult::from_scores(s, &data.class_names))
            .collect(),
    }
}

/// Writes `file` to `path`, atomically: CSV when the path ends in `.csv`, else JSON (what
/// `retrace report` reads).
pub fn write_scores_file(path: &Path, file: &AttributionFile) -> Result<(), ReportError> {
    let bytes = if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv")) {
        file.to_csv().into_bytes()
    } else {
        serde_json::to_vec_pretty(file).expect("a scores file serialises")
    };
    Ok(crate::files::write_atomic(path, &bytes)?)
}

/// What a report needs of a scores file, checked against the training data.
#[derive(Debug)]
pub struct ScoresForReport {
    /// Every method's scores, in the data's order.
    pub methods: Vec<Scores>,
    /// The query's pixels as C×H×W bytes.
    pub query: Vec<u8>,
    /// How the query was made.
    pub query_description: String,
    /// The region the scores attribute (H×W weights in [0, 1]), for a region query.
    pub region: Option<Vec<f32>>,
}

/// Reads the JSON file `retrace attribute` writes.
pub fn read_scores_file(bytes: &[u8]) -> Result<AttributionFile, ReportError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ReportError::Invalid(format!("not a scores file of retrace attribute: {e}")))
}

impl ScoresForReport {
    /// The parts of `file` a report shows, checked against `data`: every method must score
    /// exactly its images, and the query must have its shape.
    pub fn of(file: &AttributionFile, data: &Dataset) -> Result<Self, ReportError> {
        let methods = file
            .methods
            .iter()
            .map(|m| m.to_scores(data))
            .collect::<Result<Vec<_>, _>>()?;
        let uri = file.query["image"].as_str().ok_or_else(|| {
            ReportError::Invalid("the scores file holds no query image (written by an older retrace?)".into())
        })?;
        let (query, shape) = super::decode_png_data_uri(uri, data.channels)?;
        if shape != [data.channels, data.height, data.width] {
            return Err(ReportError::Invalid(format!(
                "the query image is {}×{}×{} but the training images are {}×{}×{}",
                shape[0], shape[1], shape[2], data.channels, data.height, data.width
            )));
        }
        let region = match file.query.get("region") {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => {
                let region: Vec<f32> = serde_json::from_value(v.clone()).map_err(|e| {
                    ReportError::Invalid(format!("the scores file's query region is not a list of weights: {e}"))
                })?;
                crate::attribution::run::check_region(&region, data.height, data.width)?;
                Some(region)
            }
        };
        Ok(Self {
            methods,
            query,
            query_description: file.query["description"].as_str().unwrap_or("").to_owned(),
            region,
        })
    }
}

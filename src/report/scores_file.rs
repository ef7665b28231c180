//! Reading a scores file of `retrace attribute` back for a report: every method's scores in
//! the training data's order, the query image and its region, each checked against the data.

use crate::attribution::Scores;
use crate::attribution::scores::AttributionFile;
use crate::data::Dataset;

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
pub fn read_scores_file(bytes: &[u8]) -> Result<AttributionFile, String> {
    serde_json::from_slice(bytes).map_err(|e| format!("not a scores file of retrace attribute: {e}"))
}

impl ScoresForReport {
    /// The parts of `file` a report shows, checked against `data`: every method must score
    /// exactly its images, and the query must have its shape.
    pub fn of(file: &AttributionFile, data: &Dataset) -> Result<Self, String> {
        let methods = file
            .methods
            .iter()
            .map(|m| m.to_scores(data))
            .collect::<Result<Vec<_>, _>>()?;
        let uri = file.query["image"]
            .as_str()
            .ok_or("the scores file holds no query image (written by an older retrace?)")?;
        let (query, shape) = super::decode_png_data_uri(uri, data.channels)?;
        if shape != [data.channels, data.height, data.width] {
            return Err(format!(
                "the query image is {}×{}×{} but the training images are {}×{}×{}",
                shape[0], shape[1], shape[2], data.channels, data.height, data.width
            ));
        }
        let region = match file.query.get("region") {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => {
                let region: Vec<f32> = serde_json::from_value(v.clone())
                    .map_err(|e| format!("the scores file's query region is not a list of weights: {e}"))?;
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

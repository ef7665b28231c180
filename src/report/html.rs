//! The self-contained HTML report.

use super::plot::{escape, line_plot_svg};
use super::png_data_uri;
use crate::attribution::Scores;
use crate::data::Dataset;
use crate::eval::stats::{overlap_at_k, spearman};

/// What a report shows.
pub struct ReportInput<'a> {
    /// The query's pixels as bytes (C×H×W).
    pub query: &'a [u8],
    /// How the query was made.
    pub query_description: &'a str,
    /// The training data the scores index.
    pub data: &'a Dataset,
    /// One entry per method.
    pub methods: &'a [Scores],
    /// Images per side (proponents, opponents) and for agreement figures.
    pub top_k: usize,
    /// The compute device, as shown to the user.
    pub device: &'a str,
    /// The model directory.
    pub model: &'a str,
}

fn image_grid(input: &ReportInput<'_>, order: &[usize], totals: &[f64], rank_of: impl Fn(usize) -> usize) -> String {
    let shape = [input.data.channels, input.data.height, input.data.width];
    let mut out = String::from(r#"<div class="grid">"#);
    for (k, &i) in order.iter().enumerate() {
        out += &format!(
            r#"<figure><img src="{}" alt="training image #{}"><figcaption>#{} · {:.3e}<br>{} (id {})</figcaption></figure>"#,
            png_data_uri(input.data.image(i), shape, 3),
            input.data.ids[i],
            rank_of(k),
            totals[i],
            escape(input.data.class_name(i)),
            input.data.ids[i]
        );
    }
    out + "</div>"
}

/// Renders the report as one HTML page.
pub fn html_report(input: &ReportInput<'_>) -> String {
    let shape = [input.data.channels, input.data.height, input.data.width];
    let mut body = format!(
        r#"<h1>retrace report</h1>
<p class="meta">retrace {} · device {} · model {} · data {} ({} training images)</p>
<h2>Query</h2><figure><img class="query" src="{}" alt="query"><figcaption>{}</figcaption></figure>"#,
        crate::VERSION,
        escape(input.device),
        escape(input.model),
        escape(&input.data.name),
        input.data.len(),
        png_data_uri(input.query, shape, 6),
        escape(input.query_description)
    );
    let totals: Vec<Vec<f64>> = input.methods.iter().map(|s| s.totals()).collect();
    let k = input.top_k.min(input.data.len());
    for (s, t) in input.methods.iter().zip(&totals) {
        let order = s.ranking();
        let n = order.len();
        body += &format!("<h2>{}</h2>", escape(&s.method));
        body += &format!("<h3>Top {k} proponents</h3>");
        body += &image_grid(input, &order[..k], t, |r| r + 1);
        let opponents: Vec<usize> = order.iter().rev().take(k).copied().collect();
        body += &format!("<h3>Top {k} opponents</h3>");
        body += &image_grid(input, &opponents, t, |r| n - r);
        if s.buckets.len() > 1 {
            let series: Vec<(String, Vec<[f64; 2]>)> = order
                .iter()
                .take(5)
                .map(|&i| {
                    (
                        format!("#{} {}", input.data.ids[i], input.data.class_name(i)),
                        s.bucket_curve(i),
                    )
                })
                .collect();
            body += "<h3>Per-timestep scores of the top 5</h3>";
            body += &line_plot_svg(&series, "diffusion step t", 720.0, 240.0);
        }
        body += &format!(
            "<details><summary>Parameters</summary><pre>{}</pre></details>",
            escape(&serde_json::to_string_pretty(&s.parameters).unwrap_or_default())
        );
    }
    if input.methods.len() > 1 {
        body += &format!("<h2>Agreement</h2><table><tr><th>methods</th><th>overlap@{k}</th><th>Spearman</th></tr>");
        for a in 0..input.methods.len() {
            for b in a + 1..input.methods.len() {
                body += &format!(
                    "<tr><td>{} / {}</td><td>{:.2}</td><td>{:.3}</td></tr>",
                    escape(&input.methods[a].method),
                    escape(&input.methods[b].method),
                    overlap_at_k(&totals[a], &totals[b], k),
                    spearman(&totals[a], &totals[b])
                );
            }
        }
        body += "</table>";
    }
    format!(
        r#"<!DOCTYPE html><html><head><meta charset="utf-8"><title>retrace report</title><style>
body{{font-family:sans-serif;margin:2em;max-width:1100px}} .grid{{display:flex;flex-wrap:wrap;gap:8px}}
figure{{margin:0;text-align:center;font-size:11px}} img{{image-rendering:pixelated}} img.query{{width:168px}}
table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:4px 8px}} .meta{{color:#555}}
</style></head><body>{body}</body></html>"#
    )
}

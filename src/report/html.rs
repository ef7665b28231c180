//! The self-contained HTML report: images inlined as PNG data URIs, plots as inline SVG.

use super::content::{ReportContent, Tile};
use super::plot::escape;
use super::rgb_png_data_uri;

/// How many times larger than native training images are shown.
const TILE_SCALE: u32 = 3;
/// How many times larger than native the query is shown.
const QUERY_SCALE: u32 = 6;

fn figure(tile: &Tile, scale: u32, class: &str) -> String {
    format!(
        r#"<figure><img class="{class}" src="{}" width="{}" height="{}" alt="{}"><figcaption>{}</figcaption></figure>"#,
        rgb_png_data_uri(&tile.image),
        tile.image.width() * scale,
        tile.image.height() * scale,
        escape(&tile.alt),
        tile.caption
            .iter()
            .filter(|l| !l.is_empty())
            .map(|l| escape(l))
            .collect::<Vec<_>>()
            .join("<br>")
    )
}

fn grid(tiles: &[Tile]) -> String {
    let figures: String = tiles.iter().map(|t| figure(t, TILE_SCALE, "tile")).collect();
    format!(r#"<div class="grid">{figures}</div>"#)
}

/// Renders the report as one HTML page.
pub fn html_report(content: &ReportContent) -> String {
    let k = content.top_k;
    let mut body = format!(
        r#"<h1>retrace report</h1><p class="meta">{}</p><h2>Query</h2>{}"#,
        escape(&content.meta),
        figure(&content.query, QUERY_SCALE, "query")
    );
    for section in &content.sections {
        body += &format!("<h2>{}</h2>", escape(&section.name));
        if !section.summary.is_empty() {
            body += &format!(r#"<p class="meta">{}</p>"#, escape(&section.summary));
        }
        body += &format!("<h3>Top {k} proponents</h3>{}", grid(&section.proponents));
        body += &format!("<h3>Top {k} opponents</h3>{}", grid(&section.opponents));
        if let Some(plot) = &section.curves {
            body += "<h3>Per-timestep scores of the top 5</h3>";
            body += &plot.svg();
        }
        body += &format!(
            "<details><summary>Parameters</summary><pre>{}</pre></details>",
            escape(&section.parameters)
        );
    }
    if !content.agreement.is_empty() {
        body += &format!("<h2>Agreement</h2><table><tr><th>methods</th><th>overlap@{k}</th><th>Spearman</th></tr>");
        for row in &content.agreement {
            body += &format!(
                "<tr><td>{}</td><td>{:.2}</td><td>{:.3}</td></tr>",
                escape(&row.pair),
                row.overlap,
                row.spearman
            );
        }
        body += "</table>";
    }
    format!(
        r#"<!DOCTYPE html><html><head><meta charset="utf-8"><title>retrace report</title><style>
body{{font-family:sans-serif;margin:2em;max-width:1100px}} .grid{{display:flex;flex-wrap:wrap;gap:8px}}
figure{{margin:0;text-align:center;font-size:11px}} img{{image-rendering:pixelated}}
table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:4px 8px}} .meta{{color:#555}}
</style></head><body>{body}</body></html>"#
    )
}

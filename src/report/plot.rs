//! Static line plots as inline SVG, for reports.

/// An SVG line plot of `series` (name, points) in a `width`×`height` box, with axis labels.
pub fn line_plot_svg(series: &[(String, Vec<[f64; 2]>)], x_label: &str, width: f64, height: f64) -> String {
    const COLOURS: [&str; 6] = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#46f0f0"];
    let (left, right, top, bottom) = (60.0, 140.0, 10.0, 40.0);
    let points = series.iter().flat_map(|(_, p)| p.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for [x, y] in points {
        x0 = x0.min(*x);
        x1 = x1.max(*x);
        y0 = y0.min(*y);
        y1 = y1.max(*y);
    }
    if x0 > x1 {
        return String::new();
    }
    if (x1 - x0).abs() < 1e-30 {
        x1 = x0 + 1.0;
    }
    if (y1 - y0).abs() < 1e-30 {
        y1 = y0 + 1.0;
    }
    let (pw, ph) = (width - left - right, height - top - bottom);
    let sx = |x: f64| left + (x - x0) / (x1 - x0) * pw;
    let sy = |y: f64| top + (1.0 - (y - y0) / (y1 - y0)) * ph;
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">"#
    );
    svg += &format!(r##"<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>"##);
    svg += &format!(
        r#"<text x="{}" y="{}" text-anchor="middle">{x_label}</text>"#,
        left + pw / 2.0,
        height - 8.0
    );
    svg += &format!(
        r#"<text x="{}" y="{}" text-anchor="end">{y1:.3e}</text><text x="{}" y="{}" text-anchor="end">{y0:.3e}</text>"#,
        left - 4.0,
        top + 10.0,
        left - 4.0,
        top + ph
    );
    svg += &format!(
        r#"<text x="{left}" y="{}">{x0:.0}</text><text x="{}" y="{}" text-anchor="end">{x1:.0}</text>"#,
        top + ph + 14.0,
        left + pw,
        top + ph + 14.0
    );
    for (k, (name, pts)) in series.iter().enumerate() {
        let colour = COLOURS[k % COLOURS.len()];
        let path: Vec<String> = pts
            .iter()
            .map(|[x, y]| format!("{:.1},{:.1}", sx(*x), sy(*y)))
            .collect();
        svg += &format!(
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
            path.join(" ")
        );
        svg += &format!(
            r#"<text x="{}" y="{}" fill="{colour}">{}</text>"#,
            left + pw + 8.0,
            top + 14.0 * (k as f64 + 1.0),
            escape(name)
        );
    }
    svg + "</svg>"
}

/// Escapes text for HTML and SVG.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

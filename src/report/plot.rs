//! Static line plots for reports: the geometry is laid out once ([`PlotGeometry`]) and drawn as
//! inline SVG for HTML or as vector paths for PDF, so both formats show the same plot.

/// Colours of successive series (RGB).
pub const SERIES_COLOURS: [[u8; 3]; 6] = [
    [0xe6, 0x19, 0x4b],
    [0x3c, 0xb4, 0x4b],
    [0x43, 0x63, 0xd8],
    [0xf5, 0x82, 0x31],
    [0x91, 0x1e, 0xb4],
    [0x46, 0xf0, 0xf0],
];

/// Grey of the frame and axis text.
pub const AXIS_COLOUR: [u8; 3] = [0x55, 0x55, 0x55];

/// How a label sits on its anchor point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Anchor {
    /// The text starts at the point.
    Start,
    /// The text is centred on the point.
    Middle,
    /// The text ends at the point.
    End,
}

/// A line of text in plot coordinates (origin top left, y down, baseline at `y`).
#[derive(Clone, Debug, PartialEq)]
pub struct Label {
    /// Anchor x.
    pub x: f64,
    /// Baseline y.
    pub y: f64,
    /// The text.
    pub text: String,
    /// How the text sits on (x, y).
    pub anchor: Anchor,
    /// RGB colour.
    pub colour: [u8; 3],
}

/// A series drawn as a polyline in plot coordinates.
#[derive(Clone, Debug, PartialEq)]
pub struct Polyline {
    /// RGB colour.
    pub colour: [u8; 3],
    /// Points (x, y), origin top left, y down.
    pub points: Vec<[f64; 2]>,
}

/// A laid-out line plot: a frame, one polyline per series, axis labels and a legend.
#[derive(Clone, Debug, PartialEq)]
pub struct PlotGeometry {
    /// Width of the whole plot.
    pub width: f64,
    /// Height of the whole plot.
    pub height: f64,
    /// The data frame: x, y, width, height.
    pub frame: [f64; 4],
    /// One polyline per series, in order.
    pub lines: Vec<Polyline>,
    /// Axis labels, extreme values and the legend.
    pub labels: Vec<Label>,
}

/// Font size the geometry assumes for its labels.
pub const LABEL_SIZE: f64 = 11.0;

impl PlotGeometry {
    /// Lays out `series` (name, points) in a `width`×`height` box with `x_label` under the x
    /// axis; `None` when there is no point to plot.
    pub fn layout(series: &[(String, Vec<[f64; 2]>)], x_label: &str, width: f64, height: f64) -> Option<Self> {
        let (left, right, top, bottom) = (60.0, 140.0, 10.0, 40.0);
        let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for [x, y] in series
            .iter()
            .flat_map(|(_, p)| p.iter())
            .filter(|[x, y]| x.is_finite() && y.is_finite())
        {
            x0 = x0.min(*x);
            x1 = x1.max(*x);
            y0 = y0.min(*y);
            y1 = y1.max(*y);
        }
        if x0 > x1 {
            return None;
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
        let axis = |x: f64, y: f64, text: String, anchor: Anchor| Label {
            x,
            y,
            text,
            anchor,
            colour: AXIS_COLOUR,
        };
        let mut labels = vec![
            axis(left + pw / 2.0, height - 8.0, x_label.to_owned(), Anchor::Middle),
            axis(left - 4.0, top + 10.0, format!("{y1:.3e}"), Anchor::End),
            axis(left - 4.0, top + ph, format!("{y0:.3e}"), Anchor::End),
            axis(left, top + ph + 14.0, format!("{x0:.0}"), Anchor::Start),
            axis(left + pw, top + ph + 14.0, format!("{x1:.0}"), Anchor::End),
        ];
        let mut lines = Vec::with_capacity(series.len());
        for (k, (name, points)) in series.iter().enumerate() {
            let colour = SERIES_COLOURS[k % SERIES_COLOURS.len()];
            lines.push(Polyline {
                colour,
                points: points
                    .iter()
                    .filter(|[x, y]| x.is_finite() && y.is_finite())
                    .map(|&[x, y]| [sx(x), sy(y)])
                    .collect(),
            });
            labels.push(Label {
                x: left + pw + 8.0,
                y: top + 14.0 * (k as f64 + 1.0),
                text: name.clone(),
                anchor: Anchor::Start,
                colour,
            });
        }
        Some(Self {
            width,
            height,
            frame: [left, top, pw, ph],
            lines,
            labels,
        })
    }

    /// The plot as an inline SVG element.
    pub fn svg(&self) -> String {
        let hex = |[r, g, b]: [u8; 3]| format!("#{r:02x}{g:02x}{b:02x}");
        let [fx, fy, fw, fh] = self.frame;
        let mut svg = format!(
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" font-family="sans-serif" font-size="{LABEL_SIZE}">"#,
            self.width, self.height
        );
        svg += &format!(
            r#"<rect x="{fx}" y="{fy}" width="{fw}" height="{fh}" fill="none" stroke="{}"/>"#,
            hex(AXIS_COLOUR)
        );
        for line in &self.lines {
            let points: Vec<String> = line.points.iter().map(|[x, y]| format!("{x:.1},{y:.1}")).collect();
            svg += &format!(
                r#"<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>"#,
                hex(line.colour),
                points.join(" ")
            );
        }
        for label in &self.labels {
            let anchor = match label.anchor {
                Anchor::Start => "start",
                Anchor::Middle => "middle",
                Anchor::End => "end",
            };
            svg += &format!(
                r#"<text x="{}" y="{}" text-anchor="{anchor}" fill="{}">{}</text>"#,
                label.x,
                label.y,
                hex(label.colour),
                escape(&label.text)
            );
        }
        svg + "</svg>"
    }
}

/// Escapes text for HTML and SVG.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_fill_the_frame_and_non_finite_points_are_dropped() {
        let series = vec![
            ("a".to_owned(), vec![[0.0, 1.0], [10.0, 3.0], [5.0, f64::NAN]]),
            ("b".to_owned(), vec![[0.0, 2.0]]),
        ];
        let plot = PlotGeometry::layout(&series, "t", 400.0, 200.0).unwrap();
        let [fx, fy, fw, fh] = plot.frame;
        assert_eq!(plot.lines[0].points, vec![[fx, fy + fh], [fx + fw, fy]]);
        assert_eq!(plot.lines[1].points, vec![[fx, fy + fh / 2.0]]);
        assert!(
            plot.labels
                .iter()
                .any(|l| l.text == "b" && l.colour == SERIES_COLOURS[1])
        );
        assert_eq!(plot.svg().matches("<polyline").count(), 2);
        assert!(PlotGeometry::layout(&[("c".to_owned(), vec![])], "t", 400.0, 200.0).is_none());
    }
}

//! The PDF report: the same [`ReportContent`] as the HTML page, flowed onto A4 pages and
//! written with krilla. Text is real text (egui's default fonts, embedded and subset), images
//! are drawn pixel-exact (no interpolation) and plots are vector paths.
//!
//! Layout and drawing are separate: [`layout`] turns the content into pages of [`Draw`]
//! commands (testable without a PDF reader), [`pdf_report`] draws them.

use krilla::Document;
use krilla::color::rgb;
use krilla::geom::{PathBuilder, Point, Size, Transform};
use krilla::image::Image;
use krilla::metadata::Metadata;
use krilla::num::NormalizedF32;
use krilla::page::PageSettings;
use krilla::paint::{Fill, Stroke};
use krilla::text::{Font, TextDirection};

use super::ReportError;
use super::content::{ReportContent, Tile};
use super::plot::{AXIS_COLOUR, Anchor, LABEL_SIZE, PlotGeometry};

/// A4 in points.
pub const PAGE_SIZE: [f32; 2] = [595.0, 842.0];
const MARGIN: f32 = 40.0;
const CONTENT_WIDTH: f32 = PAGE_SIZE[0] - 2.0 * MARGIN;
const TILE_SIZE: f32 = 60.0;
const TILES_PER_ROW: usize = 7;
const CAPTION_SIZE: f32 = 6.5;
const QUERY_SIZE: f32 = 112.0;
const BLACK: [u8; 3] = [0, 0, 0];

/// Which of the two embedded fonts a text uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Typeface {
    /// Proportional (egui's Ubuntu Light).
    Sans,
    /// Monospaced (egui's Hack), for parameters.
    Mono,
}

impl Typeface {
    fn bytes(self) -> &'static [u8] {
        match self {
            Self::Sans => epaint_default_fonts::UBUNTU_LIGHT,
            Self::Mono => epaint_default_fonts::HACK_REGULAR,
        }
    }
}

/// One drawing command on a page; coordinates in points, origin top left, y down.
#[derive(Clone, Debug)]
pub enum Draw<'a> {
    /// A line of text with its baseline at `y`.
    Text {
        /// Left end of the baseline.
        x: f32,
        /// Baseline.
        y: f32,
        /// Font size.
        size: f32,
        /// Font.
        face: Typeface,
        /// RGB colour.
        colour: [u8; 3],
        /// The text.
        text: String,
    },
    /// An image scaled into a box.
    Image {
        /// Left.
        x: f32,
        /// Top.
        y: f32,
        /// Box width.
        width: f32,
        /// Box height.
        height: f32,
        /// The pixels.
        image: &'a image::RgbImage,
    },
    /// An open polyline.
    Line {
        /// The points.
        points: Vec<[f32; 2]>,
        /// RGB colour.
        colour: [u8; 3],
        /// Stroke width.
        width: f32,
    },
}

/// Measures text with the fonts' advance widths.
struct Metrics {
    sans: ttf_parser::Face<'static>,
    mono: ttf_parser::Face<'static>,
}

impl Metrics {
    fn new() -> Result<Self, ReportError> {
        let parse = |face: Typeface| {
            ttf_parser::Face::parse(face.bytes(), 0)
                .map_err(|e| ReportError::Pdf(format!("the embedded {face:?} font is unreadable: {e}")))
        };
        Ok(Self {
            sans: parse(Typeface::Sans)?,
            mono: parse(Typeface::Mono)?,
        })
    }

    fn width(&self, text: &str, size: f32, face: Typeface) -> f32 {
        let face = match face {
            Typeface::Sans => &self.sans,
            Typeface::Mono => &self.mono,
        };
        let units: f32 = text
            .chars()
            .map(|c| {
                face.glyph_index(c)
                    .and_then(|g| face.glyph_hor_advance(g))
                    .unwrap_or(face.units_per_em() / 2) as f32
            })
            .sum();
        units * size / face.units_per_em() as f32
    }

    /// Splits `text` into lines no wider than `max_width` (at spaces, or anywhere in a word
    /// too long for one line).
    fn wrap(&self, text: &str, size: f32, face: Typeface, max_width: f32) -> Vec<String> {
        let mut lines = Vec::new();
        for paragraph in text.lines() {
            if self.width(paragraph, size, face) <= max_width {
                lines.push(paragraph.to_owned());
                continue;
            }
            let mut line = String::new();
            for word in paragraph.split(' ') {
                let candidate = if line.is_empty() {
                    word.to_owned()
                } else {
                    format!("{line} {word}")
                };
                if self.width(&candidate, size, face) <= max_width {
                    line = candidate;
                    continue;
                }
                if !line.is_empty() {
                    lines.push(std::mem::take(&mut line));
                }
                for c in word.chars() {
                    line.push(c);
                    if self.width(&line, size, face) > max_width && line.chars().count() > 1 {
                        line.pop();
                        lines.push(std::mem::replace(&mut line, c.to_string()));
                    }
                }
            }
            lines.push(line);
        }
        lines
    }
}

/// Flows content down pages, starting a new page when the next block does not fit.
struct Flow<'a> {
    metrics: Metrics,
    pages: Vec<Vec<Draw<'a>>>,
    y: f32,
}

impl<'a> Flow<'a> {
    fn page(&mut self) -> &mut Vec<Draw<'a>> {
        self.pages.last_mut().expect("a flow always has a page")
    }

    /// Makes room for a block of `height`, on a new page if this one is too full.
    fn reserve(&mut self, height: f32) {
        if self.y + height > PAGE_SIZE[1] - MARGIN && self.y > MARGIN {
            self.pages.push(Vec::new());
            self.y = MARGIN;
        }
    }

    fn text_at(&mut self, x: f32, y: f32, size: f32, face: Typeface, colour: [u8; 3], text: String) {
        self.page().push(Draw::Text {
            x,
            y,
            size,
            face,
            colour,
            text,
        });
    }

    /// A wrapped paragraph across the content width, `gap` points below it.
    fn paragraph(&mut self, text: &str, size: f32, face: Typeface, colour: [u8; 3], gap: f32) {
        for line in self.metrics.wrap(text, size, face, CONTENT_WIDTH) {
            self.reserve(size * 1.3);
            self.y += size * 1.3;
            self.text_at(MARGIN, self.y - size * 0.3, size, face, colour, line);
        }
        self.y += gap;
    }

    /// A heading, kept on the same page as the first `keep` points that follow it.
    fn heading(&mut self, text: &str, size: f32, keep: f32) {
        self.reserve(size * 1.6 + keep);
        self.y += size * 0.6;
        self.paragraph(text, size, Typeface::Sans, BLACK, size * 0.4);
    }

    /// Caption lines centred under an image `width` wide at `x`, shrunk to fit.
    fn caption(&mut self, lines: &[String], x: f32, width: f32, mut y: f32) {
        for line in lines.iter().filter(|l| !l.is_empty()) {
            let natural = self.metrics.width(line, CAPTION_SIZE, Typeface::Sans);
            // Text width scales with size: a line shrunk to fit is exactly `width` wide.
            let (size, w) = if natural > width {
                (CAPTION_SIZE * width / natural, width)
            } else {
                (CAPTION_SIZE, natural)
            };
            y += CAPTION_SIZE * 1.25;
            self.text_at(
                x + (width - w) / 2.0,
                y,
                size,
                Typeface::Sans,
                AXIS_COLOUR,
                line.clone(),
            );
        }
    }

    /// Tiles in rows of [`TILES_PER_ROW`], each image with its caption.
    fn grid(&mut self, tiles: &'a [Tile]) {
        let pitch = CONTENT_WIDTH / TILES_PER_ROW as f32;
        let row_height = TILE_SIZE + 2.0 * CAPTION_SIZE * 1.25 + 8.0;
        for row in tiles.chunks(TILES_PER_ROW) {
            self.reserve(row_height);
            for (c, tile) in row.iter().enumerate() {
                let x = MARGIN + c as f32 * pitch;
                let (width, height) = fit(&tile.image, TILE_SIZE);
                let y = self.y;
                self.page().push(Draw::Image {
                    x: x + (pitch - width) / 2.0,
                    y,
                    width,
                    height,
                    image: &tile.image,
                });
                self.caption(&tile.caption, x, pitch - 2.0, self.y + TILE_SIZE);
            }
            self.y += row_height;
        }
    }

    /// A plot scaled to the content width.
    fn plot(&mut self, plot: &PlotGeometry) {
        let scale = (CONTENT_WIDTH as f64 / plot.width) as f32;
        let height = plot.height as f32 * scale;
        self.reserve(height);
        let (ox, oy) = (MARGIN, self.y);
        let at = |[x, y]: [f64; 2]| [ox + x as f32 * scale, oy + y as f32 * scale];
        let [fx, fy, fw, fh] = plot.frame;
        let frame = [[fx, fy], [fx + fw, fy], [fx + fw, fy + fh], [fx, fy + fh], [fx, fy]];
        self.page().push(Draw::Line {
            points: frame.into_iter().map(at).collect(),
            colour: AXIS_COLOUR,
            width: 0.5,
        });
        for line in &plot.lines {
            self.page().push(Draw::Line {
                points: line.points.iter().copied().map(at).collect(),
                colour: line.colour,
                width: 1.2,
            });
        }
        let size = LABEL_SIZE as f32 * scale;
        for label in &plot.labels {
            let w = self.metrics.width(&label.text, size, Typeface::Sans);
            let [x, y] = at([label.x, label.y]);
            let x = match label.anchor {
                Anchor::Start => x,
                Anchor::Middle => x - w / 2.0,
                Anchor::End => x - w,
            };
            self.text_at(x, y, size, Typeface::Sans, label.colour, label.text.clone());
        }
        self.y += height + 6.0;
    }

    /// The agreement table: one row per pair of methods.
    fn agreement(&mut self, content: &ReportContent) {
        let size = 9.0;
        let columns = [MARGIN, MARGIN + 220.0, MARGIN + 320.0];
        let header = [
            "methods".to_owned(),
            format!("overlap@{}", content.top_k),
            "Spearman".to_owned(),
        ];
        let rows = content.agreement.iter().map(|r| {
            [
                r.pair.clone(),
                format!("{:.2}", r.overlap),
                format!("{:.3}", r.spearman),
            ]
        });
        for (i, cells) in std::iter::once(header).chain(rows).enumerate() {
            self.reserve(size * 1.6);
            self.y += size * 1.6;
            let colour = if i == 0 { AXIS_COLOUR } else { BLACK };
            for (x, cell) in columns.into_iter().zip(cells) {
                self.text_at(x, self.y - size * 0.4, size, Typeface::Sans, colour, cell);
            }
            if i == 0 {
                let y = self.y + 1.0;
                self.page().push(Draw::Line {
                    points: vec![[MARGIN, y], [MARGIN + 400.0, y]],
                    colour: AXIS_COLOUR,
                    width: 0.5,
                });
            }
        }
    }
}

/// Width and height of `image` scaled by a whole factor (or shrunk) to fit a `size` box.
fn fit(image: &image::RgbImage, size: f32) -> (f32, f32) {
    let (w, h) = (image.width().max(1) as f32, image.height().max(1) as f32);
    let longest = w.max(h);
    let scale = if longest <= size {
        (size / longest).floor()
    } else {
        size / longest
    };
    (w * scale, h * scale)
}

/// Lays the report out on A4 pages, each a list of drawing commands, with page numbers.
pub fn layout(content: &ReportContent) -> Result<Vec<Vec<Draw<'_>>>, ReportError> {
    let mut flow = Flow {
        metrics: Metrics::new()?,
        pages: vec![Vec::new()],
        y: MARGIN,
    };
    flow.paragraph("retrace report", 20.0, Typeface::Sans, BLACK, 2.0);
    flow.paragraph(&content.meta, 8.0, Typeface::Sans, AXIS_COLOUR, 8.0);

    flow.heading("Query", 14.0, QUERY_SIZE);
    let (width, height) = fit(&content.query.image, QUERY_SIZE);
    let top = flow.y;
    flow.page().push(Draw::Image {
        x: MARGIN,
        y: top,
        width,
        height,
        image: &content.query.image,
    });
    let description = flow.metrics.wrap(
        content.query.caption.join(" · ").trim_end_matches(" · "),
        9.0,
        Typeface::Sans,
        CONTENT_WIDTH - QUERY_SIZE - 12.0,
    );
    for (i, line) in description.into_iter().enumerate() {
        let y = top + 12.0 * (i as f32 + 1.0);
        flow.text_at(MARGIN + QUERY_SIZE + 12.0, y, 9.0, Typeface::Sans, BLACK, line);
    }
    flow.y += height.max(QUERY_SIZE) + 8.0;

    let k = content.top_k;
    for section in &content.sections {
        flow.heading(&section.name, 14.0, 100.0);
        if !section.summary.is_empty() {
            flow.paragraph(&section.summary, 8.0, Typeface::Sans, AXIS_COLOUR, 4.0);
        }
        flow.heading(&format!("Top {k} proponents"), 10.0, TILE_SIZE + 20.0);
        flow.grid(&section.proponents);
        flow.heading(&format!("Top {k} opponents"), 10.0, TILE_SIZE + 20.0);
        flow.grid(&section.opponents);
        if let Some(plot) = &section.curves {
            flow.heading("Per-timestep scores of the top 5", 10.0, 160.0);
            flow.plot(plot);
        }
        flow.heading("Parameters", 10.0, 30.0);
        flow.paragraph(&section.parameters, 6.5, Typeface::Mono, AXIS_COLOUR, 6.0);
    }
    if !content.agreement.is_empty() {
        flow.heading("Agreement", 14.0, 40.0);
        flow.agreement(content);
    }

    let mut pages = flow.pages;
    let n = pages.len();
    for (i, page) in pages.iter_mut().enumerate() {
        page.push(Draw::Text {
            x: MARGIN,
            y: PAGE_SIZE[1] - MARGIN / 2.0,
            size: 7.0,
            face: Typeface::Sans,
            colour: AXIS_COLOUR,
            text: format!("retrace report · page {} of {n}", i + 1),
        });
    }
    Ok(pages)
}

/// How often a run of PDF names (such as `/Subtype/Image`) occurs in a PDF file, however the
/// writer spaced it. Lets tests check a PDF's objects without a PDF reader.
pub fn count_pdf_names(pdf: &[u8], names: &str) -> usize {
    let compact: Vec<u8> = pdf.iter().copied().filter(|b| !b.is_ascii_whitespace()).collect();
    let needle = names.as_bytes();
    compact.windows(needle.len()).filter(|w| *w == needle).count()
}

fn paint([r, g, b]: [u8; 3]) -> krilla::paint::Paint {
    rgb::Color::new(r, g, b).into()
}

/// Renders the report as a PDF file's bytes.
pub fn pdf_report(content: &ReportContent) -> Result<Vec<u8>, ReportError> {
    let pages = layout(content)?;
    let font = |face: Typeface| {
        Font::new(face.bytes().into(), 0)
            .ok_or_else(|| ReportError::Pdf(format!("the embedded {face:?} font is unreadable")))
    };
    let (sans, mono) = (font(Typeface::Sans)?, font(Typeface::Mono)?);
    let mut document = Document::new();
    document.set_metadata(
        Metadata::new()
            .title("retrace report".to_owned())
            .creator(format!("retrace {}", crate::VERSION)),
    );
    let settings = PageSettings::from_wh(PAGE_SIZE[0], PAGE_SIZE[1])
        .ok_or_else(|| ReportError::Pdf("invalid page size".into()))?;
    for commands in pages {
        let mut page = document.start_page_with(settings.clone());
        let mut surface = page.surface();
        for command in commands {
            match command {
                Draw::Text {
                    x,
                    y,
                    size,
                    face,
                    colour,
                    text,
                } => {
                    surface.set_fill(Some(Fill {
                        paint: paint(colour),
                        opacity: NormalizedF32::ONE,
                        rule: Default::default(),
                    }));
                    let font = if face == Typeface::Mono { &mono } else { &sans };
                    surface.draw_text(
                        Point::from_xy(x, y),
                        font.clone(),
                        size,
                        &text,
                        false,
                        TextDirection::Auto,
                    );
                }
                Draw::Image {
                    x,
                    y,
                    width,
                    height,
                    image,
                } => {
                    let rgba = image::DynamicImage::ImageRgb8(image.clone()).into_rgba8();
                    let (w, h) = rgba.dimensions();
                    let size =
                        Size::from_wh(width, height).ok_or_else(|| ReportError::Pdf("an image has no area".into()))?;
                    surface.push_transform(&Transform::from_translate(x, y));
                    surface.draw_image(Image::from_rgba8(rgba.into_raw(), w, h), size);
                    surface.pop();
                }
                Draw::Line { points, colour, width } => {
                    let mut path = PathBuilder::new();
                    for (i, [x, y]) in points.into_iter().enumerate() {
                        if i == 0 {
                            path.move_to(x, y);
                        } else {
                            path.line_to(x, y);
                        }
                    }
                    if let Some(path) = path.finish() {
                        surface.set_fill(None);
                        surface.set_stroke(Some(Stroke {
                            paint: paint(colour),
                            width,
                            ..Default::default()
                        }));
                        surface.draw_path(&path);
                        surface.set_stroke(None);
                    }
                }
            }
        }
        surface.finish();
        page.finish();
    }
    document
        .finish()
        .map_err(|e| ReportError::Pdf(format!("cannot write the PDF: {e:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::content::{AgreementRow, MethodSection};

    fn tile(seed: u8) -> Tile {
        Tile {
            image: image::RgbImage::from_fn(28, 28, |x, y| image::Rgb([seed, x as u8 * 9, y as u8 * 9])),
            alt: format!("training image #{seed}"),
            caption: [format!("#{seed} · -1.234e-3"), format!("Ankle boot (id {seed}0000)")],
        }
    }

    fn content() -> ReportContent {
        let series = vec![("#1 Coat".to_owned(), vec![[0.0, 1.0], [500.0, -2.0], [999.0, 0.5]])];
        let sections = (0..2u8)
            .map(|m| MethodSection {
                name: format!("method {m}"),
                summary: "what the method computes, in one line".to_owned(),
                proponents: (0..12).map(|i| tile(m * 50 + i)).collect(),
                opponents: (0..12).map(|i| tile(m * 50 + 20 + i)).collect(),
                curves: PlotGeometry::layout(&series, "diffusion step t", 720.0, 240.0),
                parameters: (0..40)
                    .map(|i| format!("  \"p{i}\": {i}"))
                    .collect::<Vec<_>>()
                    .join("\n"),
            })
            .collect();
        ReportContent {
            meta: "retrace 0 · device CPU (flex) · model /a/very/long/path/".repeat(4),
            query: Tile {
                caption: ["generated: DDIM, 50 steps, seed 7".to_owned(), String::new()],
                ..tile(250)
            },
            top_k: 12,
            sections,
            agreement: vec![AgreementRow {
                pair: "method 0 / method 1".to_owned(),
                overlap: 0.25,
                spearman: 0.5,
            }],
        }
    }

    #[test]
    fn every_image_is_placed_once_on_a_page_without_overlap() {
        let content = content();
        let pages = layout(&content).unwrap();
        assert!(pages.len() >= 2, "two sections of 24 images do not fit one page");
        let mut images = 0;
        for (p, page) in pages.iter().enumerate() {
            let mut boxes: Vec<[f32; 4]> = Vec::new();
            for draw in page {
                match draw {
                    Draw::Image {
                        x, y, width, height, ..
                    } => {
                        images += 1;
                        let b = [*x, *y, x + width, y + height];
                        assert!(b[0] >= MARGIN - 0.01 && b[2] <= PAGE_SIZE[0] - MARGIN + 0.01, "{b:?}");
                        assert!(b[1] >= MARGIN - 0.01 && b[3] <= PAGE_SIZE[1] - MARGIN + 0.01, "{b:?}");
                        for o in &boxes {
                            assert!(
                                b[2] <= o[0] || o[2] <= b[0] || b[3] <= o[1] || o[3] <= b[1],
                                "{b:?} overlaps {o:?}"
                            );
                        }
                        boxes.push(b);
                    }
                    Draw::Text { x, y, text, .. } => {
                        assert!(*x >= 0.0 && *y > 0.0 && *y <= PAGE_SIZE[1], "{text:?} at ({x}, {y})");
                    }
                    Draw::Line { points, .. } => {
                        assert!(
                            points
                                .iter()
                                .all(|[x, y]| *x >= 0.0 && *x <= PAGE_SIZE[0] && *y <= PAGE_SIZE[1])
                        );
                    }
                }
            }
            let footer = format!("page {} of {}", p + 1, pages.len());
            assert!(
                page.iter()
                    .any(|d| matches!(d, Draw::Text { text, .. } if text.ends_with(&footer)))
            );
        }
        assert_eq!(
            images,
            1 + 2 * 2 * 12,
            "the query and each method's proponents and opponents"
        );
    }

    #[test]
    fn wrapped_lines_fit_the_width() {
        let metrics = Metrics::new().unwrap();
        let text = "a line of ordinary words and one unbreakably/long/path/that/needs/to/be/split/anywhere";
        let lines = metrics.wrap(text, 10.0, Typeface::Sans, 120.0);
        assert!(lines.len() > 2);
        assert!(lines.iter().all(|l| metrics.width(l, 10.0, Typeface::Sans) <= 120.0));
        assert_eq!(lines.concat().replace(' ', ""), text.replace(' ', ""));
    }

    #[test]
    fn the_pdf_holds_every_page_and_distinct_image() {
        let content = content();
        let pages = layout(&content).unwrap().len();
        let pdf = pdf_report(&content).unwrap();
        assert!(pdf.starts_with(b"%PDF-"));
        assert!(pdf.windows(5).rev().take(16).any(|w| w == b"%%EOF"));
        assert_eq!(
            count_pdf_names(&pdf, "/Type/Page") - count_pdf_names(&pdf, "/Type/Pages"),
            pages
        );
        assert_eq!(
            count_pdf_names(&pdf, "/Subtype/Image"),
            49,
            "one image object per distinct image"
        );
    }
}

//! Small SVG plots for the study report (heatmaps and reliability diagrams), written as plain SVG text so
//! the report renders on any repository page without a plotting runtime.

use crate::metrics::ReliabilityBin;
use std::fmt::Write;

/// One heatmap panel.
#[derive(Debug, Clone)]
pub struct Heatmap {
    /// Panel title.
    pub title: String,
    /// Row labels.
    pub rows: Vec<String>,
    /// Column labels.
    pub cols: Vec<String>,
    /// Values (rows × cols); the colour scale runs from 0 to the panel's maximum.
    pub values: Vec<Vec<f64>>,
    /// Text in each cell (rows × cols).
    pub labels: Vec<Vec<String>>,
}

/// One series of a reliability diagram.
#[derive(Debug, Clone)]
pub struct ReliabilitySeries {
    /// Legend text.
    pub name: String,
    /// CSS colour.
    pub color: String,
    /// Bins (empty bins are skipped).
    pub bins: Vec<ReliabilityBin>,
}

/// Escapes text for SVG.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn color(t: f64) -> String {
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let lerp = |a: f64, b: f64| (a + (b - a) * t).round() as u8;
    format!(
        "#{:02x}{:02x}{:02x}",
        lerp(247.0, 8.0),
        lerp(251.0, 69.0),
        lerp(255.0, 148.0)
    )
}

const CELL_W: f64 = 64.0;
const CELL_H: f64 = 26.0;
const FONT: &str = "font-family=\"Helvetica,Arial,sans-serif\"";

/// Heatmap panels under one title, side by side, at most `per_row` to a row.
pub fn heatmaps(title: &str, panels: &[Heatmap], per_row: usize) -> String {
    let row_label_w = 120.0;
    let col_label_h = 70.0;
    let gap = 40.0;
    let mut x0 = 10.0;
    let mut top = 60.0;
    let mut body = String::new();
    let (mut height, mut width): (f64, f64) = (0.0, 300.0);
    for (n, p) in panels.iter().enumerate() {
        if n > 0 && n % per_row.max(1) == 0 {
            x0 = 10.0;
            top = height + 40.0;
        }
        let max = p
            .values
            .iter()
            .flatten()
            .copied()
            .filter(|v| v.is_finite())
            .fold(0.0, f64::max);
        let widest = p
            .labels
            .iter()
            .flatten()
            .map(|l| l.chars().count())
            .max()
            .unwrap_or(0);
        let cell_w = CELL_W.max(widest as f64 * 6.2 + 10.0);
        let gx = x0 + row_label_w;
        let gy = top + col_label_h;
        let _ = writeln!(
            body,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"14\" font-weight=\"bold\" {FONT}>{}</text>",
            gx,
            top - 20.0,
            escape(&p.title)
        );
        for (j, c) in p.cols.iter().enumerate() {
            let cx = gx + (j as f64 + 0.5) * cell_w;
            let _ = writeln!(
                body,
                "<text x=\"{cx:.1}\" y=\"{:.1}\" font-size=\"11\" {FONT} transform=\"rotate(-35 {cx:.1} {:.1})\">{}</text>",
                gy - 6.0,
                gy - 6.0,
                escape(c)
            );
        }
        for (i, r) in p.rows.iter().enumerate() {
            let cy = gy + i as f64 * CELL_H;
            let _ = writeln!(
                body,
                "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"end\" {FONT}>{}</text>",
                gx - 6.0,
                cy + CELL_H * 0.65,
                escape(r)
            );
            for j in 0..p.cols.len() {
                let v = p
                    .values
                    .get(i)
                    .and_then(|r| r.get(j))
                    .copied()
                    .unwrap_or(f64::NAN);
                let t = if max > 0.0 { v / max } else { 0.0 };
                let cx = gx + j as f64 * cell_w;
                let _ = writeln!(
                    body,
                    "<rect x=\"{cx:.1}\" y=\"{cy:.1}\" width=\"{cell_w:.1}\" height=\"{CELL_H}\" fill=\"{}\" stroke=\"#ffffff\"/>",
                    color(t)
                );
                let label = p
                    .labels
                    .get(i)
                    .and_then(|r| r.get(j))
                    .cloned()
                    .unwrap_or_default();
                let ink = if t > 0.55 { "#ffffff" } else { "#222222" };
                let _ = writeln!(
                    body,
                    "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"middle\" fill=\"{ink}\" {FONT}>{}</text>",
                    cx + cell_w / 2.0,
                    cy + CELL_H * 0.65,
                    escape(&label)
                );
            }
        }
        height = height.max(gy + p.rows.len() as f64 * CELL_H + 20.0);
        x0 = gx + p.cols.len() as f64 * cell_w + gap;
        width = width.max(x0);
    }
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\" viewBox=\"0 0 {width:.0} {height:.0}\">\n<rect width=\"100%\" height=\"100%\" fill=\"#ffffff\"/>\n<text x=\"10\" y=\"22\" font-size=\"16\" font-weight=\"bold\" {FONT}>{}</text>\n{body}</svg>\n",
        escape(title)
    )
}

/// Reliability diagrams, one panel per entry: accuracy against mean confidence per bin, with the diagonal.
pub fn reliability(title: &str, panels: &[(String, Vec<ReliabilitySeries>)]) -> String {
    let size = 220.0;
    let (left, top, gap) = (50.0, 72.0, 40.0);
    let mut body = String::new();
    for (k, (name, series)) in panels.iter().enumerate() {
        let x0 = left + k as f64 * (size + left + gap);
        let y0 = top;
        let px = |c: f64| x0 + c * size;
        let py = |a: f64| y0 + (1.0 - a) * size;
        let _ = writeln!(
            body,
            "<text x=\"{x0:.1}\" y=\"{:.1}\" font-size=\"13\" font-weight=\"bold\" {FONT}>{}</text>",
            y0 - 10.0,
            escape(name)
        );
        let _ = writeln!(
            body,
            "<rect x=\"{x0:.1}\" y=\"{y0:.1}\" width=\"{size}\" height=\"{size}\" fill=\"none\" stroke=\"#888888\"/>"
        );
        let _ = writeln!(
            body,
            "<line x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"#aaaaaa\" stroke-dasharray=\"4 3\"/>",
            px(0.0),
            py(0.0),
            px(1.0),
            py(1.0)
        );
        for t in [0.0, 0.5, 1.0] {
            let _ = writeln!(
                body,
                "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"middle\" {FONT}>{t:.1}</text>",
                px(t),
                y0 + size + 14.0
            );
            let _ = writeln!(
                body,
                "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"end\" {FONT}>{t:.1}</text>",
                x0 - 4.0,
                py(t) + 3.0
            );
        }
        let _ = writeln!(
            body,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"middle\" {FONT}>confidence</text>",
            px(0.5),
            y0 + size + 28.0
        );
        let _ = writeln!(
            body,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"middle\" {FONT} transform=\"rotate(-90 {:.1} {:.1})\">accuracy</text>",
            x0 - 32.0,
            py(0.5),
            x0 - 32.0,
            py(0.5)
        );
        for (s_idx, s) in series.iter().enumerate() {
            let pts: Vec<(f64, f64, usize)> = s
                .bins
                .iter()
                .filter(|b| b.count > 0)
                .map(|b| (b.confidence, b.accuracy, b.count))
                .collect();
            let total: usize = pts.iter().map(|p| p.2).sum::<usize>().max(1);
            let path: Vec<String> = pts
                .iter()
                .map(|(c, a, _)| format!("{:.1},{:.1}", px(*c), py(*a)))
                .collect();
            let _ = writeln!(
                body,
                "<polyline points=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\"/>",
                path.join(" "),
                s.color
            );
            for (c, a, n) in &pts {
                let r = 2.0 + 6.0 * (*n as f64 / total as f64).sqrt();
                let _ = writeln!(
                    body,
                    "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"{r:.1}\" fill=\"{}\" fill-opacity=\"0.6\"/>",
                    px(*c),
                    py(*a),
                    s.color
                );
            }
            let ly = y0 + 14.0 + s_idx as f64 * 14.0;
            let _ = writeln!(
                body,
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"10\" height=\"10\" fill=\"{}\"/><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" {FONT}>{}</text>",
                x0 + 6.0,
                ly - 9.0,
                s.color,
                x0 + 20.0,
                ly,
                escape(&s.name)
            );
        }
    }
    let width = left + panels.len().max(1) as f64 * (size + left + gap);
    let height = top + size + 40.0;
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\" viewBox=\"0 0 {width:.0} {height:.0}\">\n<rect width=\"100%\" height=\"100%\" fill=\"#ffffff\"/>\n<text x=\"10\" y=\"22\" font-size=\"16\" font-weight=\"bold\" {FONT}>{}</text>\n<text x=\"10\" y=\"40\" font-size=\"11\" {FONT}>marker area ∝ examples in the bin; dashed: perfect calibration</text>\n{body}</svg>\n",
        escape(title)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn balanced(svg: &str) -> bool {
        svg.starts_with("<svg")
            && svg.trim_end().ends_with("</svg>")
            && svg.matches("<text").count() == svg.matches("</text>").count()
    }

    #[test]
    fn heatmap_has_one_rect_per_cell_and_escapes_text() {
        let svg = heatmaps(
            "a & b",
            &[Heatmap {
                title: "<J>".into(),
                rows: vec!["r1".into(), "r2".into()],
                cols: vec!["c1".into(), "c2".into(), "c3".into()],
                values: vec![vec![0.0, 0.5, 1.0], vec![f64::NAN, 0.2, 0.1]],
                labels: vec![vec!["0".into(); 3], vec!["x".into(); 3]],
            }],
            2,
        );
        assert!(balanced(&svg));
        assert_eq!(svg.matches("<rect x=").count(), 6);
        assert!(svg.contains("a &amp; b") && svg.contains("&lt;J&gt;"));
        assert!(
            svg.contains("#084594"),
            "the maximum gets the darkest colour"
        );
    }

    #[test]
    fn reliability_plots_only_non_empty_bins() {
        let bin = |c: f64, a: f64, n: usize| ReliabilityBin {
            lower: 0.0,
            upper: 1.0,
            count: n,
            accuracy: a,
            confidence: c,
        };
        let svg = reliability(
            "r",
            &[(
                "sst2".into(),
                vec![ReliabilitySeries {
                    name: "graft".into(),
                    color: "#d62728".into(),
                    bins: vec![bin(0.55, 0.5, 10), bin(0.0, 0.0, 0), bin(0.95, 0.9, 30)],
                }],
            )],
        );
        assert!(balanced(&svg));
        assert_eq!(svg.matches("<circle").count(), 2);
    }
}

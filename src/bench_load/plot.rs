//! `--plot FILE.png`: latency over the run, drawn with plotters' bitmap backend.
//! Top: TTFT and E2E of each request against its start time (failed requests as red
//! crosses at the time they failed). Bottom: a histogram of every inter-token
//! latency.
//!
//! Text needs a TrueType font, read at run time (no font is compiled in):
//! `PDSERVE_PLOT_FONT`, else the first of a few usual system paths (DejaVu Sans,
//! Liberation Sans, Noto Sans, Arial). Without one the plot is drawn without any
//! text, and the caller is told so.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{anyhow, Result};
use plotters::prelude::*;
use plotters::style::FontStyle;

use super::stats::{percentile_sorted, RequestRecord};

const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
    "/Library/Fonts/Arial.ttf",
];

/// Registers a system font as plotters' "sans-serif", once. True when one loaded.
fn font_loaded() -> bool {
    static LOADED: OnceLock<bool> = OnceLock::new();
    *LOADED.get_or_init(|| {
        let env = std::env::var("PDSERVE_PLOT_FONT").ok();
        let candidates = env
            .iter()
            .map(String::as_str)
            .chain(FONT_PATHS.iter().copied());
        for path in candidates {
            if let Ok(bytes) = std::fs::read(path) {
                // plotters keeps fonts for the whole process: leaked once, on purpose.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

/// `bins` equal-width bins over [0, cap], values above `cap` in the last; `cap` is
/// 1.5 × the p99 (at most the maximum). Returns (cap, counts).
pub fn histogram(values: &[f64], bins: usize) -> (f64, Vec<u64>) {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    let mut counts = vec![0u64; bins.max(1)];
    if v.is_empty() {
        return (1.0, counts);
    }
    v.sort_by(f64::total_cmp);
    let max = v[v.len() - 1];
    let cap = (percentile_sorted(&v, 99.0) * 1.5).min(max).max(1e-9);
    let width = cap / counts.len() as f64;
    for x in v {
        let b = ((x.max(0.0) / width) as usize).min(counts.len() - 1);
        counts[b] += 1;
    }
    (cap, counts)
}

fn plot_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing failed: {e:?}")
}

/// Draws the PNG. Returns whether text (axes, captions) could be drawn.
pub fn draw(path: &Path, records: &[RequestRecord]) -> Result<bool> {
    draw_with(path, records, font_loaded())
}

fn draw_with(path: &Path, records: &[RequestRecord], text: bool) -> Result<bool> {
    let root = BitMapBackend::new(path, (1200, 900)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let (top, bottom) = root.split_vertically(480);

    let ok: Vec<&RequestRecord> = records.iter().filter(|r| r.ok()).collect();
    let failed: Vec<(f64, f64)> = records
        .iter()
        .filter(|r| !r.ok())
        .map(|r| (r.start_s, r.e2e_ms.unwrap_or(0.0)))
        .collect();
    let ttft: Vec<(f64, f64)> = ok
        .iter()
        .filter_map(|r| Some((r.start_s, r.ttft_ms?)))
        .collect();
    let e2e: Vec<(f64, f64)> = ok
        .iter()
        .filter_map(|r| Some((r.start_s, r.e2e_ms?)))
        .collect();
    let x_max = records.iter().map(|r| r.start_s).fold(0.0, f64::max) * 1.02 + 1e-3;
    let y_max = e2e
        .iter()
        .chain(&ttft)
        .chain(&failed)
        .map(|p| p.1)
        .fold(0.0, f64::max)
        * 1.05
        + 1e-3;

    let mut b = ChartBuilder::on(&top);
    b.margin(20);
    if text {
        b.caption("Latency per request vs start time", ("sans-serif", 24))
            .x_label_area_size(45)
            .y_label_area_size(70);
    }
    let mut chart = b
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)
        .map_err(plot_err)?;
    if text {
        chart
            .configure_mesh()
            .x_desc("request start (s)")
            .y_desc("latency (ms)")
            .y_label_formatter(&|v| format!("{v:.0}"))
            .label_style(("sans-serif", 15))
            .draw()
            .map_err(plot_err)?;
    }
    let e2e_style = RGBColor(31, 119, 180).filled();
    let ttft_style = RGBColor(255, 127, 14).filled();
    let series = chart
        .draw_series(e2e.iter().map(|&p| Circle::new(p, 3, e2e_style)))
        .map_err(plot_err)?;
    if text {
        series
            .label("E2E")
            .legend(move |(x, y)| Circle::new((x, y), 4, e2e_style));
    }
    let series = chart
        .draw_series(ttft.iter().map(|&p| TriangleMarker::new(p, 4, ttft_style)))
        .map_err(plot_err)?;
    if text {
        series
            .label("TTFT")
            .legend(move |(x, y)| TriangleMarker::new((x, y), 4, ttft_style));
    }
    let series = chart
        .draw_series(
            failed
                .iter()
                .map(|&p| Cross::new(p, 5, RED.stroke_width(2))),
        )
        .map_err(plot_err)?;
    if text && !failed.is_empty() {
        series
            .label("failed")
            .legend(|(x, y)| Cross::new((x, y), 4, RED.stroke_width(2)));
    }
    if text {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 16))
            .draw()
            .map_err(plot_err)?;
    }

    let itl: Vec<f64> = ok.iter().flat_map(|r| r.itl_ms.iter().copied()).collect();
    let (cap, counts) = histogram(&itl, 60);
    let width = cap / counts.len() as f64;
    let c_max = counts.iter().copied().max().unwrap_or(0) as f64 * 1.05 + 1.0;
    let mut b = ChartBuilder::on(&bottom);
    b.margin(20);
    if text {
        let caption = format!(
            "Inter-token latency histogram ({} gaps; the last bin holds all >= {:.1} ms)",
            itl.len(),
            cap - width
        );
        b.caption(caption, ("sans-serif", 20))
            .x_label_area_size(45)
            .y_label_area_size(70);
    }
    let mut chart = b
        .build_cartesian_2d(0f64..cap, 0f64..c_max)
        .map_err(plot_err)?;
    if text {
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_desc("inter-token latency (ms)")
            .y_desc("count")
            .y_label_formatter(&|v| format!("{v:.0}"))
            .label_style(("sans-serif", 15))
            .draw()
            .map_err(plot_err)?;
    }
    chart
        .draw_series(
            counts
                .iter()
                .enumerate()
                .filter(|(_, &c)| c > 0)
                .map(|(i, &c)| {
                    let x0 = i as f64 * width;
                    Rectangle::new(
                        [(x0, 0.0), (x0 + width * 0.9, c as f64)],
                        RGBColor(44, 160, 44).filled(),
                    )
                }),
        )
        .map_err(plot_err)?;
    root.present()
        .map_err(|e| anyhow!("--plot {}: {e:?}", path.display()))?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_caps_the_tail_into_the_last_bin() {
        let mut v: Vec<f64> = (0..100).map(|i| i as f64 / 10.0).collect();
        v.push(1000.0);
        let (cap, counts) = histogram(&v, 10);
        assert!(cap < 1000.0 && cap > 9.0, "{cap}");
        assert_eq!(counts.iter().sum::<u64>(), 101);
        assert!(counts[9] >= 1);
        let (_, empty) = histogram(&[], 5);
        assert_eq!(empty, vec![0; 5]);
        let (_, same) = histogram(&[2.0, 2.0], 4);
        assert_eq!(same.iter().sum::<u64>(), 2);
    }

    fn records() -> Vec<RequestRecord> {
        (0..20)
            .map(|i| RequestRecord {
                index: i,
                start_s: i as f64 * 0.1,
                ttft_ms: Some(20.0 + i as f64),
                e2e_ms: Some(200.0 + i as f64),
                itl_ms: (0..10).map(|k| 15.0 + k as f64).collect(),
                output_tokens: 11,
                error: (i == 7).then(|| "HTTP 503".to_string()),
                ..Default::default()
            })
            .collect()
    }

    fn is_png(p: &Path) -> bool {
        std::fs::read(p).is_ok_and(|b| b.starts_with(b"\x89PNG\r\n\x1a\n") && b.len() > 1000)
    }

    #[test]
    fn draws_a_png_with_and_without_text() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain.png");
        assert!(!draw_with(&plain, &records(), false).unwrap());
        assert!(is_png(&plain));
        let with_text = dir.path().join("text.png");
        let text = draw(&with_text, &records()).unwrap();
        assert!(is_png(&with_text));
        eprintln!("font found: {text}");
        // No records at all still draws (empty axes).
        draw(&dir.path().join("empty.png"), &[]).unwrap();
        let bad = draw(&dir.path().join("no/such/dir/x.png"), &records());
        assert!(bad.is_err());
    }
}

//! The demo's figures (PNG, plotters). Each is drawn to a temporary file in the output
//! folder and renamed into place, so a failed run leaves no half-drawn picture.
//!
//! Text is drawn with DejaVu Sans built into the binary (assets/fonts, Bitstream Vera
//! licence) through plotters' pure-Rust `ab_glyph` renderer: no fontconfig, freetype or
//! system fonts are needed, so the plots cannot fail on a machine without them.

use std::path::Path;
use std::sync::OnceLock;

use divnet::experiment::{Curve, ExperimentReport, Heatmap};
use plotters::prelude::*;

/// One colour per selection method, in the order of `divnet::experiment::VARIANTS` (each
/// method with and without fusion): its length follows the variants, so a new one needs its
/// colour.
const COLORS: [RGBColor; divnet::experiment::VARIANTS.len()] = [
    RGBColor(31, 119, 180),
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(255, 127, 14),
    RGBColor(23, 190, 207),
    RGBColor(23, 190, 207),
    RGBColor(140, 86, 75),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(227, 119, 194),
];

/// The font every caption and label uses, under the family name plotters asks for.
const FONT_FAMILY: &str = "sans-serif";
const FONT: &[u8] = include_bytes!("../../../assets/fonts/DejaVuSans.ttf");

/// Registers the built-in font with plotters, once per process (plotters keeps it in a
/// global table); later calls return the first call's outcome.
fn register_font() -> anyhow::Result<()> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            plotters::style::register_font(FONT_FAMILY, FontStyle::Normal, FONT)
                .map_err(|_| "the built-in font DejaVuSans.ttf is not a valid TrueType font".into())
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

fn render(
    path: &Path,
    size: (u32, u32),
    draw: impl FnOnce(DrawingArea<BitMapBackend, plotters::coord::Shift>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("plot.png");
    let tmp = path.with_file_name(format!(".{name}.{}.tmp.png", std::process::id()));
    // Removed on an error (dropped) or a signal, as the other outputs' temporary files.
    let temporary = divnet::io::atomic::TemporaryFile::track(&tmp);
    let result = (|| {
        register_font()?;
        let root = BitMapBackend::new(&tmp, size).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        draw(root.clone())?;
        root.present().map_err(plot_err)?;
        drop(root);
        std::fs::rename(&tmp, path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    })();
    if result.is_ok() {
        temporary.renamed();
    }
    result
}

fn plot_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("drawing a plot: {e:?}")
}

/// Accuracy against neurons kept, one line per curve, on `area`.
fn accuracy_chart(
    area: &DrawingArea<BitMapBackend, plotters::coord::Shift>,
    title: &str,
    curves: &[&Curve],
    full: f64,
) -> anyhow::Result<()> {
    let xs: Vec<f64> = curves
        .iter()
        .flat_map(|c| c.points.iter().map(|p| p.kept as f64))
        .collect();
    let (xmin, xmax) = xs
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT_FAMILY, 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d((xmin * 0.8..xmax * 1.25).log_scale(), 0f64..100f64)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc("neurons kept per compressed layer")
        .y_desc("test accuracy (%)")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .light_line_style(RGBColor(242, 242, 242))
        .draw()
        .map_err(plot_err)?;
    chart
        .draw_series(LineSeries::new(
            [(xmin * 0.8, full * 100.0), (xmax * 1.25, full * 100.0)],
            BLACK.stroke_width(1),
        ))
        .map_err(plot_err)?
        .label(format!("full network ({:.1}%)", full * 100.0))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
    for (i, curve) in curves.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let style = if curve.variant.fused {
            color.stroke_width(3)
        } else {
            color.mix(0.6).stroke_width(1)
        };
        let points: Vec<(f64, f64)> = curve
            .points
            .iter()
            .map(|p| (p.kept as f64, p.mean * 100.0))
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), style))
            .map_err(plot_err)?
            .label(curve.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 3, style.filled())))
            .map_err(plot_err)?;
        chart
            .draw_series(curve.points.iter().filter(|p| p.std > 0.0).map(|p| {
                ErrorBar::new_vertical(
                    p.kept as f64,
                    (p.mean - p.std) * 100.0,
                    p.mean * 100.0,
                    (p.mean + p.std) * 100.0,
                    style,
                    6,
                )
            }))
            .map_err(plot_err)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(plot_err)?;
    Ok(())
}

/// Findings (b) and (d): every variant with all hidden layers compressed.
pub fn accuracy_plot(path: &Path, report: &ExperimentReport) -> anyhow::Result<()> {
    let curves: Vec<&Curve> = report
        .curves
        .iter()
        .filter(|c| c.scope == "all hidden layers")
        .collect();
    render(path, (1100, 750), |root| {
        accuracy_chart(
            &root,
            "All hidden layers compressed: test accuracy vs neurons kept",
            &curves,
            report.full_accuracy,
        )
    })
}

/// Finding (c): one hidden layer compressed at a time, one panel per layer.
pub fn one_layer_plot(path: &Path, report: &ExperimentReport) -> anyhow::Result<bool> {
    let mut scopes: Vec<&str> = Vec::new();
    for c in &report.curves {
        if c.scope != "all hidden layers" && !scopes.contains(&c.scope.as_str()) {
            scopes.push(&c.scope);
        }
    }
    if scopes.is_empty() {
        return Ok(false);
    }
    render(path, (900 * scopes.len() as u32, 700), |root| {
        let panels = root.split_evenly((1, scopes.len()));
        for (panel, scope) in panels.iter().zip(&scopes) {
            let curves: Vec<&Curve> = report.curves.iter().filter(|c| c.scope == *scope).collect();
            accuracy_chart(
                panel,
                &format!("only {scope} compressed"),
                &curves,
                report.full_accuracy,
            )?;
        }
        Ok(())
    })?;
    Ok(true)
}

/// Finding (a): the kernel restricted to the kept neurons, k-DPP beside random (the paper's
/// Figure 1): bright off-diagonal cells are similar neuron pairs.
pub fn diversity_plot(path: &Path, heatmaps: &[Heatmap]) -> anyhow::Result<bool> {
    if heatmaps.is_empty() {
        return Ok(false);
    }
    render(path, (560 * heatmaps.len() as u32, 600), |root| {
        let panels = root.split_evenly((1, heatmaps.len()));
        for (panel, h) in panels.iter().zip(heatmaps) {
            let k = h.size;
            let off: Vec<f64> = (0..k * k)
                .filter(|i| i / k != i % k)
                .map(|i| h.values[i])
                .collect();
            let mean = off.iter().sum::<f64>() / off.len().max(1) as f64;
            let mut chart = ChartBuilder::on(panel)
                .caption(
                    format!(
                        "{}: L_Y of {k} kept neurons (mean off-diag {mean:.3})",
                        h.method
                    ),
                    (FONT_FAMILY, 18),
                )
                .margin(10)
                .x_label_area_size(25)
                .y_label_area_size(35)
                .build_cartesian_2d(0..k, 0..k)
                .map_err(plot_err)?;
            chart
                .configure_mesh()
                .disable_mesh()
                .draw()
                .map_err(plot_err)?;
            chart
                .draw_series((0..k).flat_map(|i| {
                    (0..k).map(move |j| {
                        let v = h.values[i * k + j].clamp(0.0, 1.0);
                        let shade = (255.0 * (1.0 - v)) as u8;
                        Rectangle::new(
                            [(j, k - 1 - i), (j + 1, k - i)],
                            RGBColor(shade, shade, 255).filled(),
                        )
                    })
                }))
                .map_err(plot_err)?;
        }
        Ok(())
    })?;
    Ok(true)
}

//! The boundary's records/s against batch size, one line per record size and
//! side (wasm, native), as a PNG.

use std::path::Path;

use plotters::prelude::*;

/// One measured point of the boundary bench.
#[derive(Debug, Clone, Copy)]
pub struct Point {
    /// Through the component boundary (else the native baseline).
    pub wasm: bool,
    /// Value size, bytes.
    pub payload: u32,
    /// Records per batch.
    pub batch: u32,
    /// Records per second.
    pub rate: f64,
}

/// Fonts tried in turn for the plot's text (Debian's fonts-dejavu-core and
/// fonts-liberation).
const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

/// Draws `points` into `png`. Returns false, saying why, when there is
/// nothing to draw.
pub fn throughput(points: &[Point], png: &Path) -> anyhow::Result<bool> {
    if points.is_empty() {
        return Ok(false);
    }
    let font = FONTS
        .iter()
        .find_map(|p| std::fs::read(p).ok())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no font found (tried {}); `apt-get install fonts-dejavu-core` gives one",
                FONTS.join(", ")
            )
        })?;
    // plotters keeps registered fonts for the program's life.
    let font: &'static [u8] = Box::leak(font.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, font)
        .map_err(|_| anyhow::anyhow!("the font could not be read"))?;

    let top = points.iter().map(|p| p.rate).fold(1.0, f64::max) * 2.0;
    let bottom = points.iter().map(|p| p.rate).fold(f64::MAX, f64::min) / 2.0;
    let root = BitMapBackend::new(png, (1000, 650)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Sluice boundary: datagen -> host -> blackhole, one thread",
            ("sans-serif", 24),
        )
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(90)
        .build_cartesian_2d((0.8f64..1300f64).log_scale(), (bottom..top).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("records per batch")
        .y_desc("records per second")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| {
            if *y >= 1e6 {
                format!("{:.0} M", y / 1e6)
            } else {
                format!("{:.0} k", y / 1e3)
            }
        })
        .label_style(("sans-serif", 16))
        .draw()?;
    let lines = [
        (true, 100, "wasm, 100 B", BLUE),
        (false, 100, "native, 100 B", CYAN),
        (true, 1024, "wasm, 1 KiB", RED),
        (false, 1024, "native, 1 KiB", MAGENTA),
    ];
    for (wasm, payload, label, color) in lines {
        let mut series: Vec<(f64, f64)> = points
            .iter()
            .filter(|p| p.wasm == wasm && p.payload == payload)
            .map(|p| (f64::from(p.batch), p.rate))
            .collect();
        series.sort_by(|a, b| a.0.total_cmp(&b.0));
        let style = if wasm {
            color.stroke_width(3)
        } else {
            color.stroke_width(2)
        };
        chart
            .draw_series(LineSeries::new(series.clone(), style))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        chart.draw_series(
            series
                .into_iter()
                .map(|(x, y)| Circle::new((x, y), 4, color.filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font(("sans-serif", 16))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(true)
}

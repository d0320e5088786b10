//! The per-device latency chart of the compress report: grouped bars, original and compressed
//! side by side for each device (an SVG string for the HTML report).

use plotters::prelude::*;

use super::remote::DeviceColumn;

const ORIGINAL: RGBColor = RGBColor(150, 150, 150);
const COMPRESSED: RGBColor = RGBColor(70, 110, 180);

/// Grouped bars of median latency (ms) per device; devices without numbers get no bars.
pub fn devices_svg(cols: &[DeviceColumn]) -> String {
    let mut s = String::new();
    {
        let root = SVGBackend::with_string(&mut s, (640, 320)).into_drawing_area();
        let _ = root.fill(&WHITE);
        let max = cols
            .iter()
            .flat_map(|c| [c.latency_ms_original, c.latency_ms_compressed])
            .flatten()
            .fold(0.0f64, f64::max)
            .max(1e-9)
            * 1.15;
        let n = cols.len().max(1) as f64;
        let chart = ChartBuilder::on(&root)
            .caption("latency per device (median ms)", ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..n, 0f64..max);
        if let Ok(mut c) = chart {
            let names: Vec<String> = cols.iter().map(|c| c.name.clone()).collect();
            let _ = c
                .configure_mesh()
                .disable_x_mesh()
                .x_labels(cols.len().max(1) * 2 + 1)
                .x_label_formatter(&|x| {
                    // Labels sit at the middle of each device's group.
                    let i = x.floor();
                    if (x - i - 0.5).abs() < 1e-6 {
                        names.get(i as usize).cloned().unwrap_or_default()
                    } else {
                        String::new()
                    }
                })
                .draw();
            let bars = cols.iter().enumerate().flat_map(|(i, col)| {
                let x = i as f64;
                [
                    (x + 0.15, x + 0.5, col.latency_ms_original, ORIGINAL),
                    (x + 0.5, x + 0.85, col.latency_ms_compressed, COMPRESSED),
                ]
                .into_iter()
                .filter_map(|(a, b, v, colour)| {
                    v.map(|v| Rectangle::new([(a, 0.0), (b, v)], colour.filled()))
                })
            });
            let _ = c.draw_series(bars);
        }
        let _ = root.present();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_pair_of_bars_per_measured_device() {
        let col = |name: &str, o: Option<f64>, c: Option<f64>| DeviceColumn {
            name: name.into(),
            arch: "aarch64".into(),
            ort_version: None,
            latency_ms_original: o,
            latency_ms_compressed: c,
            ratio: None,
            decode_ms: None,
            complete: o.is_some(),
            error: None,
        };
        let svg = devices_svg(&[
            col("pi4", Some(9.0), Some(3.0)),
            col("phone", None, None),
            col("local", Some(1.0), Some(0.5)),
        ]);
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("pi4") && svg.contains("local"));
        assert_eq!(
            svg.matches("<rect").count() - devices_svg(&[]).matches("<rect").count(),
            4
        );
    }
}

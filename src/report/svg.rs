//! The report's plots as plain inline SVG: labelled horizontal bars (values printed, optional
//! p10–p90 whiskers, several series side by side) and a scatter with reference lines and a marked
//! point. Every plot has a title, an axis with its unit and a legend; each plot is an
//! `<svg class="plot">` with its legend in a `<g class="legend">`, which the browser test checks.
//!
//! Written by hand rather than with plotters: the pages need categorical axes with the values
//! printed at the bars, whiskers and legends laid out for long tensor names, which plotters'
//! segmented axes got wrong (an empty slot and a stray tick) and which are a few lines of SVG.

use std::fmt::Write;

/// Colours of successive series (original grey, result blue, then others).
pub const PALETTE: [&str; 4] = ["#9a9a9a", "#3b6fb6", "#d9822b", "#2e9e5b"];

const W: f64 = 720.0;
const LABEL_W: f64 = 210.0;
const TOP: f64 = 54.0;
const BAR_H: f64 = 14.0;

/// Escapes text for HTML and SVG.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// One bar of a row: its value, the text printed beside it and an optional whisker.
#[derive(Debug, Clone)]
pub struct Bar {
    pub value: f64,
    pub text: String,
    pub whisker: Option<(f64, f64)>,
}

/// One category (a stage, a device, a tensor) with one bar per series (`None`: not measured).
#[derive(Debug, Clone)]
pub struct Row {
    pub label: String,
    pub bars: Vec<Option<Bar>>,
}

/// Horizontal bars, one group per row, one bar per series.
#[derive(Debug, Clone)]
pub struct Bars {
    pub title: String,
    /// The value axis: quantity and unit, e.g. "size (KiB)".
    pub axis: String,
    pub series: Vec<String>,
    pub rows: Vec<Row>,
    /// What a whisker means, for the legend (when any bar has one).
    pub whisker_label: Option<String>,
}

/// "Nice" tick positions covering [lo, hi].
fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    let span = (hi - lo).max(1e-12);
    let raw = span / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| span / s <= 6.0)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last).map(|i| i as f64 * step).collect()
}

fn tick_text(v: f64) -> String {
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.to_string()
    }
}

/// A label cut to fit its column, the whole label kept as a tooltip.
fn fit(label: &str, max_chars: usize) -> String {
    if label.chars().count() <= max_chars {
        return esc(label);
    }
    let tail: String = label
        .chars()
        .rev()
        .take(max_chars - 1)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("<title>{}</title>…{}", esc(label), esc(&tail))
}

/// Width of a legend entry with this name.
fn item_w(name: &str) -> f64 {
    30.0 + 6.6 * name.chars().count() as f64
}

/// Lines the legend takes from `x`, wrapping at the plot's width.
fn legend_lines(x: f64, items: &[(String, String)]) -> usize {
    let (mut lines, mut at) = (1, x);
    for (name, _) in items {
        if at > x && at + item_w(name) > W - 8.0 {
            lines += 1;
            at = x;
        }
        at += item_w(name);
    }
    lines
}

fn legend(o: &mut String, x0: f64, y0: f64, items: &[(String, String)]) {
    let _ = write!(o, r#"<g class="legend" font-size="12">"#);
    let (mut x, mut y) = (x0, y0);
    for (name, swatch) in items {
        if x > x0 && x + item_w(name) > W - 8.0 {
            x = x0;
            y += 17.0;
        }
        let _ = write!(
            o,
            r#"<g transform="translate({x:.0},{y:.0})">{swatch}<text x="18" y="10">{}</text></g>"#,
            esc(name)
        );
        x += item_w(name);
    }
    o.push_str("</g>");
}

fn rect_swatch(colour: &str) -> String {
    format!(r#"<rect width="12" height="12" fill="{colour}"/>"#)
}

impl Bars {
    fn legend_items(&self) -> Vec<(String, String)> {
        let mut items: Vec<(String, String)> = self
            .series
            .iter()
            .enumerate()
            .map(|(i, s)| (s.clone(), rect_swatch(PALETTE[i % PALETTE.len()])))
            .collect();
        let has_whiskers = self
            .rows
            .iter()
            .flat_map(|r| r.bars.iter().flatten())
            .any(|b| b.whisker.is_some());
        if let (true, Some(w)) = (has_whiskers, &self.whisker_label) {
            items.push((
                w.clone(),
                r##"<path d="M0 6H12M0 2V10M12 2V10" stroke="#222" fill="none"/>"##.into(),
            ));
        }
        items
    }

    /// The SVG element.
    pub fn svg(&self) -> String {
        let n = self.series.len().max(1);
        let group_h = BAR_H * n as f64 + 8.0;
        let plot_h = group_h * self.rows.len().max(1) as f64;
        let items = self.legend_items();
        let top = TOP + 17.0 * (legend_lines(LABEL_W, &items) - 1) as f64;
        let h = top + plot_h + 46.0;
        let longest = self
            .rows
            .iter()
            .flat_map(|r| r.bars.iter().flatten())
            .map(|b| b.text.chars().count())
            .max()
            .unwrap_or(0);
        let value_w = (longest as f64 * 6.4 + 12.0).max(40.0);
        let all = self.rows.iter().flat_map(|r| r.bars.iter().flatten());
        let (mut lo, mut hi) = (0.0f64, 0.0f64);
        for b in all {
            let (a, z) = b.whisker.unwrap_or((b.value, b.value));
            lo = lo.min(b.value).min(a);
            hi = hi.max(b.value).max(z);
        }
        if hi - lo <= 0.0 {
            hi = lo + 1.0;
        }
        let pad = (hi - lo) * 0.04;
        let (lo, hi) = (if lo < 0.0 { lo - pad } else { lo }, hi + pad);
        let x0 = LABEL_W;
        let pw = W - LABEL_W - value_w;
        let sx = |v: f64| x0 + (v - lo) / (hi - lo) * pw;
        let mut o = String::new();
        let _ = write!(
            o,
            r#"<svg class="plot" width="{W:.0}" height="{h:.0}" viewBox="0 0 {W:.0} {h:.0}" font-family="sans-serif" role="img"><title>{t}</title><text class="title" x="10" y="20" font-size="15" font-weight="bold">{t}</text>"#,
            t = esc(&self.title)
        );
        legend(&mut o, LABEL_W, 30.0, &items);
        for t in ticks(lo, hi) {
            let x = sx(t);
            let _ = write!(
                o,
                r##"<line x1="{x:.1}" y1="{top:.0}" x2="{x:.1}" y2="{:.1}" stroke="#e4e4e4"/><text x="{x:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}</text>"##,
                top + plot_h,
                top + plot_h + 14.0,
                tick_text(t)
            );
        }
        let _ = write!(
            o,
            r##"<line x1="{z:.1}" y1="{top:.0}" x2="{z:.1}" y2="{b:.1}" stroke="#444"/><text class="axis" x="{c:.1}" y="{ay:.1}" font-size="12" text-anchor="middle">{a}</text>"##,
            z = sx(0.0),
            b = top + plot_h,
            c = x0 + pw / 2.0,
            ay = top + plot_h + 34.0,
            a = esc(&self.axis)
        );
        for (ri, row) in self.rows.iter().enumerate() {
            let gy = top + ri as f64 * group_h + 4.0;
            let _ = write!(
                o,
                r#"<text class="label" x="{:.0}" y="{:.1}" font-size="12" text-anchor="end">{}</text>"#,
                LABEL_W - 8.0,
                gy + group_h / 2.0,
                fit(&row.label, 30)
            );
            for (si, bar) in row.bars.iter().enumerate() {
                let Some(b) = bar else { continue };
                let y = gy + si as f64 * BAR_H;
                let (a, z) = (sx(b.value.min(0.0)), sx(b.value.max(0.0)));
                let _ = write!(
                    o,
                    r#"<rect x="{a:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{}"/>"#,
                    (z - a).max(0.5),
                    BAR_H - 2.0,
                    PALETTE[si % PALETTE.len()]
                );
                let mut end = z.max(a);
                if let Some((p, q)) = b.whisker {
                    let (p, q) = (sx(p), sx(q));
                    let m = y + (BAR_H - 2.0) / 2.0;
                    let _ = write!(
                        o,
                        r##"<path class="whisker" d="M{p:.1} {m:.1}H{q:.1}M{p:.1} {:.1}V{:.1}M{q:.1} {:.1}V{:.1}" stroke="#222" fill="none"/>"##,
                        m - 4.0,
                        m + 4.0,
                        m - 4.0,
                        m + 4.0
                    );
                    end = end.max(q);
                }
                let _ = write!(
                    o,
                    r#"<text class="value" x="{:.1}" y="{:.1}" font-size="11">{}</text>"#,
                    end + 4.0,
                    y + BAR_H - 4.0,
                    esc(&b.text)
                );
            }
        }
        o.push_str("</svg>");
        o
    }
}

/// One class of points in a scatter.
#[derive(Debug, Clone)]
pub struct Points {
    pub name: String,
    pub colour: &'static str,
    pub points: Vec<(f64, f64)>,
}

/// A scatter with horizontal reference lines and one marked point.
#[derive(Debug, Clone)]
pub struct Scatter {
    pub title: String,
    pub x_axis: String,
    pub y_axis: String,
    pub classes: Vec<Points>,
    /// Horizontal lines: name (for the legend) and y.
    pub lines: Vec<(String, f64)>,
    /// The marked point: its legend text and position.
    pub chosen: Option<(String, (f64, f64))>,
}

impl Scatter {
    fn legend_items(&self) -> Vec<(String, String)> {
        let mut items: Vec<(String, String)> = self
            .classes
            .iter()
            .map(|c| {
                (
                    c.name.clone(),
                    format!(r#"<circle cx="6" cy="6" r="4" fill="{}"/>"#, c.colour),
                )
            })
            .collect();
        for (name, _) in &self.lines {
            items.push((
                name.clone(),
                r##"<path d="M0 6H12" stroke="#c0392b" stroke-dasharray="3 2" stroke-width="2"/>"##
                    .into(),
            ));
        }
        if let Some((name, _)) = &self.chosen {
            items.push((
                name.clone(),
                r##"<circle cx="6" cy="6" r="5" fill="none" stroke="#000" stroke-width="2"/>"##
                    .into(),
            ));
        }
        items
    }

    /// The SVG element.
    pub fn svg(&self) -> String {
        let items = self.legend_items();
        let extra = 17.0 * (legend_lines(70.0, &items) - 1) as f64;
        let h = 380.0 + extra;
        let (l, r, t, b) = (70.0, W - 30.0, TOP + 6.0 + extra, h - 50.0);
        let xs = self
            .classes
            .iter()
            .flat_map(|c| c.points.iter().map(|p| p.0));
        let ys = self
            .classes
            .iter()
            .flat_map(|c| c.points.iter().map(|p| p.1));
        let ys = ys.chain(self.lines.iter().map(|l| l.1));
        let span = |it: &mut dyn Iterator<Item = f64>| {
            let (a, z) = it.fold((f64::MAX, f64::MIN), |a, v| (a.0.min(v), a.1.max(v)));
            if a > z {
                (0.0, 1.0)
            } else {
                let p = ((z - a) * 0.08).max(z.abs().max(1.0) * 1e-3);
                (a - p, z + p)
            }
        };
        let (x0, x1) = span(&mut xs.into_iter());
        let (y0, y1) = span(&mut ys.into_iter());
        let sx = |v: f64| l + (v - x0) / (x1 - x0) * (r - l);
        let sy = |v: f64| b - (v - y0) / (y1 - y0) * (b - t);
        let mut o = String::new();
        let _ = write!(
            o,
            r#"<svg class="plot" width="{W:.0}" height="{h:.0}" viewBox="0 0 {W:.0} {h:.0}" font-family="sans-serif" role="img"><title>{t}</title><text class="title" x="10" y="20" font-size="15" font-weight="bold">{t}</text>"#,
            t = esc(&self.title)
        );
        legend(&mut o, 70.0, 30.0, &items);
        for v in ticks(x0, x1) {
            let x = sx(v);
            let _ = write!(
                o,
                r##"<line x1="{x:.1}" y1="{t:.0}" x2="{x:.1}" y2="{b:.0}" stroke="#eee"/><text x="{x:.1}" y="{:.0}" font-size="11" text-anchor="middle">{}</text>"##,
                b + 14.0,
                tick_text(v)
            );
        }
        for v in ticks(y0, y1) {
            let y = sy(v);
            let _ = write!(
                o,
                r##"<line x1="{l:.0}" y1="{y:.1}" x2="{r:.0}" y2="{y:.1}" stroke="#eee"/><text x="{:.0}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"##,
                l - 4.0,
                y + 4.0,
                tick_text(v)
            );
        }
        let _ = write!(
            o,
            r##"<rect x="{l:.0}" y="{t:.0}" width="{:.0}" height="{:.0}" fill="none" stroke="#444"/><text class="axis" x="{:.0}" y="{:.0}" font-size="12" text-anchor="middle">{}</text><text class="axis" transform="translate(16,{:.0}) rotate(-90)" font-size="12" text-anchor="middle">{}</text>"##,
            r - l,
            b - t,
            (l + r) / 2.0,
            h - 12.0,
            esc(&self.x_axis),
            (t + b) / 2.0,
            esc(&self.y_axis)
        );
        for (name, y) in &self.lines {
            let _ = write!(
                o,
                r##"<line class="budget" x1="{l:.0}" y1="{v:.1}" x2="{r:.0}" y2="{v:.1}" stroke="#c0392b" stroke-dasharray="6 3" stroke-width="1.5"><title>{}</title></line>"##,
                esc(name),
                v = sy(*y)
            );
        }
        for c in &self.classes {
            for &(x, y) in &c.points {
                let _ = write!(
                    o,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="4" fill="{}" fill-opacity="0.85"><title>{}: {x:.3}, {y:.3}</title></circle>"#,
                    sx(x),
                    sy(y),
                    c.colour,
                    esc(&c.name)
                );
            }
        }
        if let Some((name, (x, y))) = &self.chosen {
            let _ = write!(
                o,
                r##"<circle class="chosen" cx="{:.1}" cy="{:.1}" r="8" fill="none" stroke="#000" stroke-width="2"><title>{}</title></circle>"##,
                sx(*x),
                sy(*y),
                esc(name)
            );
        }
        o.push_str("</svg>");
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_cover_the_range_with_round_steps() {
        assert_eq!(ticks(0.0, 10.0), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        let t = ticks(-3.2, 1.1);
        assert!(t.contains(&0.0) && t.len() >= 3 && t.len() <= 7, "{t:?}");
    }

    #[test]
    fn bars_print_every_value_and_a_legend_entry_per_series() {
        let bar = |v: f64| {
            Some(Bar {
                value: v,
                text: format!("{v:.2} ms"),
                whisker: Some((v * 0.9, v * 1.2)),
            })
        };
        let svg = Bars {
            title: "latency".into(),
            axis: "median latency (ms)".into(),
            series: vec!["original".into(), "compressed".into()],
            rows: vec![
                Row {
                    label: "local".into(),
                    bars: vec![bar(2.0), bar(1.5)],
                },
                Row {
                    label: "pi".into(),
                    bars: vec![None, bar(-0.25)],
                },
            ],
            whisker_label: Some("p10–p90".into()),
        }
        .svg();
        for v in ["2.00 ms", "1.50 ms", "-0.25 ms"] {
            assert!(svg.contains(v), "{v} missing");
        }
        assert_eq!(svg.matches(r#"class="value""#).count(), 3);
        assert_eq!(svg.matches(r#"class="whisker""#).count(), 3);
        let legend = svg.split(r#"<g class="legend""#).nth(1).unwrap();
        for s in ["original", "compressed", "p10–p90"] {
            assert!(legend.contains(s));
        }
    }
}

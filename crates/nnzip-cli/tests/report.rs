//! Reports on the fixtures: the JSON reads back into the typed model and writes out the same,
//! `nnzip report` renders it again, the page's numbers agree with the JSON, the text fits 80
//! columns without colour, and the page renders in headless Chromium (no console errors, every
//! plot with a legend, every table cell whole), with screenshots in target/report-screenshots/.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde_json::Value;

fn nnzip(args: &[&str]) -> std::process::Output {
    nnzip_env(args, &[("NO_COLOR", "1")])
}

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// JSON → typed report → JSON gives the same document.
fn round_trip(json: &str, kind: &str) {
    let saved = nnzip::report::saved::Saved::from_json(json).unwrap();
    assert_eq!(saved.kind(), kind);
    let a: Value = serde_json::from_str(json).unwrap();
    let b = serde_json::to_value(&saved).unwrap();
    assert_eq!(a, b, "{kind}: the report does not read back as written");
}

/// The JSON value at `pointer`, shown with the decimals of `shown`'s first number, is that number.
fn agrees(json: &Value, pointer: &str, scale: f64, shown: &str) -> Result<(), String> {
    let num: String = shown
        .chars()
        .skip_while(|c| !(c.is_ascii_digit() || *c == '-'))
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ',' || *c == '-')
        .filter(|c| *c != ',')
        .collect();
    let decimals = num.split('.').nth(1).map_or(0, str::len);
    let v = json
        .pointer(pointer)
        .and_then(Value::as_f64)
        .ok_or(format!("{pointer}: not a number in the JSON"))?;
    let want = format!("{:.*}", decimals, v * scale);
    if want == num {
        Ok(())
    } else {
        Err(format!("{pointer}: page shows {num}, JSON gives {want}"))
    }
}

/// Every `data-field` number of the page against the JSON; returns how many were checked.
fn numbers_agree(page: &str, json: &Value) -> usize {
    let mut n = 0;
    for part in page.split("data-field=\"").skip(1) {
        let pointer = &part[..part.find('"').unwrap()];
        let scale = part
            .split_once("data-scale=\"")
            .filter(|(before, _)| !before.contains('>'))
            .map_or(1.0, |(_, a)| a[..a.find('"').unwrap()].parse().unwrap());
        let text = &part[part.find('>').unwrap() + 1..];
        let text = &text[..text.find('<').unwrap()];
        agrees(json, pointer, scale, text).unwrap();
        n += 1;
    }
    n
}

fn chromium() -> PathBuf {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .expect("headless Chromium (Debian package chromium; scripts/test.sh installs it)")
}

/// The page as Chromium's DOM, and the console messages logged while loading it.
fn render(page: &Path, screenshot: &Path) -> (String, Vec<String>) {
    let profile = tempfile::tempdir().unwrap();
    let base = |c: &mut Command| {
        c.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            "--hide-scrollbars",
            "--enable-logging=stderr",
            "--v=0",
            "--window-size=1000,1400",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()));
    };
    let url = format!("file://{}", page.canonicalize().unwrap().display());
    let mut c = Command::new(chromium());
    base(&mut c);
    let dom = c.arg("--dump-dom").arg(&url).output().unwrap();
    assert!(
        dom.status.success(),
        "{}",
        String::from_utf8_lossy(&dom.stderr)
    );
    let console = String::from_utf8_lossy(&dom.stderr)
        .lines()
        .filter(|l| l.contains("CONSOLE"))
        .map(str::to_string)
        .collect();
    let mut c = Command::new(chromium());
    base(&mut c);
    let shot = c
        .arg(format!("--screenshot={}", screenshot.display()))
        .arg(&url)
        .output()
        .unwrap();
    assert!(
        shot.status.success(),
        "{}",
        String::from_utf8_lossy(&shot.stderr)
    );
    let png = std::fs::read(screenshot).unwrap();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 1000);
    (String::from_utf8(dom.stdout).unwrap(), console)
}

fn between<'a>(s: &'a str, open: &str, close: &str) -> Vec<&'a str> {
    s.split(open)
        .skip(1)
        .map(|p| &p[..p.find(close).unwrap_or(p.len())])
        .collect()
}

fn strip_tags(s: &str) -> String {
    let mut o = String::new();
    let mut inside = false;
    for c in s.chars() {
        match c {
            '<' => inside = true,
            '>' => inside = false,
            _ if !inside => o.push(c),
            _ => {}
        }
    }
    o.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&amp;", "&")
}

/// The text of an element given from just after its tag's name.
fn inner(fragment: &str) -> String {
    strip_tags(&fragment[fragment.find('>').map_or(0, |i| i + 1)..])
}

/// The checks on Chromium's DOM of a report page; the titles of its plots.
fn check_dom(dom: &str, console: &[String], text: &str) -> Vec<String> {
    assert!(console.is_empty(), "console messages: {console:?}");
    let plots = between(dom, "<svg class=\"plot\"", "</svg>");
    let mut titles = Vec::new();
    for p in &plots {
        let title = inner(between(p, "<text class=\"title\"", "</text>")[0]);
        let legend = between(p, "<g class=\"legend\"", "</g></g>");
        assert!(
            !legend.is_empty() && !inner(legend[0]).trim().is_empty(),
            "plot {title}: no legend"
        );
        assert!(
            !inner(between(p, "<text class=\"axis\"", "</text>")[0]).is_empty(),
            "plot {title}: no axis label"
        );
        titles.push(title);
    }
    // Every value of the text report is one whole cell of the details table.
    let cells: Vec<String> = between(dom, "<td", "</td>")
        .iter()
        .map(|c| inner(c))
        .collect();
    let mut values: Vec<String> = Vec::new();
    for line in text.lines().skip(1) {
        let (k, v) = line.split_at(line.len().min(35));
        if k.trim().is_empty() {
            let last = values.last_mut().unwrap();
            last.push(' ');
            last.push_str(v.trim());
        } else {
            values.push(v.trim().to_string());
        }
    }
    for v in &values {
        assert!(cells.contains(v), "no cell holds {v:?} whole");
    }
    titles
}

fn text_fits(text: &str) {
    for l in text.lines() {
        assert!(l.chars().count() <= 80, "over 80 columns: {l:?}");
        assert!(!l.contains('\x1b'), "colour with NO_COLOR: {l:?}");
    }
}

fn shots() -> PathBuf {
    let d = repo().join("target/report-screenshots");
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn compress_reports_read_back_render_again_and_show_in_a_browser() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &str, &[&str], &[&str]); 2] = [
        (
            "resnet",
            "resnet.onnx",
            &["--max-drop", "1"],
            &[
                "Size per stage",
                "Latency per device",
                "Rate search",
                "Bits per weight",
                "Accuracy change per class",
            ],
        ),
        (
            "cnn-structured",
            "cnn.onnx",
            &["--prune", "structured", "--sparsity", "0.1"],
            &["Size per stage", "Latency per device", "Channels removed"],
        ),
    ];
    for (name, model, extra, want) in cases {
        let json_path = dir.path().join(format!("{name}.json"));
        let html = dir.path().join(format!("{name}.html"));
        let nnc = dir.path().join(format!("{name}.nnc"));
        let (m, c) = (fixture(model), fixture("mnist_test.npz"));
        let mut argv = vec![
            "compress",
            s(&m),
            "-o",
            s(&nnc),
            "--calib",
            s(&c),
            "--runs",
            "100",
            "--latency-time",
            "1",
            "--json",
            "--html",
            s(&html),
            "-q",
        ];
        argv.extend(extra);
        let json = ok(&nnzip(&argv));
        std::fs::write(&json_path, &json).unwrap();
        round_trip(&json, "compress");

        // Rendered again from the JSON: the same page, and the text.
        let again = dir.path().join(format!("{name}.again.html"));
        let text = ok(&nnzip(&["report", s(&json_path), "--html", s(&again)]));
        let page = std::fs::read_to_string(&html).unwrap();
        assert_eq!(page, std::fs::read_to_string(&again).unwrap());
        text_fits(&text);

        let v: Value = serde_json::from_str(&json).unwrap();
        assert!(
            numbers_agree(&page, &v) >= 12,
            "{name}: too few numbers checked"
        );
        assert!(
            !page.contains("<script") && !page.contains("http://") && !page.contains("https://")
        );

        let (dom, console) = render(&html, &shots().join(format!("{name}.png")));
        let titles = check_dom(&dom, &console, &text);
        for w in want {
            assert!(
                titles.iter().any(|t| t.starts_with(w)),
                "{name}: no plot {w} in {titles:?}"
            );
        }
    }
}

#[test]
fn prune_simplify_and_bench_reports_read_back_and_render() {
    let dir = tempfile::tempdir().unwrap();
    let pruned = dir.path().join("p.onnx");
    let prune = ok(&nnzip(&[
        "prune",
        s(&fixture("cnn.onnx")),
        "-o",
        s(&pruned),
        "--method",
        "structured",
        "--sparsity",
        "0.1",
        "--calib",
        s(&fixture("mnist_test.npz")),
        "--json",
    ]));
    round_trip(&prune, "prune");
    let out = dir.path().join("s.onnx");
    let simplify = ok(&nnzip(&[
        "simplify",
        s(&fixture("resnet.onnx")),
        "-o",
        s(&out),
        "--json",
    ]));
    round_trip(&simplify, "simplify");
    let bench = ok(&nnzip(&[
        "bench",
        s(&fixture("resnet.onnx")),
        "--vs",
        s(&out),
        "--runs",
        "20",
        "--warmup",
        "2",
        "--json",
    ]));
    round_trip(&bench, "bench");
    for (name, json) in [
        ("prune", &prune),
        ("simplify", &simplify),
        ("bench", &bench),
    ] {
        let p = dir.path().join(format!("{name}.json"));
        std::fs::write(&p, json).unwrap();
        let html = dir.path().join(format!("{name}.html"));
        let text = ok(&nnzip(&["report", s(&p), "--html", s(&html)]));
        assert!(!text.is_empty());
        let page = std::fs::read_to_string(&html).unwrap();
        let v: Value = serde_json::from_str(json).unwrap();
        assert!(numbers_agree(&page, &v) >= 3, "{name}");
        let (dom, console) = render(&html, &shots().join(format!("{name}.png")));
        assert!(console.is_empty(), "{name}: {console:?}");
        assert!(dom.contains("<svg class=\"plot\"") && dom.contains("class=\"legend\""));
    }
    // Not a report: bad input (exit 3), said so.
    let p = dir.path().join("x.json");
    std::fs::write(&p, "{\"hello\": 1}").unwrap();
    let o = nnzip(&["report", s(&p)]);
    assert_eq!(o.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a report"));
}

#[test]
fn macs_are_reported_for_a_model_given_shapes() {
    // Symbolic sizes made concrete by --shape: the MACs before and after are numbers, shown.
    let dir = tempfile::tempdir().unwrap();
    let nnc = dir.path().join("a.nnc");
    let json = ok(&nnzip(&[
        "compress",
        s(&fixture("dynamic_attention.onnx")),
        "-o",
        s(&nnc),
        "--shape",
        "input=1x16x32",
        "--shape",
        "mask=1x1x1x16",
        "--runs",
        "0",
        "--json",
        "-q",
    ]));
    let v: Value = serde_json::from_str(&json).unwrap();
    let (a, b) = (
        v["macs"].as_u64().unwrap(),
        v["macs_after"].as_u64().unwrap(),
    );
    assert!(a > 100_000 && b > 0 && b <= a, "{a} {b}");
    let p = dir.path().join("a.json");
    std::fs::write(&p, &json).unwrap();
    let html = dir.path().join("a.html");
    let text = ok(&nnzip(&["report", s(&p), "--html", s(&html)]));
    assert!(text
        .lines()
        .any(|l| l.starts_with("MACs before / after") && !l.contains(" - ")));
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains(&format!(
        "data-field=\"/macs\">{}",
        nnzip::report::html::thousands(a)
    )));
}

#[test]
fn the_console_check_sees_a_script_error() {
    // The browser check would catch a page that logs errors (so the assertion above can fail).
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.html");
    std::fs::write(
        &p,
        "<!doctype html><html><body><p>x</p><script>console.error('broken page')</script></body></html>",
    )
    .unwrap();
    let (_, console) = render(&p, &dir.path().join("bad.png"));
    assert!(
        console.iter().any(|l| l.contains("broken page")),
        "{console:?}"
    );
}

//! `nnzip calib`: calibration data from the user's own inputs.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use nnzip::calib::build::{self, ColorOrder, ImageLayout, ImageSpec};
use nnzip::onnx::Model;

use super::prune::UsageError;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The model the data is for (input names, sizes, layout and types come from it).
    pub model: PathBuf,
    /// Where to write the calibration .npz.
    #[arg(short, long)]
    pub output: PathBuf,
    /// A folder of PNG/JPEG images, or of one sub-folder per class (then `labels` are written,
    /// class ids in sub-folder name order).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["text", "npy"])]
    pub images: Option<PathBuf>,
    /// A text file of sentences, one per line, for a model with token inputs (needs --tokenizer).
    #[arg(
        long,
        value_name = "FILE",
        requires = "tokenizer",
        conflicts_with = "npy"
    )]
    pub text: Option<PathBuf>,
    /// A HuggingFace tokenizer.json (WordPiece: BERT, MiniLM, DistilBERT...).
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,
    /// NAME=FILE.npy (samples on a leading axis) or NAME=DIR (one .npy sample per file), for the
    /// model input NAME (repeatable).
    #[arg(long, value_name = "NAME=PATH", value_parser = parse_npy)]
    pub npy: Vec<(String, PathBuf)>,
    /// Image size HxW (default: the model input's fixed size).
    #[arg(long, value_name = "HxW", value_parser = parse_size)]
    pub size: Option<(usize, usize)>,
    /// Image layout: nchw or nhwc (default: from the model input's shape).
    #[arg(long, value_parser = parse_layout)]
    pub layout: Option<ImageLayout>,
    /// Feed channels as BGR (OpenCV-trained models) instead of RGB.
    #[arg(long)]
    pub bgr: bool,
    /// Per-channel mean, after scaling pixels to [0, 1] (one value or three), e.g.
    /// 0.485,0.456,0.406 (ImageNet).
    #[arg(long, value_parser = parse_triple, default_value = "0")]
    pub mean: [f32; 3],
    /// Per-channel standard deviation (one value or three), e.g. 0.229,0.224,0.225.
    #[arg(long, value_parser = parse_triple, default_value = "1")]
    pub std: [f32; 3],
    /// Resize the short side and crop the centre instead of stretching to the size.
    #[arg(long)]
    pub crop: bool,
    /// Sequence length for token inputs whose length the model leaves open.
    #[arg(long, default_value_t = 128)]
    pub seq_len: usize,
    /// Use at most N samples.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Print JSON (arrays written, samples, classes).
    #[arg(long)]
    pub json: bool,
}

fn parse_npy(s: &str) -> Result<(String, PathBuf), String> {
    let (n, p) = s
        .split_once('=')
        .ok_or_else(|| format!("'{s}' is not NAME=PATH"))?;
    Ok((n.to_string(), PathBuf::from(p)))
}

fn parse_size(s: &str) -> Result<(usize, usize), String> {
    let bad = || format!("'{s}' is not HxW (e.g. 224x224)");
    let (h, w) = s.split_once('x').ok_or_else(bad)?;
    let (h, w) = (h.parse().map_err(|_| bad())?, w.parse().map_err(|_| bad())?);
    if h == 0 || w == 0 {
        return Err(bad());
    }
    Ok((h, w))
}

fn parse_layout(s: &str) -> Result<ImageLayout, String> {
    match s.to_ascii_lowercase().as_str() {
        "nchw" => Ok(ImageLayout::Nchw),
        "nhwc" => Ok(ImageLayout::Nhwc),
        _ => Err(format!("'{s}' is not nchw or nhwc")),
    }
}

fn parse_triple(s: &str) -> Result<[f32; 3], String> {
    let v: Vec<f32> = s
        .split(',')
        .map(|x| x.trim().parse::<f32>())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("'{s}' is not one number or three separated by commas"))?;
    match v.as_slice() {
        [a] => Ok([*a; 3]),
        [a, b, c] => Ok([*a, *b, *c]),
        _ => Err(format!(
            "'{s}' is not one number or three separated by commas"
        )),
    }
}

#[derive(serde::Serialize)]
struct Report {
    output: PathBuf,
    samples: usize,
    arrays: Vec<(String, Vec<usize>)>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    classes: Vec<String>,
}

pub fn run(a: Args) -> Result<()> {
    if a.std.contains(&0.0) {
        bail!(UsageError("--std must not be 0".into()));
    }
    let model =
        Model::load(&a.model).with_context(|| format!("cannot load {}", a.model.display()))?;
    let (arrays, classes) = if let Some(dir) = &a.images {
        let ins = model.inputs();
        let vi = ins
            .iter()
            .find(|v| v.dtype.is_float())
            .context("the model has no float input for images")?;
        let (layout, size) = build::image_input(vi).unzip();
        let layout = a.layout.or(layout).ok_or_else(|| {
            UsageError(format!(
                "input {} is not [N,3,H,W] or [N,H,W,3]: give --layout",
                vi.name
            ))
        })?;
        let (height, width) = a.size.or(size.flatten()).ok_or_else(|| {
            UsageError(format!(
                "input {} has no fixed size: give --size HxW",
                vi.name
            ))
        })?;
        let spec = ImageSpec {
            height,
            width,
            layout,
            order: if a.bgr {
                ColorOrder::Bgr
            } else {
                ColorOrder::Rgb
            },
            mean: a.mean,
            std: a.std,
            crop: a.crop,
        };
        build::from_images(dir, &vi.name, &spec, a.limit)?
    } else if let (Some(text), Some(tok)) = (&a.text, &a.tokenizer) {
        (
            build::from_text(&model, text, tok, a.seq_len, a.limit)?,
            Vec::new(),
        )
    } else if !a.npy.is_empty() {
        (build::from_npy(&a.npy)?, Vec::new())
    } else {
        bail!(UsageError(
            "give --images DIR, --text FILE --tokenizer FILE, or --npy NAME=PATH".into()
        ));
    };
    // Checked as every command will read it.
    nnzip::calib::Calibration::from_arrays(&a.output, arrays.clone(), &model)
        .context("the data does not fit the model")?;
    nnzip::npz::write_npz(&a.output, &arrays)
        .with_context(|| format!("cannot write {}", a.output.display()))?;
    let report = Report {
        output: a.output.clone(),
        samples: arrays
            .first()
            .and_then(|(_, t)| t.dims.first().copied())
            .unwrap_or(0),
        arrays: arrays
            .iter()
            .map(|(n, t)| (n.clone(), t.dims.clone()))
            .collect(),
        classes,
    };
    if a.json {
        super::print_json(&report)
    } else {
        println!(
            "{}: {} samples ({})",
            report.output.display(),
            report.samples,
            report
                .arrays
                .iter()
                .map(|(n, d)| format!("{n} {d:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        if !report.classes.is_empty() {
            println!("classes: {}", report.classes.join(", "));
        }
        Ok(())
    }
}

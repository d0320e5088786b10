//! Building calibration data from a user's own inputs (`nnzip calib`): a folder of images
//! (resized, normalised, in the model's layout and colour order), a text file of sentences for
//! token-input models (WordPiece, see [`super::wordpiece`]), or `.npy` files. The result is the
//! calibration format every command reads: one array per model input with a leading sample
//! axis, plus `labels` when the images sit in one folder per class.

use std::path::{Path, PathBuf};

use serde::Serialize;
use thiserror::Error;

use super::wordpiece::WordPiece;
use crate::onnx::{Dim, Model, ValueInfo};
use crate::tensor::{DType, Tensor, TensorError};

#[derive(Debug, Error)]
pub enum BuildError {
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Image { path: PathBuf, reason: String },
    #[error(transparent)]
    Tokenizer(#[from] super::wordpiece::TokenizerError),
    #[error("{0}")]
    Model(String),
    #[error("{path}: no {what} found")]
    Empty { path: PathBuf, what: &'static str },
    #[error(transparent)]
    Npz(#[from] crate::npz::NpzError),
    #[error(transparent)]
    Tensor(#[from] TensorError),
}

impl BuildError {
    /// What kind of failure this is (for exit codes).
    pub fn class(&self) -> crate::errors::ErrorClass {
        use crate::errors::ErrorClass as C;
        match self {
            BuildError::Npz(e) => e.class(),
            BuildError::Io { .. }
            | BuildError::Image { .. }
            | BuildError::Tokenizer(_)
            | BuildError::Model(_)
            | BuildError::Empty { .. }
            | BuildError::Tensor(_) => C::BadInput,
        }
    }
}

/// Named arrays, the calibration format.
pub type Arrays = Vec<(String, Tensor)>;

/// Image files with their class ids (sub-folder order), when labelled.
pub type Labelled = Vec<(PathBuf, Option<i64>)>;

/// Channel order of the model's image input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ColorOrder {
    Rgb,
    Bgr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ImageLayout {
    Nchw,
    Nhwc,
}

/// How an image becomes the model's input.
#[derive(Debug, Clone, Serialize)]
pub struct ImageSpec {
    pub height: usize,
    pub width: usize,
    pub layout: ImageLayout,
    pub order: ColorOrder,
    /// Per channel (in the model's order), after scaling pixels to [0, 1]: `(x − mean) / std`.
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// Resize the short side to the target's and crop the centre (keeps the aspect ratio)
    /// instead of stretching to the target size.
    pub crop: bool,
}

/// Height, width and layout of a model's image input `[N, 3, H, W]` or `[N, H, W, 3]`, where
/// its sizes are fixed.
pub fn image_input(vi: &ValueInfo) -> Option<(ImageLayout, Option<(usize, usize)>)> {
    let d = vi.dims.as_ref()?;
    let fixed = |i: usize| match d.get(i) {
        Some(Dim::Fixed(n)) => Some(*n),
        _ => None,
    };
    if d.len() != 4 {
        return None;
    }
    if fixed(1) == Some(3) {
        Some((ImageLayout::Nchw, fixed(2).zip(fixed(3))))
    } else if fixed(3) == Some(3) {
        Some((ImageLayout::Nhwc, fixed(1).zip(fixed(2))))
    } else {
        None
    }
}

fn is_image(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, BuildError> {
    let io = |source| BuildError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(io)?;
    v.sort();
    Ok(v)
}

/// The images of `dir` in name order, labelled by sub-folder when the images sit in one
/// sub-folder per class (class ids in sub-folder name order): (path, label).
pub fn list_images(dir: &Path) -> Result<(Labelled, Vec<String>), BuildError> {
    let entries = sorted_entries(dir)?;
    let subdirs: Vec<&PathBuf> = entries.iter().filter(|p| p.is_dir()).collect();
    let mut out: Labelled = entries
        .iter()
        .filter(|p| p.is_file() && is_image(p))
        .map(|p| (p.clone(), None))
        .collect();
    let mut classes = Vec::new();
    if out.is_empty() && !subdirs.is_empty() {
        for (k, d) in subdirs.iter().enumerate() {
            classes.push(
                d.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            );
            for p in sorted_entries(d)?
                .into_iter()
                .filter(|p| p.is_file() && is_image(p))
            {
                out.push((p, Some(k as i64)));
            }
        }
    }
    if out.is_empty() {
        return Err(BuildError::Empty {
            path: dir.to_path_buf(),
            what: "PNG or JPEG images (directly, or one sub-folder per class)",
        });
    }
    Ok((out, classes))
}

/// One image as the model's input sample, `[3, H, W]` or `[H, W, 3]` values.
pub fn load_image(path: &Path, spec: &ImageSpec) -> Result<Vec<f32>, BuildError> {
    use image::imageops::FilterType;
    let img = image::open(path).map_err(|e| BuildError::Image {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let (h, w) = (spec.height as u32, spec.width as u32);
    let rgb = img.to_rgb8();
    let rgb = if rgb.dimensions() == (w, h) {
        rgb
    } else if spec.crop {
        // Short side to the target's, then the centre.
        let (iw, ih) = rgb.dimensions();
        let s = (f64::from(w) / f64::from(iw)).max(f64::from(h) / f64::from(ih));
        let (rw, rh) = (
            ((f64::from(iw) * s).round() as u32).max(w),
            ((f64::from(ih) * s).round() as u32).max(h),
        );
        let r = image::imageops::resize(&rgb, rw, rh, FilterType::Triangle);
        image::imageops::crop_imm(&r, (rw - w) / 2, (rh - h) / 2, w, h).to_image()
    } else {
        image::imageops::resize(&rgb, w, h, FilterType::Triangle)
    };
    let (hh, ww) = (spec.height, spec.width);
    let mut out = vec![0.0f32; 3 * hh * ww];
    for (x, y, p) in rgb.enumerate_pixels() {
        let (x, y) = (x as usize, y as usize);
        for c in 0..3 {
            let src = match spec.order {
                ColorOrder::Rgb => c,
                ColorOrder::Bgr => 2 - c,
            };
            let v = (f32::from(p.0[src]) / 255.0 - spec.mean[c]) / spec.std[c];
            let i = match spec.layout {
                ImageLayout::Nchw => (c * hh + y) * ww + x,
                ImageLayout::Nhwc => (y * ww + x) * 3 + c,
            };
            if let Some(slot) = out.get_mut(i) {
                *slot = v;
            }
        }
    }
    Ok(out)
}

/// The calibration arrays for `input` from a folder of images, and the class names when
/// labelled by sub-folder.
pub fn from_images(
    dir: &Path,
    input: &str,
    spec: &ImageSpec,
    limit: Option<usize>,
) -> Result<(Arrays, Vec<String>), BuildError> {
    let (mut files, classes) = list_images(dir)?;
    if let Some(n) = limit {
        files.truncate(n);
    }
    let mut values = Vec::with_capacity(files.len() * 3 * spec.height * spec.width);
    let mut labels = Vec::new();
    for (p, l) in &files {
        values.extend(load_image(p, spec)?);
        labels.extend(*l);
    }
    let dims = match spec.layout {
        ImageLayout::Nchw => vec![files.len(), 3, spec.height, spec.width],
        ImageLayout::Nhwc => vec![files.len(), spec.height, spec.width, 3],
    };
    let mut arrays = vec![(input.to_string(), Tensor::from_f32(dims, &values)?)];
    if labels.len() == files.len() {
        arrays.push((
            "labels".into(),
            Tensor::from_i64(vec![labels.len()], &labels)?,
        ));
    }
    Ok((arrays, classes))
}

/// The model's token inputs by role, and the sequence length it fixes.
struct TokenInputs {
    ids: String,
    mask: Option<String>,
    types: Option<String>,
    fixed_len: Option<usize>,
}

fn token_inputs(model: &Model) -> Result<TokenInputs, BuildError> {
    let ins = model.inputs();
    let find = |key: &str| {
        ins.iter()
            .find(|v| v.name.to_ascii_lowercase().contains(key) && !v.dtype.is_float())
            .map(|v| v.name.clone())
    };
    let ids = find("input_ids").or_else(|| find("ids")).ok_or_else(|| {
        BuildError::Model("the model has no integer input named like input_ids".into())
    })?;
    let fixed_len =
        ins.iter()
            .find(|v| v.name == ids)
            .and_then(|v| match v.dims.as_ref()?.get(1)? {
                Dim::Fixed(n) => Some(*n),
                _ => None,
            });
    Ok(TokenInputs {
        mask: find("mask"),
        types: find("type"),
        ids,
        fixed_len,
    })
}

/// Calibration arrays for a token-input model from a text file of sentences (one per line,
/// blank lines skipped), tokenized with `tokenizer`, padded to the model's fixed sequence
/// length or `seq_len`.
pub fn from_text(
    model: &Model,
    text: &Path,
    tokenizer: &Path,
    seq_len: usize,
    limit: Option<usize>,
) -> Result<Vec<(String, Tensor)>, BuildError> {
    let tok = WordPiece::load(tokenizer)?;
    let body = std::fs::read_to_string(text).map_err(|source| BuildError::Io {
        path: text.to_path_buf(),
        source,
    })?;
    let mut lines: Vec<&str> = body
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if let Some(n) = limit {
        lines.truncate(n);
    }
    if lines.is_empty() {
        return Err(BuildError::Empty {
            path: text.to_path_buf(),
            what: "sentences",
        });
    }
    let TokenInputs {
        ids: ids_name,
        mask: mask_name,
        types: type_name,
        fixed_len,
    } = token_inputs(model)?;
    let len = fixed_len.unwrap_or(seq_len).max(2);
    let (mut ids, mut mask) = (Vec::new(), Vec::new());
    for l in &lines {
        let (i, m) = tok.encode(l, len);
        ids.extend(i);
        mask.extend(m);
    }
    let dims = vec![lines.len(), len];
    let dtype_of = |name: &str| {
        model
            .inputs()
            .into_iter()
            .find(|v| v.name == name)
            .map_or(DType::I64, |v| v.dtype)
    };
    let as_input = |name: &str, v: &[i64]| -> Result<Tensor, TensorError> {
        match dtype_of(name) {
            DType::I32 => {
                let b: Vec<u8> = v.iter().flat_map(|&x| (x as i32).to_le_bytes()).collect();
                Tensor::from_bytes(DType::I32, dims.clone(), b)
            }
            _ => Tensor::from_i64(dims.clone(), v),
        }
    };
    let mut out = vec![(ids_name.clone(), as_input(&ids_name, &ids)?)];
    if let Some(m) = mask_name {
        out.push((m.clone(), as_input(&m, &mask)?));
    }
    if let Some(t) = type_name {
        out.push((t.clone(), as_input(&t, &vec![0; ids.len()])?));
    }
    Ok(out)
}

/// Calibration arrays from `.npy` files: `NAME=FILE.npy` (an array with a leading sample
/// axis) or `NAME=DIR` (one `.npy` sample per file, stacked in name order).
pub fn from_npy(specs: &[(String, PathBuf)]) -> Result<Vec<(String, Tensor)>, BuildError> {
    let mut out = Vec::new();
    for (name, path) in specs {
        let t = if path.is_dir() {
            let files: Vec<PathBuf> = sorted_entries(path)?
                .into_iter()
                .filter(|p| p.extension().is_some_and(|e| e == "npy"))
                .collect();
            if files.is_empty() {
                return Err(BuildError::Empty {
                    path: path.clone(),
                    what: ".npy files",
                });
            }
            let parts: Vec<Tensor> = files
                .iter()
                .map(|f| {
                    let t = crate::npz::read_npy(f)?;
                    let mut d = vec![1];
                    d.extend(&t.dims);
                    Ok(Tensor::from_bytes(t.dtype, d, t.into_bytes())?)
                })
                .collect::<Result<_, BuildError>>()?;
            if parts
                .windows(2)
                .any(|w| w[0].dims != w[1].dims || w[0].dtype != w[1].dtype)
            {
                return Err(BuildError::Model(format!(
                    "{}: the .npy samples differ in shape or type",
                    path.display()
                )));
            }
            super::concat0(&parts)?
        } else {
            crate::npz::read_npy(path)?
        };
        out.push((name.clone(), t));
    }
    Ok(out)
}

//! Row scales carried out of folded weights, so they are quantized in the parametrization they
//! were trained in.
//!
//! Folding a BatchNormalization into the Conv before it multiplies each output row of the weight
//! by the channel's scale s_c. Those scales spread far wider than trained rows do (20–70× on
//! PP-LCNet's pointwise convolutions, against 2–5× before folding), and one step size per tensor
//! then gives the small rows a relative error many times the reference's on the unfolded model:
//! measured on PP-LCNet, the same bytes give 15 dB of output SNR instead of 27. Here the scales are
//! recognised (the folded weight is the weight before simplification with its rows rescaled) and
//! factored out: the container codes the unscaled rows as the weight and the scales as a vector,
//! and the stored graph multiplies them back (`Mul`, which any decoder of the bitstream runs and
//! `nnzip decompress` folds away again).

use std::collections::HashMap;

use crate::onnx::Model;
use crate::tensor::DType;

/// Values sampled per row to recognise a rescaled row.
const SAMPLES: usize = 8;

/// Per-row fingerprints of a model's float weights (rank ≥ 2, rows along axis 0).
#[derive(Debug, Default)]
pub struct RowPrints {
    tensors: HashMap<String, Print>,
}

#[derive(Debug)]
struct Print {
    dims: Vec<usize>,
    /// Per row: sum of squares, and the values at the sampled positions.
    rows: Vec<(f64, [f32; SAMPLES])>,
}

/// Positions sampled in a row of `width` values.
fn positions(width: usize) -> [usize; SAMPLES] {
    let mut p = [0usize; SAMPLES];
    for (i, x) in p.iter_mut().enumerate() {
        *x = (i * width) / SAMPLES;
    }
    p
}

fn f32_le(b: &[u8]) -> f32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(b);
    f32::from_le_bytes(a)
}

/// Per row of `numel` values in `rows` rows: sum of squares and the sampled values; `None`
/// when there is nothing to print.
fn row_prints(
    rows: usize,
    numel: usize,
    values: impl Iterator<Item = f32>,
) -> Option<Vec<(f64, [f32; SAMPLES])>> {
    if rows == 0 || numel == 0 {
        return None;
    }
    let width = (numel / rows).max(1);
    let pos = positions(width);
    let mut out = Vec::with_capacity(numel.div_ceil(width));
    let (mut ss, mut s, mut col, mut next) = (0f64, [0f32; SAMPLES], 0usize, 0usize);
    for x in values {
        ss += f64::from(x) * f64::from(x);
        // Positions never decrease; several coincide when the row is short.
        while pos.get(next) == Some(&col) {
            s[next] = x;
            next += 1;
        }
        col += 1;
        if col == width {
            out.push((ss, s));
            (ss, s, col, next) = (0.0, [0.0; SAMPLES], 0, 0);
        }
    }
    if col > 0 {
        out.push((ss, s));
    }
    Some(out)
}

impl RowPrints {
    /// Fingerprints of every float weight of rank ≥ 2 in the main graph.
    pub fn of(model: &Model) -> RowPrints {
        let mut tensors = HashMap::new();
        for w in model.weights() {
            if !w.scope.is_empty() || w.dtype != DType::F32 || w.dims.len() < 2 {
                continue;
            }
            let rows = w.dims[0];
            // Inline bytes are read in place: a copy of the largest weight would add to the
            // peak memory of `compress`.
            let prints = match model.raw_bytes(&w.id) {
                Some(b) => row_prints(rows, b.len() / 4, b.chunks(4).map(f32_le)),
                None => {
                    let Ok(v) = model.read(&w.id).and_then(|t| {
                        t.to_f32().map_err(|source| crate::onnx::OnnxError::Tensor {
                            name: w.name.clone(),
                            source,
                        })
                    }) else {
                        continue;
                    };
                    row_prints(rows, v.len(), v.iter().copied())
                }
            };
            let Some(prints) = prints else {
                continue;
            };
            tensors.insert(
                w.qualified_name(),
                Print {
                    dims: w.dims.clone(),
                    rows: prints,
                },
            );
        }
        RowPrints { tensors }
    }

    /// For each weight `values` of shape `dims` named `name`: the row scales k (with
    /// `values` = k_c · before_c on every row) when the weight is a row-rescaled version of the
    /// fingerprinted one and the scales are not all 1.
    pub fn scales(&self, name: &str, dims: &[usize], values: &[f32]) -> Option<Vec<f32>> {
        let p = self.tensors.get(name)?;
        if p.dims != dims || p.rows.is_empty() {
            return None;
        }
        let width = values.len() / p.rows.len();
        let pos = positions(width);
        let mut k = Vec::with_capacity(p.rows.len());
        for (r, (ss0, s0)) in values.chunks(width.max(1)).zip(&p.rows) {
            let ss: f64 = r.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
            if *ss0 <= 0.0 {
                // A zero row stays zero under any scale.
                if ss > 0.0 {
                    return None;
                }
                k.push(1.0f32);
                continue;
            }
            // The sign from the samples, the magnitude from the norms.
            let dot: f64 = pos
                .iter()
                .zip(s0)
                .map(|(&i, &b)| f64::from(r.get(i).copied().unwrap_or(0.0)) * f64::from(b))
                .sum();
            let kc = (ss / ss0).sqrt() * if dot < 0.0 { -1.0 } else { 1.0 };
            // Every sampled value must be the old one times k (up to float rounding).
            for (&i, &b) in pos.iter().zip(s0) {
                let a = f64::from(r.get(i).copied().unwrap_or(0.0));
                let want = kc * f64::from(b);
                if (a - want).abs() > 1e-4 * want.abs().max(kc.abs() * (ss0 / width as f64).sqrt())
                {
                    return None;
                }
            }
            if kc == 0.0 || !kc.is_finite() {
                return None;
            }
            k.push(kc as f32);
        }
        k.iter().any(|&x| (x - 1.0).abs() > 1e-3).then_some(k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::Tensor;

    /// The streaming prints equal the row-by-row computation they replaced, including rows
    /// shorter than the sample count and tensors with fewer values than rows.
    #[test]
    fn streamed_prints_equal_rows_taken_whole() {
        for (rows, numel) in [(4, 40), (3, 3), (5, 2), (2, 9), (7, 7 * 13)] {
            let v: Vec<f32> = (0..numel).map(|i| (i as f32 * 0.37).sin()).collect();
            let width = v.len() / rows;
            let pos = positions(width);
            let expected: Vec<(f64, [f32; SAMPLES])> = v
                .chunks(width.max(1))
                .map(|r| {
                    let ss = r.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
                    let mut s = [0f32; SAMPLES];
                    for (k, &p) in pos.iter().enumerate() {
                        s[k] = r.get(p).copied().unwrap_or(0.0);
                    }
                    (ss, s)
                })
                .collect();
            let got = row_prints(rows, v.len(), v.iter().copied()).unwrap();
            assert_eq!(got, expected, "{rows} rows of {numel} values");
        }
        assert!(row_prints(0, 4, [1.0f32; 4].into_iter()).is_none());
    }

    fn model_with(w: &[f32], dims: Vec<usize>) -> Model {
        let mut proto = onnx_protobuf::ModelProto::new();
        let g = proto.graph.mut_or_insert_default();
        g.initializer.push(crate::onnx::tensor_proto(
            "w",
            &Tensor::from_f32(dims, w).unwrap(),
        ));
        Model::from_proto_in(proto, None, std::path::Path::new("")).unwrap()
    }

    #[test]
    fn recognises_rescaled_rows_and_nothing_else() {
        let w: Vec<f32> = (0..24).map(|i| (i as f32 - 11.5) * 0.1).collect();
        let prints = RowPrints::of(&model_with(&w, vec![3, 8]));
        let k = [0.001f32, -2.0, 30.0];
        let folded: Vec<f32> = w
            .chunks(8)
            .zip(k)
            .flat_map(|(r, s)| r.iter().map(move |x| x * s))
            .collect();
        let got = prints.scales("w", &[3, 8], &folded).unwrap();
        for (a, b) in got.iter().zip(k) {
            assert!((a / b - 1.0).abs() < 1e-5, "{got:?}");
        }
        // Unchanged: no scales; changed otherwise (pruned): not a rescaling.
        assert!(prints.scales("w", &[3, 8], &w).is_none());
        let mut pruned = folded.clone();
        pruned[8] = 0.0;
        assert!(prints.scales("w", &[3, 8], &pruned).is_none());
        assert!(prints.scales("w", &[4, 6], &folded).is_none());
    }
}

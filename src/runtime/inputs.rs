//! Model inputs for benchmarks and checks: seeded random data by type and shape, with symbolic
//! dimensions resolved from `--shape NAME=1x3x224x224` (or batch = 1), or arrays from an `.npz`.

use std::collections::HashMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use thiserror::Error;

use crate::onnx::{Dim, ValueInfo};
use crate::tensor::{DType, Tensor, TensorError};

#[derive(Debug, Error)]
pub enum InputError {
    #[error("input '{input}' has symbolic dimension(s) {dims} with no value: pass --shape {input}=... (e.g. --shape {input}={example})")]
    UnresolvedDims {
        input: String,
        dims: String,
        example: String,
    },
    #[error("bad --shape '{0}': expected NAME=D1xD2x... (e.g. input=1x3x224x224)")]
    BadShapeArg(String),
    #[error("--shape {name}: the model has no input of that name (inputs: {inputs})")]
    UnknownInput { name: String, inputs: String },
    #[error("--shape {name}={given}: the model fixes this input's shape to {fixed}")]
    ShapeConflict {
        name: String,
        given: String,
        fixed: String,
    },
    #[error("input '{0}' has an unknown rank: pass --shape or --inputs")]
    UnknownRank(String),
    #[error("input '{name}' has type {dtype}, which nnzip cannot generate")]
    UnsupportedType { name: String, dtype: DType },
    #[error(transparent)]
    Tensor(#[from] TensorError),
}

/// Parses `NAME=1x3x224x224`.
pub fn parse_shape_arg(s: &str) -> Result<(String, Vec<usize>), InputError> {
    let bad = || InputError::BadShapeArg(s.to_string());
    let (name, dims) = s.rsplit_once('=').ok_or_else(bad)?;
    if name.is_empty() {
        return Err(bad());
    }
    let dims = if dims.is_empty() {
        Vec::new()
    } else {
        dims.split(['x', 'X', ','])
            .map(|d| d.trim().parse::<usize>().map_err(|_| bad()))
            .collect::<Result<_, _>>()?
    };
    Ok((name.to_string(), dims))
}

/// Concrete shapes for the inputs: `--shape` values first, then fixed dims, then batch = 1 for a
/// symbolic first dimension; any other symbolic dimension must be given.
pub fn resolve_shapes(
    inputs: &[ValueInfo],
    given: &[(String, Vec<usize>)],
) -> Result<Vec<Vec<usize>>, InputError> {
    let names = || {
        inputs
            .iter()
            .map(|i| i.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    for (n, _) in given {
        if !inputs.iter().any(|i| &i.name == n) {
            return Err(InputError::UnknownInput {
                name: n.clone(),
                inputs: names(),
            });
        }
    }
    let given: HashMap<&str, &Vec<usize>> = given.iter().map(|(n, d)| (n.as_str(), d)).collect();
    inputs
        .iter()
        .map(|vi| {
            let fmt = |d: &[Dim]| {
                d.iter()
                    .map(|x| x.to_string())
                    .collect::<Vec<_>>()
                    .join("x")
            };
            if let Some(g) = given.get(vi.name.as_str()) {
                if let Some(d) = &vi.dims {
                    let conflict = d.len() != g.len()
                        || d.iter()
                            .zip(g.iter())
                            .any(|(a, b)| matches!(a, Dim::Fixed(n) if n != b));
                    if conflict {
                        return Err(InputError::ShapeConflict {
                            name: vi.name.clone(),
                            given: g
                                .iter()
                                .map(|x| x.to_string())
                                .collect::<Vec<_>>()
                                .join("x"),
                            fixed: fmt(d),
                        });
                    }
                }
                return Ok((*g).clone());
            }
            let dims = vi
                .dims
                .as_ref()
                .ok_or_else(|| InputError::UnknownRank(vi.name.clone()))?;
            let mut missing = Vec::new();
            let out: Vec<usize> = dims
                .iter()
                .enumerate()
                .map(|(i, d)| match d {
                    Dim::Fixed(n) => *n,
                    _ if i == 0 => 1,
                    other => {
                        missing.push(other.to_string());
                        1
                    }
                })
                .collect();
            if !missing.is_empty() {
                let example = dims
                    .iter()
                    .enumerate()
                    .map(|(i, d)| match d {
                        Dim::Fixed(n) => n.to_string(),
                        _ if i == 0 => "1".into(),
                        _ => "N".into(),
                    })
                    .collect::<Vec<_>>()
                    .join("x");
                return Err(InputError::UnresolvedDims {
                    input: vi.name.clone(),
                    dims: missing.join(", "),
                    example,
                });
            }
            Ok(out)
        })
        .collect()
}

/// Seeded random inputs: floats ~ N(0,1); integers uniform in 0..10 (safe as indices into small
/// tables); booleans fair coins.
pub fn random_inputs(
    inputs: &[ValueInfo],
    shapes: &[Vec<usize>],
    seed: u64,
) -> Result<Vec<(String, Tensor)>, InputError> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    inputs
        .iter()
        .zip(shapes)
        .map(|(vi, dims)| {
            let n = crate::tensor::numel(dims)?;
            let t = match vi.dtype {
                DType::F32 => {
                    let v: Vec<f32> = (0..n).map(|_| gaussian(&mut rng)).collect();
                    Tensor::from_f32(dims.clone(), &v)?
                }
                DType::F64 => Tensor::from_bytes(
                    DType::F64,
                    dims.clone(),
                    (0..n)
                        .flat_map(|_| (gaussian(&mut rng) as f64).to_le_bytes())
                        .collect(),
                )?,
                DType::I64 => Tensor::from_i64(
                    dims.clone(),
                    &(0..n).map(|_| rng.gen_range(0..10)).collect::<Vec<_>>(),
                )?,
                DType::I32 => Tensor::from_i32(
                    dims.clone(),
                    &(0..n).map(|_| rng.gen_range(0..10)).collect::<Vec<_>>(),
                )?,
                DType::U8 | DType::I8 => Tensor::from_bytes(
                    vi.dtype,
                    dims.clone(),
                    (0..n).map(|_| rng.gen_range(0..10u8)).collect(),
                )?,
                DType::Bool => Tensor::from_bytes(
                    DType::Bool,
                    dims.clone(),
                    (0..n).map(|_| rng.gen_range(0..2u8)).collect(),
                )?,
                dtype => {
                    return Err(InputError::UnsupportedType {
                        name: vi.name.clone(),
                        dtype,
                    })
                }
            };
            Ok((vi.name.clone(), t))
        })
        .collect()
}

/// Standard normal sample (Box-Muller), f32.
fn gaussian(rng: &mut ChaCha8Rng) -> f32 {
    let u1: f64 = rng.gen_range(f64::MIN_POSITIVE..1.0);
    let u2: f64 = rng.gen();
    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vi(name: &str, dims: Vec<Dim>) -> ValueInfo {
        ValueInfo {
            name: name.into(),
            dtype: DType::F32,
            dims: Some(dims),
        }
    }

    #[test]
    fn symbolic_batch_defaults_to_one_and_others_must_be_named() {
        let a = vi("x", vec![Dim::Symbolic("batch".into()), Dim::Fixed(3)]);
        assert_eq!(
            resolve_shapes(std::slice::from_ref(&a), &[]).unwrap(),
            vec![vec![1, 3]]
        );
        let b = vi(
            "ids",
            vec![Dim::Symbolic("batch".into()), Dim::Symbolic("seq".into())],
        );
        let e = resolve_shapes(std::slice::from_ref(&b), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("seq") && e.contains("--shape ids="), "{e}");
        let s = parse_shape_arg("ids=2x16").unwrap();
        assert_eq!(resolve_shapes(&[b], &[s]).unwrap(), vec![vec![2, 16]]);
        assert!(resolve_shapes(std::slice::from_ref(&a), &[("x".into(), vec![1, 4])]).is_err());
        assert!(resolve_shapes(&[a], &[("y".into(), vec![1, 3])]).is_err());
        assert!(parse_shape_arg("x=1xq").is_err());
    }

    #[test]
    fn random_inputs_are_seeded() {
        let a = vi("x", vec![Dim::Fixed(2), Dim::Fixed(8)]);
        let s = vec![vec![2, 8]];
        let r1 = random_inputs(std::slice::from_ref(&a), &s, 7).unwrap();
        let r2 = random_inputs(std::slice::from_ref(&a), &s, 7).unwrap();
        let r3 = random_inputs(std::slice::from_ref(&a), &s, 8).unwrap();
        assert_eq!(r1, r2);
        assert_ne!(r1, r3);
        assert_eq!(r1[0].1.dims, vec![2, 8]);
    }
}

//! Model inputs for benchmarks and checks: seeded random data by type and shape, with symbolic
//! dimensions resolved from given sizes (`NAME=1x3x224x224`; or batch = 1), or arrays from an `.npz`.

use std::collections::HashMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use thiserror::Error;

use crate::graph::infer::{declared, infer, InputDims};
use crate::graph::ops::InferCx;
use crate::graph::sym::Expr;
use crate::onnx::{Dim, ValueInfo};
use crate::tensor::{DType, Tensor, TensorError};

#[derive(Debug, Error)]
pub enum InputError {
    #[error("input '{input}' has symbolic dimension(s) {dims} with no value; give it a concrete size such as {input}={example}")]
    UnresolvedDims {
        input: String,
        dims: String,
        example: String,
    },
    #[error("bad input size '{0}': expected NAME=D1xD2x... (e.g. input=1x3x224x224)")]
    BadShapeArg(String),
    #[error(
        "a size was given for '{name}', but the model has no input of that name (inputs: {inputs})"
    )]
    UnknownInput { name: String, inputs: String },
    #[error(
        "the size given for '{name}' ({given}) differs from the shape the model fixes, {fixed}"
    )]
    ShapeConflict {
        name: String,
        given: String,
        fixed: String,
    },
    #[error("input '{0}' has an unknown rank: give its size or data for it")]
    UnknownRank(String),
    #[error("input '{name}' has type {dtype}, which nnzip cannot generate")]
    UnsupportedType { name: String, dtype: DType },
    #[error("no input size nnzip tried runs this model (inputs {inputs}; symbolic sizes {symbols}): give the input sizes (NAME=DIMS) or calibration data")]
    NoRunnableSize { inputs: String, symbols: String },
    #[error(transparent)]
    Tensor(#[from] TensorError),
}

impl InputError {
    /// Every input error is a mistake in how the inputs were asked for (exit 2).
    pub fn class(&self) -> crate::errors::ErrorClass {
        crate::errors::ErrorClass::Usage
    }
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
    check_given(inputs, given)?;
    let given: HashMap<&str, &Vec<usize>> = given.iter().map(|(n, d)| (n.as_str(), d)).collect();
    inputs
        .iter()
        .map(|vi| {
            if let Some(g) = given.get(vi.name.as_str()) {
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

/// How an input is filled with seeded data: what the model does with it decides.
#[derive(Debug, Clone, PartialEq)]
pub enum Fill {
    /// Floats ~ N(0, 1).
    Normal,
    /// Integers uniform in `0..n`: indices into a table of `n` rows (token ids, types).
    Index(i64),
    /// The value the graph compares the input with (a sample rate, a mode switch).
    Constant(i64),
    /// Integers and booleans nothing above decides: ones (an attention mask attends to all).
    Ones,
}

/// One input's concrete shape and fill.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedInput {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub fill: Fill,
}

/// Concrete inputs a model runs on, for checks and probes on seeded data.
#[derive(Debug, Clone, PartialEq)]
pub struct InputPlan {
    pub inputs: Vec<PlannedInput>,
    /// Sizes nnzip chose for symbolic dims (`x[2]=224`), empty when none were needed.
    pub chosen: Vec<String>,
}

impl InputPlan {
    pub fn shapes(&self) -> Vec<(String, Vec<usize>)> {
        self.inputs
            .iter()
            .map(|i| (i.name.clone(), i.shape.clone()))
            .collect()
    }

    /// Seeded inputs following each input's fill.
    pub fn random(&self, seed: u64) -> Result<Vec<(String, Tensor)>, InputError> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        self.inputs
            .iter()
            .map(|p| {
                let n = crate::tensor::numel(&p.shape)?;
                let int = |rng: &mut ChaCha8Rng| match p.fill {
                    Fill::Index(k) if k > 0 => rng.gen_range(0..k),
                    Fill::Constant(v) => v,
                    _ => 1,
                };
                let dims = p.shape.clone();
                let t = match p.dtype {
                    DType::F32 => Tensor::from_f32(
                        dims,
                        &(0..n).map(|_| gaussian(&mut rng)).collect::<Vec<_>>(),
                    )?,
                    DType::F64 => Tensor::from_bytes(
                        DType::F64,
                        dims,
                        (0..n)
                            .flat_map(|_| (gaussian(&mut rng) as f64).to_le_bytes())
                            .collect(),
                    )?,
                    DType::I64 => {
                        Tensor::from_i64(dims, &(0..n).map(|_| int(&mut rng)).collect::<Vec<_>>())?
                    }
                    DType::I32 => Tensor::from_i32(
                        dims,
                        &(0..n)
                            .map(|_| i32::try_from(int(&mut rng)).unwrap_or(0))
                            .collect::<Vec<_>>(),
                    )?,
                    DType::U8 | DType::I8 | DType::Bool => Tensor::from_bytes(
                        p.dtype,
                        dims,
                        (0..n)
                            .map(|_| u8::try_from(int(&mut rng)).unwrap_or(1))
                            .collect(),
                    )?,
                    dtype => {
                        return Err(InputError::UnsupportedType {
                            name: p.name.clone(),
                            dtype,
                        })
                    }
                };
                Ok((p.name.clone(), t))
            })
            .collect()
    }
}

/// Sizes tried for a symbolic dimension nothing else fixes, by the input's kind.
fn candidates(dtype: DType, rank: usize) -> &'static [i64] {
    match (dtype.is_float(), rank) {
        // images, feature maps: common sizes, multiples of 32 first (detectors need them)
        (true, 4) | (true, 5) => &[
            224, 256, 320, 640, 192, 160, 128, 96, 64, 48, 32, 384, 512, 1,
        ],
        // audio chunks, sequences of features; 1 for batch-like axes of recurrent states
        (true, _) => &[512, 256, 576, 1024, 2048, 64, 16, 1],
        // token sequences
        (false, _) => &[16, 32, 64, 128, 8, 1],
    }
}

/// What the graph does with an integer input, found by following it through ops that keep
/// its values (casts, reshapes, constant-index gathers) to an `Equal` with a constant or a
/// `Gather` into a constant table.
fn integer_fill(model: &crate::onnx::Model, input: &str) -> Fill {
    let g = model.graph();
    let index = crate::graph::index::GraphIndex::new(model);
    let constant = |name: &str| index.constant(model, name).ok().flatten();
    let mut frontier = vec![input.to_string()];
    for _ in 0..6 {
        let mut next = Vec::new();
        for name in &frontier {
            for n in g.node.iter().filter(|n| n.input.iter().any(|i| i == name)) {
                let k = n.input.iter().position(|i| i == name).unwrap_or(0);
                let other = n
                    .input
                    .get(1usize.saturating_sub(k))
                    .map(String::as_str)
                    .unwrap_or("");
                match n.op_type.as_str() {
                    "Equal" => {
                        if let Some(v) = constant(other)
                            .and_then(|t| t.to_i64_lossy())
                            .and_then(|v| v.first().copied())
                        {
                            return Fill::Constant(v);
                        }
                    }
                    "Gather" if k == 1 => {
                        if let Some(t) = constant(n.input.first().map(String::as_str).unwrap_or(""))
                        {
                            let axis = n
                                .attribute
                                .iter()
                                .find(|a| a.name == "axis")
                                .map_or(0, |a| a.i);
                            let a = crate::graph::ops::norm_axis(axis, t.dims.len()).unwrap_or(0);
                            let rows = t.dims.get(a).copied().unwrap_or(0);
                            return Fill::Index(i64::try_from(rows).unwrap_or(0));
                        }
                    }
                    "Cast" | "Reshape" | "Squeeze" | "Unsqueeze" | "Identity" | "Flatten"
                    | "Gather"
                        if k == 0 =>
                    {
                        next.extend(n.output.iter().cloned());
                    }
                    _ => {}
                }
            }
        }
        frontier = next;
    }
    Fill::Ones
}

/// Plans concrete inputs: `given` shapes first, then fixed dims, batch 1 for a symbolic first
/// dimension, and for other symbolic dims the first candidate size at which the model's shape
/// arithmetic holds (sizes it requires equal, windows that fit) and, with a runtime, at which
/// ONNX Runtime runs it.
pub fn plan(
    model: &crate::onnx::Model,
    given: &[(String, Vec<usize>)],
    check: &mut dyn FnMut(&InputPlan) -> bool,
) -> Result<InputPlan, InputError> {
    plans(model, given, check, 1)?
        .into_iter()
        .next()
        .ok_or_else(|| no_size(model, &[]))
}

fn no_size(model: &crate::onnx::Model, symbols: &[String]) -> InputError {
    InputError::NoRunnableSize {
        inputs: model
            .inputs()
            .iter()
            .map(|i| i.name.clone())
            .collect::<Vec<_>>()
            .join(", "),
        symbols: symbols.join(", "),
    }
}

/// [`plan`], up to `n` runnable plans at different sizes (one when every size is fixed).
pub fn plans(
    model: &crate::onnx::Model,
    given: &[(String, Vec<usize>)],
    check: &mut dyn FnMut(&InputPlan) -> bool,
    n: usize,
) -> Result<Vec<InputPlan>, InputError> {
    let ins = model.inputs();
    // Validate names and conflicts as before.
    check_given(&ins, given)?;
    let mut cx = InferCx::default();
    let (dims, free) = planned_dims(&ins, given, &mut cx)?;
    let holds = |env: &HashMap<String, i64>| consistent_at(model, &dims, env);
    let mut env = batch_symbols(&ins, given, &mut cx);
    let free: Vec<(String, DType, usize)> = free
        .into_iter()
        .filter(|f| !env.contains_key(&f.0))
        .collect();
    // Candidate assignments, one symbol at a time; the model's own constraints filter them.
    for (sym, dtype, rank) in &free {
        let cands = candidates(*dtype, *rank);
        let pick = cands.iter().copied().find(|&c| {
            let mut e = env.clone();
            e.insert(sym.clone(), c);
            holds(&e)
        });
        env.insert(
            sym.clone(),
            pick.unwrap_or(cands.first().copied().unwrap_or(1)),
        );
    }
    let mut attempts = vec![env.clone()];
    // Alternatives for the runtime check: each symbol's other candidates, in order.
    for (sym, dtype, rank) in &free {
        for &c in candidates(*dtype, *rank) {
            let mut e = env.clone();
            e.insert(sym.clone(), c);
            if !attempts.contains(&e) && holds(&e) {
                attempts.push(e);
            }
        }
    }
    let mut out: Vec<InputPlan> = Vec::new();
    for e in &attempts {
        if out.len() >= n {
            break;
        }
        let Some(p) = plan_at(model, &ins, &dims, e) else {
            continue;
        };
        if !out.contains(&p) && check(&p) {
            out.push(p);
        }
    }
    if out.is_empty() {
        return Err(no_size(
            model,
            &free.iter().map(|f| f.0.clone()).collect::<Vec<_>>(),
        ));
    }
    Ok(out)
}

/// Each input's dims (given, else declared with a symbolic first dim as 1) and the symbols
/// left open, with the dtype and rank of the first input they appear in.
#[allow(clippy::type_complexity)]
fn planned_dims(
    ins: &[ValueInfo],
    given: &[(String, Vec<usize>)],
    cx: &mut InferCx,
) -> Result<(InputDims, Vec<(String, DType, usize)>), InputError> {
    let mut dims: InputDims = HashMap::new();
    let mut free: Vec<(String, DType, usize)> = Vec::new();
    for vi in ins {
        let d: Vec<Expr> = match given.iter().find(|(n, _)| n == &vi.name) {
            Some((_, g)) => crate::graph::sym::known(g).unwrap_or_default(),
            None => {
                let mut d = declared(vi, cx, true)
                    .ok_or_else(|| InputError::UnknownRank(vi.name.clone()))?;
                if let Some(first) = d.first_mut().filter(|x| !x.is_known()) {
                    *first = Expr::int(1);
                }
                d
            }
        };
        for x in &d {
            for s in x.symbols() {
                if !free.iter().any(|f| f.0 == s) {
                    free.push((s, vi.dtype, d.len()));
                }
            }
        }
        dims.insert(vi.name.clone(), d);
    }
    Ok((dims, free))
}

/// Whether shape inference finds the model consistent with the symbols set to `env`.
fn consistent_at(model: &crate::onnx::Model, dims: &InputDims, env: &HashMap<String, i64>) -> bool {
    let concrete: InputDims = dims
        .iter()
        .filter_map(|(k, d)| {
            let v: Option<Vec<Expr>> = d
                .iter()
                .map(|x| x.eval(&|s| env.get(s).copied()).map(Expr::int))
                .collect();
            Some((k.clone(), v?))
        })
        .collect();
    infer(model, &concrete).consistent()
}

/// A symbol that is some input's first dimension is the batch: 1 wherever it appears (a
/// recurrent state carries it on another axis).
fn batch_symbols(
    ins: &[ValueInfo],
    given: &[(String, Vec<usize>)],
    cx: &mut InferCx,
) -> HashMap<String, i64> {
    let mut env: HashMap<String, i64> = HashMap::new();
    for vi in ins {
        if given.iter().any(|(n, _)| n == &vi.name) {
            continue;
        }
        let declared_first = declared(vi, cx, true).and_then(|d| d.first().cloned());
        if let Some(s) = declared_first
            .filter(|d| !d.is_known())
            .and_then(|d| d.symbols().into_iter().next())
        {
            env.insert(s, 1);
        }
    }
    env
}

/// The plan with the symbols set to `env`: concrete shapes (None where one stays open or
/// negative) and each input's fill.
fn plan_at(
    model: &crate::onnx::Model,
    ins: &[ValueInfo],
    dims: &InputDims,
    env: &HashMap<String, i64>,
) -> Option<InputPlan> {
    let mut out = Vec::new();
    for vi in ins {
        let d = dims.get(&vi.name)?;
        let shape: Vec<usize> = d
            .iter()
            .map(|x| {
                x.eval(&|s| env.get(s).copied())
                    .and_then(|v| usize::try_from(v).ok())
            })
            .collect::<Option<_>>()?;
        let fill = if vi.dtype.is_float() {
            Fill::Normal
        } else {
            integer_fill(model, &vi.name)
        };
        out.push(PlannedInput {
            name: vi.name.clone(),
            dtype: vi.dtype,
            shape,
            fill,
        });
    }
    let mut chosen: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    chosen.sort();
    Some(InputPlan {
        inputs: out,
        chosen,
    })
}

/// The one check of given input sizes (`NAME=DIMS`) against the model's inputs: every name is an
/// input, and its size has the input's rank and agrees with its fixed dims. Symbolic dims need
/// not all be given. Every job that takes sizes calls it before any work.
pub fn check_given(inputs: &[ValueInfo], given: &[(String, Vec<usize>)]) -> Result<(), InputError> {
    let names = inputs
        .iter()
        .map(|i| i.name.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    for (n, g) in given {
        let vi = inputs
            .iter()
            .find(|i| &i.name == n)
            .ok_or_else(|| InputError::UnknownInput {
                name: n.clone(),
                inputs: names.clone(),
            })?;
        if let Some(d) = &vi.dims {
            let conflict = d.len() != g.len()
                || d.iter()
                    .zip(g)
                    .any(|(a, b)| matches!(a, Dim::Fixed(x) if x != b));
            if conflict {
                return Err(InputError::ShapeConflict {
                    name: n.clone(),
                    given: g
                        .iter()
                        .map(|x| x.to_string())
                        .collect::<Vec<_>>()
                        .join("x"),
                    fixed: d
                        .iter()
                        .map(|x| x.to_string())
                        .collect::<Vec<_>>()
                        .join("x"),
                });
            }
        }
    }
    Ok(())
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
        assert!(e.contains("seq") && e.contains("such as ids=1x"), "{e}");
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

//! The reference's one knob for comparison: the single QP (every weight at one QP) giving the
//! smallest bitstream within a metric budget, over the QP grid.

use std::collections::HashMap;

use nnc_codec::{EncoderConfig, TensorData};

use super::RateError;
use crate::calib::{evaluate, run_model, CalibError, Calibration, Metric};
use crate::container::{prepare, ContainerOptions};
use crate::onnx::Model;
use crate::runtime::Runtime;
use crate::tensor::Tensor;

/// The QP grid tried per tensor, finest first.
pub fn qp_grid(cfg: &EncoderConfig) -> Vec<i32> {
    // One step-size doubling is 2^qp_density QP; quarter-doublings between, from two doublings
    // finer than `qp` to six coarser.
    let step = ((1i32 << cfg.qp_density) / 4).max(1);
    let lo = cfg.qp - 8 * step;
    (0..33).map(|i| lo + i * step).collect()
}

/// Model with the quantized reconstruction of `cfg` in place of its weights.
pub fn quantized_model(model: &Model, opts: &ContainerOptions) -> Result<Model, RateError> {
    let (tensors, cfg, _, _) = prepare(model, opts)?;
    let rec = nnc_codec::reconstruct(&tensors, &cfg)?;
    let mut m = model.clone();
    let names: HashMap<String, usize> = tensors
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.clone(), i))
        .collect();
    let weights = m.weights();
    for w in &weights {
        let Some(&i) = names.get(&w.qualified_name()) else {
            continue;
        };
        if let TensorData::F32(v) = &rec[i].data {
            m.write(&w.id, &Tensor::from_f32(w.dims.clone(), v)?)?;
        }
    }
    Ok(m)
}

fn first_output(out: &[(String, Tensor)]) -> Result<&Tensor, RateError> {
    crate::calib::metric_output(out).ok_or(RateError::Calib(CalibError::Empty {
        path: Default::default(),
    }))
}

/// The single QP (the reference's one knob) giving the smallest bitstream whose metric drop stays
/// within `max_drop`, over the whole QP grid: (qp, bytes, metric).
pub fn best_single_qp(
    rt: &Runtime,
    model: &Model,
    calib: &Calibration,
    opts: &ContainerOptions,
    max_drop: f64,
) -> Result<Option<(i32, u64, f64)>, RateError> {
    let reference_out = run_model(rt, model, calib)?;
    let reference = first_output(&reference_out)?.clone();
    let metric = Metric::for_data(calib, &reference);
    let metric_reference = evaluate(metric, calib, &reference, &reference)?;
    // Every QP of the grid: the metric is not monotonic in QP, so no early stop.
    let mut best: Option<(i32, u64, f64)> = None;
    for qp in qp_grid(&opts.codec) {
        let mut o = opts.clone();
        o.codec.qp = qp;
        let m = quantized_model(model, &o)?;
        let v = evaluate(
            metric,
            calib,
            &reference,
            first_output(&run_model(rt, &m, calib)?)?,
        )?;
        if metric_reference - v > max_drop {
            continue;
        }
        let (ts, cc, _, _) = prepare(model, &o)?;
        let bytes = nnc_codec::encode(&ts, &cc)?.len() as u64;
        if best.is_none_or(|b| bytes < b.1) {
            best = Some((qp, bytes, v));
        }
    }
    Ok(best)
}

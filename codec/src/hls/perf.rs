//! Performance maps of NNR_MPS / NNR_LPS (`sparsification_performance_map()`,
//! `pruning_performance_map()`, `unification_performance_map()`,
//! `decomposition_performance_map()`). Counts are 8 or 16 bits, so sizes are bounded.

use crate::bits::{BitReader, BitWriter};
use crate::error::Result;

/// One entry of a sparsification or pruning map.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RatioEntry {
    /// `sparsification_threshold` / `pruning_ratio`.
    pub ratio: f32,
    /// `non_zero_ratio` (sparsification only).
    pub non_zero_ratio: f32,
    /// `spm_nn_accuracy` / `ppm_nn_accuracy`.
    pub nn_accuracy: f32,
    /// `*_class_bitmask`.
    pub class_bitmask: u64,
    /// `*_nn_class_accuracy`, one per class (`*_count_classes`).
    pub class_accuracy: Vec<f32>,
}

/// One entry of a unification map.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct UnificationEntry {
    /// `reshaped_tensor_dimensions` (count minus one values).
    pub reshaped_tensor_dimensions: Vec<u64>,
    /// `count_reshaped_tensor_dimension`.
    pub count_reshaped: u64,
    /// `super_block_dimensions`.
    pub super_block_dimensions: Vec<u8>,
    /// `block_dimensions`.
    pub block_dimensions: Vec<u8>,
    /// `unification_threshold`.
    pub threshold: f32,
    /// `upm_nn_accuracy`.
    pub nn_accuracy: f32,
    /// `upm_count_classes`.
    pub count_classes: u8,
    /// `upm_class_bitmask`; also the number of class accuracies that follow (as NNCodec reads it).
    pub class_bitmask: u64,
    /// `upm_nn_class_accuracy`.
    pub class_accuracy: Vec<f32>,
}

/// One entry of a decomposition map.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DecompositionEntry {
    /// `mse_threshold`.
    pub mse_threshold: f32,
    /// `dpm_nn_accuracy`.
    pub nn_accuracy: f32,
    /// `nn_reduction_ratio`.
    pub nn_reduction_ratio: f32,
    /// `dpm_nn_class_accuracy`.
    pub class_accuracy: Vec<f32>,
}

/// The optional maps (entry lists have `count - 1` entries, as coded).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PerformanceMaps {
    /// Sparsification map: `spm_count_thresholds` and its entries.
    pub sparsification: Option<(u8, Vec<RatioEntry>)>,
    /// Pruning map.
    pub pruning: Option<(u8, Vec<RatioEntry>)>,
    /// Unification map.
    pub unification: Option<(u8, Vec<UnificationEntry>)>,
    /// Decomposition map.
    pub decomposition: Option<(u8, Vec<DecompositionEntry>)>,
}

fn floats(r: &mut BitReader<'_>, n: u64) -> Result<Vec<f32>> {
    (0..n).map(|_| r.flt32("nn_class_accuracy")).collect()
}

fn ratio_map(r: &mut BitReader<'_>, sparsification: bool) -> Result<(u8, Vec<RatioEntry>)> {
    let count = r.u(8, "count_thresholds")? as u8;
    let mut v = Vec::new();
    for _ in 0..count.saturating_sub(1) {
        let ratio = r.flt32("threshold")?;
        let non_zero_ratio = if sparsification {
            r.flt32("non_zero_ratio")?
        } else {
            0.0
        };
        let nn_accuracy = r.flt32("nn_accuracy")?;
        let classes = r.u(8, "count_classes")?;
        let class_bitmask = r.ue(7, "class_bitmask")?;
        let class_accuracy = floats(r, classes)?;
        v.push(RatioEntry {
            ratio,
            non_zero_ratio,
            nn_accuracy,
            class_bitmask,
            class_accuracy,
        });
    }
    Ok((count, v))
}

fn write_ratio_map(w: &mut BitWriter, m: &(u8, Vec<RatioEntry>), sparsification: bool) {
    w.u(8, u64::from(m.0));
    for e in m.1.iter().take(usize::from(m.0.saturating_sub(1))) {
        w.flt32(e.ratio);
        if sparsification {
            w.flt32(e.non_zero_ratio);
        }
        w.flt32(e.nn_accuracy);
        w.u(8, e.class_accuracy.len() as u64);
        w.ue(7, e.class_bitmask);
        for &a in e.class_accuracy.iter().take(255) {
            w.flt32(a);
        }
    }
}

impl PerformanceMaps {
    /// Parses the maps whose flags are set.
    pub fn parse(
        r: &mut BitReader<'_>,
        spars: bool,
        prun: bool,
        unif: bool,
        decomp: bool,
    ) -> Result<Self> {
        let mut m = PerformanceMaps::default();
        if spars {
            m.sparsification = Some(ratio_map(r, true)?);
        }
        if prun {
            m.pruning = Some(ratio_map(r, false)?);
        }
        if unif {
            let count = r.u(8, "upm_count_thresholds")? as u8;
            let mut v = Vec::new();
            for _ in 0..count.saturating_sub(1) {
                let count_reshaped = r.ue(1, "count_reshaped_tensor_dimension")?;
                if count_reshaped > 64 {
                    return Err(crate::Error::Limit(
                        "count_reshaped_tensor_dimension".into(),
                    ));
                }
                let reshaped = (0..count_reshaped.saturating_sub(1))
                    .map(|_| r.ue(7, "reshaped_tensor_dimensions"))
                    .collect::<Result<Vec<_>>>()?;
                r.byte_alignment()?;
                let nsb = r.u(8, "count_super_block_dimension")?;
                let sb = (0..nsb.saturating_sub(1))
                    .map(|_| r.u(8, "super_block_dimensions").map(|x| x as u8))
                    .collect::<Result<Vec<_>>>()?;
                let nb = r.u(8, "count_block_dimension")?;
                let bd = (0..nb.saturating_sub(1))
                    .map(|_| r.u(8, "block_dimensions").map(|x| x as u8))
                    .collect::<Result<Vec<_>>>()?;
                let threshold = r.flt32("unification_threshold")?;
                let nn_accuracy = r.flt32("upm_nn_accuracy")?;
                let count_classes = r.u(8, "upm_count_classes")? as u8;
                let class_bitmask = r.ue(7, "upm_class_bitmask")?;
                if class_bitmask > 1 << 16 {
                    return Err(crate::Error::Limit("upm_class_bitmask".into()));
                }
                let class_accuracy = floats(r, class_bitmask)?;
                v.push(UnificationEntry {
                    reshaped_tensor_dimensions: reshaped,
                    count_reshaped,
                    super_block_dimensions: sb,
                    block_dimensions: bd,
                    threshold,
                    nn_accuracy,
                    count_classes,
                    class_bitmask,
                    class_accuracy,
                });
            }
            m.unification = Some((count, v));
        }
        if decomp {
            let count = r.u(8, "dpm_count_thresholds")? as u8;
            let mut v = Vec::new();
            for _ in 0..count.saturating_sub(1) {
                let mse_threshold = r.flt32("mse_threshold")?;
                let nn_accuracy = r.flt32("dpm_nn_accuracy")?;
                let nn_reduction_ratio = r.flt32("nn_reduction_ratio")?;
                let classes = r.u(16, "dpm_count_classes")?;
                let class_accuracy = floats(r, classes)?;
                v.push(DecompositionEntry {
                    mse_threshold,
                    nn_accuracy,
                    nn_reduction_ratio,
                    class_accuracy,
                });
            }
            m.decomposition = Some((count, v));
        }
        Ok(m)
    }

    /// Writes the present maps.
    pub fn write(&self, w: &mut BitWriter) {
        if let Some(m) = &self.sparsification {
            write_ratio_map(w, m, true);
        }
        if let Some(m) = &self.pruning {
            write_ratio_map(w, m, false);
        }
        if let Some((count, v)) = &self.unification {
            w.u(8, u64::from(*count));
            for e in v.iter().take(usize::from(count.saturating_sub(1))) {
                w.ue(1, e.count_reshaped);
                for &d in &e.reshaped_tensor_dimensions {
                    w.ue(7, d);
                }
                w.byte_alignment();
                w.u(8, e.super_block_dimensions.len() as u64 + 1);
                for &d in &e.super_block_dimensions {
                    w.u(8, u64::from(d));
                }
                w.u(8, e.block_dimensions.len() as u64 + 1);
                for &d in &e.block_dimensions {
                    w.u(8, u64::from(d));
                }
                w.flt32(e.threshold);
                w.flt32(e.nn_accuracy);
                w.u(8, u64::from(e.count_classes));
                w.ue(7, e.class_accuracy.len() as u64);
                for &a in &e.class_accuracy {
                    w.flt32(a);
                }
            }
        }
        if let Some((count, v)) = &self.decomposition {
            w.u(8, u64::from(*count));
            for e in v.iter().take(usize::from(count.saturating_sub(1))) {
                w.flt32(e.mse_threshold);
                w.flt32(e.nn_accuracy);
                w.flt32(e.nn_reduction_ratio);
                w.u(16, e.class_accuracy.len() as u64);
                for &a in &e.class_accuracy {
                    w.flt32(a);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_round_trip() {
        let m = PerformanceMaps {
            sparsification: Some((
                2,
                vec![RatioEntry {
                    ratio: 0.5,
                    non_zero_ratio: 0.25,
                    nn_accuracy: 0.9,
                    class_bitmask: 3,
                    class_accuracy: vec![0.1, 0.2],
                }],
            )),
            pruning: Some((1, vec![])),
            unification: Some((
                2,
                vec![UnificationEntry {
                    reshaped_tensor_dimensions: vec![4, 5],
                    count_reshaped: 3,
                    super_block_dimensions: vec![2],
                    block_dimensions: vec![],
                    threshold: 1.0,
                    nn_accuracy: 0.5,
                    count_classes: 1,
                    class_bitmask: 1,
                    class_accuracy: vec![0.7],
                }],
            )),
            decomposition: Some((
                2,
                vec![DecompositionEntry {
                    mse_threshold: 0.1,
                    nn_accuracy: 0.2,
                    nn_reduction_ratio: 0.3,
                    class_accuracy: vec![0.4],
                }],
            )),
        };
        let mut w = BitWriter::new();
        w.u(3, 0);
        m.write(&mut w);
        let b = w.into_bytes();
        let mut r = BitReader::new(&b);
        r.u(3, "x").unwrap();
        assert_eq!(
            PerformanceMaps::parse(&mut r, true, true, true, true).unwrap(),
            m
        );
    }
}

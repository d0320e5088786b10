//! What pruning does beyond the average (Hooker et al. 2019, "What do compressed deep neural
//! networks forget?"; Iofinova et al., CVPR 2023, "Bias in pruned vision models"): a model can
//! keep its mean accuracy while one class loses much more, predictions flip between classes in
//! both directions, confidence drops, and the samples the original was unsure of go first. For
//! classifier outputs `[N, classes]` (scores or probabilities) against the original's.

use serde::{Deserialize, Serialize};

use crate::tensor::Tensor;

/// One class: samples with that label, and accuracy (percent) before and after.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClassAccuracy {
    pub class: i64,
    pub samples: usize,
    pub before: f64,
    pub after: f64,
}

/// The least confident samples of the original (lowest top-1 probability).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeastConfident {
    /// Share of the samples taken (the least confident first).
    pub fraction: f64,
    pub samples: usize,
    /// Accuracy against the labels (agreement with the original where there are none), in
    /// percent, before and after.
    pub before: f64,
    pub after: f64,
    /// The same on all samples, for comparison.
    pub all_before: f64,
    pub all_after: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Breakdown {
    pub samples: usize,
    pub classes: usize,
    /// With labels: per class, and the class that lost most (points).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub per_class: Vec<ClassAccuracy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worst_class: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worst_class_drop: Option<f64>,
    /// Percent of samples whose top-1 class differs from the original's.
    pub flip_rate: f64,
    /// Mean entropy (bits) of the predicted distribution, before and after.
    pub entropy_before: f64,
    pub entropy_after: f64,
    pub least_confident: LeastConfident,
}

/// Rows as probabilities: as they are when they already are (non-negative, summing to 1),
/// else a softmax of the scores.
fn probabilities(t: &Tensor) -> Option<(Vec<Vec<f64>>, usize)> {
    let (&[n, c], Ok(v)) = (t.dims.as_slice(), t.to_f32()) else {
        return None;
    };
    if c < 2 || v.len() != n * c {
        return None;
    }
    let rows = v
        .chunks_exact(c)
        .map(|r| {
            let r: Vec<f64> = r.iter().map(|&x| f64::from(x)).collect();
            let sum: f64 = r.iter().sum();
            if r.iter().all(|&x| x >= 0.0) && (sum - 1.0).abs() < 1e-3 {
                r
            } else {
                let m = r.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
                let e: Vec<f64> = r.iter().map(|x| (x - m).exp()).collect();
                let s: f64 = e.iter().sum();
                e.into_iter().map(|x| x / s).collect()
            }
        })
        .collect();
    Some((rows, c))
}

fn argmax(r: &[f64]) -> usize {
    r.iter()
        .enumerate()
        .fold(
            (0, f64::NEG_INFINITY),
            |b, (i, &x)| if x > b.1 { (i, x) } else { b },
        )
        .0
}

fn entropy_bits(r: &[f64]) -> f64 {
    -r.iter()
        .filter(|&&p| p > 0.0)
        .map(|p| p * p.log2())
        .sum::<f64>()
}

fn pct(hits: usize, n: usize) -> f64 {
    100.0 * hits as f64 / n.max(1) as f64
}

/// The breakdown of `candidate` against `reference` (same samples), with `labels` when known;
/// `None` when the outputs are not `[N, classes]` class scores.
pub fn breakdown(
    reference: &Tensor,
    candidate: &Tensor,
    labels: Option<&[i64]>,
    least_confident_fraction: f64,
) -> Option<Breakdown> {
    let (p, c) = probabilities(reference)?;
    let (q, c2) = probabilities(candidate)?;
    if c != c2 || p.len() != q.len() || p.is_empty() {
        return None;
    }
    let n = p.len();
    let labels = labels.filter(|l| l.len() == n);
    let (a, b): (Vec<usize>, Vec<usize>) = (
        p.iter().map(|r| argmax(r)).collect(),
        q.iter().map(|r| argmax(r)).collect(),
    );
    // Truth per sample: the label, else the original's prediction.
    let truth: Vec<i64> = match labels {
        Some(l) => l.to_vec(),
        None => a.iter().map(|&x| x as i64).collect(),
    };
    let hits =
        |pred: &[usize], idx: &[usize]| idx.iter().filter(|&&i| pred[i] as i64 == truth[i]).count();
    let mut per_class = Vec::new();
    if labels.is_some() {
        let mut classes: Vec<i64> = truth.clone();
        classes.sort_unstable();
        classes.dedup();
        for k in classes {
            let idx: Vec<usize> = (0..n).filter(|&i| truth[i] == k).collect();
            per_class.push(ClassAccuracy {
                class: k,
                samples: idx.len(),
                before: pct(hits(&a, &idx), idx.len()),
                after: pct(hits(&b, &idx), idx.len()),
            });
        }
    }
    let worst = per_class
        .iter()
        .max_by(|x, y| (x.before - x.after).total_cmp(&(y.before - y.after)));
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| p[i][a[i]].total_cmp(&p[j][a[j]]).then(i.cmp(&j)));
    let k = ((least_confident_fraction.clamp(0.0, 1.0) * n as f64).ceil() as usize).clamp(1, n);
    order.truncate(k);
    let all: Vec<usize> = (0..n).collect();
    Some(Breakdown {
        samples: n,
        classes: c,
        worst_class: worst.map(|w| w.class),
        worst_class_drop: worst.map(|w| w.before - w.after),
        per_class,
        flip_rate: pct(a.iter().zip(&b).filter(|(x, y)| x != y).count(), n),
        entropy_before: p.iter().map(|r| entropy_bits(r)).sum::<f64>() / n as f64,
        entropy_after: q.iter().map(|r| entropy_bits(r)).sum::<f64>() / n as f64,
        least_confident: LeastConfident {
            fraction: k as f64 / n as f64,
            samples: k,
            before: pct(hits(&a, &order), k),
            after: pct(hits(&b, &order), k),
            all_before: pct(hits(&a, &all), n),
            all_after: pct(hits(&b, &all), n),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flips_classes_entropy_and_the_unsure() {
        // 4 samples, 2 classes; labels 0, 0, 1, 1. The original is right on all, unsure on the
        // last; the candidate flips the last and turns sample 1 uniform (still class 0 by ties).
        let r = Tensor::from_f32(vec![4, 2], &[0.9, 0.1, 0.8, 0.2, 0.1, 0.9, 0.4, 0.6]).unwrap();
        let c = Tensor::from_f32(vec![4, 2], &[0.9, 0.1, 0.5, 0.5, 0.1, 0.9, 0.7, 0.3]).unwrap();
        let b = breakdown(&r, &c, Some(&[0, 0, 1, 1]), 0.25).unwrap();
        assert_eq!(b.flip_rate, 25.0);
        assert_eq!(b.worst_class, Some(1));
        assert_eq!(b.worst_class_drop, Some(50.0));
        assert_eq!(b.per_class[0].after, 100.0);
        assert!(b.entropy_after > b.entropy_before);
        // The least confident sample is the last: right before, wrong after.
        assert_eq!(b.least_confident.samples, 1);
        assert_eq!(
            (b.least_confident.before, b.least_confident.after),
            (100.0, 0.0)
        );
        assert_eq!(b.least_confident.all_after, 75.0);
    }
}

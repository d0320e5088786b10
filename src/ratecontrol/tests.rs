//! Every stage against a synthetic model: output noise is a weighted sum of the tensors'
//! weight errors, with known weights, and the metric falls with the noise.

use super::*;
use crate::progress::Silent;

/// Noise = Σ s_i · SSE_i; cosine-like metric 100·(1 − noise); the check set is `check_gain`
/// times as noisy as the search set.
struct Fake {
    originals: Vec<Vec<f32>>,
    sens: Vec<f64>,
    samples: (usize, usize),
    check_gain: f64,
    evaluations: usize,
}

impl Evaluator for Fake {
    fn metric(&self) -> Metric {
        Metric::Cosine
    }
    fn samples(&self, set: Set) -> usize {
        match set {
            Set::Search => self.samples.0,
            Set::Check => self.samples.1,
            Set::Probe => self.samples.0.min(4),
        }
    }
    fn evaluate(&mut self, values: &[(usize, &[f32])], set: Set) -> Result<Outcome, RateError> {
        self.evaluations += 1;
        let mut noise = 0.0;
        for &(i, v) in values {
            let sse: f64 = self.originals[i]
                .iter()
                .zip(v)
                .map(|(a, b)| (f64::from(*a) - f64::from(*b)).powi(2))
                .sum();
            noise += self.sens[i] * sse;
        }
        if set == Set::Check {
            noise *= self.check_gain;
        }
        let metric = 100.0 * (1.0 - noise);
        Ok(Outcome {
            metric,
            drop: 100.0 - metric,
            expected_drop: None,
            drop_se: None,
            noise,
            samples: if set == Set::Check {
                self.samples.1
            } else {
                self.samples.0
            },
        })
    }
}

fn tensors() -> Vec<nnc_codec::Tensor> {
    // Four weights of equal size and scale; a bias.
    let mut v = Vec::new();
    for i in 0..4 {
        let data = (0..4096)
            .map(|k| {
                let u = ((k * 7919 + 31 * i + 13) % 1000) as f32 / 1000.0 + 0.0005;
                (if k % 2 == 0 { 1.0 } else { -1.0 }) * 0.05 * -(u.ln())
            })
            .collect();
        v.push(nnc_codec::Tensor {
            name: format!("w{i}"),
            shape: vec![64, 64],
            data: TensorData::F32(data),
        });
    }
    v.push(nnc_codec::Tensor {
        name: "b".into(),
        shape: vec![64],
        data: TensorData::F32((0..64).map(|k| k as f32 * 0.01).collect()),
    });
    v
}

fn fake(ts: &[nnc_codec::Tensor], sens: Vec<f64>, check_gain: f64) -> Fake {
    Fake {
        originals: ts
            .iter()
            .map(|t| match &t.data {
                TensorData::F32(v) => v.clone(),
                _ => Vec::new(),
            })
            .collect(),
        sens,
        samples: (48, 16),
        check_gain,
        evaluations: 0,
    }
}

fn sizes(
    ts: &[nnc_codec::Tensor],
) -> impl FnMut(&EncoderConfig) -> Result<HashMap<String, u64>, RateError> + '_ {
    move |c| trial_sizes(ts, c)
}

#[test]
fn rates_cover_every_weight_with_one_trial_encode() {
    let ts = tensors();
    let mut rc = RateControl::new(
        &ts,
        &EncoderConfig::default(),
        RateOptions::new(1.0),
        fake(&ts, vec![1.0; 5], 1.0),
    );
    let mut calls = 0;
    let mut enc = |c: &EncoderConfig| {
        calls += 1;
        trial_sizes(&ts, c)
    };
    let r = rc.rates(&mut enc).unwrap();
    assert_eq!((r.tensors, r.trial_encodes, calls), (4, 1, 1));
    for t in &rc.alloc {
        // Coarser QPs: fewer bytes, more error.
        for w in t.grid.windows(2) {
            assert!(w[1].1 <= w[0].1 && w[1].2 >= w[0].2, "{:?}", t.grid);
        }
    }
}

#[test]
fn probes_recover_relative_sensitivities() {
    let ts = tensors();
    let sens = vec![1e3, 1e1, 1e1, 1e-1, 0.0];
    let mut rc = RateControl::new(
        &ts,
        &EncoderConfig::default(),
        RateOptions::new(1.0),
        fake(&ts, sens.clone(), 1.0),
    );
    rc.rates(&mut sizes(&ts)).unwrap();
    let s = rc.sensitivities(&mut Silent).unwrap();
    assert_eq!(s.probed, 4);
    for t in &rc.alloc {
        let got = t.sensitivity.unwrap();
        assert!((got / sens[t.index] - 1.0).abs() < 1e-6, "{} {got}", t.name);
    }
}

#[test]
fn search_meets_the_budget_with_fewer_bytes_than_one_qp_for_all() {
    let ts = tensors();
    let sens = vec![3e1, 1e-1, 1e-1, 1e-3, 0.0];
    let opts = RateOptions::new(0.5);
    let mut rc = RateControl::new(
        &ts,
        &EncoderConfig::default(),
        opts,
        fake(&ts, sens.clone(), 1.0),
    );
    rc.rates(&mut sizes(&ts)).unwrap();
    rc.sensitivities(&mut Silent).unwrap();
    let (stage, target, out) = rc.search(&mut Silent).unwrap();
    assert!(
        out.drop <= 0.5 && stage.evaluations <= 20,
        "{out:?} {stage:?}"
    );
    let qps = rc.allocate(target);
    // The sensitive tensor finer than the insensitive ones.
    assert!(qps[0] < qps[1] && qps[1] <= qps[3], "{qps:?}");
    // One QP for all weights at the same noise costs more.
    let (bytes, noise) = rc.predicted(&qps);
    let lo = rc.alloc.iter().map(|t| t.grid[0].0).max().unwrap();
    let hi = rc
        .alloc
        .iter()
        .map(|t| t.grid.last().unwrap().0)
        .min()
        .unwrap();
    let single = (lo..=hi)
        .rev()
        .map(|q| vec![q; qps.len()])
        .find(|u| rc.predicted(u).1 <= noise)
        .unwrap();
    assert!(
        bytes < rc.predicted(&single).0,
        "{bytes} vs {}",
        rc.predicted(&single).0
    );
}

#[test]
fn a_check_set_that_breaks_the_budget_tightens_the_choice() {
    let ts = tensors();
    let sens = vec![3e1, 1e-1, 1e-1, 1e-3, 0.0];
    let mut rc = RateControl::new(
        &ts,
        &EncoderConfig::default(),
        RateOptions::new(0.5),
        fake(&ts, sens, 3.0),
    );
    let plan = rc_run(&ts, &mut rc);
    assert!(plan.check.tightened >= 1, "{:?}", plan.check);
    assert!(
        plan.held_out.unwrap().drop <= 0.5,
        "{:?} {:?}",
        plan.check,
        rc.steps
    );
}

fn rc_run(ts: &[nnc_codec::Tensor], rc: &mut RateControl<'_, Fake>) -> RatePlan {
    rc.rates(&mut sizes(ts)).unwrap();
    rc.sensitivities(&mut Silent).unwrap();
    let (_, target, out) = rc.search(&mut Silent).unwrap();
    let (check, _, _) = rc.check(target, out).unwrap();
    RatePlan {
        metric: Metric::Cosine,
        max_drop: 0.5,
        search_samples: 48,
        check_samples: 16,
        points_per_sample: 100.0 / 48.0,
        warnings: Vec::new(),
        search: out,
        held_out: check.held_out,
        bytes: 0,
        qps: HashMap::new(),
        steps: Vec::new(),
        rates: RateStage {
            tensors: 0,
            trial_encodes: 0,
            seconds: 0.0,
        },
        sensitivities: SensitivityStage {
            probed: 0,
            payload_share: 0.0,
            probe_samples: 0,
            seconds: 0.0,
        },
        search_stage: SearchStage {
            evaluations: 0,
            seconds: 0.0,
        },
        check,
        config: EncoderConfig::default(),
    }
}

#[test]
fn small_sets_are_reported() {
    let ts = tensors();
    let mut f = fake(&ts, vec![1e-1; 5], 1.0);
    f.samples = (6, 0);
    let rc = RateControl::new(&ts, &EncoderConfig::default(), RateOptions::new(1.0), f);
    let plan = rc.run(&mut sizes(&ts), &mut Silent).unwrap();
    assert!(
        plan.warnings.iter().any(|w| w.contains("held out")),
        "{:?}",
        plan.warnings
    );
    assert!(plan.held_out.is_none());
}

#[test]
fn normal_tail_is_accurate() {
    assert!((normal_tail(0.0) - 0.5).abs() < 1e-7);
    assert!((normal_tail(1.0) - 0.158_655_25).abs() < 1e-6);
    assert!((normal_tail(-2.0) - 0.977_249_87).abs() < 1e-6);
}

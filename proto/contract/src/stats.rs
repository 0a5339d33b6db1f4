//! Statistics for benchmark scores: mean, standard deviation and a seeded percentile
//! bootstrap CI per configuration; for two configurations over the same cases, the mean
//! delta, % change, a paired bootstrap CI of the delta and a paired permutation p-value.
//! Seeded, so the same scores always give the same numbers.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// Bootstrap / permutation resamples.
pub const RESAMPLES: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub n: usize,
    pub mean: f64,
    /// Sample standard deviation (n - 1); 0 for fewer than two values.
    pub std: f64,
    /// 95% percentile-bootstrap interval of the mean.
    pub ci_low: f64,
    pub ci_high: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairedComparison {
    pub n: usize,
    pub mean_a: f64,
    pub mean_b: f64,
    /// mean(b - a)
    pub delta: f64,
    /// 100 * delta / mean_a (None when mean_a is 0).
    pub percent_change: Option<f64>,
    /// 95% paired-bootstrap interval of the delta.
    pub ci_low: f64,
    pub ci_high: f64,
    /// Two-sided paired permutation (sign-flip) p-value.
    pub p_value: f64,
}

fn mean(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    xs.iter().sum::<f64>() / xs.len() as f64
}

/// Below this many paired cases a sign-flip test cannot reach p < 0.05 whatever the data:
/// its smallest two-sided p-value is 2 / 2^n. Comparisons on fewer are marked underpowered.
pub const MIN_PAIRED_N: usize = 6;

/// Holm's step-down adjustment of a family of p-values (controls the family-wise error
/// rate), returned in the input order: the k-th smallest p is multiplied by (m - k + 1), the
/// running maximum taken so the order is kept, capped at 1.
pub fn holm(p: &[f64]) -> Vec<f64> {
    let m = p.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|a, b| p[*a].total_cmp(&p[*b]).then(a.cmp(b)));
    let mut out = vec![0.0; m];
    let mut running: f64 = 0.0;
    for (k, &i) in order.iter().enumerate() {
        running = running.max(((m - k) as f64 * p[i]).min(1.0));
        out[i] = running;
    }
    out
}

/// The sample standard deviation (n - 1), the one definition every output uses; 0 below two
/// values.
pub fn std(xs: &[f64]) -> f64 {
    if xs.len() < 2 {
        return 0.0;
    }
    let m = mean(xs);
    (xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (xs.len() - 1) as f64).sqrt()
}

/// The q-quantile (0..=1) of sorted values, linearly interpolated.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

fn bootstrap_means(xs: &[f64], rng: &mut StdRng) -> Vec<f64> {
    let n = xs.len();
    let mut means: Vec<f64> = (0..RESAMPLES)
        .map(|_| (0..n).map(|_| xs[rng.random_range(0..n)]).sum::<f64>() / n as f64)
        .collect();
    means.sort_by(|a, b| a.total_cmp(b));
    means
}

/// Summary of one configuration's scores.
pub fn summarize(scores: &[f64], seed: u64) -> Summary {
    let n = scores.len();
    if n == 0 {
        return Summary {
            n,
            mean: f64::NAN,
            std: 0.0,
            ci_low: f64::NAN,
            ci_high: f64::NAN,
        };
    }
    let means = bootstrap_means(scores, &mut StdRng::seed_from_u64(seed));
    Summary {
        n,
        mean: mean(scores),
        std: std(scores),
        ci_low: quantile(&means, 0.025),
        ci_high: quantile(&means, 0.975),
    }
}

/// Compare configuration `b` against `a` on the same cases (`a[i]` and `b[i]` are one case).
pub fn compare_paired(a: &[f64], b: &[f64], seed: u64) -> Option<PairedComparison> {
    if a.len() != b.len() || a.is_empty() {
        return None;
    }
    let n = a.len();
    let diffs: Vec<f64> = a.iter().zip(b).map(|(x, y)| y - x).collect();
    let delta = mean(&diffs);
    let mut rng = StdRng::seed_from_u64(seed);
    let boot = bootstrap_means(&diffs, &mut rng);
    // Sign-flip permutation test: under "no difference" each case's delta is as likely
    // negated. Count resamples at least as extreme as observed (+1 for the observed one).
    let observed = delta.abs();
    let mut extreme = 0usize;
    for _ in 0..RESAMPLES {
        let s: f64 = diffs
            .iter()
            .map(|d| if rng.random::<bool>() { *d } else { -*d })
            .sum::<f64>()
            / n as f64;
        if s.abs() >= observed - 1e-12 {
            extreme += 1;
        }
    }
    let mean_a = mean(a);
    Some(PairedComparison {
        n,
        mean_a,
        mean_b: mean(b),
        delta,
        percent_change: (mean_a != 0.0).then(|| 100.0 * delta / mean_a),
        ci_low: quantile(&boot, 0.025),
        ci_high: quantile(&boot, 0.975),
        p_value: (extreme + 1) as f64 / (RESAMPLES + 1) as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holm_multiplies_by_rank_and_keeps_the_order() {
        let adj = holm(&[0.01, 0.04, 0.03, 0.5]);
        let want = [0.04, 0.09, 0.09, 0.5];
        for (a, w) in adj.iter().zip(want) {
            assert!((a - w).abs() < 1e-12, "{adj:?}");
        }
        assert_eq!(holm(&[0.6, 0.9]), [1.0, 1.0]);
        assert!(holm(&[]).is_empty());
    }

    #[test]
    fn six_pairs_are_the_fewest_a_sign_flip_test_can_call_significant() {
        // With every case improving, the smallest p a sign-flip test gives is 2 / 2^n.
        for n in [MIN_PAIRED_N - 1, MIN_PAIRED_N] {
            let a = vec![1.0; n];
            let b = vec![2.0; n];
            let c = compare_paired(&a, &b, 3).unwrap();
            let floor = 2.0 / 2f64.powi(n as i32);
            assert!(c.p_value >= floor * 0.8, "n={n}: {}", c.p_value);
            assert_eq!(c.p_value < 0.05, n >= MIN_PAIRED_N, "n={n}: {}", c.p_value);
        }
    }

    #[test]
    fn summary_of_known_values() {
        let s = summarize(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0], 1);
        assert_eq!(s.n, 8);
        assert!((s.mean - 5.0).abs() < 1e-12);
        assert!((s.std - 2.138089935).abs() < 1e-6);
        assert!(s.ci_low < 5.0 && s.ci_high > 5.0);
        assert!(s.ci_low > 3.0 && s.ci_high < 7.0, "{s:?}");
        assert_eq!(
            s,
            summarize(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0], 1),
            "seeded"
        );
        let c = summarize(&[3.0; 5], 1);
        assert_eq!((c.ci_low, c.ci_high, c.std), (3.0, 3.0, 0.0));
    }

    #[test]
    fn a_consistent_improvement_is_significant_and_noise_is_not() {
        let a: Vec<f64> = (0..30).map(|i| 5.0 + (i % 5) as f64 * 0.5).collect();
        let b: Vec<f64> = a
            .iter()
            .enumerate()
            .map(|(i, x)| x + 1.0 + (i % 3) as f64 * 0.1)
            .collect();
        let c = compare_paired(&a, &b, 7).unwrap();
        assert!((c.delta - 1.1).abs() < 0.01, "{c:?}");
        assert!(c.ci_low > 0.9 && c.ci_high < 1.3, "{c:?}");
        assert!(c.p_value < 0.001, "{c:?}");
        assert!((c.percent_change.unwrap() - 100.0 * c.delta / c.mean_a).abs() < 1e-9);

        let noise: Vec<f64> = a
            .iter()
            .enumerate()
            .map(|(i, x)| if i % 2 == 0 { x + 0.5 } else { x - 0.5 })
            .collect();
        let c = compare_paired(&a, &noise, 7).unwrap();
        assert!(c.delta.abs() < 1e-9 && c.p_value > 0.5, "{c:?}");
        assert!(c.ci_low < 0.0 && c.ci_high > 0.0);
        assert!(compare_paired(&a, &b[..3], 7).is_none());
    }
}

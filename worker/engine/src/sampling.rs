//! Choosing the next token from logits: greedy, or seeded sampling with temperature, top-k,
//! top-p and a repetition penalty.

pub use flotilla_contract::sampling::SamplingParams;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Picks tokens for one sequence; owns that sequence's random stream.
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
}

impl Sampler {
    /// A sampler for the `index`-th sequence of a batch: each sequence has its own stream,
    /// derived from the seed, so a prompt's text does not depend on its neighbours.
    pub fn new(params: &SamplingParams, index: usize) -> Self {
        Self {
            params: params.clone(),
            rng: StdRng::seed_from_u64(params.seed.wrapping_add(index as u64)),
        }
    }

    /// The next token given this position's logits and the sequence so far.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        let p = &self.params;
        if p.repetition_penalty != 1.0 {
            let mut seen = history.to_vec();
            seen.sort_unstable();
            seen.dedup();
            for &t in &seen {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = if *l > 0.0 {
                        *l / p.repetition_penalty
                    } else {
                        *l * p.repetition_penalty
                    };
                }
            }
        }
        if p.temperature == 0.0 {
            return argmax(logits);
        }
        let mut cand: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, l / p.temperature))
            .collect();
        cand.sort_by(|a, b| b.1.total_cmp(&a.1));
        if p.top_k > 0 && p.top_k < cand.len() {
            cand.truncate(p.top_k);
        }
        let max = cand[0].1;
        let mut probs: Vec<f32> = cand.iter().map(|(_, l)| (l - max).exp()).collect();
        let sum: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|x| *x /= sum);
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            let mut keep = probs.len();
            for (i, pr) in probs.iter().enumerate() {
                acc += pr;
                if acc >= p.top_p {
                    keep = i + 1;
                    break;
                }
            }
            probs.truncate(keep);
            cand.truncate(keep);
        }
        let total: f32 = probs.iter().sum();
        let mut u = self.rng.random::<f32>() * total;
        for (i, pr) in probs.iter().enumerate() {
            if u < *pr {
                return cand[i].0;
            }
            u -= pr;
        }
        cand[probs.len() - 1].0
    }
}

/// Index of the largest value (the first one on ties).
pub fn argmax(xs: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        vec![1.0, 3.0, 2.0, 0.5, 2.9]
    }

    #[test]
    fn greedy_takes_the_argmax() {
        let mut s = Sampler::new(&SamplingParams::default(), 0);
        assert_eq!(s.sample(&mut logits(), &[]), 1);
    }

    #[test]
    fn repetition_penalty_moves_greedy_off_a_repeated_token() {
        let p = SamplingParams {
            repetition_penalty: 1.5,
            ..Default::default()
        };
        let mut s = Sampler::new(&p, 0);
        assert_eq!(s.sample(&mut logits(), &[1]), 4);
    }

    #[test]
    fn same_seed_same_tokens_and_top_k_limits_the_choice() {
        let p = SamplingParams {
            temperature: 1.0,
            top_k: 2,
            seed: 7,
            ..Default::default()
        };
        let draw = |p: &SamplingParams| {
            let mut s = Sampler::new(p, 0);
            (0..200)
                .map(|_| s.sample(&mut logits(), &[]))
                .collect::<Vec<_>>()
        };
        let a = draw(&p);
        assert_eq!(a, draw(&p));
        assert!(a.iter().all(|&t| t == 1 || t == 4), "{a:?}");
        assert!(a.contains(&1) && a.contains(&4));
        let other = draw(&SamplingParams {
            seed: 8,
            ..p.clone()
        });
        assert_ne!(a, other);
    }

    #[test]
    fn top_p_keeps_the_nucleus_only() {
        let p = SamplingParams {
            temperature: 1.0,
            top_p: 0.5,
            seed: 1,
            ..Default::default()
        };
        let mut s = Sampler::new(&p, 0);
        // token 1 alone holds < 50%, tokens {1, 4} hold more: only those two may appear.
        for _ in 0..100 {
            let t = s.sample(&mut logits(), &[]);
            assert!(t == 1 || t == 4, "{t}");
        }
    }

    #[test]
    fn bad_settings_name_the_setting() {
        let p = SamplingParams {
            top_p: 0.0,
            ..Default::default()
        };
        assert!(p.validate().unwrap_err().to_string().contains("top_p"));
        let p = SamplingParams {
            temperature: -1.0,
            ..Default::default()
        };
        assert!(p
            .validate()
            .unwrap_err()
            .to_string()
            .contains("temperature"));
    }
}

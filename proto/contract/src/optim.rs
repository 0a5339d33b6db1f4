//! Optimizer arithmetic on plain f32 tensors ([`TensorSet`]), for the coordinator, which
//! applies the optimizer steps of distributed training without a tensor library: the
//! learning-rate schedule, global-norm clipping, AdamW in PyTorch's formulation (the same
//! operations, in the same order and precision, as the worker's candle AdamW in
//! `flotilla-train`), and DiLoCo's outer Nesterov SGD.

use crate::error::{Error, Result};
use crate::tensors::TensorSet;
use crate::train_config::{OptimizerSettings, Schedule};

/// The learning rate for optimizer step `step` (0-based) of `total`: linear warmup, then
/// cosine, linear or constant, as transformers' schedulers.
pub fn lr_at(s: &OptimizerSettings, step: usize, total: usize) -> f64 {
    if step < s.warmup_steps {
        return s.lr * step as f64 / s.warmup_steps.max(1) as f64;
    }
    let progress =
        (step - s.warmup_steps) as f64 / total.saturating_sub(s.warmup_steps).max(1) as f64;
    let factor = match s.schedule {
        Schedule::Constant => 1.0,
        Schedule::Linear => (1.0 - progress).max(0.0),
        Schedule::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
    };
    s.lr * factor
}

/// The factor that clips a gradient of global L2 norm `norm` to `max_norm` (1 when within
/// bounds, or when clipping is off).
pub fn clip_factor_of(norm: f64, max_norm: f64) -> f64 {
    if max_norm > 0.0 && norm > max_norm {
        max_norm / (norm + 1e-6)
    } else {
        1.0
    }
}

/// The global L2 norm of every tensor of `set` together.
pub fn global_norm(set: &TensorSet) -> f64 {
    set.tensors
        .iter()
        .flat_map(|t| &t.data)
        .map(|x| (*x as f64) * (*x as f64))
        .sum::<f64>()
        .sqrt()
}

/// Multiplies every value of `set` by `factor`.
pub fn scale(set: &mut TensorSet, factor: f32) {
    for t in &mut set.tensors {
        for x in &mut t.data {
            *x *= factor;
        }
    }
}

/// `acc += weight * add`, tensor by tensor (same layout required).
pub fn add_scaled(acc: &mut TensorSet, add: &TensorSet, weight: f32, what: &str) -> Result<()> {
    acc.check_same_layout(add, what)?;
    for (a, b) in acc.tensors.iter_mut().zip(&add.tensors) {
        for (x, y) in a.data.iter_mut().zip(&b.data) {
            *x += weight * y;
        }
    }
    Ok(())
}

/// AdamW's moments and step count over a set of parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct AdamState {
    /// Updates applied so far.
    pub t: usize,
    pub m: TensorSet,
    pub v: TensorSet,
}

impl AdamState {
    /// Zero moments for parameters laid out as `params`.
    pub fn new(params: &TensorSet) -> Self {
        Self {
            t: 0,
            m: params.zeros_like(),
            v: params.zeros_like(),
        }
    }

    /// One AdamW update of `params` with gradient `grads` at learning rate `lr`.
    pub fn step(
        &mut self,
        s: &OptimizerSettings,
        params: &mut TensorSet,
        grads: &TensorSet,
        lr: f64,
    ) -> Result<()> {
        params.check_same_layout(grads, "gradient")?;
        params.check_same_layout(&self.m, "optimizer state")?;
        self.t += 1;
        let bc1 = 1.0 - s.beta1.powi(self.t as i32);
        let bc2 = 1.0 - s.beta2.powi(self.t as i32);
        let (b1, b2) = (s.beta1 as f32, s.beta2 as f32);
        let (c1, c2) = ((1.0 - s.beta1) as f32, (1.0 - s.beta2) as f32);
        let sqrt_bc2 = bc2.sqrt() as f32;
        let eps = s.eps as f32;
        let decay = (1.0 - lr * s.weight_decay) as f32;
        let step = (lr / bc1) as f32;
        for (i, p) in params.tensors.iter_mut().enumerate() {
            let g = &grads.tensors[i].data;
            let m = &mut self.m.tensors[i].data;
            let v = &mut self.v.tensors[i].data;
            for j in 0..p.data.len() {
                m[j] = m[j] * b1 + g[j] * c1;
                v[j] = v[j] * b2 + (g[j] * g[j]) * c2;
                let denom = v[j].sqrt() / sqrt_bc2 + eps;
                let mut x = p.data[j];
                if s.weight_decay > 0.0 {
                    x *= decay;
                }
                p.data[j] = x - (m[j] / denom) * step;
            }
        }
        Ok(())
    }
}

/// DiLoCo's outer optimizer: SGD with Nesterov momentum (PyTorch's `SGD(nesterov=True)`,
/// no dampening), applied to the outer gradient `global - average(local)`.
pub fn nesterov_step(
    params: &mut TensorSet,
    momentum: &mut TensorSet,
    outer_grad: &TensorSet,
    lr: f64,
    mu: f64,
) -> Result<()> {
    params.check_same_layout(outer_grad, "outer gradient")?;
    params.check_same_layout(momentum, "outer momentum")?;
    let (lr, mu) = (lr as f32, mu as f32);
    for (i, p) in params.tensors.iter_mut().enumerate() {
        let g = &outer_grad.tensors[i].data;
        let b = &mut momentum.tensors[i].data;
        for j in 0..p.data.len() {
            b[j] = mu * b[j] + g[j];
            p.data[j] -= lr * (g[j] + mu * b[j]);
        }
    }
    Ok(())
}

/// Fails unless every value of `set` is finite; `what` names it.
pub fn check_finite(set: &TensorSet, what: &str) -> Result<()> {
    for t in &set.tensors {
        if t.data.iter().any(|x| !x.is_finite()) {
            return Err(Error::input(format!(
                "{what}: tensor {} holds a non-finite value",
                t.name
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensors::NamedTensor;

    fn one(name: &str, data: &[f32]) -> TensorSet {
        TensorSet::new(vec![NamedTensor {
            name: name.into(),
            shape: vec![data.len()],
            data: data.to_vec(),
        }])
    }

    #[test]
    fn adamw_matches_pytorch_first_step() {
        // torch.optim.AdamW([p], lr=0.1, weight_decay=0.01), p = [1, -2], g = [0.5, -1]:
        // p - 0.1*0.01*p - 0.1*sign(g) = [0.899, -1.898].
        let s = OptimizerSettings {
            lr: 0.1,
            weight_decay: 0.01,
            ..Default::default()
        };
        let mut p = one("w", &[1.0, -2.0]);
        let mut st = AdamState::new(&p);
        st.step(&s, &mut p, &one("w", &[0.5, -1.0]), 0.1).unwrap();
        let d = &p.tensors[0].data;
        assert!(
            (d[0] - 0.899).abs() < 1e-5 && (d[1] + 1.898).abs() < 1e-5,
            "{d:?}"
        );
        assert_eq!(st.t, 1);
        assert!(st.step(&s, &mut p, &one("x", &[0.0, 0.0]), 0.1).is_err());
    }

    #[test]
    fn nesterov_matches_pytorch() {
        // SGD(lr=0.5, momentum=0.9, nesterov=True) on p = [1], grads 1 then 1:
        // step 1: buf = 1, p = 1 - 0.5*(1 + 0.9) = 0.05; step 2: buf = 1.9,
        // p = 0.05 - 0.5*(1 + 1.71) = -1.305.
        let mut p = one("w", &[1.0]);
        let mut b = p.zeros_like();
        nesterov_step(&mut p, &mut b, &one("w", &[1.0]), 0.5, 0.9).unwrap();
        assert!((p.tensors[0].data[0] - 0.05).abs() < 1e-6);
        nesterov_step(&mut p, &mut b, &one("w", &[1.0]), 0.5, 0.9).unwrap();
        assert!(
            (p.tensors[0].data[0] + 1.305).abs() < 1e-5,
            "{:?}",
            p.tensors[0].data
        );
    }

    #[test]
    fn clipping_and_norms() {
        let g = one("w", &[3.0, 4.0]);
        assert!((global_norm(&g) - 5.0).abs() < 1e-9);
        assert!((clip_factor_of(5.0, 1.0) - 1.0 / (5.0 + 1e-6)).abs() < 1e-12);
        assert_eq!(clip_factor_of(5.0, 0.0), 1.0);
        assert_eq!(clip_factor_of(0.5, 1.0), 1.0);
        assert!(check_finite(&one("w", &[f32::NAN]), "delta").is_err());
    }
}

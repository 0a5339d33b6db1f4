//! AdamW (PyTorch's formulation, decoupled weight decay), the learning-rate schedule (linear
//! warmup, then cosine, linear or constant, as transformers' schedulers), and clipping by
//! global norm. The optimizer's moments are saved with every checkpoint so a resumed run
//! continues bit for bit. The schedule and the clipping rule are the contract's
//! (`flotilla_contract::optim`), which the coordinator applies to distributed runs.

use super::config::OptimizerSettings;
use candle_core::{Device, Tensor, Var};
use flotilla_engine::error::{Error, Result};
use std::collections::HashMap;
use std::path::Path;

pub use flotilla_contract::optim::lr_at;

/// AdamW over a fixed list of variables.
pub struct AdamW {
    pub settings: OptimizerSettings,
    /// Updates applied so far.
    pub t: usize,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
}

impl AdamW {
    pub fn new(vars: &[Var], settings: &OptimizerSettings) -> Result<Self> {
        let zeros = |v: &Var| v.as_tensor().zeros_like();
        Ok(Self {
            settings: settings.clone(),
            t: 0,
            m: vars.iter().map(zeros).collect::<candle_core::Result<_>>()?,
            v: vars.iter().map(zeros).collect::<candle_core::Result<_>>()?,
        })
    }

    /// One update with learning rate `lr`; `grads[i]` belongs to `vars[i]`.
    pub fn step(&mut self, vars: &[Var], grads: &[Tensor], lr: f64) -> Result<()> {
        let s = &self.settings;
        self.t += 1;
        let bc1 = 1.0 - s.beta1.powi(self.t as i32);
        let bc2 = 1.0 - s.beta2.powi(self.t as i32);
        for (i, (var, g)) in vars.iter().zip(grads).enumerate() {
            let m = ((&self.m[i] * s.beta1)? + (g * (1.0 - s.beta1))?)?;
            let v = ((&self.v[i] * s.beta2)? + (g.sqr()? * (1.0 - s.beta2))?)?;
            let denom = ((v.sqrt()? / bc2.sqrt())? + s.eps)?;
            let mut p = var.as_tensor().clone();
            if s.weight_decay > 0.0 {
                p = (p * (1.0 - lr * s.weight_decay))?;
            }
            let update = ((&m / denom)? * (lr / bc1))?;
            var.set(&(p - update)?)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }

    /// Save the moments and step count (safetensors, names `m.<i>` / `v.<i>`).
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut map: HashMap<String, Tensor> = HashMap::new();
        for (i, (m, v)) in self.m.iter().zip(&self.v).enumerate() {
            map.insert(format!("m.{i}"), m.to_device(&Device::Cpu)?);
            map.insert(format!("v.{i}"), v.to_device(&Device::Cpu)?);
        }
        map.insert("t".into(), Tensor::new(&[self.t as u32], &Device::Cpu)?);
        candle_core::safetensors::save(&map, path).map_err(|e| Error::model(path, e))?;
        Ok(())
    }

    /// Restore what [`AdamW::save`] wrote; the variable list must be the same.
    pub fn load(&mut self, path: &Path, device: &Device) -> Result<()> {
        let map = candle_core::safetensors::load(path, device)
            .map_err(|e| Error::model(path, format!("cannot read optimizer state: {e}")))?;
        for i in 0..self.m.len() {
            let get = |k: String| {
                map.get(&k)
                    .cloned()
                    .ok_or_else(|| Error::model(path, format!("optimizer state has no `{k}`")))
            };
            let m = get(format!("m.{i}"))?;
            let v = get(format!("v.{i}"))?;
            if m.shape() != self.m[i].shape() {
                return Err(Error::model(
                    path,
                    format!("optimizer state `m.{i}` does not match the model's adapter"),
                ));
            }
            self.m[i] = m;
            self.v[i] = v;
        }
        let t = map
            .get("t")
            .ok_or_else(|| Error::model(path, "optimizer state has no step count"))?
            .to_vec1::<u32>()?;
        self.t = t.first().copied().unwrap_or(0) as usize;
        Ok(())
    }
}

/// The global L2 norm of `grads`, and the factor that clips it to `max_norm` (1 when it is
/// within bounds or clipping is off).
pub fn clip_factor(grads: &[Tensor], max_norm: f64) -> Result<(f64, f64)> {
    let mut sq = 0f64;
    for g in grads {
        sq += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
    }
    let norm = sq.sqrt();
    Ok((
        norm,
        flotilla_contract::optim::clip_factor_of(norm, max_norm),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Schedule;

    #[test]
    fn schedule_warms_up_then_decays() {
        let s = OptimizerSettings {
            lr: 1.0,
            warmup_steps: 4,
            ..Default::default()
        };
        assert_eq!(lr_at(&s, 0, 20), 0.0);
        assert_eq!(lr_at(&s, 2, 20), 0.5);
        assert_eq!(lr_at(&s, 4, 20), 1.0);
        assert!((lr_at(&s, 12, 20) - 0.5).abs() < 1e-9);
        let lin = OptimizerSettings {
            schedule: Schedule::Linear,
            ..s.clone()
        };
        assert!((lr_at(&lin, 12, 20) - 0.5).abs() < 1e-9);
    }

    #[test]
    fn adamw_matches_pytorch_first_steps() {
        // torch.optim.AdamW([p], lr=0.1, weight_decay=0.01) with p = [1, -2], grads g1 then g2:
        // after step 1: p - 0.1*0.01*p - 0.1*sign(g) = [0.899, -1.898]; step 2 computed by hand.
        let dev = Device::Cpu;
        let var = Var::new(&[1.0f32, -2.0], &dev).unwrap();
        let s = OptimizerSettings {
            lr: 0.1,
            weight_decay: 0.01,
            ..Default::default()
        };
        let mut opt = AdamW::new(std::slice::from_ref(&var), &s).unwrap();
        let g1 = Tensor::new(&[0.5f32, -1.0], &dev).unwrap();
        opt.step(std::slice::from_ref(&var), &[g1], 0.1).unwrap();
        let p: Vec<f32> = var.as_tensor().to_vec1().unwrap();
        assert!(
            (p[0] - 0.899).abs() < 1e-5 && (p[1] + 1.898).abs() < 1e-5,
            "{p:?}"
        );
        let g2 = Tensor::new(&[0.25f32, 1.0], &dev).unwrap();
        opt.step(std::slice::from_ref(&var), &[g2], 0.1).unwrap();
        // m = [0.0725, -0.08]/(1-0.81) ; v = [0.000312..., 0.001999]/(1-0.998001)
        let b1: f64 = 0.9;
        let b2: f64 = 0.999;
        let mut expect = vec![];
        for (p1, ga, gb) in [(0.899f64, 0.5f64, 0.25f64), (-1.898, -1.0, 1.0)] {
            let m = b1 * (1.0 - b1) * ga + (1.0 - b1) * gb;
            let v = b2 * (1.0 - b2) * ga * ga + (1.0 - b2) * gb * gb;
            let mh = m / (1.0 - b1 * b1);
            let vh = v / (1.0 - b2 * b2);
            expect.push(p1 * (1.0 - 0.001) - 0.1 * mh / (vh.sqrt() + 1e-8));
        }
        let p: Vec<f32> = var.as_tensor().to_vec1().unwrap();
        for (a, b) in p.iter().zip(&expect) {
            assert!((*a as f64 - b).abs() < 1e-5, "{p:?} vs {expect:?}");
        }
    }
}

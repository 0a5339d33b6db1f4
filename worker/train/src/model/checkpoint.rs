//! Gradients by backward pass: one graph over the whole model, or gradient checkpointing —
//! the graph rebuilt one block at a time from its kept input.

use super::{rms_norm, TrainModel};
use crate::data::Batch;
use candle_core::{Tensor, Var};
use flotilla_engine::error::{Error, Result};

/// Gradients keyed by the variable they belong to.
#[derive(Default)]
pub struct Grads(std::collections::HashMap<candle_core::TensorId, Tensor>);

impl Grads {
    fn add(&mut self, var: &Tensor, g: Tensor) -> Result<()> {
        let g = match self.0.remove(&var.id()) {
            Some(acc) => (acc + g)?,
            None => g,
        };
        self.0.insert(var.id(), g);
        Ok(())
    }

    /// The gradient of `var`, if it received one.
    pub fn get(&self, var: &Tensor) -> Option<&Tensor> {
        self.0.get(&var.id())
    }
}

impl TrainModel {
    /// Gradients of the batch's summed token loss / `normalizer` with respect to every LoRA
    /// variable, keyed by the variable's tensor, and the summed loss.
    ///
    /// With `checkpoint`, the graph is never whole (gradient checkpointing): the forward keeps
    /// only each block's input; the backward then rebuilds one block's graph at a time from its
    /// input, back-propagates the gradient arriving at its output, and frees it. Activation
    /// memory is then one block's plus one (tokens x hidden) tensor per block, for a second
    /// forward's compute. Without it, one graph over the whole model, as [`TrainModel::loss`].
    pub fn backward(
        &self,
        batch: &Batch,
        normalizer: f64,
        dropout_seed: Option<u64>,
        checkpoint: bool,
    ) -> Result<(Grads, f64)> {
        let vars = self.vars();
        let mut grads = Grads::default();
        if !checkpoint {
            let (loss, sum) = self.loss(batch, normalizer, dropout_seed)?;
            let store = loss.backward()?;
            for (_, v) in &vars {
                if let Some(g) = store.get(v.as_tensor()) {
                    grads.add(v.as_tensor(), g.clone())?;
                }
            }
            return Ok((grads, sum));
        }
        let ctx = self.context(batch)?;
        let mut inputs = Vec::with_capacity(self.blocks.len());
        let mut x = self.embed_tokens(batch)?;
        for layer in 0..self.blocks.len() {
            let out = self.block(layer, &x, &ctx, dropout_seed)?.detach();
            inputs.push(x);
            x = out;
        }
        // The head: the loss from the last block's output, back to that output.
        let last = Var::from_tensor(&x)?;
        drop(x);
        let hidden = rms_norm(last.as_tensor(), &self.norm, self.config.rms_norm_eps)?;
        let (surrogate, sum) = self.loss_from_hidden(&hidden, batch, normalizer)?;
        let store = surrogate.backward()?;
        let mut grad_out = store
            .get(last.as_tensor())
            .cloned()
            .ok_or_else(|| Error::input("no gradient reached the last block"))?;
        drop((store, surrogate, hidden, last));
        // Each block from the last: rebuild its graph from its input, pull the gradient back.
        let by_layer = self.vars_by_layer();
        for layer in (0..self.blocks.len()).rev() {
            let input = Var::from_tensor(&inputs[layer])?;
            let out = self.block(layer, input.as_tensor(), &ctx, dropout_seed)?;
            let store = (out * &grad_out)?.sum_all()?.backward()?;
            for v in &by_layer[layer] {
                if let Some(g) = store.get(v.as_tensor()) {
                    grads.add(v.as_tensor(), g.clone())?;
                }
            }
            if layer > 0 {
                grad_out = store
                    .get(input.as_tensor())
                    .cloned()
                    .ok_or_else(|| Error::input("no gradient reached a block's input"))?;
            }
            inputs.truncate(layer);
        }
        Ok((grads, sum))
    }

    /// The LoRA variables of each block.
    fn vars_by_layer(&self) -> Vec<Vec<Var>> {
        self.blocks
            .iter()
            .map(|b| {
                b.proj
                    .values()
                    .filter_map(|l| l.lora.as_ref())
                    .flat_map(|l| [l.a.clone(), l.b.clone()])
                    .collect()
            })
            .collect()
    }
}

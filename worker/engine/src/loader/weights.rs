//! The two places a model family's constructor reads weights from ([`WeightSource`]): a GGUF
//! file, whose projections stay quantized and go through the loader's `linear_from_qtensor`
//! (flotilla's kernels where they apply), and a Hugging Face folder's safetensors.

use super::linear_from_qtensor;
use crate::error::{Error, Result};
use crate::models::layers::{Embedding, Linear};
use crate::models::WeightSource;
use candle_core::quantized::{gguf_file, QTensor};
use candle_core::{Device, Tensor};
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

/// Tensors of an open GGUF file, by their GGUF names.
pub(crate) struct GgufWeights<'a> {
    pub content: &'a gguf_file::Content,
    pub reader: &'a mut BufReader<File>,
    pub path: &'a Path,
    pub device: &'a Device,
}

impl GgufWeights<'_> {
    fn qtensor(&mut self, name: &str) -> Result<QTensor> {
        if !self.content.tensor_infos.contains_key(name) {
            return Err(Error::model(
                self.path,
                format!("tensor `{name}` is missing"),
            ));
        }
        self.content
            .tensor(self.reader, name, self.device)
            .map_err(|e| Error::model(self.path, format!("tensor `{name}`: {e}")))
    }

    /// Check that tensor `name` has `shape` (rows first, as candle orders GGUF dims).
    fn check_shape(&self, name: &str, shape: &[usize]) -> Result<()> {
        let found = self
            .content
            .tensor_infos
            .get(name)
            .map(|t| t.shape.dims().to_vec())
            .unwrap_or_default();
        if found != shape {
            return Err(Error::model(
                self.path,
                format!("tensor `{name}` has shape {found:?}, the config says {shape:?}"),
            ));
        }
        Ok(())
    }
}

impl WeightSource for GgufWeights<'_> {
    fn is_gguf(&self) -> bool {
        true
    }

    fn dense(&mut self, gguf: &str, _hf: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.qtensor(gguf)?;
        self.check_shape(gguf, shape)?;
        Ok(t.dequantize(self.device)?)
    }

    fn linear(
        &mut self,
        gguf: &str,
        _hf: &str,
        out: usize,
        inp: usize,
        bias: bool,
    ) -> Result<Linear> {
        let w = self.qtensor(gguf)?;
        self.check_shape(gguf, &[out, inp])?;
        let b = if bias {
            let name = gguf.replace(".weight", ".bias");
            Some(self.qtensor(&name)?.dequantize(self.device)?)
        } else {
            None
        };
        linear_from_qtensor(w, b, self.device)
    }

    fn embedding_and_head(
        &mut self,
        vocab: usize,
        hidden: usize,
        tied: bool,
    ) -> Result<(Embedding, Linear)> {
        self.check_shape("token_embd.weight", &[vocab, hidden])?;
        let embed = Embedding::from_qtensor(self.qtensor("token_embd.weight")?, self.device)?;
        let head = if tied {
            // A second copy: the head's matmul may repack its blocks.
            linear_from_qtensor(self.qtensor("token_embd.weight")?, None, self.device)?
        } else {
            self.linear("output.weight", "", vocab, hidden, false)?
        };
        Ok((embed, head))
    }
}

/// Tensors of a Hugging Face folder, by their Hugging Face names, in the loader's dtype.
pub(crate) struct HfWeights<'a> {
    pub vb: candle_nn::VarBuilder<'a>,
    pub dir: &'a Path,
}

impl WeightSource for HfWeights<'_> {
    fn is_gguf(&self) -> bool {
        false
    }

    fn dense(&mut self, _gguf: &str, hf: &str, shape: &[usize]) -> Result<Tensor> {
        self.vb
            .get(shape, hf)
            .map_err(|e| Error::model(self.dir, format!("tensor `{hf}`: {e}")))
    }

    fn linear(
        &mut self,
        gguf: &str,
        hf: &str,
        out: usize,
        inp: usize,
        bias: bool,
    ) -> Result<Linear> {
        let w = self.dense(gguf, hf, &[out, inp])?;
        let b = if bias {
            Some(self.dense("", &hf.replace(".weight", ".bias"), &[out])?)
        } else {
            None
        };
        Ok(Linear::Dense(candle_nn::Linear::new(w, b)))
    }

    fn embedding_and_head(
        &mut self,
        vocab: usize,
        hidden: usize,
        tied: bool,
    ) -> Result<(Embedding, Linear)> {
        let embed = self.dense("", "model.embed_tokens.weight", &[vocab, hidden])?;
        let head = if tied {
            Linear::Dense(candle_nn::Linear::new(embed.clone(), None))
        } else {
            self.linear("", "lm_head.weight", vocab, hidden, false)?
        };
        Ok((Embedding::Dense(embed), head))
    }
}

//! Named f32 tensors in safetensors files, without a tensor library: what distributed training
//! moves between workers and the coordinator (gradients, DiLoCo deltas, adapters, optimizer
//! state). The coordinator does its arithmetic on these flat vectors; the worker converts
//! them to and from candle tensors.
//!
//! **Compression** (`distributed.compression`) is how a tensor travels: `none` as F32, `fp16`
//! as F16, `int8` as I8 with a per-tensor scale (`max |x| / 127`) kept in the file's metadata
//! under `scale.<name>`. Reading gives f32 back whatever the encoding.

use crate::error::{Error, Result};
use crate::train_config::Compression;
use safetensors::tensor::{Dtype, TensorView};
use std::collections::HashMap;

/// One tensor: its name, shape and values (row-major).
#[derive(Debug, Clone, PartialEq)]
pub struct NamedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Tensors in name order (the order of the file).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TensorSet {
    pub tensors: Vec<NamedTensor>,
}

impl TensorSet {
    /// A set from tensors in any order; kept sorted by name.
    pub fn new(mut tensors: Vec<NamedTensor>) -> Self {
        tensors.sort_by(|a, b| a.name.cmp(&b.name));
        Self { tensors }
    }

    pub fn get(&self, name: &str) -> Option<&NamedTensor> {
        self.tensors
            .binary_search_by(|t| t.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.tensors[i])
    }

    /// Number of values over all tensors.
    pub fn len(&self) -> usize {
        self.tensors.iter().map(|t| t.data.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// A set of the same names and shapes, all zeros.
    pub fn zeros_like(&self) -> Self {
        Self {
            tensors: self
                .tensors
                .iter()
                .map(|t| NamedTensor {
                    name: t.name.clone(),
                    shape: t.shape.clone(),
                    data: vec![0.0; t.data.len()],
                })
                .collect(),
        }
    }

    /// Checks that `other` has exactly this set's names and shapes; `what` names it in errors.
    pub fn check_same_layout(&self, other: &TensorSet, what: &str) -> Result<()> {
        if self.tensors.len() != other.tensors.len() {
            return Err(Error::input(format!(
                "{what}: {} tensors where {} were expected",
                other.tensors.len(),
                self.tensors.len()
            )));
        }
        for (a, b) in self.tensors.iter().zip(&other.tensors) {
            if a.name != b.name || a.shape != b.shape {
                return Err(Error::input(format!(
                    "{what}: tensor {} {:?} where {} {:?} was expected",
                    b.name, b.shape, a.name, a.shape
                )));
            }
        }
        Ok(())
    }

    /// The set as a safetensors file, each tensor encoded as `compression` says.
    pub fn encode(&self, compression: Compression) -> Result<Vec<u8>> {
        let mut buffers: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
        let mut meta: HashMap<String, String> = HashMap::new();
        for t in &self.tensors {
            let (dtype, bytes) = match compression {
                Compression::None => (
                    Dtype::F32,
                    t.data.iter().flat_map(|x| x.to_le_bytes()).collect(),
                ),
                Compression::Fp16 => (
                    Dtype::F16,
                    t.data
                        .iter()
                        .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
                        .collect(),
                ),
                Compression::Int8 => {
                    let max = t.data.iter().fold(0f32, |m, x| m.max(x.abs()));
                    let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
                    meta.insert(format!("scale.{}", t.name), format!("{scale:e}"));
                    (
                        Dtype::I8,
                        t.data
                            .iter()
                            .map(|x| (x / scale).round().clamp(-127.0, 127.0) as i8 as u8)
                            .collect(),
                    )
                }
            };
            buffers.push((t.name.clone(), dtype, t.shape.clone(), bytes));
        }
        let views = buffers
            .iter()
            .map(|(name, dtype, shape, bytes)| {
                TensorView::new(*dtype, shape.clone(), bytes)
                    .map(|v| (name.clone(), v))
                    .map_err(|e| Error::input(format!("tensor {name}: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let meta = (!meta.is_empty()).then_some(meta);
        safetensors::serialize(views, meta)
            .map_err(|e| Error::input(format!("cannot write tensors: {e}")))
    }

    /// Reads a safetensors file of F32, F16, BF16 or I8 (with its scale) tensors; `what`
    /// names the file in errors.
    pub fn decode(bytes: &[u8], what: &str) -> Result<Self> {
        let bad = |why: String| Error::input(format!("{what}: {why}"));
        let (_, header) = safetensors::SafeTensors::read_metadata(bytes)
            .map_err(|e| bad(format!("not a safetensors file: {e}")))?;
        let scales = header.metadata().clone().unwrap_or_default();
        let file = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| bad(format!("not a safetensors file: {e}")))?;
        let mut tensors = Vec::new();
        for (name, view) in file.tensors() {
            let raw = view.data();
            let data: Vec<f32> = match view.dtype() {
                Dtype::F32 => raw
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
                Dtype::F16 => raw
                    .chunks_exact(2)
                    .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
                Dtype::BF16 => raw
                    .chunks_exact(2)
                    .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
                Dtype::I8 => {
                    let scale: f32 = scales
                        .get(&format!("scale.{name}"))
                        .and_then(|s| s.parse().ok())
                        .ok_or_else(|| bad(format!("int8 tensor {name} has no scale")))?;
                    raw.iter().map(|b| *b as i8 as f32 * scale).collect()
                }
                other => return Err(bad(format!("tensor {name} is {other:?}, not a float"))),
            };
            tensors.push(NamedTensor {
                name,
                shape: view.shape().to_vec(),
                data,
            });
        }
        Ok(Self::new(tensors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set() -> TensorSet {
        TensorSet::new(vec![
            NamedTensor {
                name: "b".into(),
                shape: vec![2, 2],
                data: vec![0.5, -1.25, 3.0, 0.0],
            },
            NamedTensor {
                name: "a".into(),
                shape: vec![3],
                data: vec![1e-3, -2e-3, 7.0],
            },
        ])
    }

    #[test]
    fn every_compression_reads_back_within_its_precision() {
        let s = set();
        let exact = TensorSet::decode(&s.encode(Compression::None).unwrap(), "t").unwrap();
        assert_eq!(exact, s);
        let half = TensorSet::decode(&s.encode(Compression::Fp16).unwrap(), "t").unwrap();
        for (a, b) in s.tensors.iter().zip(&half.tensors) {
            for (x, y) in a.data.iter().zip(&b.data) {
                assert!((x - y).abs() <= x.abs() * 1e-3 + 1e-6, "{x} vs {y}");
            }
        }
        let q = TensorSet::decode(&s.encode(Compression::Int8).unwrap(), "t").unwrap();
        for (a, b) in s.tensors.iter().zip(&q.tensors) {
            let max = a.data.iter().fold(0f32, |m, x| m.max(x.abs()));
            for (x, y) in a.data.iter().zip(&b.data) {
                assert!((x - y).abs() <= max / 127.0 * 0.5 + 1e-7, "{x} vs {y}");
            }
        }
        // Smaller on the wire, in that order.
        let sizes: Vec<usize> = [Compression::None, Compression::Fp16, Compression::Int8]
            .iter()
            .map(|c| s.encode(*c).unwrap().len())
            .collect();
        assert!(sizes[0] > sizes[1], "{sizes:?}");
    }

    #[test]
    fn layouts_are_checked_and_garbage_is_refused() {
        let s = set();
        let mut other = s.clone();
        other.tensors[0].shape = vec![1, 3];
        let e = s
            .check_same_layout(&other, "delta")
            .unwrap_err()
            .to_string();
        assert!(e.contains("delta") && e.contains("[1, 3]"), "{e}");
        let e = TensorSet::decode(b"not a file", "upload.safetensors")
            .unwrap_err()
            .to_string();
        assert!(e.contains("upload.safetensors"), "{e}");
        assert_eq!(s.get("a").unwrap().data.len(), 3);
        assert!(s.get("c").is_none());
    }
}

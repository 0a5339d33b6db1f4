//! Times flotilla's quantized matmul per GGUF type, one shape at a time: decode (one row) and
//! prefill (128 rows), on random weights. `cargo run --release -p flotilla-engine --example
//! kernel_bench [n_out k]`.
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use flotilla_engine::kernels::{Isa, QuantMatrix};
use std::time::Instant;

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let (n_out, k) = match args.as_slice() {
        [n, k] => (*n, *k),
        _ => (1536, 768),
    };
    let w: Vec<f32> = (0..n_out * k)
        .map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0)
        .collect();
    let w = Tensor::from_vec(w, (n_out, k), &Device::Cpu).unwrap();
    for dtype in [
        GgmlDType::Q4_1,
        GgmlDType::Q5_0,
        GgmlDType::Q8_0,
        GgmlDType::Q4K,
        GgmlDType::Q6K,
    ] {
        let q = QTensor::quantize(&w, dtype).unwrap();
        let qm = QuantMatrix::from_qtensor(&q).unwrap().unwrap();
        for m in [1usize, 128] {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 31 % 97) as f32 / 48.0) - 1.0)
                .collect();
            let mut out = vec![0f32; m * n_out];
            let reps = if m == 1 { 2000 } else { 20 };
            qm.matmul_with(Isa::detect(), &x, &mut out);
            let t = Instant::now();
            for _ in 0..reps {
                qm.matmul_with(Isa::detect(), &x, &mut out);
            }
            let s = t.elapsed().as_secs_f64() / reps as f64;
            let gops = 2.0 * (m * n_out * k) as f64 / s / 1e9;
            println!("{dtype:?} m={m:3}: {:8.1} us  {gops:6.1} GOP/s", s * 1e6);
        }
    }
}

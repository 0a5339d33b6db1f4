//! Where a model runs: `cpu`, `cuda:N` or `metal:N`, and how many CPU threads it may use.
//!
//! An office PC is also somebody's desk. candle's CPU kernels run on rayon's pool, whose
//! threads spin while waiting for work; when another process holds the cores that spinning
//! collapses throughput, so by default flotilla leaves one core free.

use crate::error::{Error, Result};
use candle_core::{DType, Device};
pub use flotilla_contract::train_config::Precision;

/// Parse a `--device` value: `cpu`, `cuda`, `cuda:N`, `metal`, `metal:N`.
pub fn parse_device(spec: &str) -> Result<Device> {
    let spec = spec.trim();
    let (kind, ordinal) = match spec.split_once(':') {
        Some((k, n)) => {
            let n: usize = n.parse().map_err(|_| {
                Error::input(format!(
                    "--device {spec}: `{n}` is not a device number (expected e.g. cuda:0)"
                ))
            })?;
            (k, n)
        }
        None => (spec, 0),
    };
    match kind {
        "cpu" => Ok(Device::Cpu),
        "cuda" => {
            if !candle_core::utils::cuda_is_available() {
                return Err(Error::input(format!(
                    "--device {spec}: this flotilla was built without the `cuda` feature \
                     (cargo build --release --features cuda)"
                )));
            }
            Ok(Device::new_cuda(ordinal)?)
        }
        "metal" => {
            if !candle_core::utils::metal_is_available() {
                return Err(Error::input(format!(
                    "--device {spec}: this flotilla was built without the `metal` feature \
                     (cargo build --release --features metal)"
                )));
            }
            Ok(Device::new_metal(ordinal)?)
        }
        other => Err(Error::input(format!(
            "--device {spec}: unknown device kind `{other}` (expected cpu, cuda:N or metal:N)"
        ))),
    }
}

/// The default thread count: every core but one, and at least one.
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .saturating_sub(1)
        .max(1)
}

static POOL: std::sync::OnceLock<rayon::ThreadPool> = std::sync::OnceLock::new();

/// Fix the number of CPU threads the engine uses. Call once, before any model work: candle
/// reads `RAYON_NUM_THREADS` for its matmul parallelism, and the engine's pool can only be
/// built once per process (later calls keep the first size and return `false`).
pub fn set_threads(n: usize) -> Result<bool> {
    if n == 0 {
        return Err(Error::input("--threads must be at least 1"));
    }
    // Safe here: called at start-up, before the engine spawns threads that read the env.
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(|i| format!("flotilla-engine-{i}"))
        .build()
        .map_err(|e| Error::input(format!("--threads {n}: {e}")))?;
    Ok(POOL.set(pool).is_ok())
}

/// Run model work on the engine's thread pool. A forward pass is hundreds of small parallel
/// operations; from inside the pool each one is picked up by already-running workers, where a
/// caller outside it would hand every operation over and sleep until it is done.
pub fn in_engine_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    match POOL.get() {
        Some(pool) => pool.install(f),
        None => f(),
    }
}

/// A short human name for a device, as shown by `model inspect` and in results.
pub fn device_name(device: &Device) -> String {
    match device {
        Device::Cpu => "cpu".to_string(),
        Device::Cuda(_) => "cuda".to_string(),
        Device::Metal(_) => "metal".to_string(),
    }
}

/// The dtype of a model's dense (unquantized) weights and activations for `precision` on
/// `device`: `auto` is bf16 on CUDA when this binary was built for compute capability 8.0 or
/// later (Ampere on: bf16 arithmetic; `CUDA_COMPUTE_CAP` at build time, as
/// scripts/build-cuda.sh sets it) and f32 elsewhere: older GPUs lack bf16 kernels, and on a
/// CPU candle's bf16 matmuls are slower than its f32 ones, so there bf16 is asked for
/// explicitly. Generation and training share this rule.
pub fn precision_dtype(precision: Precision, device: &Device) -> DType {
    match precision {
        Precision::F32 => DType::F32,
        Precision::Bf16 => DType::BF16,
        Precision::Auto if device.is_cuda() && built_for_bf16_gpus() => DType::BF16,
        Precision::Auto => DType::F32,
    }
}

/// Whether the CUDA kernels were compiled for a compute capability with bf16 (>= 80): then
/// `auto` precision is bf16 on CUDA.
pub fn built_for_bf16_gpus() -> bool {
    option_env!("CUDA_COMPUTE_CAP")
        .map(|c| c.trim_end_matches(['a', 'f']))
        .and_then(|c| c.parse::<u32>().ok())
        .is_some_and(|c| c >= 80)
}

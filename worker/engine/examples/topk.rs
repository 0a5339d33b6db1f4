//! Debug aid: top-5 next-token logits after a prompt given as ids: `topk MODEL ID,ID,...`.
use candle_core::{Device, Tensor};
use flotilla_engine::models::llama::KvCache;
use flotilla_engine::{LanguageModel, LoadOptions};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(
        args.len() >= 3,
        "usage: cargo run -p flotilla-engine --example topk MODEL ID,ID,..."
    );
    let lm = LanguageModel::load(&args[1], &LoadOptions::default())?;
    let ids = args[2]
        .split(',')
        .map(|s| s.trim().parse::<u32>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("token ids must be numbers: {e}"))?;
    let mut c = KvCache::new(lm.model.config().num_layers, vec![0]);
    let l = lm.model.forward(
        &Tensor::new(ids.as_slice(), &Device::Cpu)?.unsqueeze(0)?,
        &mut c,
        false,
    )?;
    let mut v: Vec<(usize, f32)> = l
        .squeeze(0)?
        .to_vec1::<f32>()?
        .into_iter()
        .enumerate()
        .collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    for (i, s) in v.iter().take(5) {
        println!("{i:6} {s:8.4} {:?}", lm.tokenizer.id_to_token(*i as u32));
    }
    Ok(())
}

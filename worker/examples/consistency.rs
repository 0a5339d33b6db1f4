//! Debug aid: compare one-shot prefill logits with token-by-token decoding on a prompt.
use candle_core::{Device, Tensor};
use flotilla_worker::models::llama::KvCache;
use flotilla_worker::{chat::single_turn, LanguageModel, LoadOptions, Prompt};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let lm = LanguageModel::load(&args[1], &LoadOptions::default())?;
    let ids = lm.prompt_ids(&Prompt::Chat(single_turn(None, &args[2])))?;
    let n = ids.len();
    let m = &lm.model;
    let mut c = KvCache::new(m.config.num_layers, vec![0]);
    let all = m.forward(
        &Tensor::new(ids.as_slice(), &Device::Cpu)?.unsqueeze(0)?,
        &mut c,
        true,
    )?;
    let all = all.squeeze(0)?.to_vec2::<f32>()?;
    let mut c2 = KvCache::new(m.config.num_layers, vec![0]);
    for (i, &t) in ids.iter().enumerate() {
        let l = m.forward(
            &Tensor::new(&[t], &Device::Cpu)?.unsqueeze(0)?,
            &mut c2,
            false,
        )?;
        let l = l.squeeze(0)?.to_vec1::<f32>()?;
        let d = l
            .iter()
            .zip(&all[i])
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        let am = |v: &[f32]| {
            v.iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .unwrap()
                .0
        };
        println!(
            "pos {i:3} tok {t:6} maxdiff {d:.4} top1 one-shot {} incr {}",
            am(&all[i]),
            am(&l)
        );
    }
    let _ = n;
    Ok(())
}

//! Print how the model tokenizes a text: `cargo run --example tokens -- MODEL TEXT [--chat]`.
use flotilla_engine::{chat::single_turn, LanguageModel, LoadOptions, Prompt};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(
        args.len() >= 3,
        "usage: cargo run -p flotilla-engine --example tokens MODEL TEXT [--chat]"
    );
    let lm = LanguageModel::load(&args[1], &LoadOptions::default())?;
    let prompt = if args.get(3).map(String::as_str) == Some("--chat") {
        Prompt::Chat(single_turn(None, &args[2]))
    } else {
        Prompt::Text(args[2].clone())
    };
    if let Prompt::Chat(m) = &prompt {
        println!("{:?}", lm.render_chat(m, true)?);
    }
    let ids = lm.prompt_ids(&prompt)?;
    println!("{ids:?}");
    let toks: Vec<String> = ids
        .iter()
        .map(|&i| lm.tokenizer.id_to_token(i).unwrap_or_default())
        .collect();
    println!("{toks:?}");
    Ok(())
}

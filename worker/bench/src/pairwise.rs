//! Pairwise judging: a judge reads two answers to the same case — the baseline variant's and
//! another's — and says which is better, or a tie; asked twice with the positions swapped, so
//! a judge that prefers whichever answer comes first cannot decide the result. The alternative
//! to absolute ratings for variant comparisons (`flotilla eval --pairwise`).

use super::judge::{fit_context, LocalJudge, ENDPOINT_CONTEXT_CHARS};
use super::openai::EndpointJudge;
use super::runner::Judge;
pub use flotilla_contract::report::{PairChoice, PairVerdict};
use flotilla_contract::CaseResult;
use flotilla_engine::chat::ChatMessage;
use flotilla_engine::error::{Error, Result};
use regex::Regex;
use std::sync::OnceLock;

/// The choices a judge has, as it writes them.
const OPTIONS: [&str; 3] = ["A", "B", "tie"];

/// One question to compare two answers on; `first` is shown as answer A.
pub struct PairInput<'a> {
    pub question: &'a str,
    pub reference: Option<&'a str>,
    pub context: &'a str,
    pub first: &'a str,
    pub second: &'a str,
}

/// The messages of the pairwise prompt, the context cut to `context_limit` characters.
pub fn pair_messages(
    input: &PairInput,
    context_limit: usize,
) -> (Vec<ChatMessage>, Option<String>) {
    let system = "You are an impartial judge. Compare the two answers to the question below: \
         which is more correct, complete and faithful to the context and the reference answer? \
         Do not prefer an answer for its position or its length. Explain in two or three \
         sentences, then give your verdict in exactly this format: \"Verdict: [[X]]\", where X \
         is A, B or tie.";
    let mut user = format!("[Question]\n{}\n\n", input.question);
    let mut cut = None;
    if !input.context.trim().is_empty() {
        let (shown, note) = fit_context(input.context, context_limit);
        cut = note;
        user.push_str(&format!("[Context]\n{shown}\n\n"));
    }
    if let Some(r) = input.reference.filter(|r| !r.trim().is_empty()) {
        user.push_str(&format!("[Reference answer]\n{r}\n\n"));
    }
    user.push_str(&format!(
        "[Answer A]\n{}\n\n[Answer B]\n{}",
        input.first, input.second
    ));
    (
        vec![
            ChatMessage::new("system", system),
            ChatMessage::new("user", user),
        ],
        cut,
    )
}

fn verdict_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"(?i)Verdict:\s*\[\[\s*(A|B|tie)\s*\]\]").expect("verdict regex"))
}

/// The last `Verdict: [[X]]` of a reply; an error says why there is none.
pub fn parse_choice(reply: &str) -> std::result::Result<&'static str, String> {
    let m = verdict_re()
        .captures_iter(reply)
        .last()
        .ok_or_else(|| "no `Verdict: [[A|B|tie]]` in the reply".to_string())?;
    Ok(match m[1].to_ascii_lowercase().as_str() {
        "a" => "A",
        "b" => "B",
        _ => "tie",
    })
}

/// Which answer one asking preferred (`A`, `B` or `tie`), with the reply.
fn ask(judge: &Judge, input: &PairInput) -> Result<(&'static str, String)> {
    match judge {
        Judge::Local(j) => ask_local(j, input),
        Judge::Endpoint(j) => ask_endpoint(j, input),
    }
}

fn ask_local(j: &LocalJudge, input: &PairInput) -> Result<(&'static str, String)> {
    let (prompt, ids, _) = j.fitted_prompt(input.context.chars().count(), |limit| {
        Ok(pair_messages(input, limit))
    })?;
    let options: Vec<String> = OPTIONS.iter().map(|o| o.to_string()).collect();
    let (explanation, logp) = j.explain_then_choose(&prompt, &ids, "Verdict:", &options)?;
    let best = (0..OPTIONS.len())
        .max_by(|&a, &b| logp[a].total_cmp(&logp[b]))
        .ok_or_else(|| Error::input("no options"))?;
    Ok((
        OPTIONS[best],
        format!("{explanation}\nVerdict: [[{}]]", OPTIONS[best]),
    ))
}

fn ask_endpoint(j: &EndpointJudge, input: &PairInput) -> Result<(&'static str, String)> {
    let (messages, _) = pair_messages(input, ENDPOINT_CONTEXT_CHARS);
    let reply = j.ask(&messages).map_err(Error::input)?;
    let choice =
        parse_choice(&reply).map_err(|e| Error::input(format!("judge {}: {e}", j.name)))?;
    Ok((choice, reply))
}

/// Compare `b`'s answer with `a`'s (the baseline) on the same case, asked twice with the
/// positions swapped. An unparsed answer loses to a parsed one without asking.
pub fn compare(judge: &Judge, judge_name: &str, a: &CaseResult, b: &CaseResult) -> PairVerdict {
    let mut v = PairVerdict {
        case_id: a.case_id.clone(),
        judge: judge_name.to_string(),
        a: a.variant.clone(),
        b: b.variant.clone(),
        adapter: a.adapter.clone(),
        model: a.model.clone(),
        task: a.task.name().to_string(),
        language: a.language.clone(),
        sample: a.sample,
        b_first: None,
        a_first: None,
        outcome: PairChoice::Tie,
        raw: Vec::new(),
        error: None,
    };
    if a.parse_failed || b.parse_failed {
        v.outcome = match (a.parse_failed, b.parse_failed) {
            (true, false) => PairChoice::B,
            (false, true) => PairChoice::A,
            _ => PairChoice::Tie,
        };
        return v;
    }
    let input = |first: &'static str| {
        let (x, y) = if first == "a" {
            (&a.answer, &b.answer)
        } else {
            (&b.answer, &a.answer)
        };
        PairInput {
            question: &a.query,
            reference: a.reference_answer.as_deref(),
            context: &a.context,
            first: x,
            second: y,
        }
    };
    let asked = ask(judge, &input("a"))
        .and_then(|(c1, r1)| ask(judge, &input("b")).map(|(c2, r2)| (c1, r1, c2, r2)));
    match asked {
        Ok((c1, r1, c2, r2)) => {
            // In the first asking A is `a`; in the second A is `b`.
            let first = match c1 {
                "A" => PairChoice::A,
                "B" => PairChoice::B,
                _ => PairChoice::Tie,
            };
            let second = match c2 {
                "A" => PairChoice::B,
                "B" => PairChoice::A,
                _ => PairChoice::Tie,
            };
            v.a_first = Some(first);
            v.b_first = Some(second);
            // Both askings must agree for a win; otherwise the position decided: a tie.
            v.outcome = if first == second {
                first
            } else {
                PairChoice::Tie
            };
            v.raw = vec![r1, r2];
        }
        Err(e) => v.error = Some(e.to_string()),
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_parse_the_last_marker() {
        assert_eq!(parse_choice("A is better. Verdict: [[A]]"), Ok("A"));
        assert_eq!(
            parse_choice("Verdict: [[b]] hmm, Verdict: [[ tie ]]"),
            Ok("tie")
        );
        assert!(parse_choice("B wins").is_err());
    }

    #[test]
    fn the_prompt_shows_both_answers_in_order_and_no_example_verdict() {
        let (m, _) = pair_messages(
            &PairInput {
                question: "q",
                reference: Some("r"),
                context: "ctx",
                first: "one",
                second: "two",
            },
            100,
        );
        let u = &m[1].content;
        assert!(u.find("[Answer A]\none").unwrap() < u.find("[Answer B]\ntwo").unwrap());
        assert!(u.contains("[Context]\nctx") && u.contains("[Reference answer]\nr"));
        assert!(!m[0].content.contains("[[A]]"), "no example choice to copy");
    }
}

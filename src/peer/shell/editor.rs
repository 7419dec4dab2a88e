//! The interactive line editor (`rustyline`): the prompt, history in `.p2pshare/history`, tab
//! completion of commands and file names, and the external printer that lets log lines appear
//! above the prompt instead of through it.

use super::{run_line, Outcome, HELP};
use crate::console;
use crate::peer::PeerNode;
use std::sync::Arc;
use std::time::Duration;

/// Tab completion: commands first, then file names (the swarm's and this peer's).
#[derive(rustyline::Helper, rustyline::Hinter, rustyline::Highlighter, rustyline::Validator)]
struct Completion {
    node: Arc<PeerNode>,
    runtime: tokio::runtime::Handle,
}

impl rustyline::completion::Completer for Completion {
    type Candidate = String;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &rustyline::Context<'_>,
    ) -> rustyline::Result<(usize, Vec<String>)> {
        let before = &line[..pos];
        let start = before.rfind(char::is_whitespace).map_or(0, |i| i + 1);
        let word = &before[start..];
        if start == 0 {
            let names = HELP
                .iter()
                .map(|(name, _, _)| name.to_string())
                .filter(|n| n.starts_with(word))
                .collect();
            return Ok((0, names));
        }
        let verb = before.split_whitespace().next().unwrap_or("");
        if !matches!(verb, "get" | "whohas" | "bench" | "stress") {
            return Ok((start, vec![]));
        }
        let mut names: Vec<String> = self
            .node
            .store()
            .list()
            .into_iter()
            .map(|f| f.name)
            .collect();
        // The swarm's files, if the tracker answers quickly; completion must never hang.
        let swarm = self.runtime.block_on(async {
            tokio::time::timeout(Duration::from_millis(500), self.node.tracker().files()).await
        });
        if let Ok(Ok(files)) = swarm {
            names.extend(files.into_iter().map(|f| f.name));
        }
        // The swarm's names come from the tracker: only valid ones are offered (and printed).
        names.retain(|n| {
            n.starts_with(word)
                && !n.contains(char::is_whitespace)
                && crate::names::validate_file_name(n).is_ok()
        });
        names.sort();
        names.dedup();
        Ok((start, names))
    }
}

/// Reads and runs lines with editing until `exit`, Ctrl-C or Ctrl-D. Fails only if the terminal
/// cannot be set up for editing (the caller then falls back to plain lines).
pub(super) fn run_interactive(
    node: &Arc<PeerNode>,
    runtime: &tokio::runtime::Handle,
) -> Result<(), rustyline::error::ReadlineError> {
    use rustyline::ExternalPrinter as _;
    let mut editor = rustyline::Editor::<Completion, rustyline::history::DefaultHistory>::new()?;
    editor.set_helper(Some(Completion {
        node: node.clone(),
        runtime: runtime.clone(),
    }));
    if let Ok(mut printer) = editor.create_external_printer() {
        console::set_prompt_printer(Box::new(move |line| {
            let _ = printer.print(format!("{line}\n"));
        }));
    }
    let history = node.store().root().join(".p2pshare/history");
    let _ = editor.load_history(&history);
    let prompt = format!("{}> ", node.id());
    loop {
        console::set_prompt_active(true);
        let read = editor.readline(&prompt);
        console::set_prompt_active(false);
        match read {
            Ok(line) => {
                if !line.trim().is_empty() {
                    let _ = editor.add_history_entry(line.as_str());
                }
                if run_line(node, runtime, &line) == Outcome::Exit {
                    break;
                }
            }
            // Ctrl-C and Ctrl-D both leave, like `exit`.
            Err(_) => break,
        }
    }
    let _ = editor.save_history(&history);
    Ok(())
}

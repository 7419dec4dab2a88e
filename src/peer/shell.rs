//! The peer's interactive shell: one command per line, one clear line per failure.
//!
//! On a terminal it has line editing, history and tab completion of commands and file names
//! (`rustyline`), and progress bars; with piped input it reads plain lines, so scripts and tests
//! can drive it. End of input is `exit`. [`run_script`] runs commands non-interactively (the
//! peer's `--exec`) and reports whether all of them succeeded.
//!
//! The parts: `parse` turns a line into a [`Command`], `commands` runs it against the node
//! ([`execute`]), `render` prints the result (tables, lines, `--json`), `editor` is the line
//! editor of an interactive session.

mod commands;
mod editor;
mod parse;
mod render;

pub use commands::{execute, Outcome};
pub(crate) use parse::HELP;
pub use parse::{parse, Command};

use crate::console::ProgressMode;
use crate::peer::PeerNode;
use std::io::{BufRead, IsTerminal, Write};
use std::sync::Arc;

/// Parses and runs one line, printing its output to standard output. Blocking; call from a
/// thread that is not a runtime worker.
fn run_line(node: &Arc<PeerNode>, runtime: &tokio::runtime::Handle, line: &str) -> Outcome {
    let mut out = Vec::new();
    let outcome = match parse(line) {
        Ok(command) => runtime
            .block_on(execute(node, command, &mut out, ProgressMode::detect()))
            .unwrap_or(Outcome::Failed),
        Err(message) => {
            let _ = writeln!(out, "error: {message}");
            Outcome::Failed
        }
    };
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(&out);
    let _ = stdout.flush();
    outcome
}

/// Runs `lines` in order, echoing each as `> line`; stops at `exit`. Returns true if every
/// command succeeded. Blocking.
pub fn run_script(node: Arc<PeerNode>, runtime: tokio::runtime::Handle, lines: &[String]) -> bool {
    let mut all_ok = true;
    for line in lines {
        println!("> {line}");
        match run_line(&node, &runtime, line) {
            Outcome::Ok => {}
            Outcome::Failed => all_ok = false,
            Outcome::Exit => break,
        }
    }
    all_ok
}

/// Runs the shell on standard input until `exit`, end of input, or Ctrl-C/Ctrl-D. Blocking;
/// call from a thread that is not a runtime worker.
pub fn run(node: Arc<PeerNode>, runtime: tokio::runtime::Handle) {
    if std::io::stdin().is_terminal() {
        if editor::run_interactive(&node, &runtime).is_ok() {
            return;
        }
        eprintln!("line editing unavailable; reading plain lines");
    }
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        if run_line(&node, &runtime, &line) == Outcome::Exit {
            break;
        }
    }
}

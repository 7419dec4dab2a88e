//! The peer's interactive shell: one command per line, one clear line per failure.
//!
//! On a terminal it has line editing, history and tab completion of commands and file names
//! (`rustyline`), and progress bars; with piped input it reads plain lines, so scripts and tests
//! can drive it. End of input is `exit`. [`run_script`] runs commands non-interactively (the
//! peer's `--exec`) and reports whether all of them succeeded.

use crate::bench;
use crate::console::{self, ProgressDisplay, ProgressMode};
use crate::human;
use crate::peer::download::{Destination, DownloadRequest, Progress};
use crate::peer::PeerNode;
use serde_json::json;
use std::io::{BufRead, IsTerminal, Write};
use std::sync::Arc;
use std::time::Duration;

/// A parsed shell command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `get <file>[@<id-prefix>]`
    Get(String),
    /// `myfiles [--json]`
    MyFiles {
        /// Machine-readable output.
        json: bool,
    },
    /// `whohas <file> [--json]`
    WhoHas {
        /// File name, optionally `@<id-prefix>`.
        file: String,
        /// Machine-readable output.
        json: bool,
    },
    /// `bench <file> [runs]`
    Bench {
        /// File to download.
        file: String,
        /// How many runs.
        runs: u32,
    },
    /// `stress <file> [threads]`
    Stress {
        /// File to download.
        file: String,
        /// How many at once.
        threads: u32,
    },
    /// `peers [--json]`
    Peers {
        /// Machine-readable output.
        json: bool,
    },
    /// `files [--json]`
    Files {
        /// Machine-readable output.
        json: bool,
    },
    /// `help`
    Help,
    /// `exit`
    Exit,
    /// An empty line.
    Nothing,
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It did what was asked.
    Ok,
    /// It failed (the reason was printed).
    Failed,
    /// The shell should stop.
    Exit,
}

/// Default number of `bench` runs.
pub const DEFAULT_BENCH_RUNS: u32 = 5;
/// Default number of parallel `stress` downloads.
pub const DEFAULT_STRESS_THREADS: u32 = 10;
/// Upper bound on `bench` runs and `stress` threads: a typo must not start a million downloads.
pub const MAX_REPEAT: u32 = 1000;

/// The commands, their usage and a one-line description.
pub const HELP: &[(&str, &str, &str)] = &[
    (
        "get",
        "get <file>[@<id>]",
        "download a file from every peer that has it into files/",
    ),
    (
        "myfiles",
        "myfiles [--json]",
        "list the files this peer shares",
    ),
    (
        "whohas",
        "whohas <file> [--json]",
        "ask the tracker who holds a file (each version, its holders)",
    ),
    (
        "bench",
        "bench <file> [runs]",
        "download a file `runs` times (default 5), log to download_times.csv",
    ),
    (
        "stress",
        "stress <file> [threads]",
        "run `threads` downloads at once (default 10), check every copy",
    ),
    ("peers", "peers [--json]", "list the peers in the swarm"),
    (
        "files",
        "files [--json]",
        "list every file the swarm offers, with holder counts",
    ),
    ("help", "help", "show this list"),
    ("exit", "exit", "leave the swarm and quit (also Ctrl-D)"),
];

/// Parses one line. Errors are one-line messages for the user.
pub fn parse(line: &str) -> Result<Command, String> {
    let mut words: Vec<&str> = line.split_whitespace().collect();
    let json = match words.iter().position(|w| *w == "--json") {
        Some(i) => {
            words.remove(i);
            true
        }
        None => false,
    };
    let Some((&verb, args)) = words.split_first() else {
        return Ok(Command::Nothing);
    };
    let usage = HELP
        .iter()
        .find(|(name, _, _)| *name == verb)
        .map_or("", |(_, usage, _)| *usage);
    let max_args = |n: usize| -> Result<(), String> {
        if args.len() > n {
            Err(format!("too many arguments; usage: {usage}"))
        } else {
            Ok(())
        }
    };
    let file_arg = || -> Result<String, String> {
        args.first()
            .map(|f| f.to_string())
            .ok_or_else(|| format!("usage: {usage}"))
    };
    let count = |default: u32, what: &str| -> Result<u32, String> {
        match args.get(1) {
            None => Ok(default),
            Some(s) => match s.parse::<u32>() {
                Ok(n) if (1..=MAX_REPEAT).contains(&n) => Ok(n),
                _ => Err(format!(
                    "{what} must be a whole number from 1 to {MAX_REPEAT}, got {s:?}"
                )),
            },
        }
    };
    if json && !matches!(verb, "myfiles" | "whohas" | "peers" | "files") {
        return Err(format!("--json is not an option of {verb}"));
    }
    let command = match verb {
        "get" => {
            max_args(1)?;
            Command::Get(file_arg()?)
        }
        "whohas" => {
            max_args(1)?;
            Command::WhoHas {
                file: file_arg()?,
                json,
            }
        }
        "bench" => {
            max_args(2)?;
            Command::Bench {
                file: file_arg()?,
                runs: count(DEFAULT_BENCH_RUNS, "runs")?,
            }
        }
        "stress" => {
            max_args(2)?;
            Command::Stress {
                file: file_arg()?,
                threads: count(DEFAULT_STRESS_THREADS, "threads")?,
            }
        }
        "myfiles" | "peers" | "files" | "help" | "?" | "exit" | "quit" => {
            max_args(0)?;
            match verb {
                "myfiles" => Command::MyFiles { json },
                "peers" => Command::Peers { json },
                "files" => Command::Files { json },
                "help" | "?" => Command::Help,
                _ => Command::Exit,
            }
        }
        other => return Err(format!("unknown command {other:?}; type help for the list")),
    };
    Ok(command)
}

/// Prints rows as an aligned table (first column left-aligned, the rest as given).
fn table(out: &mut dyn Write, header: &[&str], rows: &[Vec<String>]) -> std::io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            let pad = w - cell.chars().count();
            if i == 1 {
                // Sizes read best right-aligned.
                text.push_str(&" ".repeat(pad));
                text.push_str(cell);
            } else {
                text.push_str(cell);
                if i + 1 < cells.len() {
                    text.push_str(&" ".repeat(pad));
                }
            }
            if i + 1 < cells.len() {
                text.push_str("  ");
            }
        }
        text
    };
    writeln!(out, "{}", line(header.to_vec()))?;
    for row in rows {
        writeln!(out, "{}", line(row.iter().map(String::as_str).collect()))?;
    }
    Ok(())
}

fn json_line(out: &mut dyn Write, value: serde_json::Value) -> std::io::Result<()> {
    writeln!(out, "{value}")
}

/// Runs one command, writing its output to `out`.
pub async fn execute(
    node: &Arc<PeerNode>,
    command: Command,
    out: &mut dyn Write,
    mode: ProgressMode,
) -> std::io::Result<Outcome> {
    let failed = |out: &mut dyn Write, message: String| -> std::io::Result<Outcome> {
        writeln!(out, "error: {message}")?;
        Ok(Outcome::Failed)
    };
    match command {
        Command::Nothing => {}
        Command::Exit => return Ok(Outcome::Exit),
        Command::Help => {
            for (_, usage, what) in HELP {
                writeln!(out, "  {usage:<26} {what}")?;
            }
        }
        Command::MyFiles { json } => {
            let files = node.store().list();
            if json {
                let list: Vec<_> = files
                    .iter()
                    .map(|f| json!({"name": f.name, "size": f.size, "content_id": f.content_id().to_hex()}))
                    .collect();
                json_line(out, json!(list))?;
            } else if files.is_empty() {
                writeln!(
                    out,
                    "no files shared (put files in {})",
                    node.store().files_dir().display()
                )?;
            } else {
                let rows: Vec<Vec<String>> = files
                    .iter()
                    .map(|f| vec![f.name.clone(), human::bytes(f.size), f.content_id().short()])
                    .collect();
                table(out, &["NAME", "SIZE", "ID"], &rows)?;
            }
        }
        Command::WhoHas { file, json } => {
            let request = DownloadRequest::parse(&file, Destination::Files);
            match node
                .tracker()
                .who_has(&request.name, &request.content_id_prefix)
                .await
            {
                Ok(versions) if json => {
                    let list: Vec<_> = versions
                        .iter()
                        .map(|v| {
                            json!({
                                "name": v.name, "size": v.size, "content_id": v.content_id,
                                "holders": v.holders.iter()
                                    .map(|h| json!({"peer_id": h.peer_id, "address": h.address}))
                                    .collect::<Vec<_>>(),
                            })
                        })
                        .collect();
                    json_line(out, json!(list))?;
                }
                Ok(versions) => {
                    let rows: Vec<Vec<String>> = versions
                        .iter()
                        .map(|v| {
                            let holders: Vec<String> = v
                                .holders
                                .iter()
                                .map(|h| format!("{} ({})", h.peer_id, h.address))
                                .collect();
                            vec![
                                v.name.clone(),
                                human::bytes(v.size),
                                v.content_id[..12].to_string(),
                                v.holders.len().to_string(),
                                holders.join(", "),
                            ]
                        })
                        .collect();
                    table(out, &["NAME", "SIZE", "ID", "HOLDERS", "WHO"], &rows)?;
                }
                Err(e) if e.code() == Some(tonic::Code::NotFound) => {
                    return failed(out, format!("no peer has {:?}", request.name));
                }
                Err(e) => return failed(out, e.to_string()),
            }
        }
        Command::Get(spec) => {
            let request = DownloadRequest::parse(&spec, Destination::Files);
            let progress = Arc::new(Progress::default());
            let display =
                ProgressDisplay::start(request.name.clone(), vec![progress.clone()], mode);
            let result = node.download(&request, progress).await;
            display.finish().await;
            let report = match result {
                Ok(report) => report,
                Err(e) => return failed(out, e.to_string()),
            };
            if let Some(note) = &report.note {
                writeln!(out, "note: {note}")?;
            }
            if report.already_had {
                writeln!(
                    out,
                    "already have {} ({}, same content)",
                    report.name,
                    report.content_id.short()
                )?;
                return Ok(Outcome::Ok);
            }
            if report.resumed > 0 {
                writeln!(
                    out,
                    "resumed: {} kept from an earlier attempt, {} fetched now",
                    human::bytes(report.resumed),
                    human::bytes(report.fetched)
                )?;
            }
            let used: Vec<String> = report
                .holders
                .iter()
                .map(|h| match &h.dropped {
                    None => format!("{} {}", h.peer_id, human::bytes(h.bytes)),
                    Some(why) => {
                        format!("{} {} (dropped: {why})", h.peer_id, human::bytes(h.bytes))
                    }
                })
                .collect();
            writeln!(
                out,
                "got {} ({}, id {}) from {} holder(s) [{}] in {}, {:.1} MB/s",
                report.name,
                human::bytes(report.size),
                report.content_id.short(),
                report.holders.len(),
                used.join(", "),
                human::duration(report.elapsed),
                report.mb_per_sec()
            )?;
        }
        Command::Bench { file, runs } => {
            if let Err(e) = bench::bench(node, &file, runs, out, mode).await {
                return failed(out, e);
            }
        }
        Command::Stress { file, threads } => {
            match bench::stress(node, &file, threads, out, mode).await {
                Err(e) => return failed(out, e),
                Ok(report) if !report.failed.is_empty() || report.mismatched > 0 => {
                    return Ok(Outcome::Failed)
                }
                Ok(_) => {}
            }
        }
        Command::Peers { json } => match node.tracker().peers().await {
            Ok(peers) if json => {
                let list: Vec<_> = peers
                    .iter()
                    .map(|p| json!({"peer_id": p.peer_id, "address": p.address, "file_count": p.file_count, "total_bytes": p.total_bytes}))
                    .collect();
                json_line(out, json!(list))?;
            }
            Ok(peers) => {
                let rows: Vec<Vec<String>> = peers
                    .iter()
                    .map(|p| {
                        vec![
                            p.peer_id.clone(),
                            human::bytes(p.total_bytes),
                            p.file_count.to_string(),
                            p.address.clone(),
                        ]
                    })
                    .collect();
                table(out, &["PEER", "SHARED", "FILES", "ADDRESS"], &rows)?;
            }
            Err(e) => return failed(out, e.to_string()),
        },
        Command::Files { json } => match node.tracker().files().await {
            Ok(files) if json => {
                let list: Vec<_> = files
                    .iter()
                    .map(|f| json!({"name": f.name, "size": f.size, "content_id": f.content_id, "holder_count": f.holder_count}))
                    .collect();
                json_line(out, json!(list))?;
            }
            Ok(files) if files.is_empty() => writeln!(out, "the swarm offers no files")?,
            Ok(files) => {
                let rows: Vec<Vec<String>> = files
                    .iter()
                    .map(|f| {
                        vec![
                            f.name.clone(),
                            human::bytes(f.size),
                            f.content_id[..12].to_string(),
                            f.holder_count.to_string(),
                        ]
                    })
                    .collect();
                table(out, &["NAME", "SIZE", "ID", "HOLDERS"], &rows)?;
            }
            Err(e) => return failed(out, e.to_string()),
        },
    }
    Ok(Outcome::Ok)
}

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
        if run_interactive(&node, &runtime).is_ok() {
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
        names.retain(|n| n.starts_with(word) && !n.contains(char::is_whitespace));
        names.sort();
        names.dedup();
        Ok((start, names))
    }
}

fn run_interactive(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_with_defaults_and_bounds() {
        assert_eq!(parse("get a.txt"), Ok(Command::Get("a.txt".into())));
        assert_eq!(parse("  "), Ok(Command::Nothing));
        assert_eq!(
            parse("bench v.mp4"),
            Ok(Command::Bench {
                file: "v.mp4".into(),
                runs: DEFAULT_BENCH_RUNS
            })
        );
        assert_eq!(
            parse("stress v.mp4 20"),
            Ok(Command::Stress {
                file: "v.mp4".into(),
                threads: 20
            })
        );
        assert_eq!(
            parse("whohas f --json"),
            Ok(Command::WhoHas {
                file: "f".into(),
                json: true
            })
        );
        assert_eq!(parse("myfiles"), Ok(Command::MyFiles { json: false }));
        assert_eq!(parse("exit"), Ok(Command::Exit));
        assert!(parse("get").unwrap_err().contains("usage: get <file>"));
        assert!(parse("bench f 0").unwrap_err().contains("1 to"));
        assert!(parse("bench f lots").is_err());
        assert!(parse("stress f 1000000").is_err());
        assert!(parse("get a b").unwrap_err().contains("too many"));
        assert!(parse("myfiles extra").unwrap_err().contains("too many"));
        assert!(parse("get f --json").unwrap_err().contains("--json"));
        assert!(parse("frobnicate").unwrap_err().contains("unknown command"));
    }

    #[test]
    fn tables_align() {
        let mut out = Vec::new();
        table(
            &mut out,
            &["NAME", "SIZE", "ID"],
            &[
                vec!["a".into(), "1.0 KiB".into(), "abc".into()],
                vec!["longer".into(), "12 B".into(), "def".into()],
            ],
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "NAME       SIZE  ID\na       1.0 KiB  abc\nlonger     12 B  def\n"
        );
    }
}

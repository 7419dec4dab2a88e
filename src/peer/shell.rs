//! The peer's interactive shell: one command per line, one clear line per failure.
//!
//! On a terminal it has line editing and history (`rustyline`); with piped input it reads plain
//! lines, so scripts and tests can drive it. End of input is `exit`.

use crate::bench;
use crate::human;
use crate::peer::download::{Destination, DownloadError, DownloadRequest, Progress};
use crate::peer::PeerNode;
use std::io::{BufRead, IsTerminal, Write};
use std::sync::Arc;

/// A parsed shell command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `get <file>[@<id-prefix>]`
    Get(String),
    /// `myfiles`
    MyFiles,
    /// `whohas <file>`
    WhoHas(String),
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
    /// `peers`
    Peers,
    /// `files`
    Files,
    /// `help`
    Help,
    /// `exit`
    Exit,
    /// An empty line.
    Nothing,
}

/// Default number of `bench` runs.
pub const DEFAULT_BENCH_RUNS: u32 = 5;
/// Default number of parallel `stress` downloads.
pub const DEFAULT_STRESS_THREADS: u32 = 10;
/// Upper bound on `bench` runs and `stress` threads: a typo must not start a million downloads.
pub const MAX_REPEAT: u32 = 1000;

const HELP: &[(&str, &str)] = &[
    (
        "get <file>[@<id>]",
        "download a file from every peer that has it into files/",
    ),
    ("myfiles", "list the files this peer shares"),
    (
        "whohas <file>",
        "ask the tracker who holds a file (each version, its holders)",
    ),
    (
        "bench <file> [runs]",
        "download a file `runs` times (default 5), log to download_times.csv",
    ),
    (
        "stress <file> [threads]",
        "run `threads` downloads at once (default 10), check every copy",
    ),
    ("peers", "list the peers in the swarm"),
    ("files", "list every file the swarm offers"),
    ("help", "show this list"),
    ("exit", "leave the swarm and quit (also Ctrl-D)"),
];

/// Parses one line. Errors are one-line messages for the user.
pub fn parse(line: &str) -> Result<Command, String> {
    let mut words = line.split_whitespace();
    let Some(verb) = words.next() else {
        return Ok(Command::Nothing);
    };
    let args: Vec<&str> = words.collect();
    let file_arg = |usage: &str| -> Result<String, String> {
        match args.first() {
            Some(f) => Ok(f.to_string()),
            None => Err(format!("usage: {usage}")),
        }
    };
    let count = |index: usize, default: u32, what: &str| -> Result<u32, String> {
        match args.get(index) {
            None => Ok(default),
            Some(s) => match s.parse::<u32>() {
                Ok(n) if (1..=MAX_REPEAT).contains(&n) => Ok(n),
                _ => Err(format!(
                    "{what} must be a whole number from 1 to {MAX_REPEAT}, got {s:?}"
                )),
            },
        }
    };
    let max_args = |n: usize, usage: &str| -> Result<(), String> {
        if args.len() > n {
            Err(format!("too many arguments; usage: {usage}"))
        } else {
            Ok(())
        }
    };
    Ok(match verb {
        "get" => {
            max_args(1, "get <file>")?;
            Command::Get(file_arg("get <file>")?)
        }
        "whohas" => {
            max_args(1, "whohas <file>")?;
            Command::WhoHas(file_arg("whohas <file>")?)
        }
        "bench" => {
            max_args(2, "bench <file> [runs]")?;
            Command::Bench {
                file: file_arg("bench <file> [runs]")?,
                runs: count(1, DEFAULT_BENCH_RUNS, "runs")?,
            }
        }
        "stress" => {
            max_args(2, "stress <file> [threads]")?;
            Command::Stress {
                file: file_arg("stress <file> [threads]")?,
                threads: count(1, DEFAULT_STRESS_THREADS, "threads")?,
            }
        }
        "myfiles" => Command::MyFiles,
        "peers" => Command::Peers,
        "files" => Command::Files,
        "help" | "?" => Command::Help,
        "exit" | "quit" => Command::Exit,
        other => return Err(format!("unknown command {other:?}; type help for the list")),
    })
}

/// Runs one command, writing its output to `out`. Returns false when the shell should stop.
pub async fn execute(
    node: &Arc<PeerNode>,
    command: Command,
    out: &mut dyn Write,
) -> std::io::Result<bool> {
    match command {
        Command::Nothing => {}
        Command::Exit => return Ok(false),
        Command::Help => {
            for (usage, what) in HELP {
                writeln!(out, "  {usage:<26} {what}")?;
            }
        }
        Command::MyFiles => {
            let files = node.store().list();
            if files.is_empty() {
                writeln!(
                    out,
                    "no files shared (put files in {})",
                    node.store().files_dir().display()
                )?;
            }
            let width = files.iter().map(|f| f.name.len()).max().unwrap_or(4).max(4);
            for f in files {
                writeln!(
                    out,
                    "  {:<width$}  {:>10}  {}",
                    f.name,
                    human::bytes(f.size),
                    f.content_id().short()
                )?;
            }
        }
        Command::WhoHas(spec) => {
            let request = DownloadRequest::parse(&spec, Destination::Files);
            match node
                .tracker()
                .who_has(&request.name, &request.content_id_prefix)
                .await
            {
                Ok(versions) => {
                    for v in versions {
                        let holders: Vec<String> = v
                            .holders
                            .iter()
                            .map(|h| format!("{} ({})", h.peer_id, h.address))
                            .collect();
                        writeln!(
                            out,
                            "{}  {}  {}  {} holder(s): {}",
                            v.name,
                            &v.content_id[..12],
                            human::bytes(v.size),
                            v.holders.len(),
                            holders.join(", ")
                        )?;
                    }
                }
                Err(e) if e.code() == Some(tonic::Code::NotFound) => {
                    writeln!(out, "no peer has {:?}", request.name)?
                }
                Err(e) => writeln!(out, "error: {e}")?,
            }
        }
        Command::Get(spec) => {
            let request = DownloadRequest::parse(&spec, Destination::Files);
            match node.download(&request, Arc::new(Progress::default())).await {
                Ok(report) => {
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
                    } else {
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
                                Some(why) => format!(
                                    "{} {} (dropped: {why})",
                                    h.peer_id,
                                    human::bytes(h.bytes)
                                ),
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
                }
                Err(e) => writeln!(out, "error: {}", user_message(&e))?,
            }
        }
        Command::Bench { file, runs } => {
            if let Err(e) = bench::bench(node, &file, runs, out).await {
                writeln!(out, "error: {e}")?;
            }
        }
        Command::Stress { file, threads } => {
            if let Err(e) = bench::stress(node, &file, threads, out).await {
                writeln!(out, "error: {e}")?;
            }
        }
        Command::Peers => match node.tracker().peers().await {
            Ok(peers) => {
                for p in peers {
                    writeln!(
                        out,
                        "  {:<16} {:<22} {:>4} file(s) {:>10}",
                        p.peer_id,
                        p.address,
                        p.file_count,
                        human::bytes(p.total_bytes)
                    )?;
                }
            }
            Err(e) => writeln!(out, "error: {e}")?,
        },
        Command::Files => match node.tracker().files().await {
            Ok(files) => {
                if files.is_empty() {
                    writeln!(out, "the swarm offers no files")?;
                }
                for f in files {
                    writeln!(
                        out,
                        "  {:<32} {:>10}  {}  {} holder(s)",
                        f.name,
                        human::bytes(f.size),
                        &f.content_id[..12],
                        f.holder_count
                    )?;
                }
            }
            Err(e) => writeln!(out, "error: {e}")?,
        },
    }
    Ok(true)
}

/// A download error as one line for the user.
pub fn user_message(e: &DownloadError) -> String {
    e.to_string()
}

/// Runs the shell on standard input until `exit`, end of input, or the node shutting down. Call
/// from a thread that is not a runtime worker (it blocks).
pub fn run(node: Arc<PeerNode>, runtime: tokio::runtime::Handle) {
    let stdout = std::io::stdout();
    let mut run_line = |line: &str| -> bool {
        let mut out = Vec::new();
        let keep_going = match parse(line) {
            Ok(command) => runtime
                .block_on(execute(&node, command, &mut out))
                .unwrap_or(true),
            Err(message) => {
                let _ = writeln!(out, "error: {message}");
                true
            }
        };
        let mut lock = stdout.lock();
        let _ = lock.write_all(&out);
        let _ = lock.flush();
        keep_going
    };
    if std::io::stdin().is_terminal() {
        run_interactive(&node, &mut run_line);
    } else {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if !run_line(&line) {
                break;
            }
        }
    }
}

fn run_interactive(node: &PeerNode, run_line: &mut dyn FnMut(&str) -> bool) {
    let mut editor = match rustyline::DefaultEditor::new() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("line editing unavailable ({e}); type help for commands");
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if !run_line(&line) {
                    break;
                }
            }
            return;
        }
    };
    let history = node.store().root().join(".p2pshare/history");
    let _ = editor.load_history(&history);
    let prompt = format!("{}> ", node.id());
    loop {
        match editor.readline(&prompt) {
            Ok(line) => {
                if !line.trim().is_empty() {
                    let _ = editor.add_history_entry(line.as_str());
                }
                if !run_line(&line) {
                    break;
                }
            }
            // Ctrl-C and Ctrl-D both leave, like `exit`.
            Err(_) => break,
        }
    }
    let _ = editor.save_history(&history);
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
        assert_eq!(parse("exit"), Ok(Command::Exit));
        assert!(parse("get").unwrap_err().contains("usage"));
        assert!(parse("bench f 0").unwrap_err().contains("1 to"));
        assert!(parse("bench f lots").is_err());
        assert!(parse("stress f 1000000").is_err());
        assert!(parse("get a b").unwrap_err().contains("too many"));
        assert!(parse("frobnicate").unwrap_err().contains("unknown command"));
    }
}

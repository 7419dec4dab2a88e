//! Parsing one line of the shell into a [`Command`]: the command list ([`HELP`]), each command's
//! arguments, defaults and bounds. Pure: no node, no I/O, so every rule is unit-tested here.

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

/// Default number of `bench` runs.
pub(crate) const DEFAULT_BENCH_RUNS: u32 = 5;
/// Default number of parallel `stress` downloads.
pub(crate) const DEFAULT_STRESS_THREADS: u32 = 10;
/// Upper bound on `bench` runs and `stress` threads: a typo must not start a million downloads.
pub(crate) const MAX_REPEAT: u32 = 1000;

/// The commands, their usage and a one-line description.
pub(crate) const HELP: &[(&str, &str, &str)] = &[
    (
        "get",
        "get <file>[@<id>]",
        "download a file from the peers that have it into files/",
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
        "download a file `runs` times (default 5), each made durable (fsync) like get, log to download_times.csv",
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
}

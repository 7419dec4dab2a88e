//! What each shell command does against the [`PeerNode`]: ask the store or the tracker, start a
//! download, run `bench`/`stress`, and hand the results to [`super::render`]. A command that
//! fails prints one `error: ...` line and reports [`Outcome::Failed`].

use super::{render, Command};
use crate::bench;
use crate::console::{ProgressDisplay, ProgressMode};
use crate::peer::download::{Destination, DownloadRequest};
use crate::peer::PeerNode;
use crate::progress::Progress;
use std::io::Write;
use std::sync::Arc;
use tracing::Instrument;

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

/// Prints `message` as the command's one error line.
fn failed(out: &mut dyn Write, message: impl std::fmt::Display) -> std::io::Result<Outcome> {
    writeln!(out, "error: {message}")?;
    Ok(Outcome::Failed)
}

/// Runs one command, writing its output to `out`.
pub async fn execute(
    node: &Arc<PeerNode>,
    command: Command,
    out: &mut dyn Write,
    mode: ProgressMode,
) -> std::io::Result<Outcome> {
    match command {
        Command::Nothing => {}
        Command::Exit => return Ok(Outcome::Exit),
        Command::Help => render::help(out)?,
        Command::MyFiles { json } => {
            render::my_files(out, &node.store().list(), node.store().files_dir(), json)?;
        }
        Command::WhoHas { file, json } => {
            let request = DownloadRequest::parse(&file, Destination::Files);
            match node
                .tracker()
                .who_has(&request.name, &request.content_id_prefix)
                .await
            {
                Ok(versions) => render::who_has(out, &versions, json)?,
                Err(e) if e.code() == Some(tonic::Code::NotFound) => {
                    return failed(out, format_args!("no peer has {:?}", request.name));
                }
                Err(e) => return failed(out, e),
            }
        }
        Command::Get(spec) => return get(node, &spec, out, mode).await,
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
            Ok(peers) => render::peers(out, &peers, json)?,
            Err(e) => return failed(out, e),
        },
        Command::Files { json } => match node.tracker().files().await {
            Ok(files) => render::swarm_files(out, &files, json)?,
            Err(e) => return failed(out, e),
        },
    }
    Ok(Outcome::Ok)
}

/// `get <file>[@<id>]`: one download into `files/`, with progress, inside a span naming the
/// command and the file so its logs can be told from other work's.
async fn get(
    node: &Arc<PeerNode>,
    spec: &str,
    out: &mut dyn Write,
    mode: ProgressMode,
) -> std::io::Result<Outcome> {
    let request = DownloadRequest::parse(spec, Destination::Files);
    let span = tracing::info_span!("get", file = %request.name);
    let progress = Arc::new(Progress::default());
    let display = ProgressDisplay::start(request.name.clone(), vec![progress.clone()], mode);
    let result = node.download(&request, progress).instrument(span).await;
    display.finish().await;
    match result {
        Ok(report) => {
            render::download(out, &report)?;
            Ok(Outcome::Ok)
        }
        Err(e) => failed(out, e),
    }
}

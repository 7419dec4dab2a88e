//! What each shell command does against the [`PeerNode`]: ask the store or the tracker, start a
//! download, run `bench`/`stress`, and hand the results to [`super::render`]. A command that
//! fails prints one `error: ...` line and reports [`Outcome::Failed`].
//!
//! Whatever a command prints passes through [`names::shown_lines`] on its way out: a character a
//! terminal would obey (an escape sequence, a bidi override) is shown escaped, wherever it came
//! from (a name, a holder's error message quoted in a failure). Error lines are escaped whole,
//! newlines included, so each stays one line.

use super::{render, Command};
use crate::bench;
use crate::console::{ProgressDisplay, ProgressMode};
use crate::names;
use crate::peer::download::version::parse_versions;
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

/// Prints `message` as the command's one error line (escaped: it may quote a tracker's or a
/// holder's message).
fn failed(out: &mut dyn Write, message: impl std::fmt::Display) -> std::io::Result<Outcome> {
    writeln!(out, "error: {}", names::shown(&message.to_string()))?;
    Ok(Outcome::Failed)
}

/// Runs one command, writing its output to `out`, every character a terminal would obey
/// escaped (see the module doc). The output is written when the command ends (the shell prints
/// a command's output in one piece anyway).
pub async fn execute(
    node: &Arc<PeerNode>,
    command: Command,
    out: &mut dyn Write,
    mode: ProgressMode,
) -> std::io::Result<Outcome> {
    let mut raw = Vec::new();
    let outcome = run(node, command, &mut raw, mode).await;
    out.write_all(names::shown_lines(&String::from_utf8_lossy(&raw)).as_bytes())?;
    outcome
}

/// Runs one command, writing its output to `out` as it is.
async fn run(
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
                Ok(versions) => {
                    let answered = versions.len();
                    let (offers, skipped) = parse_versions(&request.name, versions);
                    if offers.is_empty() && answered > 0 {
                        return failed(
                            out,
                            format_args!(
                                "the tracker's answer about {:?} had no valid version \
                                 ({skipped} malformed entries skipped)",
                                request.name
                            ),
                        );
                    }
                    render::who_has(out, &request.name, &offers, json)?
                }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::PeerConfig;
    use std::collections::BTreeMap;
    use std::sync::Mutex;
    use tokio::net::TcpListener;
    use tokio_util::sync::CancellationToken;
    use tracing_subscriber::layer::{Context, SubscriberExt};

    /// A span as the test saw it: its name, its fields, how often it was entered.
    #[derive(Debug, Default, Clone)]
    struct SeenSpan {
        name: String,
        fields: BTreeMap<String, String>,
        entered: usize,
    }

    /// Records every span created and entered on this thread.
    #[derive(Clone, Default)]
    struct SpanLog(Arc<Mutex<BTreeMap<u64, SeenSpan>>>);

    struct Fields<'a>(&'a mut BTreeMap<String, String>);

    impl tracing::field::Visit for Fields<'_> {
        fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
            self.0.insert(field.name().into(), value.into());
        }
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
            self.0.insert(field.name().into(), format!("{value:?}"));
        }
    }

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for SpanLog {
        fn on_new_span(
            &self,
            attrs: &tracing::span::Attributes<'_>,
            id: &tracing::span::Id,
            _ctx: Context<'_, S>,
        ) {
            let mut span = SeenSpan {
                name: attrs.metadata().name().into(),
                ..SeenSpan::default()
            };
            attrs.record(&mut Fields(&mut span.fields));
            self.0.lock().unwrap().insert(id.into_u64(), span);
        }
        fn on_enter(&self, id: &tracing::span::Id, _ctx: Context<'_, S>) {
            if let Some(span) = self.0.lock().unwrap().get_mut(&id.into_u64()) {
                span.entered += 1;
            }
        }
    }

    impl SpanLog {
        /// The spans named `name`, as (fields, entered) pairs.
        fn named(&self, name: &str) -> Vec<SeenSpan> {
            let spans = self.0.lock().unwrap();
            spans.values().filter(|s| s.name == name).cloned().collect()
        }
    }

    async fn peer(id: &str, root: &std::path::Path, tracker: &str) -> Arc<PeerNode> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let config = PeerConfig::new(id, root.join(id), tracker);
        let (node, info) = PeerNode::start(config, listener).await.unwrap();
        assert!(info.registration.is_ok(), "{:?}", info.registration);
        node
    }

    /// `get`, each `bench` run and each `stress` download run inside a span that names the
    /// command, the file and which one it is, so their logs can be told apart.
    #[tokio::test]
    async fn downloading_commands_run_in_their_own_spans() {
        let spans = SpanLog::default();
        let _guard =
            tracing::subscriber::set_default(tracing_subscriber::registry().with(spans.clone()));

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tracker = listener.local_addr().unwrap().to_string();
        let stop = CancellationToken::new();
        let token = stop.clone();
        let tracker_task = tokio::spawn(crate::tracker::serve(
            listener,
            crate::tracker::TrackerConfig::default(),
            async move { token.cancelled().await },
        ));
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("S/files")).unwrap();
        std::fs::write(root.path().join("S/files/f.bin"), vec![7u8; 100_000]).unwrap();
        let seeder = peer("S", root.path(), &tracker).await;
        let node = peer("D", root.path(), &tracker).await;

        let mut out = Vec::new();
        for line in ["get f.bin", "bench f.bin 2", "stress f.bin 3"] {
            let command = super::super::parse(line).unwrap();
            let outcome = execute(&node, command, &mut out, ProgressMode::Off)
                .await
                .unwrap();
            assert_eq!(
                outcome,
                Outcome::Ok,
                "{line}: {}",
                String::from_utf8_lossy(&out)
            );
        }

        let fields = |name: &str, number: &str| {
            let mut seen: Vec<(String, String)> = spans
                .named(name)
                .into_iter()
                .map(|s| {
                    assert!(s.entered > 0, "{name} span never entered: {s:?}");
                    (s.fields["file"].clone(), s.fields[number].clone())
                })
                .collect();
            seen.sort();
            seen
        };
        let file = |n: &str| ("f.bin".to_string(), n.to_string());
        let get: Vec<SeenSpan> = spans.named("get");
        assert_eq!(get.len(), 1, "{get:?}");
        assert_eq!(get[0].fields["file"], "f.bin");
        assert!(get[0].entered > 0);
        assert_eq!(fields("bench", "run"), vec![file("1"), file("2")]);
        assert_eq!(fields("stress", "n"), vec![file("0"), file("1"), file("2")]);

        node.shutdown().await;
        seeder.shutdown().await;
        stop.cancel();
        let _ = tracker_task.await;
    }
}

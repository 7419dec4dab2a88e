//! The terminal: progress display for long operations, and a log writer that never garbles the
//! shell's prompt or a progress bar.
//!
//! Logs (tracing) go to standard error through [`LogWriter`]: above the prompt while the shell
//! waits for a line (through rustyline's external printer), above the bars while a progress bar
//! is drawn (through `MultiProgress::suspend`), plainly otherwise.
//!
//! Log records carry text from the network (peer ids, addresses, a tracker's or a holder's error
//! message), and none of it may act on the terminal. Two layers see to it: `SafeFields` formats
//! every field value with `names::shown` (the formatter's own colours stay), and `LogWriter`
//! escapes whatever else a record holds except colour (SGR) sequences and its final newline, so
//! a record stays one line whoever formatted it.

use crate::human;
use crate::names;
use crate::progress::Progress;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::borrow::Cow;
use std::fmt;
use std::io::{IsTerminal, Write};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tracing::field::{Field, Visit};
use tracing_subscriber::field::{MakeVisitor, VisitFmt, VisitOutput};
use tracing_subscriber::fmt::format::{DefaultVisitor, Writer};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    /// A live bar with rate and ETA (standard error is a terminal).
    Bar,
    /// A plain line every few seconds (standard error is not a terminal), for logs and scripts.
    Lines,
    /// Nothing.
    Off,
}

impl ProgressMode {
    /// `Bar` on a terminal, `Lines` otherwise.
    pub fn detect() -> Self {
        if std::io::stderr().is_terminal() {
            ProgressMode::Bar
        } else {
            ProgressMode::Lines
        }
    }
}

/// Something that prints a line above the prompt (rustyline's external printer).
pub(crate) type PromptPrinter = Box<dyn FnMut(String) + Send>;

#[derive(Default)]
struct Console {
    prompt: Option<PromptPrinter>,
    prompt_active: bool,
    bars: Option<MultiProgress>,
}

fn console() -> &'static Mutex<Console> {
    static CONSOLE: OnceLock<Mutex<Console>> = OnceLock::new();
    CONSOLE.get_or_init(Mutex::default)
}

fn lock() -> std::sync::MutexGuard<'static, Console> {
    console().lock().unwrap_or_else(|e| e.into_inner())
}

/// Installs the printer used while the prompt is shown.
pub(crate) fn set_prompt_printer(printer: PromptPrinter) {
    lock().prompt = Some(printer);
}

/// Marks whether the shell is waiting at its prompt.
pub(crate) fn set_prompt_active(active: bool) {
    lock().prompt_active = active;
}

/// Writes one log record; see the module doc for where it goes.
fn emit(text: &[u8]) {
    let text = safe_record(&String::from_utf8_lossy(text)).into_owned();
    let mut console = lock();
    if console.prompt_active {
        if let Some(printer) = console.prompt.as_mut() {
            printer(text.trim_end_matches('\n').to_string());
            return;
        }
    }
    match &console.bars {
        Some(bars) => bars.suspend(|| {
            let _ = std::io::stderr().write_all(text.as_bytes());
        }),
        None => {
            let _ = std::io::stderr().write_all(text.as_bytes());
        }
    }
}

/// `record` (one formatted log record) with every character a terminal would obey escaped as
/// [`names::shown`] does, except colour sequences (`ESC [ digits/semicolons m`, what the log
/// formatter writes on a terminal) and the newlines that end the record.
fn safe_record(record: &str) -> Cow<'_, str> {
    let body = record.trim_end_matches('\n');
    if !body.chars().any(names::is_unsafe_to_show) {
        return Cow::Borrowed(record);
    }
    let mut out = String::with_capacity(record.len() + 16);
    let mut rest = body;
    while let Some(c) = rest.chars().next() {
        let sgr = rest.strip_prefix("\u{1b}[").and_then(|after| {
            let params = after
                .bytes()
                .take_while(|b| b.is_ascii_digit() || *b == b';');
            let end = 2 + params.count();
            (rest.as_bytes().get(end) == Some(&b'm')).then_some(end + 1)
        });
        match sgr {
            Some(len) => {
                out.push_str(&rest[..len]);
                rest = &rest[len..];
            }
            None => {
                out.push_str(&names::shown(&rest[..c.len_utf8()]));
                rest = &rest[c.len_utf8()..];
            }
        }
    }
    out.push_str(&record[body.len()..]);
    Cow::Owned(out)
}

/// The log formatter's field formatting, with every value escaped as [`names::shown`] does:
/// `tracing_subscriber`'s default fields, whose own escaping covers only the message and only
/// some controls (not newlines, not bidi overrides, not colour codes in other fields).
#[derive(Debug, Default)]
pub(crate) struct SafeFields;

impl<'a> MakeVisitor<Writer<'a>> for SafeFields {
    type Visitor = Escaping<DefaultVisitor<'a>>;

    fn make_visitor(&self, target: Writer<'a>) -> Self::Visitor {
        Escaping(DefaultVisitor::new(target, true))
    }
}

/// A field visitor that hands `V` every value escaped.
pub(crate) struct Escaping<V>(V);

impl<V: Visit> Visit for Escaping<V> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let text = format!("{value:?}");
        self.0
            .record_debug(field, &format_args!("{}", names::shown(&text)));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        // Other string fields are written quoted with `{:?}`, which escapes every control and
        // bidi character already (and reads better than escaping twice).
        match field.name() {
            "message" => self.0.record_str(field, &names::shown(value)),
            _ => self.0.record_str(field, value),
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.record_error(field, &ShownError::of(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.record_i64(field, value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.record_u64(field, value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.record_bool(field, value);
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.record_f64(field, value);
    }
}

impl<V: VisitOutput<fmt::Result>> VisitOutput<fmt::Result> for Escaping<V> {
    fn finish(self) -> fmt::Result {
        self.0.finish()
    }
}

impl<V: VisitFmt> VisitFmt for Escaping<V> {
    fn writer(&mut self) -> &mut dyn fmt::Write {
        self.0.writer()
    }
}

/// An error and its causes, each message escaped (the formatter prints the chain).
#[derive(Debug)]
struct ShownError {
    message: String,
    source: Option<Box<ShownError>>,
}

impl ShownError {
    fn of(error: &(dyn std::error::Error + 'static)) -> Self {
        ShownError {
            message: names::shown(&error.to_string()).into_owned(),
            source: error.source().map(|s| Box::new(ShownError::of(s))),
        }
    }
}

impl fmt::Display for ShownError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ShownError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}

/// A `tracing` writer: buffers one record and emits it whole.
#[derive(Default)]
pub(crate) struct LogWriter(Vec<u8>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        if !self.0.is_empty() {
            emit(&self.0);
            self.0.clear();
        }
        Ok(())
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

/// Shows the progress of one or more downloads (summed) until dropped.
pub(crate) struct ProgressDisplay {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl ProgressDisplay {
    /// Starts showing `items` (summed) under `label` in `mode`. Must be called inside a runtime.
    pub(crate) fn start(label: String, items: Vec<Arc<Progress>>, mode: ProgressMode) -> Self {
        if mode == ProgressMode::Off {
            return ProgressDisplay {
                stop: None,
                task: None,
            };
        }
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let sum = |items: &[Arc<Progress>]| {
                items.iter().fold((0u64, 0u64), |(d, t), p| {
                    (
                        d + p.done.load(Ordering::Relaxed),
                        t + p.total.load(Ordering::Relaxed),
                    )
                })
            };
            let bar = (mode == ProgressMode::Bar).then(|| {
                let bars = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
                let bar = bars.add(ProgressBar::new(0));
                bar.set_style(
                    ProgressStyle::with_template(
                        "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
                bar.set_message(label.clone());
                lock().bars = Some(bars);
                bar
            });
            let period = match mode {
                ProgressMode::Bar => Duration::from_millis(100),
                _ => Duration::from_secs(2),
            };
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = tokio::time::sleep(period) => {}
                }
                let (done, total) = sum(&items);
                match &bar {
                    Some(bar) => {
                        bar.set_length(total);
                        bar.set_position(done);
                    }
                    None => {
                        let pct = if total == 0 {
                            0.0
                        } else {
                            done as f64 * 100.0 / total as f64
                        };
                        eprintln!(
                            "{label}: {pct:.0}% {}/{} {}",
                            human::bytes(done),
                            human::bytes(total),
                            human::rate(done, started.elapsed())
                        );
                    }
                }
            }
            if let Some(bar) = bar {
                bar.finish_and_clear();
                lock().bars = None;
            }
        });
        ProgressDisplay {
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops and clears the display.
    pub(crate) async fn finish(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for ProgressDisplay {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Text with the colour sequences taken out.
    fn without_sgr(text: &str) -> String {
        let mut out = String::new();
        let mut rest = text;
        while let Some(start) = rest.find("\u{1b}[") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after
                .find(|c: char| !(c.is_ascii_digit() || c == ';'))
                .unwrap_or(after.len());
            if after[end..].starts_with('m') {
                rest = &after[end + 1..];
            } else {
                out.push('\u{1b}');
                rest = &rest[start + 1..];
            }
        }
        out.push_str(rest);
        out
    }

    /// One record logged with network text in a span field, in display and debug fields, in
    /// the message and in an error's causes; formatted with and without colours.
    fn hostile_record(ansi: bool) -> String {
        let logs = crate::testing::CapturedLogs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(ansi)
            .fmt_fields(SafeFields)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let error = std::io::Error::other(ShownError {
                message: "outer".into(),
                source: Some(Box::new(ShownError {
                    message: "inner \u{1b}]0;title\u{7}".into(),
                    source: None,
                })),
            });
            let span = tracing::warn_span!("holder", peer = %"\u{1b}[31mP");
            let _entered = span.enter();
            tracing::warn!(
                address = %"\u{202e}1.0.0.127:5",
                id = ?"x\u{1b}[2J",
                plain = "a\nb",
                error = &error as &(dyn std::error::Error + 'static),
                "hello \u{1b}[2J{}",
                "\u{9b}world\r"
            );
        });
        logs.text()
    }

    #[test]
    fn log_fields_from_the_network_are_escaped() {
        for ansi in [false, true] {
            let text = hostile_record(ansi);
            let plain = if ansi {
                without_sgr(&text)
            } else {
                text.clone()
            };
            assert!(
                !plain
                    .trim_end_matches('\n')
                    .chars()
                    .any(names::is_unsafe_to_show),
                "{text:?}"
            );
            assert_eq!(text.lines().count(), 1, "{text:?}");
            for seen in [
                "\\x1b[31mP",
                "\\u{202e}1.0.0.127",
                "\\x1b[2J",
                "\\u{9b}world",
            ] {
                assert!(plain.contains(seen), "{seen} not in {plain:?}");
            }
            assert!(!text.contains("\u{1b}[31mP"), "{text:?}");
        }
    }

    #[test]
    fn records_keep_their_colours_and_nothing_else() {
        let record = "\u{1b}[2mts\u{1b}[0m \u{1b}[33m WARN\u{1b}[0m \u{1b}[1;32mx\u{1b}[0m \
                      \u{1b}]0;t\u{7} \u{1b}[2J \u{202e}a\nb\r\n";
        assert_eq!(
            safe_record(record),
            "\u{1b}[2mts\u{1b}[0m \u{1b}[33m WARN\u{1b}[0m \u{1b}[1;32mx\u{1b}[0m \
             \\x1b]0;t\\x07 \\x1b[2J \\u{202e}a\\x0ab\\x0d\n"
        );
        let honest = "2025-01-01T00:00:00Z  WARN get{file=\"f\"}: skipped=1 text\n";
        assert!(matches!(safe_record(honest), Cow::Borrowed(_)));
        assert_eq!(safe_record("\u{1b}["), "\\x1b[");
    }
}

//! The terminal: progress display for long operations, and a log writer that never garbles the
//! shell's prompt or a progress bar.
//!
//! Logs (tracing) go to standard error through [`LogWriter`]: above the prompt while the shell
//! waits for a line (through rustyline's external printer), above the bars while a progress bar
//! is drawn (through `MultiProgress::suspend`), plainly otherwise.

use crate::human;
use crate::progress::Progress;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::{IsTerminal, Write};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

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
    let text = String::from_utf8_lossy(text).into_owned();
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

//! What `/proc` says of a process: peak RSS (Linux; elsewhere the column shows "-") and CPU
//! time.

/// Resets this process's peak RSS (`VmHWM`) to its current RSS. False if the kernel refused.
pub(crate) fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// This process's peak RSS in bytes (`VmHWM`), if `/proc` tells.
pub(crate) fn peak_rss() -> Option<u64> {
    peak_rss_in("/proc/self/status")
}

/// Peak RSS of process `pid` so far (`VmHWM`), if `/proc` tells (not once it has exited).
pub(crate) fn peak_rss_of(pid: u32) -> Option<u64> {
    peak_rss_in(&format!("/proc/{pid}/status"))
}

fn peak_rss_in(status_file: &str) -> Option<u64> {
    let status = std::fs::read_to_string(status_file).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line
        .trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Clock ticks per second of `/proc/*/stat` times: `sysconf(_SC_CLK_TCK)` on Linux, 100 on every
/// architecture the kernel exports to user space through `/proc`.
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

/// CPU seconds (user + system) process `pid` has spent, from `/proc/PID/stat` (NaN where that
/// cannot be read). In clock ticks of 10 ms: a slice of 0.5 s is measured within a few percent.
pub(crate) fn cpu_seconds(pid: u32) -> f64 {
    stat_seconds(&format!("/proc/{pid}/stat"), STAT_UTIME)
}

/// CPU seconds (user + system) of this process's children that have ended and been waited for
/// (`cutime` + `cstime`): grows by a child's whole time when it is reaped.
pub(crate) fn waited_children_cpu_seconds() -> f64 {
    stat_seconds("/proc/self/stat", STAT_CUTIME)
}

/// Index of utime (field 14) among the fields after the command name (from field 3, state).
const STAT_UTIME: usize = 11;
/// Index of cutime (field 16), likewise.
const STAT_CUTIME: usize = 13;

/// The sum of the two tick fields at `first` and `first + 1` of a `stat` file, in seconds.
fn stat_seconds(path: &str, first: usize) -> f64 {
    let Ok(stat) = std::fs::read_to_string(path) else {
        return f64::NAN;
    };
    // The command name may hold spaces, and ends at the last ')'.
    let Some((_, fields)) = stat.rsplit_once(')') else {
        return f64::NAN;
    };
    let ticks: Vec<f64> = fields
        .split_whitespace()
        .skip(first)
        .take(2)
        .filter_map(|f| f.parse().ok())
        .collect();
    match ticks[..] {
        [a, b] => (a + b) / CLOCK_TICKS_PER_SECOND,
        _ => f64::NAN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_rss_is_readable_here() {
        // Linux only; elsewhere the column shows "-".
        if cfg!(target_os = "linux") {
            assert!(peak_rss().is_some_and(|b| b > 0));
            assert!(peak_rss_of(std::process::id()).is_some());
        }
    }

    #[test]
    fn cpu_times_are_read_from_proc() {
        // Burn a little CPU so that at least one tick shows.
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while started.elapsed() < std::time::Duration::from_millis(50) {
            x = x.wrapping_mul(31).wrapping_add(1);
        }
        assert!(x != 1);
        assert!(cpu_seconds(std::process::id()) > 0.0);
        assert!(waited_children_cpu_seconds() >= 0.0);
        assert!(cpu_seconds(u32::MAX).is_nan());
    }
}

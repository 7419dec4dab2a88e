//! Peak RSS of this process, from `/proc` (Linux; elsewhere the column shows "-").

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
}

//! Numbers for people: sizes in KiB/MiB/GiB, rates, durations; and [`parse_size`] for the
//! size and rate flags.
//!
//! Not `indicatif::HumanBytes`: it prints two decimals (`64.00 MiB`) where the shell's tables,
//! `get`, `bench` and `stress` lines have always printed one (`64.0 MiB`), and those formats must
//! not change; progress bars keep indicatif's own `{bytes}` formatting.

use std::time::Duration;

/// `1536` -> `"1.5 KiB"`; exact bytes below 1 KiB.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Throughput in MB/s (10^6 bytes per second), as the CSV records it.
pub(crate) fn mb_per_sec(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / 1e6 / elapsed.as_secs_f64().max(1e-9)
}

/// `bytes` moved in `elapsed` as a human rate, e.g. `"212.4 MiB/s"`.
pub fn rate(bytes: u64, elapsed: Duration) -> String {
    let per_sec = bytes as f64 / elapsed.as_secs_f64().max(1e-9);
    format!("{}/s", self::bytes(per_sec as u64))
}

/// A duration with sensible precision: `"12 ms"`, `"1.25 s"`.
pub(crate) fn duration(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{:.1} ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

/// Parses a size or rate such as `500K`, `10M`, `1.5G`, `4096` (binary multiples; an optional
/// trailing `B`, `iB` or `/s` is accepted).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let t = t.strip_suffix("/s").unwrap_or(t);
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (number, multiplier) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M') => (&t[..t.len() - 1], 1 << 20),
        Some('G') => (&t[..t.len() - 1], 1 << 30),
        Some('T') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    match number.trim().parse::<f64>() {
        Ok(n) if n.is_finite() && n > 0.0 && n * (multiplier as f64) < u64::MAX as f64 => {
            Ok((n * multiplier as f64) as u64)
        }
        _ => Err(format!(
            "{text:?} is not a size like 4096, 500K, 10M or 1.5G"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_well() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(64 << 20), "64.0 MiB");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
        assert_eq!(duration(Duration::from_millis(12)), "12.0 ms");
        assert_eq!(duration(Duration::from_millis(1250)), "1.25 s");
        assert_eq!(rate(2 << 20, Duration::from_secs(2)), "1.0 MiB/s");
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("10M"), Ok(10 << 20));
        assert_eq!(parse_size("10MiB/s"), Ok(10 << 20));
        assert_eq!(parse_size("1.5g"), Ok(3 << 29));
        for bad in ["", "0", "-1", "x", "1Q", "NaN"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}

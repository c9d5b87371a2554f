//! How the UI writes figures: durations, sizes, rates and times.

use std::time::Duration;

/// Milliseconds of `d`, as a chart's value.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A duration for people: `850 µs`, `12.3 ms`, `4.20 s`, `3 min 5 s`.
pub fn duration(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 1e-3 {
        format!("{} µs", d.as_micros())
    } else if secs < 1.0 {
        format!("{:.1} ms", secs * 1e3)
    } else if secs < 120.0 {
        format!("{secs:.2} s")
    } else {
        let whole = d.as_secs();
        format!("{} min {} s", whole / 60, whole % 60)
    }
}

/// A size in bytes: `512 B`, `3.4 KiB`, `1.2 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A count with thousands separated: `1,234,567`.
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A rate in records per second.
pub fn rate(per_second: f64) -> String {
    if per_second >= 100.0 {
        format!("{} rec/s", count(per_second.round() as u64))
    } else {
        format!("{per_second:.1} rec/s")
    }
}

/// A time (milliseconds since the Unix epoch) as `2026-12-01 05:52:31 UTC`.
pub fn time(ms_since_epoch: i64) -> String {
    let (year, month, day, hour, minute, second) = crate::calendar::utc(ms_since_epoch);
    format!("{year:04}-{month:02}-{day:02} {hour:02}:{minute:02}:{second:02} UTC")
}

/// The time of day only: `05:52:31`.
pub fn clock(ms_since_epoch: i64) -> String {
    let (_, _, _, hour, minute, second) = crate::calendar::utc(ms_since_epoch);
    format!("{hour:02}:{minute:02}:{second:02}")
}

/// The first 12 hex digits of a SHA-256, as the UI shows it (the whole in
/// its tooltip).
pub fn short_sha(sha256: &str) -> &str {
    sha256.get(..12).unwrap_or(sha256)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_read_well() {
        assert_eq!(duration(Duration::from_micros(850)), "850 µs");
        assert_eq!(duration(Duration::from_micros(12_340)), "12.3 ms");
        assert_eq!(duration(Duration::from_millis(4_200)), "4.20 s");
        assert_eq!(duration(Duration::from_secs(185)), "3 min 5 s");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 * 1024 + 400), "3.4 KiB");
        assert_eq!(count(1_234_567), "1,234,567");
        assert_eq!(count(999), "999");
        assert_eq!(rate(12_345.4), "12,345 rec/s");
        assert_eq!(rate(2.25), "2.2 rec/s");
    }

    #[test]
    fn times_are_utc_dates() {
        assert_eq!(time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(time(1_795_000_000_000), "2026-11-18 11:06:40 UTC");
        assert_eq!(time(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(clock(1_795_000_000_000), "11:06:40");
    }
}

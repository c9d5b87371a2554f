//! UTC calendar dates of Unix times, for what names things by date (an
//! Elasticsearch index per day, the UI's times).

/// The UTC date and time of `ms` milliseconds since the Unix epoch:
/// (year, month, day, hour, minute, second).
pub fn utc(ms: i64) -> (i64, u32, u32, u32, u32, u32) {
    let secs = ms.div_euclid(1000);
    let (days, of_day) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    let of_day = of_day as u32;
    (year, month, day, of_day / 3600, of_day % 3600 / 60, of_day % 60)
}

/// The civil date of a day count since 1970-01-01 (Howard Hinnant's
/// algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_utc() {
        assert_eq!(utc(0), (1970, 1, 1, 0, 0, 0));
        assert_eq!(utc(1_795_000_000_000), (2026, 11, 18, 11, 6, 40));
        assert_eq!(utc(951_782_400_000), (2000, 2, 29, 0, 0, 0));
        assert_eq!(utc(-1_000), (1969, 12, 31, 23, 59, 59));
    }
}

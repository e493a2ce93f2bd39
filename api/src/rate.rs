//! Byte rates as people write them (`64MiB`, `500KB/s`, `1G`), for pacing backups: the
//! hard cap a reader puts on a backup (`node backup save --max-rate`, a Backup's `maxRate`),
//! and how fast a member streams a backup while it is applying writes ([`RateUnderLoad`]).
//! One parser, so that the CLI, the CRD and the node's API accept the same spellings.

use std::fmt;
use std::str::FromStr;

/// A rate as people write it: `64MiB` (per second), `500KB`, `1G`, or a number of bytes.
/// Units are decimal (`KB`, `MB`, `GB`, and `K`, `M`, `G`) or binary (`KiB`, `MiB`, `GiB`);
/// a trailing `/s` is allowed. Zero is refused: it would never finish.
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let t = text.trim().trim_end_matches("/s");
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a rate: give bytes per second, such as 64MiB"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KB" => 1_000,
        "Ki" | "KiB" => 1 << 10,
        "M" | "MB" => 1_000_000,
        "Mi" | "MiB" => 1 << 20,
        "G" | "GB" => 1_000_000_000,
        "Gi" | "GiB" => 1 << 30,
        other => {
            return Err(format!(
                "{text:?}: unknown unit {other:?}; use B, KB, KiB, MB, MiB, GB or GiB (per second)"
            ));
        }
    };
    n.checked_mul(mult)
        .filter(|r| *r > 0)
        .ok_or_else(|| format!("{text:?} is not a usable rate"))
}

/// How fast a member streams a backup while it is applying writes: the backup API's
/// `rate_under_load` query parameter, `node serve --backup-rate-under-load`, and the
/// `rateUnderLoad` of a Backup or BackupSchedule. On an idle member a backup always streams
/// as fast as it can; this paces it only while writes are arriving, so that it takes less of
/// the CPU and disk the writes need.
///
/// Written `unlimited` or as a rate ([`parse_rate`]); displayed as `unlimited` or bytes per
/// second, which parses back to the same value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateUnderLoad {
    /// Never paced.
    Unlimited,
    /// At most this many bytes per second while writes arrive.
    BytesPerSecond(u64),
}

impl RateUnderLoad {
    /// The rate, or `None` for [`RateUnderLoad::Unlimited`].
    pub fn bytes_per_second(self) -> Option<u64> {
        match self {
            Self::Unlimited => None,
            Self::BytesPerSecond(n) => Some(n),
        }
    }
}

impl FromStr for RateUnderLoad {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        if text.trim().eq_ignore_ascii_case("unlimited") {
            return Ok(Self::Unlimited);
        }
        parse_rate(text)
            .map(Self::BytesPerSecond)
            .map_err(|e| format!("{e}, or unlimited"))
    }
}

impl fmt::Display for RateUnderLoad {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unlimited => f.write_str("unlimited"),
            Self::BytesPerSecond(n) => write!(f, "{n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_as_people_write_them() {
        assert_eq!(parse_rate("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_rate("500KB/s").unwrap(), 500_000);
        assert_eq!(parse_rate("1G").unwrap(), 1_000_000_000);
        assert_eq!(parse_rate("4096").unwrap(), 4096);
        for bad in ["", "fast", "0", "12XB", "-1MiB", "99999999999999GiB"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_rate_under_load_is_a_rate_or_unlimited_and_displays_as_it_parses() {
        assert_eq!("unlimited".parse(), Ok(RateUnderLoad::Unlimited));
        assert_eq!(
            "100MB".parse(),
            Ok(RateUnderLoad::BytesPerSecond(100_000_000))
        );
        for r in [
            RateUnderLoad::Unlimited,
            RateUnderLoad::BytesPerSecond(12345),
        ] {
            assert_eq!(r.to_string().parse(), Ok(r));
        }
        let e = "0".parse::<RateUnderLoad>().unwrap_err();
        assert!(e.contains("unlimited"), "{e}");
    }
}

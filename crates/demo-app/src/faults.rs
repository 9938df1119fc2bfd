//! Fault injection: which request fails, and parsing of the `--latency` duration.

use std::time::Duration;

/// Error rates are kept as parts per million so the spreading is exact integer math.
const PPM: u64 = 1_000_000;

/// Decides, for the n-th faultable request (0-based), whether it is answered with 500.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Faults {
    error_ppm: u64,
    fail_after: Option<u64>,
    seed: Option<u64>,
}

impl Faults {
    pub(crate) fn new(error_rate: f64, fail_after: Option<u64>) -> Self {
        // The caller validated 0.0..=1.0, so the rounded product fits in u64.
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "error_rate is validated to 0.0..=1.0"
        )]
        let error_ppm = (error_rate * PPM as f64).round() as u64;
        Self {
            error_ppm,
            fail_after,
            seed: None,
        }
    }

    /// Independent failures drawn from `seed` instead of evenly spread ones.
    pub(crate) fn seeded(self, seed: Option<u64>) -> Self {
        Self { seed, ..self }
    }

    /// Evenly spread and deterministic: with rate r exactly `floor(n·r)` of the first n
    /// requests fail, so tests and demos can count on the numbers.
    pub(crate) fn fails(&self, n: u64) -> bool {
        if self.fail_after.is_some_and(|after| n >= after) {
            return true;
        }
        if let Some(seed) = self.seed {
            return splitmix64(seed ^ splitmix64(n)) % PPM < self.error_ppm;
        }
        let before = u128::from(n) * u128::from(self.error_ppm) / u128::from(PPM);
        let after = (u128::from(n) + 1) * u128::from(self.error_ppm) / u128::from(PPM);
        after > before
    }
}

/// SplitMix64's output function: a well-mixed 64-bit hash, plenty for fault injection.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A `--latency` value that is not a number followed by `us`, `ms`, `s` or nothing.
#[derive(Debug, thiserror::Error)]
#[error("invalid duration {0:?}: expected a number with a unit, like 20ms, 1.5s or 500us")]
pub struct ParseDurationError(String);

/// Parses `20ms`, `1.5s`, `500us`; a bare number means milliseconds, `0` means none.
pub fn parse_duration(text: &str) -> Result<Duration, ParseDurationError> {
    let text = text.trim();
    let err = || ParseDurationError(text.to_owned());
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().map_err(|_| err())?;
    let seconds = match unit.trim() {
        "us" | "µs" => value / 1e6,
        "" | "ms" => value / 1e3,
        "s" => value,
        "m" => value * 60.0,
        _ => return Err(err()),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| err())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_rate_is_exact_and_spread() {
        let faults = Faults::new(0.1, None);
        let failed: Vec<u64> = (0..30).filter(|n| faults.fails(*n)).collect();
        assert_eq!(failed, vec![9, 19, 29]);
        assert_eq!((0..1000).filter(|n| faults.fails(*n)).count(), 100);
        assert!((0..100).all(|n| Faults::new(1.0, None).fails(n)));
        assert!((0..100).all(|n| !Faults::new(0.0, None).fails(n)));
    }

    #[test]
    fn seeded_errors_are_independent_at_the_rate_and_reproducible() {
        let faults = Faults::new(0.01, None).seeded(Some(7));
        let failed: Vec<u64> = (0..100_000).filter(|n| faults.fails(*n)).collect();
        // Binomial(100000, 0.01): 1000 ± 31; some errors come close together.
        assert!((900..1100).contains(&failed.len()), "{}", failed.len());
        assert!(failed.windows(2).any(|w| w[1] - w[0] < 10));
        let again = Faults::new(0.01, None).seeded(Some(7));
        assert!(failed.iter().all(|n| again.fails(*n)));
        assert!((0..100).all(|n| Faults::new(1.0, None).seeded(Some(1)).fails(n)));
    }

    #[test]
    fn fail_after_fails_everything_from_n() {
        let faults = Faults::new(0.0, Some(3));
        let failed: Vec<bool> = (0..5).map(|n| faults.fails(n)).collect();
        assert_eq!(failed, vec![false, false, false, true, true]);
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("20ms").unwrap(), Duration::from_millis(20));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("500us").unwrap(), Duration::from_micros(500));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("10 parsecs").is_err());
    }
}

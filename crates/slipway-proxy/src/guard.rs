//! The canary guard: a sequential test judged on every canary response, so a canary that
//! fails hard is cut off after a handful of bad responses instead of at the next analysis
//! interval (issue 20 part 5).
//!
//! The test is Page's CUSUM of the Wald log-likelihood ratio between H0 "the canary fails
//! at the acceptable rate `p0`" (the analysis template's error-rate `max`) and H1 "the
//! canary fails hard" (`p1`, half of its responses): every error adds `ln(p1/p0)`, every
//! success adds `ln((1-p1)/(1-p0))` (negative), the sum never goes below 0, and the guard
//! trips when it reaches `threshold`. The reset at 0 is what lets it run for as long as
//! the canary serves: a plain SPRT would accept H0 once and stop looking. With `p0 = 0.05`,
//! `p1 = 0.5` and the threshold 9, a canary answering only errors trips on its 4th response;
//! a canary at a 1 % error rate essentially never does, one at exactly 5 % about 2 times in
//! 100 per 1,000 responses (`tests::*`, and the property test in the proxy's tests).
//!
//! Tripping is a data-plane action: the proxy sets the canary's weight to 0 in the same
//! call that records the response (the next request already goes to stable) and keeps the
//! verdict for the controller, which rolls back (drain, stop, journal) on its next look.

/// The failure rate H1 assumes: a hard failure fails at least half of its responses.
pub const HARD_FAILURE_RATE: f64 = 0.5;

/// The CUSUM threshold. About ln(8,100): the guard's false alarm rate at `p0` stays near
/// 2 % per 1,000 responses (measured, see the module doc) and a canary failing every
/// request is stopped on its 4th error, so at most 5 reach clients with one in flight.
pub const THRESHOLD: f64 = 9.0;

/// What the guard tests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GuardConfig {
    /// The acceptable error rate (H0).
    pub p0: f64,
    /// The hard-failure error rate (H1).
    pub p1: f64,
    /// Trip when the CUSUM reaches this.
    pub threshold: f64,
}

impl GuardConfig {
    /// The guard for an analysis whose error-rate may be at most `max`; `None` when no hard
    /// failure can be told apart from that (`max` not in (0, 0.5)).
    pub fn for_max_error_rate(max: f64) -> Option<Self> {
        (max > 0.0 && max < HARD_FAILURE_RATE).then_some(Self {
            p0: max,
            p1: HARD_FAILURE_RATE,
            threshold: THRESHOLD,
        })
    }
}

/// Why the guard tripped: the counts of the canary responses it judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Trip {
    /// Canary responses judged since the guard was armed.
    pub responses: u64,
    /// Of those, errors (5xx or no response).
    pub errors: u64,
    /// Errors among the most recent responses that drove the sum up (since it last sat at
    /// 0): what the verdict rests on.
    pub recent_errors: u64,
    /// Responses since the sum last sat at 0.
    pub recent_responses: u64,
}

impl Trip {
    /// The verdict as a rollback reason reads it.
    pub fn sentence(&self) -> String {
        format!(
            "the canary guard tripped: {} errors in the last {} canary responses ({} of {} since it was armed) — a sequential test on every response (CUSUM of the acceptable error rate against half of all responses failing) — and the proxy stopped routing to the canary at that response",
            self.recent_errors, self.recent_responses, self.errors, self.responses
        )
    }
}

/// The running test.
#[derive(Debug, Clone)]
pub struct Cusum {
    up: f64,
    down: f64,
    threshold: f64,
    sum: f64,
    responses: u64,
    errors: u64,
    recent_errors: u64,
    recent_responses: u64,
    tripped: Option<Trip>,
}

impl Cusum {
    /// A test that has seen nothing.
    pub fn new(c: GuardConfig) -> Self {
        Self {
            up: (c.p1 / c.p0).ln(),
            down: ((1.0 - c.p1) / (1.0 - c.p0)).ln(),
            threshold: c.threshold,
            sum: 0.0,
            responses: 0,
            errors: 0,
            recent_errors: 0,
            recent_responses: 0,
            tripped: None,
        }
    }

    /// Judge one response; `Some` on the response that trips the guard (only once).
    pub fn observe(&mut self, error: bool) -> Option<Trip> {
        if self.tripped.is_some() {
            return None;
        }
        self.responses += 1;
        self.recent_responses += 1;
        if error {
            self.errors += 1;
            self.recent_errors += 1;
            self.sum += self.up;
        } else {
            self.sum += self.down;
        }
        if self.sum <= 0.0 {
            self.sum = 0.0;
            self.recent_errors = 0;
            self.recent_responses = 0;
        }
        if self.sum >= self.threshold {
            let trip = Trip {
                responses: self.responses,
                errors: self.errors,
                recent_errors: self.recent_errors,
                recent_responses: self.recent_responses,
            };
            self.tripped = Some(trip);
            return Some(trip);
        }
        None
    }

    /// The verdict, once tripped.
    pub fn tripped(&self) -> Option<Trip> {
        self.tripped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> Cusum {
        Cusum::new(GuardConfig::for_max_error_rate(0.05).unwrap())
    }

    #[test]
    fn a_canary_failing_every_request_trips_on_its_fourth_response() {
        let mut g = guard();
        assert_eq!(g.observe(true), None);
        assert_eq!(g.observe(true), None);
        assert_eq!(g.observe(true), None);
        let t = g.observe(true).unwrap();
        assert_eq!((t.responses, t.errors), (4, 4));
        // Once only.
        assert_eq!(g.observe(true), None);
        assert_eq!(g.tripped(), Some(t));
    }

    #[test]
    fn successes_bring_the_sum_back_to_zero() {
        let mut g = guard();
        // Three errors, then enough successes to forget them: three more errors do not trip.
        for _ in 0..3 {
            g.observe(true);
        }
        for _ in 0..20 {
            g.observe(false);
        }
        for _ in 0..3 {
            assert_eq!(g.observe(true), None);
        }
        assert!(g.observe(true).is_some());
    }

    /// SplitMix64: a seeded stream of independent responses.
    fn stream(seed: u64, rate: f64) -> impl Iterator<Item = bool> {
        let mut x = seed;
        std::iter::repeat_with(move || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            #[expect(clippy::cast_precision_loss, reason = "a uniform draw in [0, 1)")]
            let u = (z >> 11) as f64 / (1u64 << 53) as f64;
            u < rate
        })
    }

    #[test]
    fn never_fires_on_a_healthy_stream_and_always_on_a_hard_failure() {
        // Seeded property: 400 canaries of 5,000 responses each at a realistic 1 % error
        // rate (2 M responses) — not one trip; and each, once it starts failing every
        // request, is stopped within 4 responses.
        for seed in 0..400 {
            let mut g = guard();
            let healthy: Vec<bool> = stream(seed, 0.01).take(5_000).collect();
            for (i, error) in healthy.iter().enumerate() {
                assert_eq!(g.observe(*error), None, "seed {seed}: tripped at {i}");
            }
            let caught = (1..=10).find(|_| g.observe(true).is_some());
            assert!(caught.is_some_and(|n| n <= 4), "seed {seed}: {caught:?}");
        }
    }

    #[test]
    fn no_guard_where_a_hard_failure_is_not_distinguishable() {
        assert_eq!(GuardConfig::for_max_error_rate(0.0), None);
        assert_eq!(GuardConfig::for_max_error_rate(0.5), None);
        assert_eq!(GuardConfig::for_max_error_rate(f64::NAN), None);
        assert!(GuardConfig::for_max_error_rate(0.2).is_some());
    }
}

//! Flood resistance for the registration port: token buckets charged by
//! *failing* requests only (sans-IO, takes `now`).
//!
//! A home agent faces the internet. Parsing a request and checking its
//! authenticator is cheap, but not free, and a flood of garbage, of
//! requests with bad authenticators (131) or of replays (133) must not
//! push valid registrations past their latency target (issue 11). The
//! driver asks [`Limiter::check`] before it hands a datagram to the
//! engine and calls [`Limiter::charge`] when the engine refused it
//! (dropped it, or denied it at reception); an accepted registration is
//! never charged, so a mobile node that authenticates is never limited by
//! its own traffic.
//!
//! * **Per source** (IPv4 address): a bucket of `per_source_burst` tokens
//!   refilled at `per_source_rate` per second. A source with less than one
//!   token is dropped before parsing (`rate_limited_source`): its
//!   processed failures are held to the refill rate.
//! * **Global**: one bucket of `global_burst` refilled at `global_rate`,
//!   charged by every failure. While it is empty, the load is a
//!   distributed flood: every source that still pays off failures (its
//!   bucket is not full) is dropped (`rate_limited_global`), while sources
//!   with a clean record (every legitimate mobile node) pass.
//! * **Bounded memory**: at most `max_sources` sources are tracked; a new
//!   one evicts the source whose last failure is oldest (an untracked
//!   source is one with a full bucket, so eviction only forgives).
//!
//! Sources behind one NAT share a bucket: a flooding neighbour can delay a
//! legitimate mobile node behind the same address (docs/security.md).

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::time::Duration;

use crate::config::LimitsConfig;

/// Why [`Limiter::check`] refused a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitDrop {
    /// The source's own bucket is empty.
    Source,
    /// The global bucket is empty and the source has recent failures.
    Global,
}

impl LimitDrop {
    /// A stable label for `haven_registration_drops_total{reason}`.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitDrop::Source => "rate_limited_source",
            LimitDrop::Global => "rate_limited_global",
        }
    }
}

/// Plain counters (STYLE.md § 7).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LimiterStats {
    /// Failures charged.
    pub charged: u64,
    /// Datagrams dropped: source bucket empty.
    pub dropped_source: u64,
    /// Datagrams dropped: global bucket empty.
    pub dropped_global: u64,
    /// Sources forgotten to make room.
    pub evicted: u64,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Duration,
}

impl Bucket {
    fn full(burst: f64, now: Duration) -> Self {
        Self {
            tokens: burst,
            at: now,
        }
    }

    fn refill(&mut self, now: Duration, rate: f64, burst: f64) {
        // A clock that steps back refills nothing (and breaks nothing).
        let dt = now.saturating_sub(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * rate).min(burst);
        self.at = self.at.max(now);
    }
}

#[derive(Debug)]
struct Source {
    bucket: Bucket,
    /// Key of this source in `order`.
    seq: u64,
}

/// The flood limiter (see the module docs).
#[derive(Debug)]
pub struct Limiter {
    cfg: LimitsConfig,
    global: Bucket,
    sources: HashMap<Ipv4Addr, Source>,
    /// Last failure order: seq → source (oldest first).
    order: BTreeMap<u64, Ipv4Addr>,
    next_seq: u64,
    stats: LimiterStats,
}

impl Limiter {
    /// A limiter with full buckets at `now`.
    pub fn new(cfg: LimitsConfig, now: Duration) -> Self {
        Self {
            global: Bucket::full(cfg.global_burst, now),
            cfg,
            sources: HashMap::new(),
            order: BTreeMap::new(),
            next_seq: 0,
            stats: LimiterStats::default(),
        }
    }

    /// Whether a datagram from `src` may be processed now. Costs nothing.
    pub fn check(&mut self, now: Duration, src: Ipv4Addr) -> Result<(), LimitDrop> {
        let Some(s) = self.sources.get_mut(&src) else {
            // No failure on record: never limited.
            return Ok(());
        };
        s.bucket
            .refill(now, self.cfg.per_source_rate, self.cfg.per_source_burst);
        if s.bucket.tokens < 1.0 {
            self.stats.dropped_source += 1;
            return Err(LimitDrop::Source);
        }
        let in_debt = s.bucket.tokens < self.cfg.per_source_burst;
        self.global
            .refill(now, self.cfg.global_rate, self.cfg.global_burst);
        if in_debt && self.global.tokens < 1.0 {
            self.stats.dropped_global += 1;
            return Err(LimitDrop::Global);
        }
        Ok(())
    }

    /// Records a failing request from `src` (dropped or denied by the
    /// engine at reception).
    pub fn charge(&mut self, now: Duration, src: Ipv4Addr) {
        self.stats.charged += 1;
        self.global
            .refill(now, self.cfg.global_rate, self.cfg.global_burst);
        self.global.tokens = (self.global.tokens - 1.0).max(0.0);
        let seq = self.next_seq;
        self.next_seq += 1;
        if let Some(s) = self.sources.get_mut(&src) {
            s.bucket
                .refill(now, self.cfg.per_source_rate, self.cfg.per_source_burst);
            s.bucket.tokens = (s.bucket.tokens - 1.0).max(0.0);
            self.order.remove(&s.seq);
            s.seq = seq;
            self.order.insert(seq, src);
            return;
        }
        while self.sources.len() >= self.cfg.max_sources.max(1) {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.sources.remove(&oldest);
            self.stats.evicted += 1;
        }
        let mut bucket = Bucket::full(self.cfg.per_source_burst, now);
        bucket.tokens -= 1.0;
        self.sources.insert(src, Source { bucket, seq });
        self.order.insert(seq, src);
    }

    /// Sources tracked now.
    pub fn sources(&self) -> usize {
        self.sources.len()
    }

    /// The counters.
    pub fn stats(&self) -> LimiterStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cfg() -> LimitsConfig {
        LimitsConfig {
            enabled: true,
            per_source_rate: 5.0,
            per_source_burst: 20.0,
            global_rate: 100.0,
            global_burst: 200.0,
            max_sources: 4,
        }
    }

    fn ip(i: u8) -> Ipv4Addr {
        Ipv4Addr::new(198, 51, 100, i)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Sends from `src` at `now` as the driver does: check, then charge
    /// when `fails`. Returns whether it was processed.
    fn offer(l: &mut Limiter, now: Duration, src: Ipv4Addr, fails: bool) -> bool {
        if l.check(now, src).is_err() {
            return false;
        }
        if fails {
            l.charge(now, src);
        }
        true
    }

    #[test]
    fn a_flooding_source_gets_its_burst_then_the_refill_rate() {
        let mut l = Limiter::new(cfg(), ms(0));
        let processed = (0..1000)
            .filter(|_| offer(&mut l, ms(0), ip(1), true))
            .count();
        assert_eq!(processed, 20, "the burst, then nothing");
        assert_eq!(l.check(ms(0), ip(1)), Err(LimitDrop::Source));
        // One second later: 5 more tokens.
        let processed = (0..1000)
            .filter(|_| offer(&mut l, ms(1000), ip(1), true))
            .count();
        assert_eq!(processed, 5);
        assert_eq!(l.stats().charged, 25);
    }

    #[test]
    fn valid_requests_are_never_charged_nor_limited() {
        let mut l = Limiter::new(cfg(), ms(0));
        for i in 0..100_000u64 {
            assert!(offer(&mut l, ms(i / 100), ip(2), false));
        }
        assert_eq!(l.sources(), 0);
        // Another source floods the global bucket dry; the clean one
        // still passes.
        for i in 0..=250u8 {
            for _ in 0..30 {
                offer(&mut l, ms(0), Ipv4Addr::new(203, 0, 113, i), true);
            }
        }
        assert!(l.check(ms(0), ip(2)).is_ok());
    }

    #[test]
    fn an_empty_global_bucket_drops_sources_in_debt() {
        let mut c = cfg();
        c.max_sources = 1000;
        let mut l = Limiter::new(c, ms(0));
        // 10 sources × 20 failures = the global burst of 200.
        for i in 0..10 {
            for _ in 0..20 {
                assert!(offer(&mut l, ms(0), ip(i), true));
            }
        }
        // A fresh source fails once and is then in debt while the global
        // bucket is empty.
        assert!(offer(&mut l, ms(0), ip(100), true));
        assert_eq!(l.check(ms(0), ip(100)), Err(LimitDrop::Global));
        assert_eq!(l.stats().dropped_global, 1);
        // The global bucket refills (100/s): after 50 ms, 5 tokens.
        assert!(l.check(ms(50), ip(100)).is_ok());
    }

    #[test]
    fn memory_is_bounded_and_the_oldest_is_forgotten() {
        let mut l = Limiter::new(cfg(), ms(0));
        for i in 0..10 {
            l.charge(ms(u64::from(i)), ip(i));
        }
        assert_eq!(l.sources(), 4);
        assert_eq!(l.stats().evicted, 6);
        // 6..=9 are tracked: charging 6 again makes 7 the oldest.
        l.charge(ms(20), ip(6));
        l.charge(ms(21), ip(42));
        assert!(l.sources.contains_key(&ip(6)));
        assert!(!l.sources.contains_key(&ip(7)));
    }

    #[test]
    fn a_clock_stepping_back_is_harmless() {
        let mut l = Limiter::new(cfg(), ms(10_000));
        for _ in 0..20 {
            l.charge(ms(10_000), ip(1));
        }
        assert_eq!(l.check(ms(0), ip(1)), Err(LimitDrop::Source));
        assert!(l.check(ms(10_200), ip(1)).is_ok());
    }

    proptest! {
        /// Over any schedule, a source's processed failures never exceed
        /// its burst plus what the rate refilled, and clean sources always
        /// pass.
        #[test]
        fn processed_failures_are_bounded(
            steps in proptest::collection::vec((0u8..6, 0u64..50, any::<bool>()), 1..2000),
        ) {
            let c = cfg();
            let mut l = Limiter::new(LimitsConfig { max_sources: 100, ..c }, ms(0));
            let mut now = 0u64;
            let mut processed = [0u64; 6];
            for (src, dt, fails) in steps {
                now += dt;
                // Source 0 only ever sends valid requests.
                let fails = fails && src != 0;
                let ok = offer(&mut l, ms(now), ip(src), fails);
                if src == 0 {
                    prop_assert!(ok, "a clean source is never limited");
                }
                if ok && fails {
                    processed[usize::from(src)] += 1;
                }
            }
            let bound = c.per_source_burst + c.per_source_rate * (now as f64 / 1000.0) + 1.0;
            for p in processed {
                prop_assert!((p as f64) <= bound, "{p} > {bound}");
            }
            prop_assert!(l.sources() <= 100);
        }
    }
}

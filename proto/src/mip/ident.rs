//! The 64-bit Identification field of registration messages and the replay
//! protection built on it ([RFC 5944 § 5.7], [RFC 5944 § 5.4]).
//!
//! Two styles exist. *Timestamps* (the default, and haven's): the high 32
//! bits are seconds since 1900-01-01 and the low 32 bits a binary fraction,
//! the NTP format of [RFC 5905 § 6]. *Nonces*: the high 32 bits are the home
//! agent's nonce, the low 32 bits the mobile node's. Nothing here reads a
//! clock: `now` is always a parameter (STYLE.md §3), so tests run on a
//! virtual clock and the engine stays sans-IO.

use core::time::Duration;

use crate::{Error, Result};

/// Seconds from the NTP prime epoch (1900-01-01) to the Unix epoch
/// (1970-01-01) [RFC 5905 § 6].
pub const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// The Identification field of a Registration Request or Reply
/// ([RFC 5944 § 3.3], § 5.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Identification(pub u64);

impl From<u64> for Identification {
    fn from(v: u64) -> Self {
        Identification(v)
    }
}

impl From<Identification> for u64 {
    fn from(i: Identification) -> u64 {
        i.0
    }
}

impl Identification {
    /// Joins a high and a low 32-bit half.
    pub const fn from_parts(high: u32, low: u32) -> Self {
        Identification(((high as u64) << 32) | low as u64)
    }

    /// The high-order 32 bits: NTP seconds, or the home agent's nonce.
    pub const fn high(self) -> u32 {
        (self.0 >> 32) as u32
    }

    /// The low-order 32 bits: the NTP fraction, or the mobile node's nonce.
    pub const fn low(self) -> u32 {
        self.0 as u32
    }

    /// Nonce mode [RFC 5944 § 5.7.2]: high 32 bits from the home agent, low
    /// 32 bits from the mobile node.
    pub const fn from_nonces(ha_nonce: u32, mn_nonce: u32) -> Self {
        Self::from_parts(ha_nonce, mn_nonce)
    }

    /// The home agent's nonce (high 32 bits) in nonce mode.
    pub const fn ha_nonce(self) -> u32 {
        self.high()
    }

    /// The mobile node's nonce (low 32 bits) in nonce mode.
    pub const fn mn_nonce(self) -> u32 {
        self.low()
    }

    /// The NTP timestamp of a time given as a duration since the Unix epoch.
    ///
    /// Seconds wrap modulo 2^32, so times from 2036-02-07 on land in NTP era
    /// 1 exactly as [RFC 5905 § 6] prescribes.
    pub fn from_unix(since_unix: Duration) -> Self {
        let secs = since_unix.as_secs().wrapping_add(NTP_UNIX_OFFSET) as u32;
        // floor(nanos * 2^32 / 10^9): exact inverse of `to_unix`'s ceiling.
        let frac = ((u64::from(since_unix.subsec_nanos()) << 32) / NANOS_PER_SEC) as u32;
        Self::from_parts(secs, frac)
    }

    /// The time of an NTP timestamp as a duration since the Unix epoch.
    ///
    /// Era rule of RFC 4330 § 3 (used by RFC 5905 implementations): a
    /// seconds value with the most significant bit clear is in era 1
    /// (2036–2104), one with it set in era 0 (1968–2036). Times before the
    /// Unix epoch saturate to zero.
    pub fn to_unix(self) -> Duration {
        let mut secs = u64::from(self.high());
        if secs & 0x8000_0000 == 0 {
            secs += 1 << 32;
        }
        let Some(unix_secs) = secs.checked_sub(NTP_UNIX_OFFSET) else {
            return Duration::ZERO;
        };
        // ceil(frac * 10^9 / 2^32) makes from_unix -> to_unix exact.
        let nanos = (u64::from(self.low()) * NANOS_PER_SEC).div_ceil(1 << 32);
        Duration::new(unix_secs, nanos as u32)
    }
}

/// Converts a duration to NTP 2^-32 s units, saturating.
fn duration_to_ntp_units(d: Duration) -> u64 {
    let secs = d.as_secs().min(u64::from(u32::MAX));
    let frac = (u64::from(d.subsec_nanos()) << 32) / NANOS_PER_SEC;
    (secs << 32) | frac
}

/// The signed distance `a - b` in 2^-32 s units, modulo 2^64: the shortest
/// way round the NTP circle, so an era change is not a jump of 136 years.
fn signed_distance(a: Identification, b: Identification) -> i128 {
    i128::from(a.0.wrapping_sub(b.0) as i64)
}

/// Checks that a timestamp Identification is within `tolerance` of `now`
/// (time since the Unix epoch) [RFC 5944 § 5.7.1]. The default tolerance
/// is 7 seconds [RFC 5944 § 5.4].
///
/// # Errors
/// [`Error::IdentificationMismatch`] (reply code 133) when it is not.
pub fn check_timestamp(ident: Identification, now: Duration, tolerance: Duration) -> Result<()> {
    let now_ntp = Identification::from_unix(now);
    let distance = signed_distance(ident, now_ntp).unsigned_abs();
    if distance <= u128::from(duration_to_ntp_units(tolerance)) {
        Ok(())
    } else {
        Err(Error::IdentificationMismatch)
    }
}

/// Checks that `ident` is strictly newer than the last accepted one for the
/// same binding, in serial-number order so the NTP era change does not make
/// every later timestamp look old [RFC 5944 § 5.7].
///
/// # Errors
/// [`Error::Replay`] when it is equal or older.
pub fn must_be_newer(ident: Identification, last_accepted: Identification) -> Result<()> {
    if signed_distance(ident, last_accepted) > 0 {
        Ok(())
    } else {
        Err(Error::Replay)
    }
}

/// The Identification a home agent puts in a code 133 reply to a timestamp
/// Request: its own time in the high 32 bits so the mobile node can
/// resynchronise, and the Request's low-order 32 bits copied so the mobile
/// node can match the reply to its request [RFC 5944 § 5.7.1, § 3.6.1.2].
pub fn ha_identification_for_timestamp_mismatch(
    now: Duration,
    request: Identification,
) -> Identification {
    Identification::from_parts(Identification::from_unix(now).high(), request.low())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn unix_epoch_is_ntp_2208988800() {
        // Reference: RFC 5905 § 6, figure 4 (1970-01-01 is era 0, 2208988800 s).
        let i = Identification::from_unix(Duration::ZERO);
        assert_eq!(i.0, 0x83AA_7E80_0000_0000);
        assert_eq!(i.to_unix(), Duration::ZERO);
    }

    #[test]
    fn fraction_half_second() {
        let i = Identification::from_unix(Duration::new(1, 500_000_000));
        assert_eq!(i.high(), 0x83AA_7E81);
        assert_eq!(i.low(), 0x8000_0000);
        assert_eq!(i.to_unix(), Duration::new(1, 500_000_000));
    }

    #[test]
    fn era_one_after_2036() {
        // 2036-02-07T06:28:16Z is NTP second 2^32: seconds wrap to 0 (era 1).
        let t = Duration::from_secs((1u64 << 32) - NTP_UNIX_OFFSET);
        let i = Identification::from_unix(t);
        assert_eq!(i.high(), 0);
        assert_eq!(i.to_unix(), t);
        let later = t + Duration::from_secs(100);
        assert_eq!(Identification::from_unix(later).to_unix(), later);
    }

    #[test]
    fn timestamp_tolerance() {
        // Reference: RFC 5944 § 5.7.1 (timestamps "sufficiently close").
        let now = Duration::from_secs(1_700_000_000);
        let tol = Duration::from_secs(7);
        let at = |d: Duration| Identification::from_unix(d);
        assert_eq!(check_timestamp(at(now), now, tol), Ok(()));
        assert_eq!(check_timestamp(at(now + tol), now, tol), Ok(()));
        assert_eq!(check_timestamp(at(now - tol), now, tol), Ok(()));
        assert_eq!(
            check_timestamp(at(now + Duration::from_secs(8)), now, tol),
            Err(Error::IdentificationMismatch)
        );
        assert_eq!(
            check_timestamp(at(now - Duration::from_secs(8)), now, tol),
            Err(Error::IdentificationMismatch)
        );
        assert_eq!(
            check_timestamp(Identification(0), now, tol),
            Err(Error::IdentificationMismatch)
        );
    }

    #[test]
    fn tolerance_across_era_change() {
        let edge = Duration::from_secs((1u64 << 32) - NTP_UNIX_OFFSET);
        let before = Identification::from_unix(edge - Duration::from_secs(2));
        assert_eq!(
            check_timestamp(
                before,
                edge + Duration::from_secs(2),
                Duration::from_secs(7)
            ),
            Ok(())
        );
        let after = Identification::from_unix(edge + Duration::from_secs(1));
        assert_eq!(must_be_newer(after, before), Ok(()));
    }

    #[test]
    fn newer_and_replay() {
        let a = Identification(0x83AA_7E80_0000_0001);
        let b = Identification(0x83AA_7E80_0000_0002);
        assert_eq!(must_be_newer(b, a), Ok(()));
        assert_eq!(must_be_newer(a, b), Err(Error::Replay));
        assert_eq!(must_be_newer(a, a), Err(Error::Replay));
    }

    #[test]
    fn mismatch_reply_identification() {
        // Reference: RFC 5944 § 5.7.1: HA time high, MN's low-order bits copied.
        let now = Duration::from_secs(1_700_000_000);
        let req = Identification(0x0102_0304_DEAD_BEEF);
        let rep = ha_identification_for_timestamp_mismatch(now, req);
        assert_eq!(rep.low(), 0xDEAD_BEEF);
        assert_eq!(
            u64::from(rep.high()),
            (1_700_000_000 + NTP_UNIX_OFFSET) & 0xFFFF_FFFF
        );
    }

    #[test]
    fn nonces() {
        let i = Identification::from_nonces(0xAABB_CCDD, 0x1122_3344);
        assert_eq!(i.0, 0xAABB_CCDD_1122_3344);
        assert_eq!(i.ha_nonce(), 0xAABB_CCDD);
        assert_eq!(i.mn_nonce(), 0x1122_3344);
    }

    proptest! {
        #[test]
        fn unix_round_trip(secs in 0u64..4_000_000_000, nanos in 0u32..1_000_000_000) {
            let d = Duration::new(secs, nanos);
            prop_assert_eq!(Identification::from_unix(d).to_unix(), d);
        }

        #[test]
        fn any_ident_checks_without_panic(v: u64, secs in 0u64..u64::MAX / 2, tol: u64) {
            let _ = check_timestamp(Identification(v), Duration::from_secs(secs), Duration::from_secs(tol));
            let _ = Identification(v).to_unix();
        }
    }
}

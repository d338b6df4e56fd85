//! Registration authenticators ([RFC 5944 § 3.5.1]): computing, verifying
//! in constant time, and locating the MN-HA (or FA-HA) extension in a
//! message.
//!
//! The protected data are the UDP payload from the start of the fixed part
//! through every prior extension, up to and including the Type, Length and
//! SPI of the authentication extension itself. HMAC-MD5 (RFC 2104) is the
//! default; keyed MD5 in prefix+suffix mode, MD5(key || data || key)
//! (RFC 2002 § 3.5.1), is kept per security association for old mobile
//! nodes. Keys are arguments: nothing here stores or looks one up.

use core::ops::Range;

use md5::{Digest, Md5};
use subtle::ConstantTimeEq;

use super::ext::{Extension, ExtensionType, Extensions};
use super::registration::fixed_len;
use crate::{Error, Result};

/// The algorithm of a mobility security association (RFC 5944 §3.5.1, §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Algorithm {
    /// HMAC-MD5 (RFC 2104) over the protected data: the default of RFC 5944.
    #[default]
    HmacMd5,
    /// Legacy keyed MD5 in prefix+suffix mode, MD5(key || data || key)
    /// (RFC 2002 §3.5.1); kept for old mobile nodes, per association.
    PrefixSuffixMd5,
}

/// Length of an authenticator of either algorithm (an MD5 digest).
pub const AUTHENTICATOR_LEN: usize = 16;

const MD5_BLOCK: usize = 64;

/// HMAC-MD5 as RFC 2104 § 2 defines it; keys longer than a block are
/// hashed first, so any key length works and nothing can fail.
fn hmac_md5(key: &[u8], data: &[u8]) -> [u8; AUTHENTICATOR_LEN] {
    let mut k = [0u8; MD5_BLOCK];
    if key.len() > MD5_BLOCK {
        k[..AUTHENTICATOR_LEN].copy_from_slice(&Md5::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut ipad = k;
    let mut opad = k;
    ipad.iter_mut().for_each(|b| *b ^= 0x36);
    opad.iter_mut().for_each(|b| *b ^= 0x5c);
    let inner = Md5::new().chain_update(ipad).chain_update(data).finalize();
    Md5::new()
        .chain_update(opad)
        .chain_update(inner)
        .finalize()
        .into()
}

/// The authenticator of `covered` under `key`.
pub fn compute(alg: Algorithm, key: &[u8], covered: &[u8]) -> [u8; AUTHENTICATOR_LEN] {
    match alg {
        Algorithm::HmacMd5 => hmac_md5(key, covered),
        Algorithm::PrefixSuffixMd5 => Md5::new()
            .chain_update(key)
            .chain_update(covered)
            .chain_update(key)
            .finalize()
            .into(),
    }
}

/// Verifies an authenticator in constant time.
///
/// # Errors
/// [`Error::Authentication`] on a mismatch or a wrong authenticator length.
pub fn verify(alg: Algorithm, key: &[u8], covered: &[u8], authenticator: &[u8]) -> Result<()> {
    if authenticator.len() != AUTHENTICATOR_LEN {
        return Err(Error::Authentication);
    }
    let expected = compute(alg, key, covered);
    if bool::from(expected.ct_eq(authenticator)) {
        Ok(())
    } else {
        Err(Error::Authentication)
    }
}

/// Where an authentication extension sits in a message; ranges are
/// relative to the start of the message (the UDP payload).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AuthLocation {
    /// Security Parameter Index.
    pub spi: u32,
    /// The protected data: message start through the extension's SPI.
    pub covered: Range<usize>,
    /// The authenticator bytes.
    pub authenticator: Range<usize>,
}

impl AuthLocation {
    /// Verifies the located authenticator of `message`.
    ///
    /// # Errors
    /// [`Error::Authentication`] on mismatch; [`Error::BadLength`] if the
    /// ranges do not lie in `message`.
    pub fn verify(&self, alg: Algorithm, key: &[u8], message: &[u8]) -> Result<()> {
        let covered = message.get(self.covered.clone()).ok_or(Error::BadLength)?;
        let auth = message
            .get(self.authenticator.clone())
            .ok_or(Error::BadLength)?;
        verify(alg, key, covered, auth)
    }
}

/// Locates the first extension of type `ty` in a Registration Request or
/// Reply. Only the short-form authentication extensions (32, 33, 34) and the
/// long-form Generalized Authentication (36) have an SPI; any other `ty`
/// returns `Ok(None)`.
///
/// # Errors
/// Framing errors of the fixed part or of the extensions before the one
/// sought.
pub fn find(message: &[u8], ty: ExtensionType) -> Result<Option<AuthLocation>> {
    let start = fixed_len(message)?;
    if message.len() < start {
        return Err(Error::Truncated);
    }
    let area = message.get(start..).unwrap_or_default();
    for item in Extensions::new(area).located() {
        let l = item?;
        if l.extension.ty() != ty {
            continue;
        }
        let spi = match l.extension {
            Extension::MnHaAuth(a) | Extension::MnFaAuth(a) | Extension::FaHaAuth(a) => a.spi,
            Extension::GeneralizedAuth(g) => g.spi,
            _ => return Ok(None),
        };
        let ext_start = start + l.offset;
        let spi_end = ext_start + ty.header_len() + 4;
        return Ok(Some(AuthLocation {
            spi,
            covered: 0..spi_end,
            authenticator: spi_end..ext_start + l.len,
        }));
    }
    Ok(None)
}

/// Locates the MN-HA authentication extension (32) [RFC 5944 § 3.5.2].
///
/// # Errors
/// As [`find`].
pub fn find_mn_ha(message: &[u8]) -> Result<Option<AuthLocation>> {
    find(message, ExtensionType::MnHaAuth)
}

/// Locates the FA-HA authentication extension (34) [RFC 5944 § 3.5.4].
///
/// # Errors
/// As [`find`].
pub fn find_fa_ha(message: &[u8]) -> Result<Option<AuthLocation>> {
    find(message, ExtensionType::FaHaAuth)
}

/// Computes the authenticator of a located extension and writes it into
/// `message` (used by `MessageBuilder` and by agents rewriting a message).
///
/// # Errors
/// [`Error::BadLength`] if the authenticator range is not 16 bytes or does
/// not lie in `message`.
pub fn sign_in_place(
    alg: Algorithm,
    key: &[u8],
    message: &mut [u8],
    at: &AuthLocation,
) -> Result<()> {
    if at.authenticator.len() != AUTHENTICATOR_LEN || at.covered.end > at.authenticator.start {
        return Err(Error::BadLength);
    }
    let mac = compute(
        alg,
        key,
        message.get(at.covered.clone()).ok_or(Error::BadLength)?,
    );
    message
        .get_mut(at.authenticator.clone())
        .ok_or(Error::BadLength)?
        .copy_from_slice(&mac);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mip::ext::{AuthKind, MessageBuilder};
    use crate::mip::registration::tests::{REQUEST, request_repr};
    use hex_literal::hex;
    use proptest::prelude::*;

    #[test]
    fn rfc2202_hmac_md5_vectors() {
        // Reference: RFC 2202 § 2, test cases 1, 2 and 6 (80-byte key).
        assert_eq!(
            compute(Algorithm::HmacMd5, &[0x0b; 16], b"Hi There"),
            hex!("9294727a3638bb1c13f48ef8158bfc9d")
        );
        assert_eq!(
            compute(Algorithm::HmacMd5, b"Jefe", b"what do ya want for nothing?"),
            hex!("750c783e6ab0b503eaa86e310a5db738")
        );
        assert_eq!(
            compute(
                Algorithm::HmacMd5,
                &[0xaa; 80],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            ),
            hex!("6b1ab7fe4bd7bf8f0b62e6ce61b9d0cd")
        );
    }

    // The signed request of `signed_request`: REQUEST, then MN-HA with SPI
    // 0x100 and key "haven-test-key". Authenticators computed with python3:
    //   hmac.new(key, covered, hashlib.md5) and
    //   hashlib.md5(key + covered + key).
    const KEY: &[u8] = b"haven-test-key";
    const COVERED: [u8; 30] =
        hex!("010a0708c000020ac6336401cb00710783aa7e8000000001 2014 00000100");
    const HMAC_AUTH: [u8; 16] = hex!("47dd64c960c232b0207b6dab1a894ea4");
    const PS_AUTH: [u8; 16] = hex!("618e1bdabcf08a42be0b78e0b366f05d");

    fn signed_request(alg: Algorithm) -> Vec<u8> {
        let mut b = MessageBuilder::request(&request_repr());
        b.sign(AuthKind::MnHa, 0x100, alg, KEY);
        b.finish()
    }

    #[test]
    fn python_vectors() {
        assert_eq!(&COVERED[..24], &REQUEST);
        assert_eq!(compute(Algorithm::HmacMd5, KEY, &COVERED), HMAC_AUTH);
        assert_eq!(compute(Algorithm::PrefixSuffixMd5, KEY, &COVERED), PS_AUTH);
        let m = signed_request(Algorithm::HmacMd5);
        assert_eq!(&m[..30], &COVERED);
        assert_eq!(&m[30..], &HMAC_AUTH);
        let m = signed_request(Algorithm::PrefixSuffixMd5);
        assert_eq!(&m[30..], &PS_AUTH);
    }

    #[test]
    fn find_and_verify() {
        let m = signed_request(Algorithm::HmacMd5);
        let at = find_mn_ha(&m).unwrap().unwrap();
        assert_eq!(
            at,
            AuthLocation {
                spi: 0x100,
                covered: 0..30,
                authenticator: 30..46
            }
        );
        assert_eq!(at.verify(Algorithm::HmacMd5, KEY, &m), Ok(()));
        assert_eq!(
            at.verify(Algorithm::PrefixSuffixMd5, KEY, &m),
            Err(Error::Authentication)
        );
        assert_eq!(
            at.verify(Algorithm::HmacMd5, b"wrong", &m),
            Err(Error::Authentication)
        );
        assert_eq!(find_fa_ha(&m), Ok(None));
        assert_eq!(find_mn_ha(&REQUEST), Ok(None));
        assert_eq!(find_mn_ha(&[]), Err(Error::Truncated));
        assert_eq!(find_mn_ha(&REQUEST[..10]), Err(Error::Truncated));
    }

    #[test]
    fn every_bit_flip_fails() {
        // Reference: RFC 5944 § 3.5.1: every byte through the SPI is protected.
        for alg in [Algorithm::HmacMd5, Algorithm::PrefixSuffixMd5] {
            let m = signed_request(alg);
            for i in 0..m.len() {
                for bit in 0..8 {
                    let mut t = m.clone();
                    t[i] ^= 1 << bit;
                    let ok = find_mn_ha(&t)
                        .ok()
                        .flatten()
                        .is_some_and(|at| at.verify(alg, KEY, &t).is_ok());
                    assert!(!ok, "flip byte {i} bit {bit} still verifies");
                }
            }
        }
    }

    #[test]
    fn wrong_authenticator_length() {
        assert_eq!(
            verify(Algorithm::HmacMd5, KEY, &COVERED, &HMAC_AUTH[..15]),
            Err(Error::Authentication)
        );
        let mut long = HMAC_AUTH.to_vec();
        long.push(0);
        assert_eq!(
            verify(Algorithm::HmacMd5, KEY, &COVERED, &long),
            Err(Error::Authentication)
        );
        assert_eq!(
            verify(Algorithm::HmacMd5, KEY, &COVERED, &HMAC_AUTH),
            Ok(())
        );
    }

    #[test]
    fn sign_in_place_rewrites() {
        let mut m = signed_request(Algorithm::HmacMd5);
        m[30..].fill(0);
        let at = find_mn_ha(&m).unwrap().unwrap();
        sign_in_place(Algorithm::HmacMd5, KEY, &mut m, &at).unwrap();
        assert_eq!(&m[30..], &HMAC_AUTH);
        let bad = AuthLocation {
            spi: 0,
            covered: 0..30,
            authenticator: 30..50,
        };
        assert_eq!(
            sign_in_place(Algorithm::HmacMd5, KEY, &mut m, &bad),
            Err(Error::BadLength)
        );
    }

    proptest! {
        #[test]
        fn find_never_panics(b in proptest::collection::vec(any::<u8>(), 0..96)) {
            let _ = find_mn_ha(&b);
            let mut m = REQUEST.to_vec();
            m.extend_from_slice(&b);
            if let Ok(Some(at)) = find_mn_ha(&m) {
                let _ = at.verify(Algorithm::HmacMd5, KEY, &m);
            }
        }

        #[test]
        fn sign_then_verify(key in proptest::collection::vec(any::<u8>(), 0..100), spi: u32) {
            let mut b = MessageBuilder::request(&request_repr());
            b.sign(AuthKind::MnHa, spi, Algorithm::HmacMd5, &key);
            let m = b.finish();
            let at = find_mn_ha(&m).unwrap().unwrap();
            prop_assert_eq!(at.spi, spi);
            prop_assert_eq!(at.verify(Algorithm::HmacMd5, &key, &m), Ok(()));
        }
    }
}

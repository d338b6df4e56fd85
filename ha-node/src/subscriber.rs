//! Security association look-up [RFC 5944 § 1.6 "Mobility Security
//! Association", § 3.5].
//!
//! The engine asks a [`SubscriberBackend`] for the association of the MN
//! named in a request — by home address, or by NAI for MNs without a fixed
//! one [RFC 2794] — and the SPI of its MN-HA Authentication Extension. The
//! static backend ([`StaticSubscribers`]) is built from the configuration and
//! its keys files; an AAA backend (RADIUS/Diameter) can implement the same
//! trait later. NAIs are compared exactly (byte for byte).

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use haven_proto::mip::auth::Algorithm;

use crate::binding::MnId;
use crate::config::{Config, Key, RealmId};

/// A mobility security association (the key is never printed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityAssociation {
    /// Security Parameter Index (≥ 256).
    pub spi: u32,
    /// Authenticator algorithm.
    pub algorithm: Algorithm,
    /// Shared key.
    pub key: Key,
}

/// Where security associations come from.
pub trait SubscriberBackend: Send + Sync {
    /// The association of `mn` with `spi` in `realm`, if any (unknown MN
    /// and unknown SPI look the same to the MN: code 131, § 3.8.2.1).
    fn lookup(&self, realm: RealmId, mn: MnId<'_>, spi: u32) -> Option<Arc<SecurityAssociation>>;
}

/// Associations from the configuration file.
#[derive(Debug, Default)]
pub struct StaticSubscribers {
    by_home: HashMap<(RealmId, Ipv4Addr, u32), Arc<SecurityAssociation>>,
    by_nai: HashMap<(RealmId, u32), HashMap<Box<str>, Arc<SecurityAssociation>>>,
}

impl StaticSubscribers {
    /// Builds the table from a validated configuration.
    pub fn from_config(cfg: &Config) -> Self {
        let mut s = Self::default();
        for (i, realm) in cfg.realm.iter().enumerate() {
            let Ok(id) = u16::try_from(i).map(RealmId) else {
                break;
            };
            for sa in &realm.sa {
                let assoc = Arc::new(SecurityAssociation {
                    spi: sa.spi,
                    algorithm: sa.algorithm.into(),
                    key: sa.key_hex.clone(),
                });
                if let Some(a) = sa.home_address {
                    s.by_home.insert((id, a, sa.spi), assoc);
                } else if let Some(n) = &sa.nai {
                    s.by_nai
                        .entry((id, sa.spi))
                        .or_default()
                        .insert(n.as_str().into(), assoc);
                }
            }
        }
        s
    }

    /// Number of associations.
    pub fn len(&self) -> usize {
        self.by_home.len() + self.by_nai.values().map(HashMap::len).sum::<usize>()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl SubscriberBackend for StaticSubscribers {
    fn lookup(&self, realm: RealmId, mn: MnId<'_>, spi: u32) -> Option<Arc<SecurityAssociation>> {
        match mn {
            MnId::HomeAddress(a) => self.by_home.get(&(realm, a, spi)).cloned(),
            MnId::Nai(n) => self.by_nai.get(&(realm, spi))?.get(n).cloned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_by_home_address_and_nai() {
        let cfg = Config::from_toml_str(
            r#"
            [[realm]]
            name = "inner"
            vip = "192.0.2.1"
            home_prefix = "198.51.100.0/24"
            [[realm.sa]]
            home_address = "198.51.100.5"
            spi = 256
            key_hex = "00112233445566778899aabbccddeeff"
            [[realm]]
            name = "outer"
            vip = "203.0.113.1"
            home_prefix = "198.18.0.0/16"
            pool = "198.18.0.1-198.18.0.254"
            [[realm.sa]]
            nai = "mn1@example.net"
            spi = 1000
            algorithm = "prefix-suffix-md5"
            key_hex = "ffeeddccbbaa99887766554433221100"
            "#,
        )
        .expect("parses");
        cfg.validate().expect("valid");
        let s = StaticSubscribers::from_config(&cfg);
        assert_eq!(s.len(), 2);
        let a = s
            .lookup(
                RealmId(0),
                MnId::HomeAddress(Ipv4Addr::new(198, 51, 100, 5)),
                256,
            )
            .expect("found");
        assert_eq!(a.algorithm, Algorithm::HmacMd5);
        assert_eq!(a.key.as_bytes()[0], 0x00);
        assert!(
            s.lookup(
                RealmId(0),
                MnId::HomeAddress(Ipv4Addr::new(198, 51, 100, 5)),
                257
            )
            .is_none()
        );
        assert!(
            s.lookup(
                RealmId(1),
                MnId::HomeAddress(Ipv4Addr::new(198, 51, 100, 5)),
                256
            )
            .is_none()
        );
        let b = s
            .lookup(RealmId(1), MnId::Nai("mn1@example.net"), 1000)
            .expect("found");
        assert_eq!(b.algorithm, Algorithm::PrefixSuffixMd5);
        assert_eq!(b.key.as_bytes()[0], 0xff);
        assert!(
            s.lookup(RealmId(1), MnId::Nai("MN1@example.net"), 1000)
                .is_none()
        );
        assert!(
            s.lookup(RealmId(0), MnId::Nai("mn1@example.net"), 1000)
                .is_none()
        );
    }
}

//! haven's vendor payloads, carried in Normal Vendor/Organization Specific
//! Extensions (NVSE, type 134, [RFC 3115 § 4]) of a Registration Reply.
//!
//! Seed 002 (figure 6a–6c) has the home agent hand the mobile node (or its
//! foreign agent) static routes and firewall filter rules in vendor
//! extensions of the reply. The seed names the fields but not their sizes;
//! haven's layout, under the documentation enterprise number 32473
//! (RFC 5612), is:
//!
//! * Vendor-NVSE-Type 1, static routes (seed fig. 6b): 12-byte entries of
//!   destination, netmask (the seed's "address range ... by using a subnet
//!   mask") and gateway (the router for that range: the home agent or the
//!   foreign agent), each an IPv4 address.
//! * Vendor-NVSE-Type 2, filter rules (seed fig. 6c, fig. 4 columns): 20-byte
//!   entries of source address, source mask, destination address,
//!   destination mask (4 bytes each), IP protocol (1 byte, 0 = any), action
//!   (1 byte, [`FilterAction`]) and destination port (2 bytes, 0 = any: the
//!   seed's protocol descriptors are HTTP, SIP, RTP, i.e. protocol + port).
//!
//! The number of entries follows from the length; a partial entry is
//! [`Error::BadLength`]. An NVSE holds at most 247 data bytes, so at most 20
//! routes or 12 rules per extension: send several extensions for more.

use core::net::Ipv4Addr;

use super::ext::{Extension, VendorExt};
use crate::{Error, Result};

/// haven's Vendor/Org-ID: the documentation enterprise number of RFC 5612.
pub const ENTERPRISE_NUMBER: u32 = 32473;

/// Largest Vendor-NVSE-Value: 255 minus reserved, Vendor/Org-ID and type.
pub const MAX_NVSE_DATA: usize = 255 - 8;

/// haven's Vendor-NVSE-Type values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VendorType {
    /// 1: static routes (seed fig. 6b).
    StaticRoutes,
    /// 2: filter rules (seed fig. 6c).
    FilterRules,
    /// Any other value.
    Unknown(u16),
}

impl From<u16> for VendorType {
    fn from(v: u16) -> Self {
        match v {
            1 => VendorType::StaticRoutes,
            2 => VendorType::FilterRules,
            o => VendorType::Unknown(o),
        }
    }
}

impl From<VendorType> for u16 {
    fn from(t: VendorType) -> u16 {
        match t {
            VendorType::StaticRoutes => 1,
            VendorType::FilterRules => 2,
            VendorType::Unknown(o) => o,
        }
    }
}

fn addr_at(b: &[u8], at: usize) -> Result<Ipv4Addr> {
    match b.get(at..at + 4) {
        Some(s) => Ok(Ipv4Addr::new(s[0], s[1], s[2], s[3])),
        None => Err(Error::BadLength),
    }
}

/// One static route (seed fig. 6b), 12 bytes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StaticRoute {
    /// Destination network.
    pub destination: Ipv4Addr,
    /// Its netmask.
    pub netmask: Ipv4Addr,
    /// Next hop for it (the home agent or the foreign agent).
    pub gateway: Ipv4Addr,
}

impl StaticRoute {
    /// Wire size of one entry.
    pub const LEN: usize = 12;

    /// Parses a whole Vendor-NVSE-Value of routes.
    ///
    /// # Errors
    /// [`Error::BadLength`] when the data end inside an entry.
    pub fn parse_all(data: &[u8]) -> Result<Vec<StaticRoute>> {
        if data.len() % Self::LEN != 0 {
            return Err(Error::BadLength);
        }
        data.chunks_exact(Self::LEN)
            .map(|c| {
                Ok(StaticRoute {
                    destination: addr_at(c, 0)?,
                    netmask: addr_at(c, 4)?,
                    gateway: addr_at(c, 8)?,
                })
            })
            .collect()
    }

    /// Encodes routes as a Vendor-NVSE-Value.
    pub fn emit_all(routes: &[StaticRoute]) -> Vec<u8> {
        let mut v = Vec::with_capacity(routes.len() * Self::LEN);
        for r in routes {
            v.extend_from_slice(&r.destination.octets());
            v.extend_from_slice(&r.netmask.octets());
            v.extend_from_slice(&r.gateway.octets());
        }
        v
    }
}

/// What a filter rule does with matching traffic (seed fig. 4, "Action").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FilterAction {
    /// 0: let it through.
    Accept,
    /// 1: drop it.
    Deny,
    /// 2: let it through and log it (seed fig. 4: "accepted ... logged").
    AcceptAndLog,
    /// 3: drop it and log it.
    DenyAndLog,
    /// Any other value.
    Unknown(u8),
}

impl From<u8> for FilterAction {
    fn from(v: u8) -> Self {
        match v {
            0 => FilterAction::Accept,
            1 => FilterAction::Deny,
            2 => FilterAction::AcceptAndLog,
            3 => FilterAction::DenyAndLog,
            o => FilterAction::Unknown(o),
        }
    }
}

impl From<FilterAction> for u8 {
    fn from(a: FilterAction) -> u8 {
        match a {
            FilterAction::Accept => 0,
            FilterAction::Deny => 1,
            FilterAction::AcceptAndLog => 2,
            FilterAction::DenyAndLog => 3,
            FilterAction::Unknown(o) => o,
        }
    }
}

/// One firewall filter rule (seed fig. 6c), 20 bytes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FilterRule {
    /// Source address.
    pub source: Ipv4Addr,
    /// Source mask (0.0.0.0 = any source).
    pub source_mask: Ipv4Addr,
    /// Destination address.
    pub destination: Ipv4Addr,
    /// Destination mask.
    pub destination_mask: Ipv4Addr,
    /// IP protocol number; 0 = any.
    pub protocol: u8,
    /// What to do with a match.
    pub action: FilterAction,
    /// Destination port for TCP/UDP; 0 = any.
    pub port: u16,
}

impl FilterRule {
    /// Wire size of one entry.
    pub const LEN: usize = 20;

    /// Parses a whole Vendor-NVSE-Value of rules.
    ///
    /// # Errors
    /// [`Error::BadLength`] when the data end inside an entry.
    pub fn parse_all(data: &[u8]) -> Result<Vec<FilterRule>> {
        if data.len() % Self::LEN != 0 {
            return Err(Error::BadLength);
        }
        data.chunks_exact(Self::LEN)
            .map(|c| {
                Ok(FilterRule {
                    source: addr_at(c, 0)?,
                    source_mask: addr_at(c, 4)?,
                    destination: addr_at(c, 8)?,
                    destination_mask: addr_at(c, 12)?,
                    protocol: c[16],
                    action: FilterAction::from(c[17]),
                    port: u16::from_be_bytes([c[18], c[19]]),
                })
            })
            .collect()
    }

    /// Encodes rules as a Vendor-NVSE-Value.
    pub fn emit_all(rules: &[FilterRule]) -> Vec<u8> {
        let mut v = Vec::with_capacity(rules.len() * Self::LEN);
        for r in rules {
            for a in [r.source, r.source_mask, r.destination, r.destination_mask] {
                v.extend_from_slice(&a.octets());
            }
            v.push(r.protocol);
            v.push(u8::from(r.action));
            v.extend_from_slice(&r.port.to_be_bytes());
        }
        v
    }
}

/// A haven vendor payload, decoded.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum VendorPayload {
    /// Static routes for the mobile node.
    StaticRoutes(Vec<StaticRoute>),
    /// Filter rules for the mobile node.
    FilterRules(Vec<FilterRule>),
}

impl VendorPayload {
    /// Decodes the payload of a vendor extension; `Ok(None)` when it is
    /// another vendor's or an unknown haven type (a skippable NVSE is then
    /// ignored, [RFC 3115 § 4]).
    ///
    /// # Errors
    /// [`Error::BadLength`] on a partial entry.
    pub fn parse(ext: &VendorExt<'_>) -> Result<Option<Self>> {
        if ext.vendor_id != ENTERPRISE_NUMBER {
            return Ok(None);
        }
        match VendorType::from(ext.vendor_type) {
            VendorType::StaticRoutes => {
                StaticRoute::parse_all(ext.data).map(|r| Some(VendorPayload::StaticRoutes(r)))
            }
            VendorType::FilterRules => {
                FilterRule::parse_all(ext.data).map(|r| Some(VendorPayload::FilterRules(r)))
            }
            VendorType::Unknown(_) => Ok(None),
        }
    }

    /// The Vendor-NVSE-Type of this payload.
    pub fn vendor_type(&self) -> VendorType {
        match self {
            VendorPayload::StaticRoutes(_) => VendorType::StaticRoutes,
            VendorPayload::FilterRules(_) => VendorType::FilterRules,
        }
    }

    /// The Vendor-NVSE-Value bytes.
    pub fn to_data(&self) -> Vec<u8> {
        match self {
            VendorPayload::StaticRoutes(r) => StaticRoute::emit_all(r),
            VendorPayload::FilterRules(r) => FilterRule::emit_all(r),
        }
    }

    /// An NVSE extension view over `data` (from [`to_data`](Self::to_data))
    /// ready for `MessageBuilder::push`.
    ///
    /// # Errors
    /// [`Error::BadLength`] when `data` exceeds [`MAX_NVSE_DATA`].
    pub fn nvse<'a>(&self, data: &'a [u8]) -> Result<Extension<'a>> {
        if data.len() > MAX_NVSE_DATA {
            return Err(Error::BadLength);
        }
        Ok(Extension::Nvse(VendorExt {
            vendor_id: ENTERPRISE_NUMBER,
            vendor_type: u16::from(self.vendor_type()),
            data,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hex_literal::hex;
    use proptest::prelude::*;

    fn routes() -> Vec<StaticRoute> {
        vec![
            StaticRoute {
                destination: Ipv4Addr::new(198, 51, 100, 0),
                netmask: Ipv4Addr::new(255, 255, 255, 0),
                gateway: Ipv4Addr::new(203, 0, 113, 1),
            },
            StaticRoute {
                destination: Ipv4Addr::new(192, 0, 2, 0),
                netmask: Ipv4Addr::new(255, 255, 255, 128),
                gateway: Ipv4Addr::new(198, 18, 0, 1),
            },
        ]
    }

    const ROUTES: [u8; 24] = hex!("c6336400 ffffff00 cb007101 c0000200 ffffff80 c6120001");

    fn rule() -> FilterRule {
        FilterRule {
            source: Ipv4Addr::new(192, 0, 2, 10),
            source_mask: Ipv4Addr::new(255, 255, 255, 255),
            destination: Ipv4Addr::new(198, 51, 100, 0),
            destination_mask: Ipv4Addr::new(255, 255, 255, 0),
            protocol: 6,
            action: FilterAction::AcceptAndLog,
            port: 80,
        }
    }

    const RULE: [u8; 20] = hex!("c000020a ffffffff c6336400 ffffff00 06 02 0050");

    #[test]
    fn static_route_vectors() {
        assert_eq!(StaticRoute::emit_all(&routes()), ROUTES);
        assert_eq!(StaticRoute::parse_all(&ROUTES).unwrap(), routes());
        for n in 1..ROUTES.len() {
            let r = StaticRoute::parse_all(&ROUTES[..n]);
            assert_eq!(r.is_err(), n % 12 != 0, "{n}");
        }
        assert_eq!(StaticRoute::parse_all(&ROUTES[..13]), Err(Error::BadLength));
        assert_eq!(StaticRoute::parse_all(&[]), Ok(vec![]));
    }

    #[test]
    fn filter_rule_vectors() {
        assert_eq!(FilterRule::emit_all(&[rule()]), RULE);
        assert_eq!(FilterRule::parse_all(&RULE).unwrap(), vec![rule()]);
        for n in 1..RULE.len() {
            assert_eq!(FilterRule::parse_all(&RULE[..n]), Err(Error::BadLength));
        }
    }

    #[test]
    fn nvse_round_trip() {
        let p = VendorPayload::StaticRoutes(routes());
        let data = p.to_data();
        let ext = p.nvse(&data).unwrap();
        let mut buf = vec![0u8; ext.buffer_len()];
        ext.emit(&mut buf).unwrap();
        // [RFC 3115 § 4]: 134, length 32, reserved, vendor 32473 (0x7ed9), type 1.
        assert_eq!(&buf[..10], &hex!("86 20 0000 00007ed9 0001"));
        assert_eq!(&buf[10..], &ROUTES);
        let (parsed, _) = Extension::parse(&buf).unwrap();
        let Extension::Nvse(v) = parsed else {
            panic!("not an NVSE: {parsed:?}")
        };
        assert_eq!(VendorPayload::parse(&v), Ok(Some(p)));
        let other = VendorExt {
            vendor_id: 9,
            vendor_type: 1,
            data: &ROUTES,
        };
        assert_eq!(VendorPayload::parse(&other), Ok(None));
        let unknown = VendorExt {
            vendor_id: ENTERPRISE_NUMBER,
            vendor_type: 9,
            data: &[],
        };
        assert_eq!(VendorPayload::parse(&unknown), Ok(None));
        let too_many = VendorPayload::FilterRules(vec![rule(); 13]);
        assert_eq!(too_many.nvse(&too_many.to_data()), Err(Error::BadLength));
        let most = VendorPayload::FilterRules(vec![rule(); 12]);
        assert!(most.nvse(&most.to_data()).is_ok());
    }

    proptest! {
        #[test]
        fn rules_round_trip(raw in proptest::collection::vec(any::<[u8; 20]>(), 0..12)) {
            let data: Vec<u8> = raw.concat();
            let rules = FilterRule::parse_all(&data).unwrap();
            prop_assert_eq!(FilterRule::emit_all(&rules), data);
        }

        #[test]
        fn routes_round_trip(raw in proptest::collection::vec(any::<[u8; 12]>(), 0..20)) {
            let data: Vec<u8> = raw.concat();
            let routes = StaticRoute::parse_all(&data).unwrap();
            prop_assert_eq!(StaticRoute::emit_all(&routes), data);
        }

        #[test]
        fn arbitrary_never_panics(d in proptest::collection::vec(any::<u8>(), 0..80), t: u16) {
            let _ = VendorPayload::parse(&VendorExt { vendor_id: ENTERPRISE_NUMBER, vendor_type: t, data: &d });
        }
    }
}

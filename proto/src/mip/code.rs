//! Registration Reply codes (RFC 5944 §3.4, RFC 3024 §4, RFC 3115 §5,
//! RFC 3519 §3.4, RFC 2794) and the single place where a decode error becomes
//! a code (STYLE.md §2).

use crate::Error;

/// The Code field of a Registration Reply (RFC 5944 §3.4).
///
/// Only the codes a home agent sends or a mobile node must understand are
/// named; anything else round-trips through [`ReplyCode::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ReplyCode {
    /// 0: registration accepted.
    Accepted,
    /// 1: accepted, but simultaneous mobility bindings unsupported.
    AcceptedNoSimultaneous,
    /// 128: reason unspecified.
    ReasonUnspecified,
    /// 129: administratively prohibited.
    AdministrativelyProhibited,
    /// 130: insufficient resources (e.g. the home address pool is empty).
    InsufficientResources,
    /// 131: mobile node failed authentication.
    MobileNodeFailedAuthentication,
    /// 132: foreign agent failed authentication.
    ForeignAgentFailedAuthentication,
    /// 133: registration Identification mismatch (RFC 5944 §5.7).
    IdentificationMismatch,
    /// 134: poorly formed Request.
    PoorlyFormedRequest,
    /// 135: too many simultaneous mobility bindings.
    TooManySimultaneousBindings,
    /// 136: unknown home agent address.
    UnknownHomeAgentAddress,
    /// 137: requested reverse tunnel unavailable (RFC 3024 §4.2.3).
    ReverseTunnelUnavailable,
    /// 138: reverse tunnel is mandatory and 'T' bit not set (RFC 3024).
    ReverseTunnelMandatory,
    /// 139: requested encapsulation unavailable (RFC 3024).
    EncapsulationUnavailable,
    /// 140: unsupported Vendor-ID or unable to interpret Vendor-CVSE-Type in
    /// the CVSE sent by the mobile node (RFC 3115 §5).
    UnsupportedVendorMn,
    /// 141: the same, in the CVSE sent by the foreign agent (RFC 3115 §5).
    UnsupportedVendorFa,
    /// 142: UDP encapsulation unavailable (RFC 3519 §3.4).
    UdpEncapsulationUnavailable,
    /// Any other value, kept as received.
    Other(u8),
}

impl ReplyCode {
    /// Whether the code acknowledges the registration (0 or 1).
    pub fn is_accepted(self) -> bool {
        matches!(
            self,
            ReplyCode::Accepted | ReplyCode::AcceptedNoSimultaneous
        )
    }
}

impl From<u8> for ReplyCode {
    fn from(v: u8) -> Self {
        use ReplyCode::*;
        match v {
            0 => Accepted,
            1 => AcceptedNoSimultaneous,
            128 => ReasonUnspecified,
            129 => AdministrativelyProhibited,
            130 => InsufficientResources,
            131 => MobileNodeFailedAuthentication,
            132 => ForeignAgentFailedAuthentication,
            133 => IdentificationMismatch,
            134 => PoorlyFormedRequest,
            135 => TooManySimultaneousBindings,
            136 => UnknownHomeAgentAddress,
            137 => ReverseTunnelUnavailable,
            138 => ReverseTunnelMandatory,
            139 => EncapsulationUnavailable,
            140 => UnsupportedVendorMn,
            141 => UnsupportedVendorFa,
            142 => UdpEncapsulationUnavailable,
            other => Other(other),
        }
    }
}

impl From<ReplyCode> for u8 {
    fn from(c: ReplyCode) -> u8 {
        use ReplyCode::*;
        match c {
            Accepted => 0,
            AcceptedNoSimultaneous => 1,
            ReasonUnspecified => 128,
            AdministrativelyProhibited => 129,
            InsufficientResources => 130,
            MobileNodeFailedAuthentication => 131,
            ForeignAgentFailedAuthentication => 132,
            IdentificationMismatch => 133,
            PoorlyFormedRequest => 134,
            TooManySimultaneousBindings => 135,
            UnknownHomeAgentAddress => 136,
            ReverseTunnelUnavailable => 137,
            ReverseTunnelMandatory => 138,
            EncapsulationUnavailable => 139,
            UnsupportedVendorMn => 140,
            UnsupportedVendorFa => 141,
            UdpEncapsulationUnavailable => 142,
            Other(v) => v,
        }
    }
}

/// The one mapping from a decode or check failure to the code a home agent
/// answers with (RFC 5944 §3.8.2.1): anything the parser rejects is a poorly
/// formed request (134), a failed authenticator is 131, a replayed or stale
/// identification is 133.
impl From<Error> for ReplyCode {
    fn from(e: Error) -> Self {
        match e {
            Error::Authentication => ReplyCode::MobileNodeFailedAuthentication,
            Error::IdentificationMismatch | Error::Replay => ReplyCode::IdentificationMismatch,
            Error::Truncated
            | Error::BadLength
            | Error::UnexpectedType(_)
            | Error::UnknownNonSkippable(_)
            | Error::Malformed(_)
            | Error::Unsupported(_)
            | Error::Checksum => ReplyCode::PoorlyFormedRequest,
        }
    }
}

impl core::fmt::Display for ReplyCode {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}", u8::from(*self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_octet_round_trips() {
        for v in 0..=255u8 {
            assert_eq!(u8::from(ReplyCode::from(v)), v);
        }
    }

    #[test]
    fn decode_errors_map_to_rfc_codes() {
        // RFC 5944 §3.8.2.1: poorly formed 134, authentication 131, replay 133.
        assert_eq!(u8::from(ReplyCode::from(Error::Truncated)), 134);
        assert_eq!(
            u8::from(ReplyCode::from(Error::UnknownNonSkippable(7))),
            134
        );
        assert_eq!(u8::from(ReplyCode::from(Error::Authentication)), 131);
        assert_eq!(
            u8::from(ReplyCode::from(Error::IdentificationMismatch)),
            133
        );
        assert!(ReplyCode::from(1).is_accepted());
        assert!(!ReplyCode::from(128).is_accepted());
    }
}

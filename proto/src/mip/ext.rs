//! Registration extensions: the framework and every extension haven reads
//! or writes ([RFC 5944 § 1.9], § 3.5).
//!
//! * [`ExtensionType`] carries the § 1.9 rule: an unknown type 0–127 makes
//!   the whole message be discarded ([`Error::UnknownNonSkippable`], reply
//!   code 134); an unknown 128–255 is skipped (kept as
//!   [`Extension::Unknown`]).
//! * Two encodings: the short one (type u8, length u8, data) and the long
//!   one with a 16-bit length of Generalized Authentication (36, RFC 3012
//!   § 5) and CVSE (38, RFC 3115 § 3).
//! * [`Extensions`] iterates an extension area; [`Extensions::located`]
//!   adds each extension's offset, which authenticators need.
//! * [`parse_request`] / [`parse_reply`] return the fixed part plus the
//!   extensions and enforce the ordering of [RFC 5944 § 3.6.1.3], so the
//!   engine knows which extensions the MN-HA authenticator covers.
//! * [`MessageBuilder`] writes a message and signs it (§ 3.5.1).
//!
//! [`Extension`] is both the parsed view and the thing to emit
//! ([`ExtensionRepr`]); it borrows its variable-length data.

use super::auth::{self, AUTHENTICATOR_LEN, Algorithm};
use super::registration::{
    REPLY_LEN, REQUEST_LEN, ReplyPacket, ReplyRepr, RequestPacket, RequestRepr,
};
use crate::{Error, Result};

/// An extension type octet, with the skip-or-discard rule of
/// [RFC 5944 § 1.9].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ExtensionType {
    /// 32: Mobile-Home Authentication [RFC 5944 § 3.5.2].
    MnHaAuth,
    /// 33: Mobile-Foreign Authentication [RFC 5944 § 3.5.3].
    MnFaAuth,
    /// 34: Foreign-Home Authentication [RFC 5944 § 3.5.4].
    FaHaAuth,
    /// 36: Generalized Mobile IP Authentication (long form) [RFC 3012 § 5].
    GeneralizedAuth,
    /// 38: Critical Vendor/Organization Specific (long form) [RFC 3115 § 3].
    Cvse,
    /// 44: UDP Tunnel Reply [RFC 3519 § 3.2].
    UdpTunnelReply,
    /// 131: Mobile Node NAI [RFC 2794 § 2].
    MnNai,
    /// 134: Normal Vendor/Organization Specific [RFC 3115 § 4].
    Nvse,
    /// 137: Registration Revocation Support [RFC 3543 § 3.2].
    RevocationSupport,
    /// 144: UDP Tunnel Request [RFC 3519 § 3.1].
    UdpTunnelRequest,
    /// Any other type, kept as received.
    Unknown(u8),
}

impl From<u8> for ExtensionType {
    fn from(v: u8) -> Self {
        use ExtensionType::*;
        match v {
            32 => MnHaAuth,
            33 => MnFaAuth,
            34 => FaHaAuth,
            36 => GeneralizedAuth,
            38 => Cvse,
            44 => UdpTunnelReply,
            131 => MnNai,
            134 => Nvse,
            137 => RevocationSupport,
            144 => UdpTunnelRequest,
            other => Unknown(other),
        }
    }
}

impl From<ExtensionType> for u8 {
    fn from(t: ExtensionType) -> u8 {
        use ExtensionType::*;
        match t {
            MnHaAuth => 32,
            MnFaAuth => 33,
            FaHaAuth => 34,
            GeneralizedAuth => 36,
            Cvse => 38,
            UdpTunnelReply => 44,
            MnNai => 131,
            Nvse => 134,
            RevocationSupport => 137,
            UdpTunnelRequest => 144,
            Unknown(v) => v,
        }
    }
}

impl ExtensionType {
    /// Whether a receiver that does not know this type may skip it:
    /// types 128–255 may, 0–127 may not [RFC 5944 § 1.9].
    pub fn skippable(self) -> bool {
        u8::from(self) >= 128
    }

    /// Whether the type uses the long encoding with a 16-bit length at
    /// octets 2–3 (RFC 3012 § 5, RFC 3115 § 3).
    pub fn is_long(self) -> bool {
        matches!(self, ExtensionType::GeneralizedAuth | ExtensionType::Cvse)
    }

    /// Whether this implementation parses the type.
    pub fn is_known(self) -> bool {
        !matches!(self, ExtensionType::Unknown(_))
    }

    /// Header length: 2 for the short form, 4 for the long form.
    pub fn header_len(self) -> usize {
        if self.is_long() { 4 } else { 2 }
    }
}

/// Subtype of a Generalized Authentication extension [RFC 3012 § 5].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GenAuthSubtype {
    /// 1: MN-AAA authentication.
    MnAaa,
    /// Any other subtype.
    Unknown(u8),
}

impl From<u8> for GenAuthSubtype {
    fn from(v: u8) -> Self {
        match v {
            1 => GenAuthSubtype::MnAaa,
            o => GenAuthSubtype::Unknown(o),
        }
    }
}

impl From<GenAuthSubtype> for u8 {
    fn from(s: GenAuthSubtype) -> u8 {
        match s {
            GenAuthSubtype::MnAaa => 1,
            GenAuthSubtype::Unknown(o) => o,
        }
    }
}

/// Encapsulation requested in a UDP Tunnel Request [RFC 3519 § 3.1]: the
/// IP protocol number of the header that follows the tunnel header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encapsulation {
    /// 4: IP in IP (RFC 2003).
    IpInIp,
    /// 47: GRE (RFC 2784).
    Gre,
    /// 55: minimal encapsulation (RFC 2004).
    Minimal,
    /// Any other value.
    Unknown(u8),
}

impl From<u8> for Encapsulation {
    fn from(v: u8) -> Self {
        match v {
            4 => Encapsulation::IpInIp,
            47 => Encapsulation::Gre,
            55 => Encapsulation::Minimal,
            o => Encapsulation::Unknown(o),
        }
    }
}

impl From<Encapsulation> for u8 {
    fn from(e: Encapsulation) -> u8 {
        match e {
            Encapsulation::IpInIp => 4,
            Encapsulation::Gre => 47,
            Encapsulation::Minimal => 55,
            Encapsulation::Unknown(o) => o,
        }
    }
}

/// Reply code of a UDP Tunnel Reply [RFC 3519 § 3.2].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TunnelReplyCode {
    /// 0: will do tunnelling.
    Accepted,
    /// 64: tunnelling declined, reason unspecified.
    Declined,
    /// Any other value.
    Unknown(u8),
}

impl From<u8> for TunnelReplyCode {
    fn from(v: u8) -> Self {
        match v {
            0 => TunnelReplyCode::Accepted,
            64 => TunnelReplyCode::Declined,
            o => TunnelReplyCode::Unknown(o),
        }
    }
}

impl From<TunnelReplyCode> for u8 {
    fn from(c: TunnelReplyCode) -> u8 {
        match c {
            TunnelReplyCode::Accepted => 0,
            TunnelReplyCode::Declined => 64,
            TunnelReplyCode::Unknown(o) => o,
        }
    }
}

/// An MN-HA, MN-FA or FA-HA authentication extension body
/// [RFC 5944 § 3.5.2–3.5.4]: SPI then authenticator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AuthExt<'a> {
    /// Security Parameter Index.
    pub spi: u32,
    /// Authenticator (16 bytes for HMAC-MD5 and prefix+suffix MD5).
    pub authenticator: &'a [u8],
}

/// A Generalized Authentication extension [RFC 3012 § 5].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GenAuthExt<'a> {
    /// Subtype (1 = MN-AAA).
    pub subtype: GenAuthSubtype,
    /// Security Parameter Index.
    pub spi: u32,
    /// Authenticator.
    pub authenticator: &'a [u8],
}

/// A UDP Tunnel Request extension [RFC 3519 § 3.1].
///
/// Layout after type and length (length 6): sub-type (0), reserved, flags
/// (F 0x80, R 0x40), encapsulation, 2 reserved octets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UdpTunnelRequest {
    /// F: force UDP tunnelling even without a NAT detected.
    pub force: bool,
    /// R: the mobile node registers through a foreign agent (FA-reg).
    pub registration_via_fa: bool,
    /// The encapsulation inside the UDP tunnel.
    pub encapsulation: Encapsulation,
}

/// A UDP Tunnel Reply extension [RFC 3519 § 3.2].
///
/// Layout after type and length (length 6): sub-type (0), reply code,
/// 16-bit flags (F 0x8000), keepalive interval u16 (seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UdpTunnelReply {
    /// Whether the home agent will tunnel.
    pub code: TunnelReplyCode,
    /// F: tunnelling forced (echoes the request's F).
    pub force: bool,
    /// Keepalive interval in seconds.
    pub keepalive_interval: u16,
}

/// A Registration Revocation Support extension [RFC 3543 § 3.2].
///
/// Layout after type and length (length 6): 16-bit flags (I 0x8000), then
/// the timestamp u32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RevocationSupport {
    /// I: the mobile node may be informed of a revocation.
    pub inform: bool,
    /// Revocation timestamp of the sender.
    pub timestamp: u32,
}

/// A vendor-specific extension body, NVSE or CVSE [RFC 3115 § 3–4].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VendorExt<'a> {
    /// Vendor/Org-ID: high octet 0, then the SMI enterprise number.
    pub vendor_id: u32,
    /// Vendor-NVSE-Type or Vendor-CVSE-Type.
    pub vendor_type: u16,
    /// Vendor-NVSE-Value / Vendor-CVSE-Value.
    pub data: &'a [u8],
}

/// One registration extension, parsed or to be emitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Extension<'a> {
    /// 32: MN-HA authentication.
    MnHaAuth(AuthExt<'a>),
    /// 33: MN-FA authentication.
    MnFaAuth(AuthExt<'a>),
    /// 34: FA-HA authentication.
    FaHaAuth(AuthExt<'a>),
    /// 36: Generalized authentication (MN-AAA and others).
    GeneralizedAuth(GenAuthExt<'a>),
    /// 131: the mobile node's NAI (non-empty) [RFC 2794 § 2].
    MnNai(&'a [u8]),
    /// 144: UDP Tunnel Request.
    UdpTunnelRequest(UdpTunnelRequest),
    /// 44: UDP Tunnel Reply.
    UdpTunnelReply(UdpTunnelReply),
    /// 137: Revocation Support.
    RevocationSupport(RevocationSupport),
    /// 134: Normal vendor-specific extension.
    Nvse(VendorExt<'a>),
    /// 38: Critical vendor-specific extension (long form).
    Cvse(VendorExt<'a>),
    /// A skippable type this implementation does not read, kept as
    /// received (short form). Emitting one with a known type is refused.
    Unknown {
        /// Type octet.
        ty: u8,
        /// Data after the length octet.
        data: &'a [u8],
    },
}

/// What to emit: the same type as what was parsed.
pub type ExtensionRepr<'a> = Extension<'a>;

fn be16(b: &[u8], at: usize) -> Result<u16> {
    match b.get(at..at + 2) {
        Some(s) => Ok(u16::from_be_bytes([s[0], s[1]])),
        None => Err(Error::BadLength),
    }
}

fn be32(b: &[u8], at: usize) -> Result<u32> {
    match b.get(at..at + 4) {
        Some(s) => Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]])),
        None => Err(Error::BadLength),
    }
}

fn parse_auth(body: &[u8]) -> Result<AuthExt<'_>> {
    // [RFC 5944 § 3.5.2]: Length is 4 plus the authenticator length.
    let spi = be32(body, 0)?;
    Ok(AuthExt {
        spi,
        authenticator: body.get(4..).unwrap_or_default(),
    })
}

fn parse_vendor(body: &[u8]) -> Result<VendorExt<'_>> {
    Ok(VendorExt {
        vendor_id: be32(body, 0)?,
        vendor_type: be16(body, 4)?,
        data: body.get(6..).unwrap_or_default(),
    })
}

fn fixed_body(body: &[u8], len: usize) -> Result<&[u8]> {
    if body.len() == len {
        Ok(body)
    } else {
        Err(Error::BadLength)
    }
}

impl<'a> Extension<'a> {
    /// The type of this extension.
    pub fn ty(&self) -> ExtensionType {
        use ExtensionType as T;
        match self {
            Extension::MnHaAuth(_) => T::MnHaAuth,
            Extension::MnFaAuth(_) => T::MnFaAuth,
            Extension::FaHaAuth(_) => T::FaHaAuth,
            Extension::GeneralizedAuth(_) => T::GeneralizedAuth,
            Extension::MnNai(_) => T::MnNai,
            Extension::UdpTunnelRequest(_) => T::UdpTunnelRequest,
            Extension::UdpTunnelReply(_) => T::UdpTunnelReply,
            Extension::RevocationSupport(_) => T::RevocationSupport,
            Extension::Nvse(_) => T::Nvse,
            Extension::Cvse(_) => T::Cvse,
            Extension::Unknown { ty, .. } => T::from(*ty),
        }
    }

    /// Parses one extension at the start of `bytes`; returns it and the
    /// number of bytes it occupies.
    ///
    /// # Errors
    /// [`Error::UnknownNonSkippable`] for an unknown type below 128
    /// (§ 1.9), [`Error::Truncated`] when the buffer ends inside the
    /// extension, [`Error::BadLength`] or [`Error::Malformed`] for a body
    /// that does not fit its type.
    pub fn parse(bytes: &'a [u8]) -> Result<(Self, usize)> {
        let raw = *bytes.first().ok_or(Error::Truncated)?;
        let ty = ExtensionType::from(raw);
        if !ty.is_known() && !ty.skippable() {
            // [RFC 5944 § 1.9]: discard the whole message.
            return Err(Error::UnknownNonSkippable(raw));
        }
        let hdr = ty.header_len();
        let header = bytes.get(..hdr).ok_or(Error::Truncated)?;
        let len = if ty.is_long() {
            usize::from(u16::from_be_bytes([header[2], header[3]]))
        } else {
            usize::from(header[1])
        };
        let total = hdr + len;
        let body = bytes.get(hdr..total).ok_or(Error::Truncated)?;
        let ext = match ty {
            ExtensionType::MnHaAuth => Extension::MnHaAuth(parse_auth(body)?),
            ExtensionType::MnFaAuth => Extension::MnFaAuth(parse_auth(body)?),
            ExtensionType::FaHaAuth => Extension::FaHaAuth(parse_auth(body)?),
            ExtensionType::GeneralizedAuth => {
                let a = parse_auth(body)?;
                Extension::GeneralizedAuth(GenAuthExt {
                    subtype: GenAuthSubtype::from(header[1]),
                    spi: a.spi,
                    authenticator: a.authenticator,
                })
            }
            ExtensionType::MnNai => {
                // [RFC 2794 § 2]: the NAI is not empty.
                if body.is_empty() {
                    return Err(Error::BadLength);
                }
                Extension::MnNai(body)
            }
            ExtensionType::UdpTunnelRequest => {
                let b = fixed_body(body, 6)?;
                if b[0] != 0 {
                    return Err(Error::Malformed("UDP Tunnel Request sub-type is not 0"));
                }
                Extension::UdpTunnelRequest(UdpTunnelRequest {
                    force: b[2] & 0x80 != 0,
                    registration_via_fa: b[2] & 0x40 != 0,
                    encapsulation: Encapsulation::from(b[3]),
                })
            }
            ExtensionType::UdpTunnelReply => {
                let b = fixed_body(body, 6)?;
                if b[0] != 0 {
                    return Err(Error::Malformed("UDP Tunnel Reply sub-type is not 0"));
                }
                Extension::UdpTunnelReply(UdpTunnelReply {
                    code: TunnelReplyCode::from(b[1]),
                    force: b[2] & 0x80 != 0,
                    keepalive_interval: be16(b, 4)?,
                })
            }
            ExtensionType::RevocationSupport => {
                let b = fixed_body(body, 6)?;
                Extension::RevocationSupport(RevocationSupport {
                    inform: b[0] & 0x80 != 0,
                    timestamp: be32(b, 2)?,
                })
            }
            // [RFC 3115 § 4]: 2 reserved octets precede the Vendor/Org-ID.
            ExtensionType::Nvse => {
                Extension::Nvse(parse_vendor(body.get(2..).ok_or(Error::BadLength)?)?)
            }
            ExtensionType::Cvse => Extension::Cvse(parse_vendor(body)?),
            ExtensionType::Unknown(ty) => Extension::Unknown { ty, data: body },
        };
        Ok((ext, total))
    }

    fn body_len(&self) -> usize {
        match self {
            Extension::MnHaAuth(a) | Extension::MnFaAuth(a) | Extension::FaHaAuth(a) => {
                4 + a.authenticator.len()
            }
            Extension::GeneralizedAuth(g) => 4 + g.authenticator.len(),
            Extension::MnNai(n) => n.len(),
            Extension::UdpTunnelRequest(_)
            | Extension::UdpTunnelReply(_)
            | Extension::RevocationSupport(_) => 6,
            Extension::Nvse(v) => 8 + v.data.len(),
            Extension::Cvse(v) => 6 + v.data.len(),
            Extension::Unknown { data, .. } => data.len(),
        }
    }

    /// The number of bytes [`emit`](Self::emit) writes.
    pub fn buffer_len(&self) -> usize {
        self.ty().header_len() + self.body_len()
    }

    /// Writes the extension at the start of `buf`; returns the bytes written.
    ///
    /// # Errors
    /// [`Error::Truncated`] when `buf` is shorter than
    /// [`buffer_len`](Self::buffer_len), [`Error::BadLength`] when the data
    /// do not fit the length field (or an NAI is empty),
    /// [`Error::Malformed`] for an `Unknown` carrying a known type.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize> {
        let ty = self.ty();
        if let Extension::Unknown { ty: raw, .. } = self {
            if ExtensionType::from(*raw).is_known() {
                return Err(Error::Malformed("Unknown extension with a known type"));
            }
        }
        if matches!(self, Extension::MnNai(n) if n.is_empty()) {
            return Err(Error::BadLength);
        }
        let body_len = self.body_len();
        let max = if ty.is_long() {
            usize::from(u16::MAX)
        } else {
            usize::from(u8::MAX)
        };
        if body_len > max {
            return Err(Error::BadLength);
        }
        let total = self.buffer_len();
        let out = buf.get_mut(..total).ok_or(Error::Truncated)?;
        out.fill(0);
        out[0] = u8::from(ty);
        let hdr = ty.header_len();
        if ty.is_long() {
            out[2..4].copy_from_slice(&(body_len as u16).to_be_bytes());
        } else {
            out[1] = body_len as u8;
        }
        let body = &mut out[hdr..];
        match self {
            Extension::MnHaAuth(a) | Extension::MnFaAuth(a) | Extension::FaHaAuth(a) => {
                body[..4].copy_from_slice(&a.spi.to_be_bytes());
                body[4..].copy_from_slice(a.authenticator);
            }
            Extension::GeneralizedAuth(g) => {
                out[1] = u8::from(g.subtype);
                let body = &mut out[hdr..];
                body[..4].copy_from_slice(&g.spi.to_be_bytes());
                body[4..].copy_from_slice(g.authenticator);
            }
            Extension::MnNai(n) => body.copy_from_slice(n),
            Extension::UdpTunnelRequest(r) => {
                body[2] =
                    if r.force { 0x80 } else { 0 } | if r.registration_via_fa { 0x40 } else { 0 };
                body[3] = u8::from(r.encapsulation);
            }
            Extension::UdpTunnelReply(r) => {
                body[1] = u8::from(r.code);
                body[2] = if r.force { 0x80 } else { 0 };
                body[4..6].copy_from_slice(&r.keepalive_interval.to_be_bytes());
            }
            Extension::RevocationSupport(r) => {
                body[0] = if r.inform { 0x80 } else { 0 };
                body[2..6].copy_from_slice(&r.timestamp.to_be_bytes());
            }
            Extension::Nvse(v) => emit_vendor(v, &mut body[2..]),
            Extension::Cvse(v) => emit_vendor(v, body),
            Extension::Unknown { data, .. } => body.copy_from_slice(data),
        }
        Ok(total)
    }
}

fn emit_vendor(v: &VendorExt<'_>, body: &mut [u8]) {
    body[..4].copy_from_slice(&v.vendor_id.to_be_bytes());
    body[4..6].copy_from_slice(&v.vendor_type.to_be_bytes());
    body[6..].copy_from_slice(v.data);
}

/// An extension with its place in the extension area.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Located<'a> {
    /// Offset of the type octet from the start of the extension area.
    pub offset: usize,
    /// Bytes the extension occupies, header included.
    pub len: usize,
    /// The extension.
    pub extension: Extension<'a>,
}

/// Iterates the extensions of an extension area; stops after the first
/// error (the rest of the area cannot be framed).
#[derive(Debug, Clone)]
pub struct Extensions<'a> {
    bytes: &'a [u8],
    offset: usize,
    failed: bool,
}

impl<'a> Extensions<'a> {
    /// Iterates `area`, the bytes after a message's fixed part.
    pub fn new(area: &'a [u8]) -> Self {
        Extensions {
            bytes: area,
            offset: 0,
            failed: false,
        }
    }

    /// The same iteration, each extension with its offset and length.
    pub fn located(self) -> LocatedExtensions<'a> {
        LocatedExtensions(self)
    }

    fn next_located(&mut self) -> Option<Result<Located<'a>>> {
        if self.failed {
            return None;
        }
        let rest = self.bytes.get(self.offset..).filter(|r| !r.is_empty())?;
        match Extension::parse(rest) {
            Ok((extension, len)) => {
                let l = Located {
                    offset: self.offset,
                    len,
                    extension,
                };
                self.offset += len;
                Some(Ok(l))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

impl<'a> Iterator for Extensions<'a> {
    type Item = Result<Extension<'a>>;
    fn next(&mut self) -> Option<Self::Item> {
        self.next_located().map(|r| r.map(|l| l.extension))
    }
}

/// [`Extensions`] yielding [`Located`] items.
#[derive(Debug, Clone)]
pub struct LocatedExtensions<'a>(Extensions<'a>);

impl<'a> Iterator for LocatedExtensions<'a> {
    type Item = Result<Located<'a>>;
    fn next(&mut self) -> Option<Self::Item> {
        self.0.next_located()
    }
}

/// Records the index of an extension that may appear once.
fn record_once(slot: &mut Option<usize>, i: usize, what: &'static str) -> Result<()> {
    match slot.replace(i) {
        Some(_) => Err(Error::Malformed(what)),
        None => Ok(()),
    }
}

/// A whole registration message: the fixed part, then every extension in
/// order, with the authentication extensions located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedMessage<'a, R> {
    /// The fixed part.
    pub fixed: R,
    /// The extensions, in order, offsets relative to the extension area.
    pub extensions: Vec<Located<'a>>,
    /// Index in `extensions` of the authorization-enabling extension:
    /// MN-HA (32) or a Generalized MN-AAA (36/1) [RFC 5944 § 3.6.1.3].
    pub authorization: Option<usize>,
    /// Index in `extensions` of the FA-HA authentication extension.
    pub fa_ha: Option<usize>,
}

/// A parsed Registration Request.
pub type ParsedRequest<'a> = ParsedMessage<'a, RequestRepr>;
/// A parsed Registration Reply.
pub type ParsedReply<'a> = ParsedMessage<'a, ReplyRepr>;

impl<'a, R> ParsedMessage<'a, R> {
    fn build(fixed: R, area: &'a [u8]) -> Result<Self> {
        let extensions = Extensions::new(area)
            .located()
            .collect::<Result<Vec<_>>>()?;
        let mut authorization = None;
        let mut mn_fa = None;
        let mut fa_ha = None;
        for (i, l) in extensions.iter().enumerate() {
            match l.extension {
                Extension::MnHaAuth(_)
                | Extension::GeneralizedAuth(GenAuthExt {
                    subtype: GenAuthSubtype::MnAaa,
                    ..
                }) => record_once(
                    &mut authorization,
                    i,
                    "more than one authorization-enabling extension",
                )?,
                Extension::MnFaAuth(_) => record_once(
                    &mut mn_fa,
                    i,
                    "more than one MN-FA authentication extension",
                )?,
                Extension::FaHaAuth(_) => record_once(
                    &mut fa_ha,
                    i,
                    "more than one FA-HA authentication extension",
                )?,
                _ => {}
            }
        }
        if let Some(a) = authorization {
            // [RFC 5944 § 3.6.1.3]: MN-FA and FA-HA come after the
            // authorization-enabling extension, never inside what it covers.
            if mn_fa.is_some_and(|m| m < a) {
                return Err(Error::Malformed("MN-FA authentication before MN-HA"));
            }
            if fa_ha.is_some_and(|f| f < a) {
                return Err(Error::Malformed("FA-HA authentication before MN-HA"));
            }
            // [RFC 2794 § 2]: the NAI precedes the authentication extensions.
            if extensions
                .iter()
                .skip(a)
                .any(|l| matches!(l.extension, Extension::MnNai(_)))
            {
                return Err(Error::Malformed("MN-NAI after the MN-HA authentication"));
            }
        }
        Ok(ParsedMessage {
            fixed,
            extensions,
            authorization,
            fa_ha,
        })
    }

    /// The MN-HA authentication extension, if present.
    pub fn mn_ha(&self) -> Option<&AuthExt<'a>> {
        match &self.extensions.get(self.authorization?)?.extension {
            Extension::MnHaAuth(a) => Some(a),
            _ => None,
        }
    }

    /// The extensions the authorization-enabling authenticator protects:
    /// those before it [RFC 5944 § 3.5.1]. Empty when there is none.
    pub fn covered_by_authorization(&self) -> &[Located<'a>] {
        let end = self.authorization.unwrap_or(0);
        self.extensions.get(..end).unwrap_or_default()
    }

    /// Whether extension `index` is protected by the authorization-enabling
    /// authenticator. A home agent must ignore what is not (§ 3.6.1.3: what
    /// follows the MN-HA is meant for the foreign agent).
    pub fn is_covered(&self, index: usize) -> bool {
        self.authorization.is_some_and(|a| index < a)
    }

    /// The first extension of type `ty` protected by the authorization
    /// extension.
    pub fn covered(&self, ty: ExtensionType) -> Option<&Extension<'a>> {
        self.covered_by_authorization()
            .iter()
            .map(|l| &l.extension)
            .find(|e| e.ty() == ty)
    }
}

/// Parses a Registration Request and its extensions, enforcing the
/// extension order of [RFC 5944 § 3.6.1.3].
///
/// # Errors
/// Any framing error of the fixed part or an extension, or
/// [`Error::Malformed`] for an ordering violation.
pub fn parse_request(bytes: &[u8]) -> Result<ParsedRequest<'_>> {
    let p = RequestPacket::new_checked(bytes)?;
    let fixed = RequestRepr::parse(&p)?;
    ParsedMessage::build(fixed, bytes.get(REQUEST_LEN..).unwrap_or_default())
}

/// Parses a Registration Reply and its extensions (same rules).
///
/// # Errors
/// As [`parse_request`].
pub fn parse_reply(bytes: &[u8]) -> Result<ParsedReply<'_>> {
    let p = ReplyPacket::new_checked(bytes)?;
    let fixed = ReplyRepr::parse(&p)?;
    ParsedMessage::build(fixed, bytes.get(REPLY_LEN..).unwrap_or_default())
}

/// Which short-form authentication extension to append and sign.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthKind {
    /// 32: MN-HA.
    MnHa,
    /// 33: MN-FA.
    MnFa,
    /// 34: FA-HA.
    FaHa,
}

impl From<AuthKind> for ExtensionType {
    fn from(k: AuthKind) -> Self {
        match k {
            AuthKind::MnHa => ExtensionType::MnHaAuth,
            AuthKind::MnFa => ExtensionType::MnFaAuth,
            AuthKind::FaHa => ExtensionType::FaHaAuth,
        }
    }
}

/// Builds a registration message in an owned buffer: fixed part, then
/// extensions, then (optionally) a signed authentication extension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageBuilder {
    buf: Vec<u8>,
}

impl MessageBuilder {
    /// Starts a Registration Request.
    pub fn request(repr: &RequestRepr) -> Self {
        let mut buf = vec![0u8; repr.buffer_len()];
        repr.emit(&mut RequestPacket::new_unchecked(&mut buf[..]));
        MessageBuilder { buf }
    }

    /// Starts a Registration Reply.
    pub fn reply(repr: &ReplyRepr) -> Self {
        let mut buf = vec![0u8; repr.buffer_len()];
        repr.emit(&mut ReplyPacket::new_unchecked(&mut buf[..]));
        MessageBuilder { buf }
    }

    /// Appends an extension.
    ///
    /// # Errors
    /// As [`Extension::emit`]; the message is unchanged on error.
    pub fn push(&mut self, ext: &Extension<'_>) -> Result<&mut Self> {
        let start = self.buf.len();
        self.buf.resize(start + ext.buffer_len(), 0);
        match ext.emit(&mut self.buf[start..]) {
            Ok(_) => Ok(self),
            Err(e) => {
                self.buf.truncate(start);
                Err(e)
            }
        }
    }

    /// Appends an authentication extension of `kind` with a 16-byte
    /// authenticator computed over everything before it up to and including
    /// its SPI [RFC 5944 § 3.5.1].
    pub fn sign(&mut self, kind: AuthKind, spi: u32, alg: Algorithm, key: &[u8]) -> &mut Self {
        let start = self.buf.len();
        self.buf.push(u8::from(ExtensionType::from(kind)));
        self.buf.push((4 + AUTHENTICATOR_LEN) as u8);
        self.buf.extend_from_slice(&spi.to_be_bytes());
        let covered_end = self.buf.len();
        let mac = auth::compute(alg, key, &self.buf[..covered_end]);
        self.buf.extend_from_slice(&mac);
        debug_assert_eq!(self.buf.len(), start + 2 + 4 + AUTHENTICATOR_LEN);
        self
    }

    /// The bytes so far.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    /// The finished message.
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mip::registration::tests::{
        REPLY, REQUEST, arb_reply, arb_request, reply_repr, request_repr,
    };
    use hex_literal::hex;
    use proptest::prelude::*;

    fn one(bytes: &[u8]) -> Result<Extension<'_>> {
        Extension::parse(bytes).map(|(e, n)| {
            assert_eq!(n, bytes.len());
            e
        })
    }

    fn emit_vec(e: &Extension<'_>) -> Vec<u8> {
        let mut v = vec![0u8; e.buffer_len()];
        assert_eq!(e.emit(&mut v), Ok(v.len()));
        v
    }

    /// Every extension with its byte vector.
    fn vectors() -> Vec<(Extension<'static>, Vec<u8>)> {
        const AUTH: [u8; 16] = hex!("00112233445566778899aabbccddeeff");
        vec![
            // [RFC 5944 § 3.5.2]: type 32, length 20, SPI 0x100, 16-byte authenticator.
            (
                Extension::MnHaAuth(AuthExt {
                    spi: 0x100,
                    authenticator: &AUTH,
                }),
                hex!("20 14 00000100 00112233445566778899aabbccddeeff").to_vec(),
            ),
            (
                Extension::MnFaAuth(AuthExt {
                    spi: 7,
                    authenticator: &[],
                }),
                hex!("21 04 00000007").to_vec(),
            ),
            (
                Extension::FaHaAuth(AuthExt {
                    spi: 8,
                    authenticator: &[1, 2],
                }),
                hex!("22 06 00000008 0102").to_vec(),
            ),
            // [RFC 3012 § 5]: type 36, subtype 1, length u16, SPI, authenticator.
            (
                Extension::GeneralizedAuth(GenAuthExt {
                    subtype: GenAuthSubtype::MnAaa,
                    spi: 2,
                    authenticator: &[0xaa; 4],
                }),
                hex!("24 01 0008 00000002 aaaaaaaa").to_vec(),
            ),
            // [RFC 2794 § 2]: "mn@example.net".
            (
                Extension::MnNai(b"mn@example.net"),
                hex!("83 0e 6d6e406578616d706c652e6e6574").to_vec(),
            ),
            // [RFC 3519 § 3.1]: sub-type 0, reserved, F set, encapsulation 4, reserved.
            (
                Extension::UdpTunnelRequest(UdpTunnelRequest {
                    force: true,
                    registration_via_fa: false,
                    encapsulation: Encapsulation::IpInIp,
                }),
                hex!("90 06 00 00 80 04 0000").to_vec(),
            ),
            (
                Extension::UdpTunnelRequest(UdpTunnelRequest {
                    force: false,
                    registration_via_fa: true,
                    encapsulation: Encapsulation::Gre,
                }),
                hex!("90 06 00 00 40 2f 0000").to_vec(),
            ),
            // [RFC 3519 § 3.2]: sub-type 0, code 0, F, keepalive 110 s.
            (
                Extension::UdpTunnelReply(UdpTunnelReply {
                    code: TunnelReplyCode::Accepted,
                    force: true,
                    keepalive_interval: 110,
                }),
                hex!("2c 06 00 00 8000 006e").to_vec(),
            ),
            // [RFC 3543 § 3.2]: I bit, timestamp.
            (
                Extension::RevocationSupport(RevocationSupport {
                    inform: true,
                    timestamp: 0x01020304,
                }),
                hex!("89 06 8000 01020304").to_vec(),
            ),
            // [RFC 3115 § 4]: NVSE 134, length, reserved 2, vendor 32473, type 1, data.
            (
                Extension::Nvse(VendorExt {
                    vendor_id: 32473,
                    vendor_type: 1,
                    data: &[9, 9],
                }),
                hex!("86 0a 0000 00007ed9 0001 0909").to_vec(),
            ),
            // [RFC 3115 § 3]: CVSE 38, reserved, length u16, vendor, type, data.
            (
                Extension::Cvse(VendorExt {
                    vendor_id: 32473,
                    vendor_type: 2,
                    data: &[],
                }),
                hex!("26 00 0006 00007ed9 0002").to_vec(),
            ),
            (
                Extension::Unknown {
                    ty: 200,
                    data: &[1, 2, 3],
                },
                hex!("c8 03 010203").to_vec(),
            ),
        ]
    }

    #[test]
    fn extension_vectors_parse_and_emit() {
        for (ext, bytes) in vectors() {
            assert_eq!(one(&bytes), Ok(ext), "parse {bytes:02x?}");
            assert_eq!(emit_vec(&ext), bytes, "emit {ext:?}");
            assert_eq!(ext.buffer_len(), bytes.len());
        }
    }

    #[test]
    fn extension_truncation_never_panics() {
        for (_, bytes) in vectors() {
            for n in 0..bytes.len() {
                assert!(
                    Extension::parse(&bytes[..n]).is_err(),
                    "{n} of {bytes:02x?}"
                );
            }
            let mut short = vec![0u8; bytes.len() - 1];
            assert_eq!(one(&bytes).unwrap().emit(&mut short), Err(Error::Truncated));
        }
    }

    #[test]
    fn skippable_rule() {
        // Reference: RFC 5944 § 1.9.
        assert!(!ExtensionType::from(5).skippable());
        assert!(ExtensionType::from(200).skippable());
        assert!(ExtensionType::Nvse.skippable());
        assert!(!ExtensionType::MnHaAuth.skippable());
        assert_eq!(
            Extension::parse(&[5, 0]),
            Err(Error::UnknownNonSkippable(5))
        );
        let mut m = REQUEST.to_vec();
        m.extend_from_slice(&hex!("05 00"));
        assert_eq!(
            parse_request(&m).unwrap_err(),
            Error::UnknownNonSkippable(5)
        );
        let mut m = REQUEST.to_vec();
        m.extend_from_slice(&hex!("c8 02 abcd"));
        let p = parse_request(&m).unwrap();
        assert_eq!(
            p.extensions[0].extension,
            Extension::Unknown {
                ty: 200,
                data: &[0xab, 0xcd]
            }
        );
    }

    #[test]
    fn bad_lengths() {
        assert_eq!(
            Extension::parse(&hex!("20 03 000000")),
            Err(Error::BadLength)
        );
        assert_eq!(Extension::parse(&hex!("83 00")), Err(Error::BadLength));
        assert_eq!(
            Extension::parse(&hex!("90 05 0000000400")),
            Err(Error::BadLength)
        );
        assert_eq!(
            Extension::parse(&hex!("86 06 0000 00007ed9")),
            Err(Error::BadLength)
        );
        assert_eq!(
            Extension::parse(&hex!("26 00 0004 00007ed9")),
            Err(Error::BadLength)
        );
        assert!(matches!(
            Extension::parse(&hex!("90 06 01 00 00 04 0000")),
            Err(Error::Malformed(_))
        ));
        let big = [0u8; 300];
        assert_eq!(
            Extension::MnNai(&big).emit(&mut [0u8; 302]),
            Err(Error::BadLength)
        );
        assert_eq!(
            Extension::MnNai(&[]).emit(&mut [0u8; 2]),
            Err(Error::BadLength)
        );
        assert!(matches!(
            Extension::Unknown { ty: 32, data: &[] }.emit(&mut [0u8; 2]),
            Err(Error::Malformed(_))
        ));
    }

    #[test]
    fn iterator_offsets_and_stop_after_error() {
        let area = hex!("c8 01 00 83 02 6162 05 00 c8 00");
        let items: Vec<_> = Extensions::new(&area).located().collect();
        assert_eq!(items.len(), 3);
        assert_eq!(items[0].as_ref().unwrap().offset, 0);
        assert_eq!(items[1].as_ref().unwrap().offset, 3);
        assert_eq!(
            items[1].as_ref().unwrap().extension,
            Extension::MnNai(b"ab")
        );
        assert_eq!(items[2], Err(Error::UnknownNonSkippable(5)));
        assert_eq!(Extensions::new(&[]).count(), 0);
    }

    #[test]
    fn ordering_and_coverage() {
        // Reference: RFC 5944 § 3.6.1.3 (MN-HA after the extensions it covers;
        // FA extensions after it), RFC 2794 § 2 (NAI before authentication).
        let key = b"k";
        let nai = Extension::MnNai(b"mn@example.net");
        let nvse = Extension::Nvse(VendorExt {
            vendor_id: 32473,
            vendor_type: 1,
            data: &[],
        });
        let mut b = MessageBuilder::request(&request_repr());
        b.push(&nai).unwrap();
        b.sign(AuthKind::MnHa, 0x100, Algorithm::HmacMd5, key);
        b.push(&nvse).unwrap();
        b.sign(AuthKind::FaHa, 0x200, Algorithm::HmacMd5, key);
        let msg = b.finish();
        let p = parse_request(&msg).unwrap();
        assert_eq!(p.fixed, request_repr());
        assert_eq!(p.authorization, Some(1));
        assert_eq!(p.fa_ha, Some(3));
        assert_eq!(p.mn_ha().unwrap().spi, 0x100);
        assert!(p.is_covered(0) && !p.is_covered(1) && !p.is_covered(2));
        assert_eq!(p.covered(ExtensionType::MnNai), Some(&nai));
        assert_eq!(p.covered(ExtensionType::Nvse), None);
        assert_eq!(p.extensions[2].offset, 16 + 22);

        // NAI after MN-HA is refused.
        let mut b = MessageBuilder::request(&request_repr());
        b.sign(AuthKind::MnHa, 1, Algorithm::HmacMd5, key);
        b.push(&nai).unwrap();
        assert!(matches!(
            parse_request(b.as_bytes()),
            Err(Error::Malformed(_))
        ));
        // FA-HA before MN-HA, MN-FA before MN-HA, duplicate MN-HA are refused.
        for first in [AuthKind::FaHa, AuthKind::MnFa, AuthKind::MnHa] {
            let mut b = MessageBuilder::request(&request_repr());
            b.sign(first, 1, Algorithm::HmacMd5, key);
            b.sign(AuthKind::MnHa, 1, Algorithm::HmacMd5, key);
            assert!(
                matches!(parse_request(b.as_bytes()), Err(Error::Malformed(_))),
                "{first:?}"
            );
        }
        // Without authentication nothing is covered.
        let mut b = MessageBuilder::request(&request_repr());
        b.push(&nai).unwrap();
        let p = parse_request(b.as_bytes()).unwrap();
        assert!(p.covered_by_authorization().is_empty() && !p.is_covered(0) && p.mn_ha().is_none());
    }

    #[test]
    fn reply_with_extensions() {
        let tun = Extension::UdpTunnelReply(UdpTunnelReply {
            code: TunnelReplyCode::Accepted,
            force: false,
            keepalive_interval: 110,
        });
        let mut b = MessageBuilder::reply(&reply_repr());
        b.push(&tun).unwrap();
        let msg = b.finish();
        assert_eq!(&msg[..20], &REPLY);
        assert_eq!(&msg[20..], &hex!("2c 06 00 00 0000 006e"));
        let p = parse_reply(&msg).unwrap();
        assert_eq!(p.fixed, reply_repr());
        assert_eq!(p.extensions[0].extension, tun);
        // Cut anywhere but at the end of the fixed part: an error.
        for n in (0..msg.len()).filter(|&n| n != REPLY_LEN) {
            assert!(parse_reply(&msg[..n]).is_err(), "{n}");
        }
    }

    #[test]
    fn builder_push_failure_leaves_message_intact() {
        let mut b = MessageBuilder::request(&request_repr());
        assert!(b.push(&Extension::MnNai(&[])).is_err());
        assert_eq!(b.as_bytes(), &REQUEST);
    }

    fn arb_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..max)
    }

    /// Owned seeds for valid extensions (borrowed views are built in the test).
    #[derive(Debug, Clone)]
    enum Seed {
        Auth(u8, u32, Vec<u8>),
        Gen(u8, u32, Vec<u8>),
        Nai(Vec<u8>),
        TunRq(bool, bool, u8),
        TunRp(u8, bool, u16),
        Rev(bool, u32),
        Nvse(u32, u16, Vec<u8>),
        Cvse(u32, u16, Vec<u8>),
        Unknown(u8, Vec<u8>),
    }

    fn arb_seed() -> impl Strategy<Value = Seed> {
        prop_oneof![
            (
                prop_oneof![Just(32u8), Just(33), Just(34)],
                any::<u32>(),
                arb_bytes(40)
            )
                .prop_map(|(t, s, a)| Seed::Auth(t, s, a)),
            (any::<u8>(), any::<u32>(), arb_bytes(300)).prop_map(|(t, s, a)| Seed::Gen(t, s, a)),
            proptest::collection::vec(any::<u8>(), 1..60).prop_map(Seed::Nai),
            (any::<bool>(), any::<bool>(), any::<u8>()).prop_map(|(a, b, c)| Seed::TunRq(a, b, c)),
            (any::<u8>(), any::<bool>(), any::<u16>()).prop_map(|(a, b, c)| Seed::TunRp(a, b, c)),
            (any::<bool>(), any::<u32>()).prop_map(|(a, b)| Seed::Rev(a, b)),
            (any::<u32>(), any::<u16>(), arb_bytes(200)).prop_map(|(a, b, c)| Seed::Nvse(a, b, c)),
            (any::<u32>(), any::<u16>(), arb_bytes(300)).prop_map(|(a, b, c)| Seed::Cvse(a, b, c)),
            (128u8.., arb_bytes(100))
                .prop_filter("unknown types only", |(t, _)| !ExtensionType::from(*t)
                    .is_known())
                .prop_map(|(t, d)| Seed::Unknown(t, d)),
        ]
    }

    fn view(s: &Seed) -> Extension<'_> {
        match s {
            Seed::Auth(t, spi, a) => {
                let a = AuthExt {
                    spi: *spi,
                    authenticator: a,
                };
                match t {
                    32 => Extension::MnHaAuth(a),
                    33 => Extension::MnFaAuth(a),
                    _ => Extension::FaHaAuth(a),
                }
            }
            Seed::Gen(t, spi, a) => Extension::GeneralizedAuth(GenAuthExt {
                subtype: GenAuthSubtype::from(*t),
                spi: *spi,
                authenticator: a,
            }),
            Seed::Nai(n) => Extension::MnNai(n),
            Seed::TunRq(f, r, e) => Extension::UdpTunnelRequest(UdpTunnelRequest {
                force: *f,
                registration_via_fa: *r,
                encapsulation: Encapsulation::from(*e),
            }),
            Seed::TunRp(c, f, k) => Extension::UdpTunnelReply(UdpTunnelReply {
                code: TunnelReplyCode::from(*c),
                force: *f,
                keepalive_interval: *k,
            }),
            Seed::Rev(i, t) => Extension::RevocationSupport(RevocationSupport {
                inform: *i,
                timestamp: *t,
            }),
            Seed::Nvse(v, t, d) => Extension::Nvse(VendorExt {
                vendor_id: *v,
                vendor_type: *t,
                data: d,
            }),
            Seed::Cvse(v, t, d) => Extension::Cvse(VendorExt {
                vendor_id: *v,
                vendor_type: *t,
                data: d,
            }),
            Seed::Unknown(t, d) => Extension::Unknown { ty: *t, data: d },
        }
    }

    proptest! {
        #[test]
        fn extension_round_trip(seed in arb_seed()) {
            let ext = view(&seed);
            let mut buf = vec![0u8; ext.buffer_len()];
            prop_assert_eq!(ext.emit(&mut buf), Ok(buf.len()));
            prop_assert_eq!(Extension::parse(&buf), Ok((ext, buf.len())));
        }

        #[test]
        fn message_round_trip(rq in arb_request(), rp in arb_reply(), seeds in proptest::collection::vec(arb_seed(), 0..5)) {
            // Skip auth extensions so the ordering rules always hold.
            let exts: Vec<_> = seeds.iter().map(view).filter(|e| !matches!(
                e.ty(), ExtensionType::MnHaAuth | ExtensionType::MnFaAuth | ExtensionType::FaHaAuth
                    | ExtensionType::GeneralizedAuth)).collect();
            let mut b = MessageBuilder::request(&rq);
            let mut c = MessageBuilder::reply(&rp);
            for e in &exts {
                b.push(e).unwrap();
                c.push(e).unwrap();
            }
            let p = parse_request(b.as_bytes()).unwrap();
            prop_assert_eq!(p.fixed, rq);
            prop_assert_eq!(p.extensions.iter().map(|l| l.extension).collect::<Vec<_>>(), exts.clone());
            let p = parse_reply(c.as_bytes()).unwrap();
            prop_assert_eq!(p.fixed, rp);
            prop_assert_eq!(p.extensions.iter().map(|l| l.extension).collect::<Vec<_>>(), exts);
        }

        #[test]
        fn arbitrary_bytes_never_panic(b in arb_bytes(128)) {
            let _ = Extensions::new(&b).located().count();
            let _ = parse_request(&b);
            let _ = parse_reply(&b);
            let mut rq = REQUEST.to_vec();
            rq.extend_from_slice(&b);
            let _ = parse_request(&rq);
        }
    }
}

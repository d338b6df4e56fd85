//! Mobile IPv4 registration (RFC 5944 §3), as seen by a home agent.
//!
//! * [`registration`]: the Registration Request (type 1) and Reply (type 3)
//!   fixed parts, with flags.
//! * [`ext`]: the extension framework (short and long forms, the §1.9
//!   skippable rule in [`ext::ExtensionType`]) and every extension haven knows.
//! * [`auth`]: MN-HA / MN-FA / FA-HA authenticators (§3.5.1 HMAC-MD5,
//!   legacy prefix+suffix keyed MD5), constant-time verification.
//! * [`ident`]: the 64-bit Identification field: NTP timestamps and nonces
//!   (§5.7), and the HA's identification for a code 133 reply.
//! * [`vendor`]: haven's vendor-specific payloads (seed 002 static routes and
//!   filter rules) inside RFC 3115 NVSE/CVSE extensions.
//! * [`code`]: registration reply codes, and the one mapping from [`Error`]
//!   to a code.
//!
//! [`Error`]: crate::Error

pub mod auth;
pub mod code;
pub mod ext;
pub mod ident;
pub mod registration;
pub mod vendor;

pub use code::ReplyCode;

/// The UDP port of Mobile IP registration and of RFC 3519 tunnel data.
pub const PORT: u16 = 434;

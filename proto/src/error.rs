//! The single error type of every parser and checker in this crate.
//!
//! Variants are precise enough for the home agent to choose the reply code
//! RFC 5944 §3.4 asks for (see `mip::ReplyCode`'s `From<Error>`), and for a
//! receive path to count drops by reason.

/// What went wrong while reading or checking bytes from the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The buffer ends before a fixed header or a declared length does.
    #[error("truncated: the buffer ends before the message does")]
    Truncated,
    /// A length field disagrees with the buffer or with the format
    /// (e.g. an MN-HA extension shorter than its SPI).
    #[error("bad length field")]
    BadLength,
    /// The message type octet is not the one this parser reads.
    #[error("unexpected message type {0}")]
    UnexpectedType(u8),
    /// An extension type 0–127 this implementation does not know: RFC 5944
    /// §1.9 says the whole message must be discarded (reply code 134).
    #[error("unknown non-skippable extension type {0}")]
    UnknownNonSkippable(u8),
    /// Fields parse but their combination is invalid (extension order,
    /// reserved values, a required extension missing).
    #[error("malformed: {0}")]
    Malformed(&'static str),
    /// A well-formed value this implementation deliberately does not support
    /// (an unknown authentication algorithm, a VRRP version other than 3).
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
    /// An Internet checksum does not verify.
    #[error("checksum mismatch")]
    Checksum,
    /// An authenticator or HMAC trailer does not verify.
    #[error("authentication failed")]
    Authentication,
    /// The Identification field is outside the replay tolerance
    /// (RFC 5944 §5.7, reply code 133).
    #[error("identification mismatch")]
    IdentificationMismatch,
    /// A sequence number or identification was seen before.
    #[error("replayed message")]
    Replay,
}

/// Shorthand for results of this crate.
pub type Result<T> = core::result::Result<T, Error>;

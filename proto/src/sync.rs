//! Binding-sync messages between a primary and a secondary home agent
//! (pair mode), after seed 002 figures 13a/13b, re-homed onto VRRPv3.
//!
//! The seed extends VRRP with a *data dump request* (sent by a booting
//! secondary), a *data dump* (all valid registrations, the answer) and a
//! *data forward* (every new registration as the primary accepts it). haven
//! adds an *ack* so replication is synchronous: the primary sends its
//! Registration Reply only after the secondary has acknowledged the forward.
//! The seed's clear-text password becomes an HMAC-SHA256 trailer, a 64-bit
//! sequence number gives acks something to name and a [`ReplayWindow`]
//! something to check, and a dump larger than one datagram is split into
//! fragments ([`split_records`], [`Reassembler`]). The exact layout and the
//! reasons are in `docs/wire-sync.md`.
//!
//! Registration records are opaque here: the home agent encodes its binding.

use core::net::Ipv4Addr;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::vrrp::{self, VrrpPacket};
use crate::{Error, Result};

type HmacSha256 = Hmac<Sha256>;

/// Length of the HMAC-SHA256 trailer.
pub const MAC_LEN: usize = 32;
/// Length of the sync header between the address list and the data blocks.
pub const SYNC_HEADER_LEN: usize = 22;
/// Length of a data block header (subtype, length).
pub const BLOCK_HEADER_LEN: usize = 3;
/// The largest message: an IPv4 datagram of 65535 octets minus its header.
pub const MAX_MESSAGE_LEN: usize = 65535 - 20;
const FLAG_MORE: u8 = 0x80;

/// The sync message types: VRRPv3 type nibble values 2–5 (1 is an
/// advertisement, [RFC 5798 § 5.2.2]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SyncType {
    /// A booting secondary asks for everything (seed 137a).
    DataDumpRequest,
    /// All currently valid registrations, possibly in fragments (seed 137b).
    DataDump,
    /// One or more newly accepted registrations (seed 137d).
    DataForward,
    /// Acknowledges the message whose sequence number is `ack_sequence`.
    Ack,
}

impl SyncType {
    /// The type nibble.
    pub const fn code(self) -> u8 {
        match self {
            Self::DataDumpRequest => 2,
            Self::DataDump => 3,
            Self::DataForward => 4,
            Self::Ack => 5,
        }
    }
    /// Decodes a type nibble; `UnexpectedType` for anything else.
    pub const fn from_code(c: u8) -> Result<Self> {
        match c {
            2 => Ok(Self::DataDumpRequest),
            3 => Ok(Self::DataDump),
            4 => Ok(Self::DataForward),
            5 => Ok(Self::Ack),
            other => Err(Error::UnexpectedType(other)),
        }
    }
}

/// What a data block holds (seed "Subtype 210").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Subtype {
    /// An active registration record, encoded by the home agent.
    Registration,
    /// Not known to this version: kept so a receiver can skip it.
    Unknown(u8),
}

impl From<u8> for Subtype {
    fn from(v: u8) -> Self {
        match v {
            1 => Self::Registration,
            o => Self::Unknown(o),
        }
    }
}

impl From<Subtype> for u8 {
    fn from(s: Subtype) -> u8 {
        match s {
            Subtype::Registration => 1,
            Subtype::Unknown(o) => o,
        }
    }
}

/// One data block: subtype, 16-bit length, data (seed Count-D/Subtype/Length/Data).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DataBlock<'a> {
    /// What the data is.
    pub subtype: Subtype,
    /// The data (at most 65535 octets).
    pub data: &'a [u8],
}

mod field {
    // Offsets relative to the end of the VRRP address list.
    use crate::Field;
    pub const SEQUENCE: Field = 0..8;
    pub const ACK: Field = 8..16;
    pub const FRAG_INDEX: Field = 16..18;
    pub const FLAGS: usize = 18;
    pub const COUNT_D: Field = 20..22;
}

fn be_u64(b: &[u8]) -> u64 {
    b.try_into().map_or(0, u64::from_be_bytes)
}
fn be_u16(b: &[u8]) -> u16 {
    b.try_into().map_or(0, u16::from_be_bytes)
}

/// A read-only view of a sync message (the whole IP payload).
#[derive(Debug, Clone)]
pub struct SyncPacket<T: AsRef<[u8]>> {
    inner: VrrpPacket<T>,
}

impl<T: AsRef<[u8]>> SyncPacket<T> {
    /// Wraps a buffer, checking the VRRP header, the addresses, the sync
    /// header and the trailer fit.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let inner = VrrpPacket::new_checked(buffer)?;
        let p = Self { inner };
        if p.inner.as_bytes().len() < p.blocks_start() + MAC_LEN {
            return Err(Error::Truncated);
        }
        Ok(p)
    }
    /// Wraps a buffer without checking (for sealing).
    pub const fn new_unchecked(buffer: T) -> Self {
        Self {
            inner: VrrpPacket::new_unchecked(buffer),
        }
    }
    /// The VRRP common header view.
    pub fn vrrp(&self) -> &VrrpPacket<T> {
        &self.inner
    }
    fn sync_hdr(&self) -> &[u8] {
        let s = self.inner.addrs_end();
        self.inner
            .as_bytes()
            .get(s..s + SYNC_HEADER_LEN)
            .unwrap_or(&[])
    }
    fn sub(&self, f: crate::Field) -> &[u8] {
        self.sync_hdr().get(f).unwrap_or(&[])
    }
    /// Offset of the first data block.
    pub fn blocks_start(&self) -> usize {
        self.inner.addrs_end() + SYNC_HEADER_LEN
    }
    /// Offset of the HMAC trailer (the last 32 octets).
    pub fn mac_start(&self) -> usize {
        self.inner.as_bytes().len().saturating_sub(MAC_LEN)
    }
    /// Sequence number.
    pub fn sequence(&self) -> u64 {
        be_u64(self.sub(field::SEQUENCE))
    }
    /// Acknowledged sequence number (Ack only, zero otherwise).
    pub fn ack_sequence(&self) -> u64 {
        be_u64(self.sub(field::ACK))
    }
    /// Fragment index within a dump.
    pub fn fragment_index(&self) -> u16 {
        be_u16(self.sub(field::FRAG_INDEX))
    }
    /// Flags octet.
    pub fn flags(&self) -> u8 {
        self.sync_hdr().get(field::FLAGS).copied().unwrap_or(0)
    }
    /// Count-D: number of data blocks.
    pub fn block_count(&self) -> u16 {
        be_u16(self.sub(field::COUNT_D))
    }
    /// The data block area, between the sync header and the trailer.
    pub fn block_bytes(&self) -> &[u8] {
        self.inner
            .as_bytes()
            .get(self.blocks_start()..self.mac_start())
            .unwrap_or(&[])
    }
    /// The HMAC trailer.
    pub fn mac(&self) -> &[u8] {
        self.inner.as_bytes().get(self.mac_start()..).unwrap_or(&[])
    }
    /// Verifies the HMAC in constant time: HMAC-SHA256(key, src ‖ dst ‖
    /// message up to the trailer with the checksum field as zero).
    pub fn verify_mac(&self, src: Ipv4Addr, dst: Ipv4Addr, key: &[u8]) -> bool {
        let b = self.inner.as_bytes();
        let Some(body) = b.get(..self.mac_start()) else {
            return false;
        };
        let m = mac_over(src, dst, body, key);
        m.verify_slice(self.mac()).is_ok()
    }
}

/// An HMAC over src, dst and `body` with octets 6..8 (the checksum) zeroed.
fn mac_over(src: Ipv4Addr, dst: Ipv4Addr, body: &[u8], key: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length.
    let mut m = match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable_hmac(),
    };
    m.update(&src.octets());
    m.update(&dst.octets());
    m.update(body.get(..6).unwrap_or(body));
    m.update(&[0, 0]);
    m.update(body.get(8..).unwrap_or(&[]));
    m
}

// HMAC's `new_from_slice` never fails (InvalidLength is only for fixed-key
// MACs); keep a total function without a panic path anyway.
fn unreachable_hmac() -> HmacSha256 {
    <HmacSha256 as hmac::digest::KeyInit>::new(&Default::default())
}

/// Recomputes the HMAC trailer and then the VRRP checksum of a message in
/// place (used by [`SyncRepr::emit`] and by the fuzz target to re-seal
/// mutated inputs). `Truncated` if the buffer cannot hold header and trailer.
pub fn seal(buf: &mut [u8], src: Ipv4Addr, dst: Ipv4Addr, key: &[u8]) -> Result<()> {
    let mac_start = {
        let p = SyncPacket::new_checked(&*buf)?;
        p.mac_start()
    };
    let (body, trailer) = buf.split_at_mut(mac_start);
    let tag = mac_over(src, dst, body, key).finalize().into_bytes();
    trailer.copy_from_slice(&tag);
    VrrpPacket::new_unchecked(&mut *buf).fill_checksum(src, dst);
    Ok(())
}

/// A parsed sync message.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SyncRepr<'a> {
    /// Which sync message.
    pub msg_type: SyncType,
    /// VRID of the virtual home agent this concerns.
    pub vrid: u8,
    /// The sender's VRRP priority.
    pub priority: u8,
    /// The sender's advertisement interval in centiseconds (12 bits).
    pub max_advert_int_cs: u16,
    /// The virtual addresses (home agent VIPs) this concerns (≤ 255).
    pub addresses: Vec<Ipv4Addr>,
    /// The sender's sequence number (strictly increasing per sender).
    pub sequence: u64,
    /// For an Ack: the sequence number acknowledged; otherwise 0.
    pub ack_sequence: u64,
    /// Index of this fragment of a dump (0 for single messages).
    pub fragment_index: u16,
    /// More fragments of this dump follow.
    pub more_fragments: bool,
    /// The data blocks.
    pub blocks: Vec<DataBlock<'a>>,
}

impl<'a> SyncRepr<'a> {
    /// Parses a message from `src` to `dst`: VRRP checksum and version,
    /// type 2–5 (`UnexpectedType`), the HMAC with `key` (`Authentication`),
    /// then the data blocks, which must fill the area before the trailer
    /// exactly and match Count-D (`BadLength`). Reserved bits are ignored.
    pub fn parse(
        p: &SyncPacket<&'a [u8]>,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        key: &[u8],
    ) -> Result<Self> {
        vrrp::check_common(p.vrrp(), src, dst)?;
        let msg_type = SyncType::from_code(p.vrrp().msg_type())?;
        if !p.verify_mac(src, dst, key) {
            return Err(Error::Authentication);
        }
        let bytes: &'a [u8] = p.inner_bytes();
        let mut area = bytes
            .get(p.blocks_start()..p.mac_start())
            .ok_or(Error::Truncated)?;
        let mut blocks = Vec::new();
        for _ in 0..p.block_count() {
            let [st, lh, ll, rest @ ..] = area else {
                return Err(Error::BadLength);
            };
            let len = usize::from(u16::from_be_bytes([*lh, *ll]));
            if rest.len() < len {
                return Err(Error::BadLength);
            }
            let (data, tail) = rest.split_at(len);
            blocks.push(DataBlock {
                subtype: Subtype::from(*st),
                data,
            });
            area = tail;
        }
        if !area.is_empty() {
            return Err(Error::BadLength);
        }
        let v = p.vrrp();
        Ok(Self {
            msg_type,
            vrid: v.vrid(),
            priority: v.priority(),
            max_advert_int_cs: v.max_advert_int(),
            addresses: v.addresses().collect(),
            sequence: p.sequence(),
            ack_sequence: p.ack_sequence(),
            fragment_index: p.fragment_index(),
            more_fragments: p.flags() & FLAG_MORE != 0,
            blocks,
        })
    }

    /// Encoded length.
    pub fn buffer_len(&self) -> usize {
        vrrp::HEADER_LEN
            + 4 * self.addresses.len()
            + SYNC_HEADER_LEN
            + self
                .blocks
                .iter()
                .map(|b| BLOCK_HEADER_LEN + b.data.len())
                .sum::<usize>()
            + MAC_LEN
    }

    /// Writes the message, its HMAC and checksum into a buffer of exactly
    /// `buffer_len()` octets (`Truncated` otherwise). `BadLength` when a
    /// field cannot hold its value: over 255 addresses, over 65535 blocks,
    /// a block over 65535 octets, a Max Adver Int over 4095, or a message
    /// over [`MAX_MESSAGE_LEN`].
    pub fn emit(&self, buf: &mut [u8], src: Ipv4Addr, dst: Ipv4Addr, key: &[u8]) -> Result<()> {
        let count = u8::try_from(self.addresses.len()).map_err(|_| Error::BadLength)?;
        let count_d = u16::try_from(self.blocks.len()).map_err(|_| Error::BadLength)?;
        let len = self.buffer_len();
        if self.max_advert_int_cs > 0x0fff || len > MAX_MESSAGE_LEN {
            return Err(Error::BadLength);
        }
        if buf.len() != len {
            return Err(Error::Truncated);
        }
        {
            let mut v = VrrpPacket::new_unchecked(&mut *buf);
            v.set_version_type(vrrp::VERSION, self.msg_type.code());
            v.set_vrid(self.vrid);
            v.set_priority(self.priority);
            v.set_addr_count(count);
            v.set_max_advert_int(self.max_advert_int_cs);
            v.set_checksum(0);
            v.set_addresses(&self.addresses);
        }
        let start = vrrp::HEADER_LEN + 4 * self.addresses.len();
        let rest = buf.get_mut(start..).ok_or(Error::Truncated)?;
        let (hdr, mut area) = rest.split_at_mut(SYNC_HEADER_LEN);
        hdr[field::SEQUENCE].copy_from_slice(&self.sequence.to_be_bytes());
        hdr[field::ACK].copy_from_slice(&self.ack_sequence.to_be_bytes());
        hdr[field::FRAG_INDEX].copy_from_slice(&self.fragment_index.to_be_bytes());
        hdr[field::FLAGS] = if self.more_fragments { FLAG_MORE } else { 0 };
        hdr[field::FLAGS + 1] = 0;
        hdr[field::COUNT_D].copy_from_slice(&count_d.to_be_bytes());
        for b in &self.blocks {
            let blen = u16::try_from(b.data.len()).map_err(|_| Error::BadLength)?;
            let (h, tail) = area.split_at_mut(BLOCK_HEADER_LEN);
            h[0] = b.subtype.into();
            h[1..3].copy_from_slice(&blen.to_be_bytes());
            let (d, tail) = tail.split_at_mut(b.data.len());
            d.copy_from_slice(b.data);
            area = tail;
        }
        seal(buf, src, dst, key)
    }

    /// Emits into a new vector.
    pub fn to_bytes(&self, src: Ipv4Addr, dst: Ipv4Addr, key: &[u8]) -> Result<Vec<u8>> {
        let mut v = vec![0u8; self.buffer_len()];
        self.emit(&mut v, src, dst, key)?;
        Ok(v)
    }
}

impl<'a> SyncPacket<&'a [u8]> {
    fn inner_bytes(&self) -> &'a [u8] {
        self.inner.clone().into_inner()
    }
}

/// Splits `records` into Data Dump (or Data Forward) messages of at most
/// `max_len` octets each, copying `template`'s header fields and numbering
/// them from `template.sequence` upwards with fragment indexes 0.. and the
/// "more" flag on all but the last. An empty record list still yields one
/// message, so the receiver learns that the dump is complete.
/// `BadLength` if one record cannot fit a message of `max_len` octets or
/// there are more than 65536 fragments.
pub fn split_records<'a>(
    template: &SyncRepr<'_>,
    records: &[&'a [u8]],
    max_len: usize,
) -> Result<Vec<SyncRepr<'a>>> {
    let max_len = max_len.min(MAX_MESSAGE_LEN);
    let fixed = vrrp::HEADER_LEN + 4 * template.addresses.len() + SYNC_HEADER_LEN + MAC_LEN;
    let new_msg = |seq: u64, index: usize| -> Result<SyncRepr<'a>> {
        Ok(SyncRepr {
            msg_type: template.msg_type,
            vrid: template.vrid,
            priority: template.priority,
            max_advert_int_cs: template.max_advert_int_cs,
            addresses: template.addresses.clone(),
            sequence: seq,
            ack_sequence: template.ack_sequence,
            fragment_index: u16::try_from(index).map_err(|_| Error::BadLength)?,
            more_fragments: false,
            blocks: Vec::new(),
        })
    };
    let mut out: Vec<SyncRepr<'a>> = Vec::new();
    let mut cur = new_msg(template.sequence, 0)?;
    let mut cur_len = fixed;
    for r in records {
        let need = BLOCK_HEADER_LEN + r.len();
        if r.len() > usize::from(u16::MAX) || fixed + need > max_len {
            return Err(Error::BadLength);
        }
        if cur_len + need > max_len || cur.blocks.len() == usize::from(u16::MAX) {
            let next = new_msg(cur.sequence.wrapping_add(1), out.len() + 1)?;
            cur.more_fragments = true;
            out.push(core::mem::replace(&mut cur, next));
            cur_len = fixed;
        }
        cur.blocks.push(DataBlock {
            subtype: Subtype::Registration,
            data: r,
        });
        cur_len += need;
    }
    out.push(cur);
    Ok(out)
}

/// Collects the registration records of a fragmented dump in order.
#[derive(Debug, Default, Clone)]
pub struct Reassembler {
    next_index: u16,
    records: Vec<Vec<u8>>,
}

impl Reassembler {
    /// A reassembler waiting for fragment 0.
    pub fn new() -> Self {
        Self::default()
    }
    /// Adds a fragment. Fragment 0 restarts the dump; any other index must
    /// be the next one (`Malformed` otherwise: the dump must be re-requested).
    /// Returns the records of the whole dump when the last fragment arrives.
    /// Blocks of unknown subtype are skipped.
    pub fn push(&mut self, m: &SyncRepr<'_>) -> Result<Option<Vec<Vec<u8>>>> {
        if m.fragment_index == 0 {
            self.records.clear();
            self.next_index = 0;
        }
        if m.fragment_index != self.next_index {
            return Err(Error::Malformed("dump fragment out of order"));
        }
        self.records.extend(
            m.blocks
                .iter()
                .filter(|b| b.subtype == Subtype::Registration)
                .map(|b| b.data.to_vec()),
        );
        if m.more_fragments {
            self.next_index = self.next_index.checked_add(1).ok_or(Error::BadLength)?;
            Ok(None)
        } else {
            self.next_index = 0;
            Ok(Some(core::mem::take(&mut self.records)))
        }
    }
}

/// A 64-entry sliding anti-replay window over sequence numbers (the shape of
/// [RFC 4303 § 3.4.3]): numbers above the highest seen are accepted and
/// slide the window; numbers within 64 below it are accepted once; older
/// ones are refused.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReplayWindow {
    highest: u64,
    /// Bit i set: `highest - i` was seen.
    bitmap: u64,
    started: bool,
}

impl ReplayWindow {
    /// Window size.
    pub const SIZE: u64 = 64;

    /// An empty window.
    pub const fn new() -> Self {
        Self {
            highest: 0,
            bitmap: 0,
            started: false,
        }
    }

    /// Whether `seq` would be accepted (`Replay` if seen or too old).
    pub fn check(&self, seq: u64) -> Result<()> {
        if !self.started || seq > self.highest {
            return Ok(());
        }
        let off = self.highest - seq;
        if off >= Self::SIZE || self.bitmap & (1u64 << off) != 0 {
            return Err(Error::Replay);
        }
        Ok(())
    }

    /// Checks and records `seq`. Call only after the HMAC verified, so
    /// forged numbers cannot move the window.
    pub fn accept(&mut self, seq: u64) -> Result<()> {
        self.check(seq)?;
        if !self.started {
            self.started = true;
            self.highest = seq;
            self.bitmap = 1;
        } else if seq > self.highest {
            let shift = seq - self.highest;
            self.bitmap = if shift >= Self::SIZE {
                0
            } else {
                self.bitmap << shift
            };
            self.bitmap |= 1;
            self.highest = seq;
        } else {
            self.bitmap |= 1u64 << (self.highest - seq);
        }
        Ok(())
    }

    /// The highest accepted sequence number, if any.
    pub const fn highest(&self) -> Option<u64> {
        if self.started {
            Some(self.highest)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hex_literal::hex;
    use proptest::prelude::*;

    const SRC: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
    const DST: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
    const KEY: &[u8] = b"haven-sync-test-key";
    const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);

    fn base(t: SyncType) -> SyncRepr<'static> {
        SyncRepr {
            msg_type: t,
            vrid: 7,
            priority: 200,
            max_advert_int_cs: 100,
            addresses: vec![VIP],
            sequence: 0x0102_0304_0506_0708,
            ack_sequence: 0,
            fragment_index: 0,
            more_fragments: false,
            blocks: vec![],
        }
    }

    fn forward() -> SyncRepr<'static> {
        SyncRepr {
            blocks: vec![
                DataBlock {
                    subtype: Subtype::Registration,
                    data: b"reg-one",
                },
                DataBlock {
                    subtype: Subtype::Unknown(9),
                    data: b"",
                },
            ],
            ..base(SyncType::DataForward)
        }
    }

    fn ack() -> SyncRepr<'static> {
        SyncRepr {
            sequence: 42,
            ack_sequence: 0x0102_0304_0506_0708,
            ..base(SyncType::Ack)
        }
    }

    fn dump_frag() -> SyncRepr<'static> {
        SyncRepr {
            fragment_index: 3,
            more_fragments: true,
            blocks: vec![DataBlock {
                subtype: Subtype::Registration,
                data: b"abc",
            }],
            ..base(SyncType::DataDump)
        }
    }

    // All vectors computed with python3 (struct, hmac, hashlib.sha256).
    const FORWARD: [u8; 79] = hex!(
        "3407c8010064f6f4c6120064010203040506070800000000000000000000000000020100077265672d6f6e65090000cac34895761d1fe158e9ca8076a100573e34c8aaba1aaaaf37b7be37c7590ee8"
    );
    const ACK: [u8; 66] = hex!(
        "3507c8010064d7bac6120064000000000000002a0102030405060708000000000000a3e8a4af6e6be0ec8be2b044499d199403884689d7e5efca9624620888c9fb46"
    );
    const REQUEST: [u8; 66] = hex!(
        "3207c80100642b37c6120064010203040506070800000000000000000000000000005c374bdb8614c01536c4efa3af3bf2e6e5de9d2969cfc6291ad71a8fdc07f9be"
    );
    const DUMP_FRAG: [u8; 72] = hex!(
        "3307c80100648cbec612006401020304050607080000000000000000000380000001010003616263701103618e7fe0566385c8eb19195ac9f58a28e6a4a9bc325d50e4cc4e5b993d"
    );

    fn cases() -> Vec<(SyncRepr<'static>, &'static [u8])> {
        vec![
            (forward(), &FORWARD[..]),
            (ack(), &ACK[..]),
            (base(SyncType::DataDumpRequest), &REQUEST[..]),
            (dump_frag(), &DUMP_FRAG[..]),
        ]
    }

    #[test]
    fn vectors_emit_and_parse() {
        for (r, v) in cases() {
            assert_eq!(r.to_bytes(SRC, DST, KEY).unwrap(), v, "{:?}", r.msg_type);
            let p = SyncPacket::new_checked(v).unwrap();
            assert_eq!(SyncRepr::parse(&p, SRC, DST, KEY).unwrap(), r);
        }
    }

    #[test]
    fn wrong_key_or_addresses_fail_auth() {
        let p = SyncPacket::new_checked(&FORWARD[..]).unwrap();
        assert_eq!(
            SyncRepr::parse(&p, SRC, DST, b"other"),
            Err(Error::Authentication)
        );
        // Swapping src/dst keeps the pseudo-header sum but not the HMAC input.
        assert_eq!(
            SyncRepr::parse(&p, DST, SRC, KEY),
            Err(Error::Authentication)
        );
    }

    #[test]
    fn tamper_every_bit() {
        for (_, v) in cases() {
            for bit in 0..v.len() * 8 {
                let mut b = v.to_vec();
                b[bit / 8] ^= 1 << (bit % 8);
                if let Ok(p) = SyncPacket::new_checked(&b[..]) {
                    assert!(SyncRepr::parse(&p, SRC, DST, KEY).is_err(), "bit {bit}");
                }
                // Re-sealing with the checksum only (an attacker without the
                // key) still fails the HMAC unless the flipped bit is in the
                // checksum field itself.
                if (48..64).contains(&bit) {
                    continue;
                }
                if let Ok(p) = SyncPacket::new_checked(&b[..]) {
                    let _ = p;
                    VrrpPacket::new_unchecked(&mut b[..]).fill_checksum(SRC, DST);
                    let p = SyncPacket::new_checked(&b[..]).unwrap();
                    let r = SyncRepr::parse(&p, SRC, DST, KEY);
                    assert!(
                        matches!(
                            r,
                            Err(Error::Authentication)
                                | Err(Error::UnexpectedType(_))
                                | Err(Error::Unsupported(_))
                        ),
                        "bit {bit}: {r:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn truncation_every_length() {
        for (_, v) in cases() {
            for n in 0..v.len() {
                if let Ok(p) = SyncPacket::new_checked(&v[..n]) {
                    assert!(SyncRepr::parse(&p, SRC, DST, KEY).is_err(), "len {n}");
                }
            }
        }
    }

    #[test]
    fn bad_block_lengths_are_detected_after_auth() {
        // Count-D says 3 blocks but only 2 present: sealed with the key, so
        // the block walker (not the HMAC) must reject it.
        let mut b = FORWARD.to_vec();
        let cd = 8 + 4 + 20;
        b[cd + 1] = 3;
        seal(&mut b, SRC, DST, KEY).unwrap();
        let p = SyncPacket::new_checked(&b[..]).unwrap();
        assert_eq!(SyncRepr::parse(&p, SRC, DST, KEY), Err(Error::BadLength));
        b[cd + 1] = 1; // one block and trailing garbage
        seal(&mut b, SRC, DST, KEY).unwrap();
        let p = SyncPacket::new_checked(&b[..]).unwrap();
        assert_eq!(SyncRepr::parse(&p, SRC, DST, KEY), Err(Error::BadLength));
    }

    #[test]
    fn advert_type_is_unexpected() {
        let mut b = REQUEST.to_vec();
        b[0] = 0x31;
        seal(&mut b, SRC, DST, KEY).unwrap();
        let p = SyncPacket::new_checked(&b[..]).unwrap();
        assert_eq!(
            SyncRepr::parse(&p, SRC, DST, KEY),
            Err(Error::UnexpectedType(1))
        );
    }

    #[test]
    fn replay_window() {
        let mut w = ReplayWindow::new();
        assert_eq!(w.highest(), None);
        assert!(w.accept(100).is_ok());
        assert_eq!(w.accept(100), Err(Error::Replay));
        assert!(w.accept(99).is_ok());
        assert_eq!(w.accept(99), Err(Error::Replay));
        assert!(w.accept(37).is_ok()); // 100 - 63: last slot in the window
        assert_eq!(w.check(36), Err(Error::Replay)); // 64 behind: too old
        assert!(w.accept(164).is_ok()); // slides by 64: everything forgotten
        assert_eq!(w.check(100), Err(Error::Replay)); // now too old
        assert!(w.check(101).is_ok());
        assert!(w.accept(101).is_ok());
        assert_eq!(w.accept(101), Err(Error::Replay));
        assert!(w.accept(u64::MAX).is_ok());
        assert_eq!(w.accept(u64::MAX), Err(Error::Replay));
        assert_eq!(w.highest(), Some(u64::MAX));
        let mut w = ReplayWindow::new();
        assert!(w.accept(0).is_ok());
        assert_eq!(w.accept(0), Err(Error::Replay));
    }

    #[test]
    fn split_and_reassemble() {
        let recs: Vec<Vec<u8>> = (0..50u8).map(|i| vec![i; 20 + usize::from(i)]).collect();
        let refs: Vec<&[u8]> = recs.iter().map(|r| &r[..]).collect();
        let t = base(SyncType::DataDump);
        let msgs = split_records(&t, &refs, 300).unwrap();
        assert!(msgs.len() > 5);
        let mut asm = Reassembler::new();
        let mut done = None;
        for (i, m) in msgs.iter().enumerate() {
            assert_eq!(usize::from(m.fragment_index), i);
            assert_eq!(m.sequence, t.sequence + i as u64);
            assert_eq!(m.more_fragments, i + 1 < msgs.len());
            let bytes = m.to_bytes(SRC, DST, KEY).unwrap();
            assert!(bytes.len() <= 300);
            let p = SyncPacket::new_checked(&bytes[..]).unwrap();
            let back = SyncRepr::parse(&p, SRC, DST, KEY).unwrap();
            assert_eq!(&back, m);
            done = asm.push(&back).unwrap();
            assert_eq!(done.is_some(), i + 1 == msgs.len());
        }
        assert_eq!(done.unwrap(), recs);
    }

    #[test]
    fn split_edge_cases() {
        let t = base(SyncType::DataDump);
        let empty = split_records(&t, &[], 100).unwrap();
        assert_eq!(empty.len(), 1);
        assert!(!empty[0].more_fragments && empty[0].blocks.is_empty());
        let big = [0u8; 100];
        assert_eq!(split_records(&t, &[&big[..]], 100), Err(Error::BadLength));
        // Exactly fitting: fixed 66 + 3 + 31 = 100.
        let fit = [1u8; 31];
        let m = split_records(&t, &[&fit[..], &fit[..]], 100).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].buffer_len(), 100);
    }

    #[test]
    fn reassembler_order() {
        let mut asm = Reassembler::new();
        let mut f = dump_frag();
        assert!(asm.push(&f).is_err()); // index 3 without 0..2
        f.fragment_index = 0;
        assert_eq!(asm.push(&f).unwrap(), None);
        f.fragment_index = 2;
        assert!(asm.push(&f).is_err());
        f.fragment_index = 0; // restart
        assert_eq!(asm.push(&f).unwrap(), None);
        f.fragment_index = 1;
        f.more_fragments = false;
        assert_eq!(
            asm.push(&f).unwrap(),
            Some(vec![b"abc".to_vec(), b"abc".to_vec()])
        );
    }

    #[test]
    fn emit_limits() {
        let r = SyncRepr {
            addresses: vec![VIP; 256],
            ..base(SyncType::Ack)
        };
        assert_eq!(r.to_bytes(SRC, DST, KEY), Err(Error::BadLength));
        let big = vec![0u8; 65536];
        let r = SyncRepr {
            blocks: vec![DataBlock {
                subtype: Subtype::Registration,
                data: &big,
            }],
            ..base(SyncType::Ack)
        };
        assert_eq!(r.to_bytes(SRC, DST, KEY), Err(Error::BadLength));
        let mut buf = vec![0u8; 10];
        assert_eq!(ack().emit(&mut buf, SRC, DST, KEY), Err(Error::Truncated));
    }

    fn arb_repr() -> impl Strategy<Value = (SyncRepr<'static>, Vec<Vec<u8>>)> {
        (
            2u8..6,
            any::<u8>(),
            any::<u8>(),
            0u16..4096,
            proptest::collection::vec(any::<[u8; 4]>(), 0..4),
            any::<u64>(),
            any::<u64>(),
            any::<u16>(),
            any::<bool>(),
            proptest::collection::vec(
                (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..40)),
                0..6,
            ),
        )
            .prop_map(|(t, vrid, pr, mai, addrs, seq, ack, fi, more, blocks)| {
                let r = SyncRepr {
                    msg_type: SyncType::from_code(t).unwrap(),
                    vrid,
                    priority: pr,
                    max_advert_int_cs: mai,
                    addresses: addrs.into_iter().map(Ipv4Addr::from).collect(),
                    sequence: seq,
                    ack_sequence: ack,
                    fragment_index: fi,
                    more_fragments: more,
                    blocks: vec![],
                };
                (
                    r,
                    blocks
                        .into_iter()
                        .map(|(s, mut d)| {
                            d.insert(0, s);
                            d
                        })
                        .collect(),
                )
            })
    }

    proptest! {
        #[test]
        fn roundtrip((mut r, data) in arb_repr()) {
            r.blocks = data.iter().map(|d| DataBlock { subtype: Subtype::from(d[0]), data: &d[1..] }).collect();
            let b = r.to_bytes(SRC, DST, KEY).unwrap();
            let p = SyncPacket::new_checked(&b[..]).unwrap();
            prop_assert_eq!(SyncRepr::parse(&p, SRC, DST, KEY).unwrap(), r);
        }

        #[test]
        fn never_panics(mut data in proptest::collection::vec(any::<u8>(), 0..200), reseal in any::<bool>()) {
            if reseal {
                let _ = seal(&mut data, SRC, DST, KEY);
            }
            if let Ok(p) = SyncPacket::new_checked(&data[..]) {
                if let Ok(r) = SyncRepr::parse(&p, SRC, DST, KEY) {
                    let b = r.to_bytes(SRC, DST, KEY).unwrap();
                    let p2 = SyncPacket::new_checked(&b[..]).unwrap();
                    prop_assert_eq!(SyncRepr::parse(&p2, SRC, DST, KEY).unwrap(), r);
                }
            }
        }

        #[test]
        fn window_never_accepts_twice(seqs in proptest::collection::vec(0u64..200, 0..300)) {
            let mut w = ReplayWindow::new();
            let mut seen = std::collections::HashSet::new();
            for s in seqs {
                if w.accept(s).is_ok() {
                    prop_assert!(seen.insert(s), "accepted {} twice", s);
                }
            }
        }
    }
}

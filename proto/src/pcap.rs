//! A minimal writer for the classic libpcap capture format, so tests and the
//! simulator can hand what haven puts on the wire to Wireshark/tshark.
//!
//! Sans-IO apart from [`std::io::Write`]: the caller supplies the sink and the
//! timestamps (no clock is read here). The link type is `LINKTYPE_RAW` (101):
//! every record starts directly with an IPv4 header, which is exactly what
//! [`crate::ip`] builds, so no fake Ethernet header is needed.
//!
//! Format reference: the libpcap file format ("pcap-savefile(5)", and
//! draft-ietf-opsawg-pcap § 4–5). Fields are written little-endian with the
//! microsecond magic `0xa1b2c3d4`; readers detect the byte order from the
//! magic.

use std::io::{self, Write};
use std::time::Duration;

/// The microsecond-resolution magic number (draft-ietf-opsawg-pcap § 4).
const MAGIC_MICROS: u32 = 0xa1b2_c3d4;
/// File format version 2.4, the only one in use.
const VERSION_MAJOR: u16 = 2;
const VERSION_MINOR: u16 = 4;
/// The largest IPv4 datagram; no record is ever truncated.
pub const SNAPLEN: u32 = 65_535;
/// `LINKTYPE_RAW`: the packet begins with an IPv4 or IPv6 header.
pub const LINKTYPE_RAW: u32 = 101;

/// Writes a pcap stream of raw IPv4 packets into `W`.
#[derive(Debug)]
pub struct PcapWriter<W: Write> {
    w: W,
}

impl<W: Write> PcapWriter<W> {
    /// Writes the 24-byte global header and returns the writer.
    pub fn new(mut w: W) -> io::Result<Self> {
        let mut hdr = [0u8; 24];
        hdr[0..4].copy_from_slice(&MAGIC_MICROS.to_le_bytes());
        hdr[4..6].copy_from_slice(&VERSION_MAJOR.to_le_bytes());
        hdr[6..8].copy_from_slice(&VERSION_MINOR.to_le_bytes());
        // thiszone (GMT offset) and sigfigs are always 0 in practice.
        hdr[8..16].fill(0);
        hdr[16..20].copy_from_slice(&SNAPLEN.to_le_bytes());
        hdr[20..24].copy_from_slice(&LINKTYPE_RAW.to_le_bytes());
        w.write_all(&hdr)?;
        Ok(Self { w })
    }

    /// Appends one record: `ts` is the capture time since the Unix epoch,
    /// `ipv4_packet` the whole IP datagram (header included).
    ///
    /// Fails with `InvalidInput` when the timestamp does not fit the format's
    /// 32-bit seconds or the packet is longer than [`SNAPLEN`].
    pub fn write_packet(&mut self, ts: Duration, ipv4_packet: &[u8]) -> io::Result<()> {
        let secs = u32::try_from(ts.as_secs())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "timestamp past 2106"))?;
        let usecs = ts.subsec_micros();
        let len = u32::try_from(ipv4_packet.len())
            .ok()
            .filter(|&l| l <= SNAPLEN)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "packet over snaplen"))?;
        let mut rec = [0u8; 16];
        rec[0..4].copy_from_slice(&secs.to_le_bytes());
        rec[4..8].copy_from_slice(&usecs.to_le_bytes());
        // Captured length and original length: we never truncate.
        rec[8..12].copy_from_slice(&len.to_le_bytes());
        rec[12..16].copy_from_slice(&len.to_le_bytes());
        self.w.write_all(&rec)?;
        self.w.write_all(ipv4_packet)
    }

    /// Flushes the sink.
    pub fn flush(&mut self) -> io::Result<()> {
        self.w.flush()
    }

    /// Returns the sink (not flushed; call [`Self::flush`] first if it buffers).
    pub fn into_inner(self) -> W {
        self.w
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hex_literal::hex;

    #[test]
    fn global_header_bytes() {
        let w = PcapWriter::new(Vec::new()).unwrap();
        // magic d4c3b2a1 (LE a1b2c3d4), v2.4, zone 0, sigfigs 0,
        // snaplen 0x0000ffff, linktype 0x65 = 101.
        assert_eq!(
            w.into_inner(),
            hex!("d4c3b2a1 0200 0400 00000000 00000000 ffff0000 65000000")
        );
    }

    #[test]
    fn record_header_bytes() {
        let mut w = PcapWriter::new(Vec::new()).unwrap();
        // 1_700_000_000 s = 0x6553f100; 123_456 us = 0x0001e240.
        let ts = Duration::new(1_700_000_000, 123_456_789);
        w.write_packet(ts, &[0x45, 0x00, 0x00]).unwrap();
        let out = w.into_inner();
        assert_eq!(
            &out[24..],
            hex!("00f15365 40e20100 03000000 03000000 450000")
        );
    }

    #[test]
    fn rejects_oversized_and_far_future() {
        let mut w = PcapWriter::new(Vec::new()).unwrap();
        let big = vec![0u8; SNAPLEN as usize + 1];
        assert!(w.write_packet(Duration::ZERO, &big).is_err());
        assert!(
            w.write_packet(Duration::from_secs(u64::from(u32::MAX) + 1), &[0x45])
                .is_err()
        );
        // Nothing beyond the global header was written.
        assert_eq!(w.into_inner().len(), 24);
    }
}

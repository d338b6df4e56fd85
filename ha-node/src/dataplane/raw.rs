//! The raw IPv4 socket of the data plane: sends IP-in-IP packets (and the
//! ICMP errors and outer fragments the core builds) with their own IPv4
//! header (`IP_HDRINCL`), and receives protocol 4 packets tunnelled to the
//! VIPs [RFC 2003].
//!
//! This kernel has no `ipip` module, so nothing else claims protocol 4: a
//! raw socket bound to `IPPROTO_IPIP` receives every such packet, outer
//! header included, after the kernel reassembled it.
//!
//! Both directions are batched as the TUN side is: `recvmmsg(2)` fills up
//! to [`BATCH`] caller-owned buffers per call and `sendmmsg(2)` sends up to
//! [`BATCH`] packets per call. The `mmsghdr`/`iovec`/`sockaddr_in` arrays
//! live on the stack of the (synchronous) function that makes the call, so
//! nothing is allocated per packet and no raw pointer is held across an
//! `.await` (the tasks' futures stay `Send`). Readiness comes from one
//! [`AsyncFd`] registered for both interests; `try_io` clears it only on
//! `EAGAIN`.

use std::io;
use std::mem::MaybeUninit;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, RawFd};

use haven_proto::ip::protocol;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// Most packets one `recvmmsg(2)` or `sendmmsg(2)` call moves.
pub const BATCH: usize = 32;

/// A raw IPv4 socket for protocol 4 with `IP_HDRINCL`.
#[derive(Debug)]
pub struct RawSocket {
    io: AsyncFd<Socket>,
}

/// What [`RawSocket::send_batch`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sent {
    /// Packets the kernel took.
    pub sent: usize,
    /// Packets it refused (the first error is in `error`).
    pub failed: usize,
    /// The first refusal's error number, if any.
    pub error: Option<i32>,
}

impl RawSocket {
    /// Opens the socket. Needs CAP_NET_RAW.
    pub fn open() -> io::Result<RawSocket> {
        let s = Socket::new(
            Domain::IPV4,
            Type::RAW,
            Some(Protocol::from(i32::from(protocol::IPIP))),
        )?;
        // The core writes the outer header itself (source = VIP, TTL, TOS,
        // DF copied [RFC 2003 § 3.1]); the header's protocol field is used
        // as written, so ICMP errors and the fragments of UDP tunnel data
        // leave through this socket too. With IP_HDRINCL Linux never
        // fragments: the core does (module docs of `dataplane`).
        s.set_header_included_v4(true)?;
        s.set_nonblocking(true)?;
        let _ = s.set_recv_buffer_size(4 << 20);
        let _ = s.set_send_buffer_size(4 << 20);
        // SAFETY: the `Socket` owns a valid open descriptor, returns the
        // same one from every `as_raw_fd`, and is closed only when the
        // `AsyncFd` (which owns it) is dropped.
        let io =
            unsafe { AsyncFd::register_with_interest(s, Interest::READABLE | Interest::WRITABLE)? };
        Ok(RawSocket { io })
    }

    /// Sends complete IPv4 packets, each to its address, in `sendmmsg(2)`
    /// calls of up to [`BATCH`]. A full send buffer waits until the socket
    /// is writable again (back-pressure on the reading task rather than a
    /// silent drop); a packet the kernel refuses (`EMSGSIZE`, `EPERM`, no
    /// route) is counted in the result and skipped.
    pub async fn send_batch<'a>(
        &self,
        packets: impl Iterator<Item = (Ipv4Addr, &'a [u8])>,
    ) -> Sent {
        let mut report = Sent::default();
        let mut chunk: [(Ipv4Addr, &[u8]); BATCH] = [(Ipv4Addr::UNSPECIFIED, &[]); BATCH];
        let mut packets = packets.peekable();
        while packets.peek().is_some() {
            let mut k = 0;
            for (slot, p) in chunk.iter_mut().zip(packets.by_ref()) {
                *slot = p;
                k += 1;
            }
            let mut rest = chunk.get(..k).unwrap_or_default();
            while !rest.is_empty() {
                let mut guard = match self.io.writable().await {
                    Ok(g) => g,
                    Err(e) => {
                        report.failed += rest.len();
                        report.error.get_or_insert(e.raw_os_error().unwrap_or(0));
                        break;
                    }
                };
                match guard.try_io(|fd| send_mmsg(fd.as_raw_fd(), rest)) {
                    Ok(Ok(n)) => {
                        report.sent += n;
                        rest = rest.get(n.max(1)..).unwrap_or_default();
                    }
                    // sendmmsg reports an error only for the first packet
                    // of the call: skip that one and go on.
                    Ok(Err(e)) => {
                        report.failed += 1;
                        report.error.get_or_insert(e.raw_os_error().unwrap_or(0));
                        rest = rest.get(1..).unwrap_or_default();
                    }
                    // EAGAIN: readiness cleared, wait for writable.
                    Err(_) => {}
                }
            }
        }
        report
    }

    /// Waits for packets and receives every ready one (up to `bufs.len()`,
    /// at most [`BATCH`] per call) into `bufs` with `recvmmsg(2)`; `lens`
    /// gets their lengths (whole IPv4 packets).
    pub async fn recv_batch(&self, bufs: &mut [Vec<u8>], lens: &mut Vec<usize>) -> io::Result<()> {
        lens.clear();
        loop {
            let mut guard = self.io.readable().await?;
            match guard.try_io(|fd| recv_mmsg(fd.as_raw_fd(), bufs, lens)) {
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }
}

/// One `sendmmsg(2)` call for up to [`BATCH`] of `packets`; returns how
/// many the kernel took (at least one), or the first packet's error.
fn send_mmsg(fd: RawFd, packets: &[(Ipv4Addr, &[u8])]) -> io::Result<usize> {
    // SAFETY (all three): plain C structs of integers and pointers, for
    // which all zeroes (null pointers, zero lengths) is a valid value.
    let mut addrs: [libc::sockaddr_in; BATCH] = unsafe { std::mem::zeroed() };
    let mut iovs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
    let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    let mut n = 0usize;
    for (((p, a), v), h) in packets
        .iter()
        .zip(addrs.iter_mut())
        .zip(iovs.iter_mut())
        .zip(hdrs.iter_mut())
    {
        *a = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from(p.0).to_be(),
            },
            sin_zero: [0; 8],
        };
        // sendmmsg only reads through iov_base; the cast to *mut is what
        // the C struct asks for.
        v.iov_base = p.1.as_ptr().cast_mut().cast();
        v.iov_len = p.1.len();
        h.msg_hdr.msg_name = (a as *mut libc::sockaddr_in).cast();
        h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        h.msg_hdr.msg_iov = v;
        h.msg_hdr.msg_iovlen = 1;
        n += 1;
    }
    if n == 0 {
        return Ok(0);
    }
    // SAFETY: `hdrs[..n]` are initialised mmsghdrs whose name and iovec
    // pointers point into `addrs`, `iovs` and the caller's packets, all
    // alive and unmoved until the call returns; the kernel only reads the
    // packets and writes `msg_len`.
    let rc =
        unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr(), n as libc::c_uint, libc::MSG_DONTWAIT) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc.unsigned_abs() as usize)
}

/// One `recvmmsg(2)` call into up to [`BATCH`] of `bufs`; pushes each
/// packet's length to `lens`. `WouldBlock` when nothing is queued.
fn recv_mmsg(fd: RawFd, bufs: &mut [Vec<u8>], lens: &mut Vec<usize>) -> io::Result<()> {
    // SAFETY: as in `send_mmsg`: all-zero iovecs and mmsghdrs are valid.
    let mut iovs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
    let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    let mut n = 0usize;
    for ((b, v), h) in bufs.iter_mut().zip(iovs.iter_mut()).zip(hdrs.iter_mut()) {
        // SAFETY: recvmmsg writes at most `b.len()` bytes into memory that
        // is initialised already; viewing it as possibly-uninitialised is
        // sound (`u8` and `MaybeUninit<u8>` share a layout), and `b` is
        // exclusively borrowed for the call.
        let s: &mut [MaybeUninit<u8>] =
            unsafe { std::slice::from_raw_parts_mut(b.as_mut_ptr().cast(), b.len()) };
        v.iov_base = s.as_mut_ptr().cast();
        v.iov_len = s.len();
        h.msg_hdr.msg_iov = v;
        h.msg_hdr.msg_iovlen = 1;
        n += 1;
    }
    if n == 0 {
        return Ok(());
    }
    // SAFETY: `hdrs[..n]` point at `iovs[..n]`, which point at `n` distinct
    // live buffers of the stated lengths, exclusively borrowed until the
    // call returns; no names or control data are asked for; a null timeout
    // with MSG_DONTWAIT returns at once.
    let rc = unsafe {
        libc::recvmmsg(
            fd,
            hdrs.as_mut_ptr(),
            n as libc::c_uint,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    for h in hdrs.iter().take(rc.unsigned_abs() as usize) {
        // A raw IPv4 packet never exceeds a 65535-octet buffer, so
        // MSG_TRUNC cannot occur; a truncated one would fail the core's
        // length checks anyway.
        lens.push(h.msg_len as usize);
    }
    Ok(())
}

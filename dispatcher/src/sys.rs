//! The few system calls the standard library and `socket2` do not wrap:
//! an AF_PACKET socket bound to the rack interface, batched receive and send
//! (`recvmmsg(2)`, `sendmmsg(2)`; DESIGN.md §5: "one packet per syscall is
//! not a dispatcher"), `poll(2)` for the control loop and
//! `if_nametoindex(3)`. Every `unsafe` block says why it is sound.
//!
//! The batch functions build their `iovec`/`mmsghdr` arrays on the stack for
//! each call over buffers the caller preallocated, so the packet path never
//! allocates and no self-referential structure outlives a call.

use std::ffi::CString;
use std::io;
use std::mem::{MaybeUninit, size_of};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// Datagrams per batch.
pub const BATCH: usize = 64;

/// What one received datagram was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecvMeta {
    /// Its source.
    pub src: SocketAddrV4,
    /// Its length (the payload at the caller's offset).
    pub len: usize,
    /// The kernel cut it short (longer than the buffer).
    pub truncated: bool,
    /// AF_PACKET with [`packet_rx_socket`]: the frame's layer-4 checksum
    /// is not filled in yet (`TP_STATUS_CSUMNOTREADY`: a local sender's
    /// checksum offload, as over veth); whoever sends it on must complete it.
    pub csum_not_ready: bool,
}

impl Default for RecvMeta {
    fn default() -> Self {
        Self {
            src: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
            len: 0,
            truncated: false,
            csum_not_ready: false,
        }
    }
}

/// One datagram to send: `bufs[buf][start..start + len]`, to `dst` (or the
/// socket's connected peer when `None`; AF_PACKET frames carry their own).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TxItem {
    /// Index into the caller's buffers.
    pub buf: usize,
    /// Where the datagram starts in that buffer.
    pub start: usize,
    /// Frame length.
    pub len: usize,
    /// Destination of a UDP datagram.
    pub dst: Option<SocketAddrV4>,
}

fn sockaddr_in(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// `if_nametoindex(3)`.
pub fn ifindex(name: &str) -> io::Result<u32> {
    let c = CString::new(name).map_err(|_| io::Error::other("NUL in interface name"))?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(i)
    }
}

/// An AF_PACKET/SOCK_RAW socket bound to interface `ifindex` for sending
/// whole Ethernet frames. Protocol 0: it receives nothing, so the forwarding
/// path never sees its own output [packet(7)].
pub fn packet_socket(ifindex: u32) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = 0;
    sll.sll_ifindex = i32::try_from(ifindex).map_err(|_| io::Error::other("ifindex range"))?;
    // SAFETY: `sll` is a valid sockaddr_ll and the length is its size.
    let r = unsafe {
        libc::bind(
            owned.as_raw_fd(),
            (&raw const sll).cast::<libc::sockaddr>(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // A deep send queue absorbs bursts after a failover.
    let sz: libc::c_int = 4 << 20;
    // SAFETY: SO_SNDBUF takes an int; pointer and length describe `sz`.
    unsafe {
        libc::setsockopt(
            owned.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&raw const sz).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    Ok(owned)
}

/// An AF_PACKET/SOCK_RAW socket that receives the IPv4 frames addressed to
/// this host on interface `ifindex` which the classic BPF program `filter`
/// accepts (`SO_ATTACH_FILTER`, socket(7)), with a receive timeout of `idle`.
///
/// The socket is made with protocol 0 (receives nothing), the filter is
/// attached, and only then is it bound to `ETH_P_IP` on the interface, so
/// no unfiltered frame is ever queued. `ETH_P_IP` rather than `ETH_P_ALL`:
/// the kernel taps outgoing frames only for `ETH_P_ALL` sockets, so our own
/// forwarded frames never come back.
pub fn packet_rx_socket(
    ifindex: u32,
    filter: &[crate::frame::BpfInsn],
    idle: Duration,
) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut prog: Vec<libc::sock_filter> = filter
        .iter()
        .map(|i| libc::sock_filter {
            code: i.code,
            jt: i.jt,
            jf: i.jf,
            k: i.k,
        })
        .collect();
    let fprog = libc::sock_fprog {
        len: u16::try_from(prog.len()).map_err(|_| io::Error::other("BPF program too long"))?,
        filter: prog.as_mut_ptr(),
    };
    // SAFETY: SO_ATTACH_FILTER takes a sock_fprog whose `filter` points at
    // `len` instructions; `prog` outlives the call (the kernel copies it).
    let r = unsafe {
        libc::setsockopt(
            owned.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&raw const fprog).cast(),
            size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // PACKET_AUXDATA: each frame says whether its checksum is complete.
    let one: libc::c_int = 1;
    // SAFETY: PACKET_AUXDATA takes an int; pointer and length describe `one`.
    let r = unsafe {
        libc::setsockopt(
            owned.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_AUXDATA,
            (&raw const one).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let sz: libc::c_int = 8 << 20;
    // SAFETY: SO_RCVBUF takes an int; pointer and length describe `sz`.
    unsafe {
        libc::setsockopt(
            owned.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&raw const sz).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    set_recv_timeout(std::os::fd::AsFd::as_fd(&owned), idle)?;
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = (libc::ETH_P_IP as u16).to_be();
    sll.sll_ifindex = i32::try_from(ifindex).map_err(|_| io::Error::other("ifindex range"))?;
    // SAFETY: `sll` is a valid sockaddr_ll and the length is its size.
    let r = unsafe {
        libc::bind(
            owned.as_raw_fd(),
            (&raw const sll).cast::<libc::sockaddr>(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(owned)
}

/// Receives up to `min(bufs.len(), metas.len(), BATCH)` IPv4 UDP datagrams
/// with one `recvmmsg(2)`, each into `bufs[i][offset..]`. Blocks until at
/// least one arrives (or the socket's receive timeout passes:
/// `WouldBlock`), then takes what else is queued (`MSG_WAITFORONE`).
///
/// Also used on raw IP and AF_PACKET sockets: the whole packet or frame
/// lands at `offset`; `src` is then meaningless for AF_PACKET (its
/// `sockaddr_ll` is cut to the `sockaddr_in` buffer by the kernel).
pub fn recv_batch(
    fd: BorrowedFd<'_>,
    bufs: &mut [Vec<u8>],
    offset: usize,
    metas: &mut [RecvMeta],
) -> io::Result<usize> {
    recv_batch_inner(fd, bufs, offset, metas, false)
}

/// [`recv_batch`] for a [`packet_rx_socket`]: whole frames at offset 0,
/// with [`RecvMeta::csum_not_ready`] from each frame's `PACKET_AUXDATA`.
pub fn recv_frames(
    fd: BorrowedFd<'_>,
    bufs: &mut [Vec<u8>],
    metas: &mut [RecvMeta],
) -> io::Result<usize> {
    recv_batch_inner(fd, bufs, 0, metas, true)
}

/// Room for one `PACKET_AUXDATA` control message (cmsghdr 16 + auxdata 20,
/// aligned), as `u64`s for alignment.
const CMSG_WORDS: usize = 8;

fn recv_batch_inner(
    fd: BorrowedFd<'_>,
    bufs: &mut [Vec<u8>],
    offset: usize,
    metas: &mut [RecvMeta],
    aux: bool,
) -> io::Result<usize> {
    let n = bufs.len().min(metas.len()).min(BATCH);
    let mut ctl = [[0u64; CMSG_WORDS]; BATCH];
    // SAFETY: these C structs are plain old data; all-zero is valid.
    let mut iov: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut addrs: [libc::sockaddr_in; BATCH] = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    for (i, b) in bufs.iter_mut().take(n).enumerate() {
        let Some(tail) = b.get_mut(offset..) else {
            return Err(io::Error::other("receive buffer shorter than offset"));
        };
        if let (Some(v), Some(h), Some(a)) = (iov.get_mut(i), hdrs.get_mut(i), addrs.get_mut(i)) {
            v.iov_base = tail.as_mut_ptr().cast();
            v.iov_len = tail.len();
            h.msg_hdr.msg_name = (a as *mut libc::sockaddr_in).cast();
            h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_hdr.msg_iov = v as *mut libc::iovec;
            h.msg_hdr.msg_iovlen = 1;
            if aux && let Some(c) = ctl.get_mut(i) {
                h.msg_hdr.msg_control = c.as_mut_ptr().cast();
                h.msg_hdr.msg_controllen = size_of::<[u64; CMSG_WORDS]>() as _;
            }
        }
    }
    // SAFETY: the first `n` headers point at live, exclusively borrowed
    // buffers (`bufs`) and at `iov`/`addrs`/`ctl`, which outlive the call;
    // the kernel writes at most iov_len/msg_namelen/msg_controllen octets
    // into them.
    let got = unsafe {
        libc::recvmmsg(
            fd.as_raw_fd(),
            hdrs.as_mut_ptr(),
            n as libc::c_uint,
            libc::MSG_WAITFORONE,
            std::ptr::null_mut(),
        )
    };
    if got < 0 {
        return Err(io::Error::last_os_error());
    }
    let got = usize::try_from(got).unwrap_or(0);
    for (i, m) in metas.iter_mut().take(got).enumerate() {
        let (Some(h), Some(a)) = (hdrs.get(i), addrs.get(i)) else {
            continue;
        };
        *m = RecvMeta {
            src: SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            ),
            len: h.msg_len as usize,
            truncated: h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
            csum_not_ready: aux && aux_status(&h.msg_hdr) & libc::TP_STATUS_CSUMNOTREADY != 0,
        };
    }
    Ok(got)
}

/// The `tp_status` of a received message's `PACKET_AUXDATA`, 0 if absent.
fn aux_status(h: &libc::msghdr) -> u32 {
    // SAFETY: `h` was filled by recvmmsg: msg_control/msg_controllen
    // describe our control buffer (or are null/0), which the CMSG macros
    // walk without reading past msg_controllen.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(h);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_PACKET
                && (*c).cmsg_type == libc::PACKET_AUXDATA
                && (*c).cmsg_len as usize
                    >= libc::CMSG_LEN(size_of::<libc::tpacket_auxdata>() as u32) as usize
            {
                let d = libc::CMSG_DATA(c).cast::<libc::tpacket_auxdata>();
                return std::ptr::read_unaligned(d).tp_status;
            }
            c = libc::CMSG_NXTHDR(h, c);
        }
    }
    0
}

/// Sends `items` with as few `sendmmsg(2)` calls as the kernel allows.
/// Returns how many were sent and the error that stopped the rest (the
/// datagram at that point is skipped and counted by the caller; the batch
/// goes on after it).
pub fn send_batch(
    fd: BorrowedFd<'_>,
    bufs: &[Vec<u8>],
    items: &[TxItem],
) -> (usize, usize, Option<io::Error>) {
    let n = items.len().min(BATCH);
    // SAFETY: plain old data; all-zero is valid.
    let mut iov: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut addrs: [libc::sockaddr_in; BATCH] = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    for (i, it) in items.iter().take(n).enumerate() {
        let frame = bufs
            .get(it.buf)
            .and_then(|b| b.get(it.start..it.start.saturating_add(it.len)))
            .unwrap_or_default();
        if let (Some(v), Some(h), Some(a)) = (iov.get_mut(i), hdrs.get_mut(i), addrs.get_mut(i)) {
            v.iov_base = frame.as_ptr().cast_mut().cast();
            v.iov_len = frame.len();
            if let Some(d) = it.dst {
                *a = sockaddr_in(d);
                h.msg_hdr.msg_name = (a as *mut libc::sockaddr_in).cast();
                h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            }
            h.msg_hdr.msg_iov = v as *mut libc::iovec;
            h.msg_hdr.msg_iovlen = 1;
        }
    }
    let (mut sent, mut failed, mut last_err) = (0usize, 0usize, None);
    let mut at = 0usize;
    while at < n {
        let Some(rest) = hdrs.get_mut(at..n) else {
            break;
        };
        // SAFETY: the headers point at `bufs` (borrowed for the call; the
        // kernel only reads them) and at `iov`/`addrs` on this stack frame.
        let r = unsafe {
            libc::sendmmsg(
                fd.as_raw_fd(),
                rest.as_mut_ptr(),
                rest.len() as libc::c_uint,
                0,
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            // Skip the datagram that failed; keep the rest of the batch.
            failed += 1;
            at += 1;
            last_err = Some(e);
        } else {
            let r = usize::try_from(r).unwrap_or(0).max(1);
            sent += r;
            at += r;
        }
    }
    (sent, failed, last_err)
}

/// Sets `SO_RCVTIMEO` so blocking receives return `WouldBlock` after `t`
/// (the workers look at their stop flag that often).
pub fn set_recv_timeout(fd: BorrowedFd<'_>, t: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: t.as_secs() as libc::time_t,
        tv_usec: libc::suseconds_t::from(t.subsec_micros()),
    };
    // SAFETY: SO_RCVTIMEO takes a timeval; pointer and length describe `tv`.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `poll(2)` for readability of up to 8 descriptors; returns a bit mask of
/// the readable ones (0 on timeout or EINTR).
pub fn poll_readable(fds: &[BorrowedFd<'_>], timeout: Duration) -> io::Result<u32> {
    let mut pfds = [MaybeUninit::<libc::pollfd>::uninit(); 8];
    let n = fds.len().min(8);
    for (p, fd) in pfds.iter_mut().zip(fds.iter().take(n)) {
        p.write(libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
    }
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: the first `n` entries were initialised just above, and poll
    // touches only those `n`.
    let r = unsafe {
        libc::poll(
            pfds.as_mut_ptr().cast::<libc::pollfd>(),
            n as libc::nfds_t,
            ms,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(0)
        } else {
            Err(e)
        };
    }
    let mut mask = 0u32;
    for (i, p) in pfds.iter().take(n).enumerate() {
        // SAFETY: entries below `n` were initialised above.
        let p = unsafe { p.assume_init_ref() };
        if p.revents & (libc::POLLIN | libc::POLLERR | libc::POLLHUP) != 0 {
            mask |= 1 << i;
        }
    }
    Ok(mask)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsFd;

    #[test]
    fn batch_roundtrip_on_loopback() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let SocketAddr4(dst) = SocketAddr4::of(&rx);
        let SocketAddr4(me) = SocketAddr4::of(&tx);
        let bufs: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i; 10 + usize::from(i)]).collect();
        let items: Vec<TxItem> = (0..3)
            .map(|i| TxItem {
                buf: i,
                start: 0,
                len: 10 + i,
                dst: Some(dst),
            })
            .collect();
        let (sent, failed, err) = send_batch(tx.as_fd(), &bufs, &items);
        assert_eq!((sent, failed), (3, 0), "{err:?}");
        set_recv_timeout(rx.as_fd(), Duration::from_secs(2)).unwrap();
        let mut rbufs = vec![vec![0u8; 64]; 4];
        let mut metas = [RecvMeta::default(); 4];
        let mut got = 0;
        while got < 3 {
            let n = recv_batch(rx.as_fd(), &mut rbufs[got..], 4, &mut metas[got..]).unwrap();
            got += n;
        }
        for i in 0..3 {
            assert_eq!(metas[i].src, me);
            assert_eq!(metas[i].len, 10 + i);
            assert_eq!(rbufs[i][4..4 + 10 + i], vec![i as u8; 10 + i][..]);
            assert_eq!(rbufs[i][..4], [0, 0, 0, 0]);
        }
        assert_eq!(
            poll_readable(&[rx.as_fd()], Duration::from_millis(1)).unwrap(),
            0
        );
    }

    struct SocketAddr4(SocketAddrV4);
    impl SocketAddr4 {
        fn of(s: &UdpSocket) -> Self {
            match s.local_addr().unwrap() {
                std::net::SocketAddr::V4(a) => Self(a),
                std::net::SocketAddr::V6(_) => unreachable!(),
            }
        }
    }
}

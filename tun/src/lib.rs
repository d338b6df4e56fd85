//! # haven-tun
//!
//! Opens `/dev/net/tun` and attaches the descriptor to a TUN device with
//! `TUNSETIFF`, `IFF_TUN | IFF_NO_PI` (bare IPv4 packets, no 4-octet
//! packet-information prefix), non-blocking and close-on-exec. The device is
//! not persistent: it and its routes vanish when the descriptor is closed.
//!
//! One implementation for the two users: the home agent's data plane
//! (`haven-ha-node`'s `dataplane::tun`, which puts the descriptor on an
//! `AsyncFd`) and the lab's dual mobile node (`haven-cluster-tests`'
//! `dual::open_tun`), which does not depend on the daemon crate. No TUN
//! crate is in the workspace's registry mirror, and the part needed is this
//! one ioctl; setting the device up, its MTU and routes stays with the
//! callers (`ip(8)`).

#![deny(unsafe_op_in_unsafe_fn)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Longest device name (IFNAMSIZ less the terminating NUL).
pub const MAX_NAME_LEN: usize = libc::IFNAMSIZ - 1;

/// Opens `/dev/net/tun` and attaches it to the TUN device `name` (created
/// if it does not exist) with `IFF_TUN | IFF_NO_PI`, non-blocking.
///
/// Checks only what the ioctl relies on (a name of 1 to [`MAX_NAME_LEN`]
/// octets without NUL); callers with stricter rules (the daemon's
/// configuration) check those first.
///
/// # Errors
/// [`io::ErrorKind::InvalidInput`] for a bad name; the kernel's error when it
/// refuses (no `/dev/net/tun`, no CAP_NET_ADMIN, the name taken by another
/// kind of device).
pub fn open(name: &str) -> io::Result<OwnedFd> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() > MAX_NAME_LEN || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad TUN device name {name:?}"),
        ));
    }
    // SAFETY: the path is a NUL-terminated literal; open(2) has no other
    // preconditions. The result is checked before use.
    let raw = unsafe {
        libc::open(
            c"/dev/net/tun".as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a descriptor open(2) just returned and nothing else
    // owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain old data (arrays, integers, a union of them):
    // all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq`; `req` is one,
    // alive and exclusively borrowed for the call, and the name is
    // NUL-terminated (at most IFNAMSIZ-1 octets, checked above, over a
    // zeroed array).
    let rc = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::TUNSETIFF as _,
            &mut req as *mut libc::ifreq,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_names_are_refused_before_the_kernel_is_asked() {
        for bad in ["", "sixteen-octets!!", "a\0b"] {
            let e = open(bad).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
            assert!(e.to_string().contains("bad TUN device name"), "{e}");
        }
        // IFNAMSIZ-1 octets is the longest accepted name: it gets past the
        // check (to the kernel, which may refuse for want of privilege).
        let longest = "x".repeat(MAX_NAME_LEN);
        if let Err(e) = open(&longest) {
            assert_ne!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
        }
    }

    fn index_of(name: &str) -> u32 {
        let c = std::ffi::CString::new(name).unwrap();
        // SAFETY: `c` is a NUL-terminated string alive for the call.
        unsafe { libc::if_nametoindex(c.as_ptr()) }
    }

    #[test]
    fn opens_a_nonblocking_tun_that_vanishes_on_close() {
        // SAFETY: geteuid(2) has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIP: needs root (a network namespace and a TUN device)");
            return;
        }
        std::thread::spawn(|| {
            // SAFETY: unshare(2) moves only this thread into a new network
            // namespace, which dies with it: the device never shows on the
            // host.
            assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0);
            let name = "hvtun0";
            assert_eq!(index_of(name), 0, "no such device yet");
            let fd = open(name).expect("open TUN");
            assert_ne!(index_of(name), 0, "the device exists while open");
            // SAFETY: fcntl(2) F_GETFL/F_GETFD on a descriptor `fd` owns.
            let (fl, fdfl) = unsafe {
                (
                    libc::fcntl(fd.as_raw_fd(), libc::F_GETFL),
                    libc::fcntl(fd.as_raw_fd(), libc::F_GETFD),
                )
            };
            assert_ne!(fl & libc::O_NONBLOCK, 0, "non-blocking");
            assert_ne!(fdfl & libc::FD_CLOEXEC, 0, "close-on-exec");
            // SAFETY: an ifreq is plain old data; TUNGETIFF writes one,
            // alive and exclusively borrowed for the call.
            let flags = unsafe {
                let mut req: libc::ifreq = std::mem::zeroed();
                assert_eq!(
                    libc::ioctl(fd.as_raw_fd(), libc::TUNGETIFF as _, &mut req),
                    0
                );
                req.ifr_ifru.ifru_flags
            };
            let want = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
            assert_eq!(flags & want, want, "IFF_TUN | IFF_NO_PI");
            // Down and empty: a read does not block.
            let mut buf = [0u8; 64];
            // SAFETY: `buf` is a live buffer of `buf.len()` writable octets.
            let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            assert_eq!(n, -1);
            assert_eq!(io::Error::last_os_error().kind(), io::ErrorKind::WouldBlock);
            drop(fd);
            assert_eq!(index_of(name), 0, "not persistent: gone on close");
        })
        .join()
        .expect("namespace thread");
    }
}

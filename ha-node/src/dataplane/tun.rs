//! The TUN driver: one layer-3 device per realm, the home network side of
//! the data plane ([DESIGN.md § 6]).
//!
//! No TUN crate is in the workspace's registry mirror, and the part needed
//! is small: open `/dev/net/tun`, `TUNSETIFF` with `IFF_TUN | IFF_NO_PI`
//! (bare IPv4 packets, no 4-octet packet-information prefix), then set the
//! device up, its MTU and the route for the realm's home prefix with
//! `ip(8)`. The device is not persistent: it and its routes vanish when the
//! descriptor is closed, so a killed daemon leaves nothing behind.
//!
//! Reads and writes are non-blocking on a [`tokio::io::unix::AsyncFd`]; the
//! read task drains every ready packet per wake-up (a batch) into buffers
//! it reuses.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Command;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::config::Prefix;

/// Longest device name (IFNAMSIZ less the terminating NUL).
pub const MAX_NAME_LEN: usize = libc::IFNAMSIZ - 1;
const _: () = assert!(MAX_NAME_LEN == super::MAX_TUN_NAME_LEN);

/// An open TUN device.
#[derive(Debug)]
pub struct Tun {
    fd: AsyncFd<OwnedFd>,
    name: String,
}

mod sys {
    use std::io;
    use std::os::fd::{FromRawFd, OwnedFd};

    /// Opens `/dev/net/tun` and attaches it to a TUN device called `name`.
    pub fn open(name: &str) -> io::Result<OwnedFd> {
        let bytes = name.as_bytes();
        // The configuration was validated already; checked again because
        // the ioctl below relies on the length.
        crate::dataplane::validate_tun_name(name)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        if bytes.len() > super::MAX_NAME_LEN {
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
        // SAFETY: `raw` is a descriptor open(2) just returned and nothing
        // else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: ifreq is plain old data (arrays, integers, a union of
        // them): all zeroes is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (d, s) in req.ifr_name.iter_mut().zip(bytes) {
            *d = *s as libc::c_char;
        }
        req.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes one `struct ifreq`; `req` is
        // one, alive and exclusively borrowed for the call, and the name is
        // NUL-terminated (at most IFNAMSIZ-1 bytes over a zeroed array).
        let rc = unsafe {
            libc::ioctl(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                libc::TUNSETIFF as _,
                &mut req as *mut libc::ifreq,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(fd)
    }
}

fn ip(args: &[&str]) -> io::Result<()> {
    let out = Command::new("ip").args(args).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

impl Tun {
    /// Creates the device `name`, sets its MTU, brings it up and routes
    /// `prefix` into it. Needs CAP_NET_ADMIN.
    pub fn create(name: &str, mtu: u16, prefix: Prefix) -> io::Result<Tun> {
        let fd = sys::open(name)?;
        ip(&["link", "set", "dev", name, "mtu", &mtu.to_string(), "up"])?;
        ip(&["route", "replace", &prefix.to_string(), "dev", name])?;
        // SAFETY: `OwnedFd` holds a valid open descriptor and returns the
        // same one from every `as_raw_fd`; it is closed only when the
        // `AsyncFd` (which owns it) is dropped.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE)? };
        Ok(Tun {
            fd,
            name: name.to_owned(),
        })
    }

    /// The device name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Waits until at least one packet is ready, then reads packets into
    /// `bufs` (one per buffer) until none is left or the buffers are full.
    /// Returns the length of each packet read, in `lens`.
    pub async fn read_batch(&self, bufs: &mut [Vec<u8>], lens: &mut Vec<usize>) -> io::Result<()> {
        lens.clear();
        loop {
            let mut guard = self.fd.readable().await?;
            for b in bufs.iter_mut() {
                let fd = self.fd.get_ref().as_raw_fd();
                // SAFETY: `b` is a live, exclusively borrowed buffer of
                // `b.len()` writable bytes; read(2) writes at most that many.
                let n = unsafe { libc::read(fd, b.as_mut_ptr().cast(), b.len()) };
                if n < 0 {
                    let e = io::Error::last_os_error();
                    if e.kind() == io::ErrorKind::WouldBlock {
                        guard.clear_ready();
                        break;
                    }
                    if lens.is_empty() {
                        return Err(e);
                    }
                    break;
                }
                lens.push(n.unsigned_abs());
            }
            if !lens.is_empty() {
                return Ok(());
            }
        }
    }

    /// Writes one packet (non-blocking: a full queue drops it, as a full
    /// interface queue would).
    pub fn write(&self, packet: &[u8]) -> io::Result<()> {
        let fd = self.fd.get_ref().as_raw_fd();
        // SAFETY: `packet` is a live buffer of `packet.len()` readable
        // bytes; write(2) only reads them.
        let n = unsafe { libc::write(fd, packet.as_ptr().cast(), packet.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

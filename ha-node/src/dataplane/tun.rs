//! The TUN driver: one layer-3 device per realm, the home network side of
//! the data plane ([DESIGN.md § 6]).
//!
//! No TUN crate is in the workspace's registry mirror, and the part needed
//! is small: open `/dev/net/tun`, `TUNSETIFF` with `IFF_TUN | IFF_NO_PI`
//! (bare IPv4 packets, no 4-octet packet-information prefix; the
//! workspace's `haven-tun`, shared with the lab's mobile node), then set the
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
pub use haven_tun::MAX_NAME_LEN;
const _: () = assert!(MAX_NAME_LEN == super::MAX_TUN_NAME_LEN);

/// An open TUN device.
#[derive(Debug)]
pub struct Tun {
    fd: AsyncFd<OwnedFd>,
    name: String,
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
        // The configuration was validated already; checked again because
        // `haven_tun::open` checks only what its ioctl relies on.
        super::validate_tun_name(name)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let fd = haven_tun::open(name)?;
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

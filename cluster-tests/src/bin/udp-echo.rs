//! `udp-echo`: the lab's reachability probe (the test machines have no ping
//! or socat).
//!
//! * `udp-echo serve ADDR:PORT` answers every datagram with
//!   `from <src ip>:<src port> <payload>`, so a test sees the source address
//!   the server observed (behind a NAT: the NAT's public address).
//! * `udp-echo send ADDR:PORT PAYLOAD [TIMEOUT_MS]` sends one datagram, prints
//!   the reply on stdout and exits 0, or exits 1 when no reply came in time
//!   (2 on usage errors).

use std::net::{SocketAddr, UdpSocket};
use std::process::ExitCode;
use std::time::Duration;

fn serve(addr: SocketAddr) -> std::io::Result<()> {
    let s = UdpSocket::bind(addr)?;
    println!("listening {}", s.local_addr()?);
    let mut buf = [0u8; 2048];
    loop {
        let (n, src) = s.recv_from(&mut buf)?;
        let mut reply = format!("from {src} ").into_bytes();
        reply.extend_from_slice(buf.get(..n).unwrap_or_default());
        // A send error (e.g. the path just went down) must not stop the
        // server: the test decides what reachability means.
        if let Err(e) = s.send_to(&reply, src) {
            eprintln!("send to {src}: {e}");
        }
    }
}

fn send(addr: SocketAddr, payload: &str, timeout: Duration) -> std::io::Result<Option<String>> {
    let bind: SocketAddr = if addr.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let s = UdpSocket::bind(bind)?;
    s.set_read_timeout(Some(timeout))?;
    s.send_to(payload.as_bytes(), addr)?;
    let mut buf = [0u8; 2048];
    match s.recv_from(&mut buf) {
        Ok((n, _)) => Ok(Some(
            String::from_utf8_lossy(buf.get(..n).unwrap_or_default()).into_owned(),
        )),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let addr = |s: Option<&String>| s.and_then(|a| a.parse::<SocketAddr>().ok());
    match args.first().map(String::as_str) {
        Some("serve") => match addr(args.get(1)) {
            Some(a) => match serve(a) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("udp-echo serve {a}: {e}");
                    ExitCode::from(1)
                }
            },
            None => usage(),
        },
        Some("send") => {
            let (Some(a), Some(payload)) = (addr(args.get(1)), args.get(2)) else {
                return usage();
            };
            let ms = args.get(3).and_then(|t| t.parse().ok()).unwrap_or(1000);
            match send(a, payload, Duration::from_millis(ms)) {
                Ok(Some(reply)) => {
                    println!("{reply}");
                    ExitCode::SUCCESS
                }
                Ok(None) => {
                    eprintln!("no reply from {a} within {ms} ms");
                    ExitCode::from(1)
                }
                Err(e) => {
                    // e.g. ENETUNREACH while partitioned: no reply either.
                    eprintln!("udp-echo send {a}: {e}");
                    ExitCode::from(1)
                }
            }
        }
        _ => usage(),
    }
}

fn usage() -> ExitCode {
    eprintln!("usage: udp-echo serve ADDR:PORT | udp-echo send ADDR:PORT PAYLOAD [TIMEOUT_MS]");
    ExitCode::from(2)
}

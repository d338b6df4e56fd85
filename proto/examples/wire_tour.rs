//! A tour of every message kind haven-proto emits.
//!
//! Without arguments, prints each message kind with a one-line description
//! and a hex dump. With `--seeds DIR`, writes each one as a fuzz seed into
//! `DIR/<target>/<name>.bin` (targets: registration, extensions, udptun, vrrp,
//! sync); `scripts/fuzz.sh` copies them into the (ignored) corpus. With
//! `--pcap FILE`, writes every complete datagram into a capture for
//! Wireshark.
//!
//! ```text
//! cargo run -p haven-proto --example wire_tour -- --seeds proto/fuzz/seeds
//! ```

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;
use std::{env, fs, io};

use haven_proto::pcap::PcapWriter;

#[path = "../tests/support/catalog.rs"]
mod catalog;

fn hexdump(bytes: &[u8]) {
    for (i, line) in bytes.chunks(16).enumerate() {
        let hex: Vec<String> = line.iter().map(|b| format!("{b:02x}")).collect();
        println!("    {:04x}  {}", i * 16, hex.join(" "));
    }
}

fn write_seeds(dir: &Path) -> io::Result<()> {
    for s in catalog::all() {
        let d = dir.join(s.target);
        fs::create_dir_all(&d)?;
        let path = d.join(format!("{}.bin", s.name));
        fs::write(&path, &s.seed)?;
        println!("{} ({} bytes)", path.display(), s.seed.len());
    }
    Ok(())
}

fn write_pcap(path: &Path) -> io::Result<()> {
    let mut w = PcapWriter::new(io::BufWriter::new(fs::File::create(path)?))?;
    let mut n = 0u64;
    for s in catalog::all().iter().filter(|s| !s.packet.is_empty()) {
        w.write_packet(Duration::from_secs(catalog::EPOCH_S + n), &s.packet)?;
        n += 1;
    }
    w.flush()?;
    println!("{}: {n} packets", path.display());
    Ok(())
}

fn tour() {
    for s in catalog::all() {
        println!(
            "{}/{} ({} bytes): {}",
            s.target,
            s.name,
            s.seed.len(),
            s.about
        );
        hexdump(&s.seed);
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.as_slice() {
        [] => {
            tour();
            Ok(())
        }
        [flag, dir] if flag == "--seeds" => write_seeds(Path::new(dir)),
        [flag, file] if flag == "--pcap" => write_pcap(Path::new(file)),
        _ => {
            eprintln!("usage: wire_tour [--seeds DIR | --pcap FILE]");
            return ExitCode::from(64);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wire_tour: {e}");
            ExitCode::FAILURE
        }
    }
}

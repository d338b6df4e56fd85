//! # A real strongSwan IKEv2/MOBIKE VPN in the namespace lab
//!
//! Seed 000 separates the two mobility systems by an *ordinary* VPN: outside
//! the security boundary the inner client uses the VPN's tunnel inner
//! address (TIA) as its co-located care-of address (seed 000 figure 7), and
//! in the seed 004 variant the VPN itself follows the physical address with
//! MOBIKE [RFC 4555]. So the lab runs the VPN users already run: strongSwan's
//! `charon`, IKEv2 [RFC 7296] with a pre-shared key, MOBIKE, a virtual-address
//! pool for the TIAs (configuration payload, RFC 7296 § 3.15), ESP [RFC 4303]
//! in UDP [RFC 3948] because the client sits behind a NAT. There is no VPN
//! simulator here.
//!
//! ## How charon runs in a namespace (issue 8, item 2)
//!
//! The test machines' kernel has no ESP, so ESP runs in user space through
//! the `kernel-libipsec` plugin, which creates a TUN device `ipsec0` and
//! puts the client's virtual address (the TIA) on it; `kernel-netlink` still
//! watches addresses and routes, which is what triggers MOBIKE updates. One
//! `charon` per namespace:
//!
//! ```text
//! ip netns exec NS unshare -m --propagation private sh -c \
//!   'mount -t tmpfs tmpfs /run && mkdir -p /run/strongswan && exec /usr/lib/ipsec/charon'
//! ```
//!
//! with `STRONGSWAN_CONF` pointing at a `strongswan.conf` of its own in a
//! temporary directory (the private `/run` keeps the daemons' pid files
//! apart; the vici socket lives in the temporary directory, so `swanctl`
//! reaches it from anywhere with `--uri unix://PATH`). The configuration is
//! loaded with `swanctl --load-all --file DIR/swanctl.conf`, one setting per
//! line. Charon logs to stderr, which [`Process`] keeps in a log file and
//! prints when a test fails.
//!
//! ## Address plan (see [`plan`])
//!
//! ```text
//!  client 198.19.10.2 ── 198.19.10.1 nat1 203.0.113.2 ── 203.0.113.1 ┐
//!  client 198.19.11.2 ── 198.19.11.1 nat2 203.0.113.6 ── 203.0.113.5 inet
//!                                                   inet 203.0.113.65 ── 203.0.113.66 gw (DMZ)
//!                                        gw 198.18.100.1 ── intranet 198.18.100.0/24 (.2 intra)
//!  TIA pool 198.18.200.0/24 (routed by the gateway into ipsec0)
//!  intranet traffic selector 198.18.100.0/23:
//!    198.18.100.0/24  intranet hosts (the inner home agent, correspondents)
//!    198.18.101.0/24  the inner home prefix (inner home addresses)
//! ```
//!
//! The intranet is one traffic selector on purpose: with two local
//! selectors the gateway's `kernel-libipsec` tries to install the same
//! route to the client's TIA once per selector, and the second fails with
//! "unable to install IPsec policies (SPD) in kernel". Both access networks
//! (198.19.10.0/24, 198.19.11.0/24) are private to their NATs, as on real
//! access networks; a move from one to the other is a MOBIKE UPDATE_SA_ADDRESSES
//! on the same IKE SA (same SPIs, same TIA).
//!
//! ## What it looks like on the wire ([`Capture`])
//!
//! The inner client's registration (seed 004 'mc' mode: inner client over
//! the VPN, care-of address = TIA), captured in the client's namespace by
//! `tests/vpn.rs` (`tshark -T fields`, interface|src|dst|layers):
//!
//! ```text
//! e0|198.19.10.2|203.0.113.66|eth:ethertype:ip:udp:udpencap:esp
//! e0|203.0.113.66|198.19.10.2|eth:ethertype:ip:udp:udpencap:esp
//! ipsec0|198.18.200.1|198.18.100.2|raw:ip:udp:mip   Reg Request: HoA=198.18.101.10 HA=198.18.100.2 CoA=198.18.200.1
//! ipsec0|198.18.100.2|198.18.200.1|raw:ip:udp:mip   Reg Reply: ... Code=0
//! ```
//!
//! On the physical interface only ESP in UDP 4500 to the gateway; inside
//! the tunnel device the Mobile IP registration from the TIA.

use std::fmt::Write as _;
use std::io::{self, Read};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::supervisor::{Process, Spec, SupError, wait_for};

/// The address plan described in the module documentation.
pub mod plan {
    use std::net::Ipv4Addr;
    /// The client on the first access network.
    pub const CLIENT_A: Ipv4Addr = Ipv4Addr::new(198, 19, 10, 2);
    /// `nat1`'s inside address (the client's first default gateway).
    pub const NAT1_INSIDE: Ipv4Addr = Ipv4Addr::new(198, 19, 10, 1);
    /// `nat1`'s public address.
    pub const NAT1_PUBLIC: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
    /// `inet` towards `nat1`.
    pub const INET_NAT1: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
    /// The client on the second access network.
    pub const CLIENT_B: Ipv4Addr = Ipv4Addr::new(198, 19, 11, 2);
    /// `nat2`'s inside address.
    pub const NAT2_INSIDE: Ipv4Addr = Ipv4Addr::new(198, 19, 11, 1);
    /// `nat2`'s public address.
    pub const NAT2_PUBLIC: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 6);
    /// `inet` towards `nat2`.
    pub const INET_NAT2: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 5);
    /// `inet` towards the DMZ.
    pub const INET_DMZ: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 65);
    /// The VPN gateway's public (DMZ) address: the IKE peer.
    pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 66);
    /// The gateway on the intranet segment.
    pub const GATEWAY_INTRANET: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 1);
    /// The first intranet host.
    pub const INTRANET_HOST: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 2);
    /// What the tunnel carries: intranet hosts and the inner home prefix.
    pub const INTRANET_TS: &str = "198.18.100.0/23";
    /// The inner home prefix (inside [`INTRANET_TS`]).
    pub const INNER_HOME_PREFIX: &str = "198.18.101.0/24";
    /// The gateway's virtual-address pool: the TIAs.
    pub const TIA_POOL: &str = "198.18.200.0/24";
}

/// Where the Debian packages put the daemon.
pub const CHARON: &str = "/usr/lib/ipsec/charon";

/// What `scripts/test.sh` installs when [`CHARON`] is missing.
pub const PACKAGES: &str = "strongswan-charon strongswan-swanctl libcharon-extra-plugins \
                            libstrongswan-standard-plugins";

/// Everything that can go wrong driving the VPN.
#[derive(Debug, thiserror::Error)]
pub enum VpnError {
    /// strongSwan is not installed.
    #[error(
        "strongSwan is not installed ({0} missing): \
         apt-get install -y strongswan-charon strongswan-swanctl \
         libcharon-extra-plugins libstrongswan-standard-plugins"
    )]
    NotInstalled(String),
    /// Writing a configuration file, or spawning a command.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: io::Error,
    },
    /// Starting or waiting on charon.
    #[error(transparent)]
    Sup(#[from] SupError),
    /// A `swanctl` or `ip` invocation failed.
    #[error("`{cmd}` failed ({status}): {output}")]
    Command {
        /// The command line.
        cmd: String,
        /// Its exit status.
        status: String,
        /// What it printed (stdout and stderr).
        output: String,
    },
    /// A configuration value that would break the one-setting-per-line
    /// swanctl.conf (a newline, brace or quote in an identity).
    #[error("invalid VPN configuration: {0}")]
    Invalid(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> VpnError {
    let what = what.into();
    move |source| VpnError::Io { what, source }
}

/// A fresh test-only pre-shared key: 32 random bytes from the kernel, as
/// hex. Generated per test run, never stored in the tree (STYLE: no secrets).
pub fn test_psk() -> Result<String, VpnError> {
    let mut buf = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(io_err("reading /dev/urandom"))?;
    Ok(hex::encode(buf))
}

/// Identities and values go into swanctl.conf verbatim; refuse anything
/// that could end a setting or a section.
fn check_value(what: &str, v: &str) -> Result<(), VpnError> {
    if v.is_empty()
        || !v
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "@.-_/,:".contains(c))
    {
        return Err(VpnError::Invalid(format!("{what} = {v:?}")));
    }
    Ok(())
}

/// The gateway's side: who it is, where it listens, what it hands out.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// The public address IKE is reached on.
    pub local_addr: Ipv4Addr,
    /// The only interface charon uses (its public one), so MOBIKE's
    /// ADDITIONAL_IP4_ADDRESS list [RFC 4555 § 3.6] never offers the
    /// intranet address, which the client would route into the tunnel.
    pub interface: Option<String>,
    /// The gateway's IKE identity.
    pub id: String,
    /// The client identity it accepts.
    pub client_id: String,
    /// The pre-shared key, hex ([`test_psk`]).
    pub psk_hex: String,
    /// The TIA pool, `a.b.c.d/len`.
    pub pool: String,
    /// The intranet behind the gateway (the traffic selector).
    pub local_ts: String,
    /// swanctl's `unique` policy for a client identity (`no`, `never`,
    /// `keep`, `replace`); `None` leaves charon's default (`no`). The dual
    /// client re-connects after coming back from inside with a new IKE SA,
    /// and `replace` drops the stale one (and its TIA lease) at once.
    pub unique: Option<String>,
}

/// The client's side.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The gateway's public address.
    pub gateway: Ipv4Addr,
    /// The client's IKE identity.
    pub id: String,
    /// The gateway identity it expects.
    pub gateway_id: String,
    /// The pre-shared key, hex.
    pub psk_hex: String,
    /// What goes through the tunnel.
    pub remote_ts: String,
    /// Force ESP in UDP [RFC 3948] even without a NAT (`encap = yes`):
    /// `kernel-libipsec` does ESP in user space over UDP, and the seed 000
    /// dual client's VPN runs from the outer home address, which no NAT
    /// stands in front of. Default false.
    pub encap: bool,
}

impl GatewayConfig {
    /// The lab's gateway ([`plan`]) with a fresh key.
    pub fn lab(psk_hex: &str) -> Self {
        GatewayConfig {
            local_addr: plan::GATEWAY,
            interface: None,
            id: "gw.haven.test".into(),
            client_id: "client@haven.test".into(),
            psk_hex: psk_hex.into(),
            pool: plan::TIA_POOL.into(),
            local_ts: plan::INTRANET_TS.into(),
            unique: None,
        }
    }

    fn swanctl_conf(&self) -> Result<String, VpnError> {
        for (w, v) in [
            ("id", &self.id),
            ("client_id", &self.client_id),
            ("pool", &self.pool),
            ("local_ts", &self.local_ts),
        ] {
            check_value(w, v)?;
        }
        check_psk(&self.psk_hex)?;
        let mut s = String::new();
        let _ = writeln!(s, "connections {{");
        let _ = writeln!(s, "rw {{");
        let _ = writeln!(s, "version = 2");
        let _ = writeln!(s, "local_addrs = {}", self.local_addr);
        // RFC 4555: the client may move; the gateway follows its updates.
        let _ = writeln!(s, "mobike = yes");
        let _ = writeln!(s, "pools = tia");
        if let Some(u) = &self.unique {
            check_value("unique", u)?;
            let _ = writeln!(s, "unique = {u}");
        }
        psk_peers_and_child(
            &mut s,
            &self.id,
            &self.client_id,
            ("local_ts", &self.local_ts),
        );
        let _ = writeln!(s, "pools {{");
        let _ = writeln!(s, "tia {{");
        let _ = writeln!(s, "addrs = {}", self.pool);
        let _ = writeln!(s, "}}");
        let _ = writeln!(s, "}}");
        secrets(&mut s, &self.id, &self.client_id, &self.psk_hex);
        Ok(s)
    }
}

impl ClientConfig {
    /// The lab's client ([`plan`]) with the gateway's key.
    pub fn lab(psk_hex: &str) -> Self {
        ClientConfig {
            gateway: plan::GATEWAY,
            id: "client@haven.test".into(),
            gateway_id: "gw.haven.test".into(),
            psk_hex: psk_hex.into(),
            remote_ts: plan::INTRANET_TS.into(),
            encap: false,
        }
    }

    fn swanctl_conf(&self) -> Result<String, VpnError> {
        for (w, v) in [
            ("id", &self.id),
            ("gateway_id", &self.gateway_id),
            ("remote_ts", &self.remote_ts),
        ] {
            check_value(w, v)?;
        }
        check_psk(&self.psk_hex)?;
        let mut s = String::new();
        let _ = writeln!(s, "connections {{");
        let _ = writeln!(s, "{CONN} {{");
        let _ = writeln!(s, "version = 2");
        let _ = writeln!(s, "remote_addrs = {}", self.gateway);
        // Ask for a virtual address (RFC 7296 § 3.15 INTERNAL_IP4_ADDRESS):
        // the TIA.
        let _ = writeln!(s, "vips = 0.0.0.0");
        let _ = writeln!(s, "mobike = yes");
        if self.encap {
            let _ = writeln!(s, "encap = yes");
        }
        psk_peers_and_child(
            &mut s,
            &self.id,
            &self.gateway_id,
            ("remote_ts", &self.remote_ts),
        );
        secrets(&mut s, &self.gateway_id, &self.id, &self.psk_hex);
        Ok(s)
    }
}

/// The client's connection and child names in swanctl.
pub const CONN: &str = "home";
/// The client's CHILD_SA name.
pub const CHILD: &str = "intranet";
const IKE_PROPOSAL: &str = "aes128-sha256-modp2048";
const ESP_PROPOSAL: &str = "aes128gcm16";

fn check_psk(hex_key: &str) -> Result<(), VpnError> {
    if hex_key.len() < 32 || !hex_key.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(VpnError::Invalid(
            "psk_hex must be >= 16 bytes of hex".into(),
        ));
    }
    Ok(())
}

/// The end of a connection both sides share: proposals, dead peer
/// detection (keeps the lab honest about a dead path), PSK authentication
/// of both ids, the one CHILD_SA [`CHILD`] with its traffic selector
/// (`local_ts` on the gateway, `remote_ts` on the client); closes the
/// connection and the `connections` section.
fn psk_peers_and_child(s: &mut String, local_id: &str, remote_id: &str, ts: (&str, &str)) {
    let _ = writeln!(s, "proposals = {IKE_PROPOSAL}");
    let _ = writeln!(s, "dpd_delay = 5s");
    for (side, id) in [("local", local_id), ("remote", remote_id)] {
        let _ = writeln!(s, "{side} {{");
        let _ = writeln!(s, "auth = psk");
        let _ = writeln!(s, "id = {id}");
        let _ = writeln!(s, "}}");
    }
    let _ = writeln!(s, "children {{");
    let _ = writeln!(s, "{CHILD} {{");
    let _ = writeln!(s, "{} = {}", ts.0, ts.1);
    let _ = writeln!(s, "esp_proposals = {ESP_PROPOSAL}");
    let _ = writeln!(s, "}}");
    let _ = writeln!(s, "}}");
    let _ = writeln!(s, "}}");
    let _ = writeln!(s, "}}");
}

fn secrets(s: &mut String, id1: &str, id2: &str, psk_hex: &str) {
    let _ = writeln!(s, "secrets {{");
    let _ = writeln!(s, "ike-lab {{");
    let _ = writeln!(s, "id-1 = {id1}");
    let _ = writeln!(s, "id-2 = {id2}");
    let _ = writeln!(s, "secret = 0x{psk_hex}");
    let _ = writeln!(s, "}}");
    let _ = writeln!(s, "}}");
}

/// The plugins charon loads: crypto for the proposals above, PSK auth,
/// `kernel-libipsec` (ESP in user space, TUN `ipsec0`), `kernel-netlink`
/// (addresses, routes, and the address events MOBIKE reacts to),
/// `socket-default` (IKE on 500/4500, NAT-T), `vici` (swanctl), `attr`.
const PLUGINS: &str = "random nonce openssl pem pkcs1 x509 pubkey kdf hmac aes sha1 sha2 gmp \
                       kernel-libipsec kernel-netlink socket-default vici attr";

fn strongswan_conf(vici: &Path, interface: Option<&str>) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "charon {{");
    let _ = writeln!(s, "  load_modular = no");
    let _ = writeln!(s, "  load = {PLUGINS}");
    if let Some(i) = interface {
        let _ = writeln!(s, "  interfaces_use = {i}");
    }
    let _ = writeln!(s, "  plugins {{");
    let _ = writeln!(s, "    vici {{");
    let _ = writeln!(s, "      socket = unix://{}", vici.display());
    let _ = writeln!(s, "    }}");
    let _ = writeln!(s, "  }}");
    let _ = writeln!(s, "  filelog {{");
    let _ = writeln!(s, "    stderr {{");
    let _ = writeln!(s, "      time_format = %H:%M:%S");
    let _ = writeln!(s, "      default = 1");
    let _ = writeln!(s, "    }}");
    let _ = writeln!(s, "  }}");
    let _ = writeln!(s, "}}");
    // swanctl reads the same file: only what it needs, so it does not
    // complain about plugins of the modular default set.
    let _ = writeln!(s, "swanctl {{");
    let _ = writeln!(s, "  load = pem pkcs1 x509 pubkey openssl random");
    let _ = writeln!(s, "}}");
    s
}

/// One `charon` in one namespace, with its configuration directory and
/// private vici socket. Dropping it SIGKILLs the daemon (the field order
/// makes the process go before its directory).
#[derive(Debug)]
pub struct Charon {
    process: Process,
    netns: String,
    conf: PathBuf,
    vici: PathBuf,
    dir: tempfile::TempDir,
}

impl Charon {
    /// Writes the configuration, starts charon in `netns`, waits (bounded)
    /// until its vici socket accepts, then loads `swanctl_conf`.
    pub fn start(
        name: &str,
        netns: &str,
        interface: Option<&str>,
        swanctl_conf: &str,
    ) -> Result<Charon, VpnError> {
        for bin in [
            CHARON,
            "/usr/sbin/swanctl",
            // libcharon-extra-plugins, libstrongswan-standard-plugins.
            "/usr/lib/ipsec/plugins/libstrongswan-kernel-libipsec.so",
            "/usr/lib/ipsec/plugins/libstrongswan-openssl.so",
        ] {
            if !Path::new(bin).exists() {
                return Err(VpnError::NotInstalled(bin.into()));
            }
        }
        let dir = tempfile::Builder::new()
            .prefix(&format!("hv-vpn-{name}-"))
            .tempdir()
            .map_err(io_err("creating the charon directory"))?;
        let vici = dir.path().join("charon.vici");
        let conf = dir.path().join("strongswan.conf");
        std::fs::write(&conf, strongswan_conf(&vici, interface))
            .map_err(io_err("writing strongswan.conf"))?;
        std::fs::write(dir.path().join("swanctl.conf"), swanctl_conf)
            .map_err(io_err("writing swanctl.conf"))?;
        // A private mount namespace with its own /run: charon's pid file
        // and default sockets must not meet another namespace's charon.
        let script =
            format!("mount -t tmpfs tmpfs /run && mkdir -p /run/strongswan && exec {CHARON}");
        let process = Process::spawn(
            name,
            Spec::new("unshare")
                .args(["-m", "--propagation", "private", "sh", "-c"])
                .arg(script)
                .env("STRONGSWAN_CONF", &conf),
            Some(netns),
        )?;
        let mut c = Charon {
            process,
            netns: netns.to_owned(),
            conf,
            vici,
            dir,
        };
        let vici = c.vici.clone();
        let mut exited = false;
        wait_for(
            &format!("{name}'s vici socket"),
            Duration::from_secs(10),
            || {
                exited = !c.process.is_running();
                exited || UnixStream::connect(&vici).is_ok()
            },
        )?;
        if exited {
            return Err(VpnError::Command {
                cmd: format!("charon in {netns}"),
                status: "exited".into(),
                output: c.process.log_tail(20),
            });
        }
        let file = c.dir.path().join("swanctl.conf");
        c.swanctl(&["--load-all".as_ref(), "--file".as_ref(), file.as_os_str()])?;
        Ok(c)
    }

    /// Replaces the loaded configuration with `swanctl_conf` (rewrites the
    /// file, `swanctl --load-all`: connections and secrets of the same
    /// names are replaced, others unloaded).
    pub fn reload(&self, swanctl_conf: &str) -> Result<(), VpnError> {
        let file = self.dir.path().join("swanctl.conf");
        std::fs::write(&file, swanctl_conf).map_err(io_err("writing swanctl.conf"))?;
        self.swanctl(&["--load-all".as_ref(), "--file".as_ref(), file.as_os_str()])?;
        Ok(())
    }

    /// Runs `swanctl ARGS --uri unix://VICI` and returns its stdout.
    pub fn swanctl(&self, args: &[&std::ffi::OsStr]) -> Result<String, VpnError> {
        let uri = format!("unix://{}", self.vici.display());
        let mut c = Command::new("swanctl");
        c.args(args)
            .args(["--uri", &uri])
            .env("STRONGSWAN_CONF", &self.conf);
        run(&mut c)
    }

    /// `swanctl --list-sas`, parsed.
    pub fn list_sas(&self) -> Result<Vec<IkeSa>, VpnError> {
        Ok(parse_list_sas(&self.swanctl(&["--list-sas".as_ref()])?))
    }

    /// The vici URI (`unix://PATH`) for `swanctl --uri`, e.g. for a
    /// process that drives the VPN itself (the dual client).
    pub fn vici_uri(&self) -> String {
        format!("unix://{}", self.vici.display())
    }

    /// The strongswan.conf that `swanctl` must read (`STRONGSWAN_CONF`).
    pub fn conf_path(&self) -> &Path {
        &self.conf
    }

    /// The namespace charon runs in.
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// charon's log so far.
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// The supervised process (to SIGKILL it in a chaos test).
    pub fn process_mut(&mut self) -> &mut Process {
        &mut self.process
    }
}

fn run(c: &mut Command) -> Result<String, VpnError> {
    let line = format!("{c:?}");
    let out = c
        .stdin(Stdio::null())
        .output()
        .map_err(io_err(line.clone()))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(VpnError::Command {
            cmd: line,
            status: out.status.to_string(),
            output: format!("{stdout}{}", String::from_utf8_lossy(&out.stderr))
                .trim()
                .to_owned(),
        })
    }
}

/// The IPv4 addresses on `dev` in `netns` (`ip -4 -o addr show dev DEV`);
/// empty when the device does not exist.
pub fn addrs_on(netns: &str, dev: &str) -> Vec<Ipv4Addr> {
    Command::new("ip")
        .args(["-n", netns, "-4", "-o", "addr", "show", "dev", dev])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map(|o| inet_addrs(&String::from_utf8_lossy(&o.stdout)))
        .unwrap_or_default()
}

/// The IPv4 addresses in `ip -4 -o addr show` output.
pub fn inet_addrs(text: &str) -> Vec<Ipv4Addr> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            w.find(|t| *t == "inet")?;
            w.next()?.split('/').next()?.parse().ok()
        })
        .collect()
}

/// The VPN gateway in the DMZ: answers IKE, hands out TIAs from its pool,
/// routes each TIA into `ipsec0` (charon's table 220).
#[derive(Debug)]
pub struct VpnGateway {
    charon: Charon,
}

impl VpnGateway {
    /// Starts the gateway's charon in `netns` and loads `cfg`.
    pub fn start(netns: &str, cfg: &GatewayConfig) -> Result<VpnGateway, VpnError> {
        let conf = cfg.swanctl_conf()?;
        let charon = Charon::start("vpn-gw", netns, cfg.interface.as_deref(), &conf)?;
        Ok(VpnGateway { charon })
    }

    /// The IKE SAs the gateway holds.
    pub fn ike_sas(&self) -> Result<Vec<IkeSa>, VpnError> {
        self.charon.list_sas()
    }

    /// Loads `cfg` in place of the configuration the gateway runs with
    /// (e.g. another pre-shared key).
    pub fn reload(&self, cfg: &GatewayConfig) -> Result<(), VpnError> {
        self.charon.reload(&cfg.swanctl_conf()?)
    }

    /// `swanctl --list-pools --leases` (each online lease names its
    /// address and the identity holding it).
    pub fn leases(&self) -> Result<String, VpnError> {
        self.charon
            .swanctl(&["--list-pools".as_ref(), "--leases".as_ref()])
    }

    /// The daemon underneath.
    pub fn charon(&self) -> &Charon {
        &self.charon
    }
}

/// The road-warrior client: one IKE SA to the gateway, its TIA on `ipsec0`,
/// routes to the intranet through the tunnel (charon's table 220).
#[derive(Debug)]
pub struct VpnClient {
    charon: Charon,
}

/// The TUN device of `kernel-libipsec`.
pub const TUN_DEV: &str = "ipsec0";

impl VpnClient {
    /// Starts the client's charon in `netns` and loads `cfg` (does not
    /// connect yet: see [`VpnClient::connect`]).
    pub fn start(netns: &str, cfg: &ClientConfig) -> Result<VpnClient, VpnError> {
        Self::start_on(netns, cfg, None)
    }

    /// [`VpnClient::start`] with charon restricted to `interfaces`
    /// (strongSwan's `interfaces_use`, comma-separated): the seed 000 dual
    /// client keeps the VPN on the mobility adapter, so MOBIKE never offers
    /// the physical or intranet-adapter addresses.
    pub fn start_on(
        netns: &str,
        cfg: &ClientConfig,
        interfaces: Option<&str>,
    ) -> Result<VpnClient, VpnError> {
        if let Some(i) = interfaces {
            check_value("interfaces", i)?;
        }
        let conf = cfg.swanctl_conf()?;
        let charon = Charon::start("vpn-client", netns, interfaces, &conf)?;
        Ok(VpnClient { charon })
    }

    /// Initiates the IKE SA and its CHILD_SA, then waits (within `bound`)
    /// until both are up and the TIA sits on `ipsec0`; returns the TIA.
    pub fn connect(&self, bound: Duration) -> Result<Ipv4Addr, VpnError> {
        let secs = bound.as_secs().max(1).to_string();
        // swanctl --initiate blocks until the exchange is done or fails.
        self.charon.swanctl(&[
            "--initiate".as_ref(),
            "--ike".as_ref(),
            CONN.as_ref(),
            "--child".as_ref(),
            CHILD.as_ref(),
            "--timeout".as_ref(),
            secs.as_ref(),
        ])?;
        let mut tia = None;
        wait_for(
            "the TIA on ipsec0 and an ESTABLISHED IKE SA with an INSTALLED CHILD_SA",
            bound,
            || {
                tia = self.established().ok().flatten().and_then(|sa| {
                    let v = *sa.local_vips.first()?;
                    addrs_on(self.charon.netns(), TUN_DEV)
                        .contains(&v)
                        .then_some(v)
                });
                tia.is_some()
            },
        )?;
        tia.ok_or_else(|| VpnError::Invalid("no TIA".into()))
    }

    /// The client's IKE SA if it is ESTABLISHED with its CHILD_SA
    /// INSTALLED.
    pub fn established(&self) -> Result<Option<IkeSa>, VpnError> {
        Ok(self.charon.list_sas()?.into_iter().find(|sa| {
            sa.name == CONN
                && sa.state == "ESTABLISHED"
                && sa
                    .children
                    .iter()
                    .any(|c| c.name == CHILD && c.state == "INSTALLED")
        }))
    }

    /// The TIA currently on `ipsec0`, if any.
    pub fn tia(&self) -> Option<Ipv4Addr> {
        addrs_on(self.charon.netns(), TUN_DEV).first().copied()
    }

    /// Waits until the established IKE SA's local endpoint is `addr` (a
    /// MOBIKE update after a move has gone through), returning that SA.
    pub fn wait_local_addr(&self, addr: Ipv4Addr, bound: Duration) -> Result<IkeSa, VpnError> {
        let mut found = None;
        wait_for(&format!("the IKE SA to move to {addr}"), bound, || {
            found = self
                .established()
                .ok()
                .flatten()
                .filter(|sa| sa.local.map(|l| *l.ip()) == Some(addr));
            found.is_some()
        })?;
        found.ok_or_else(|| VpnError::Invalid("no SA".into()))
    }

    /// The daemon underneath.
    pub fn charon(&self) -> &Charon {
        &self.charon
    }
}

/// A packet capture with `dumpcap` on interfaces of one namespace, into a
/// file in a temporary directory (never in the tree): what the layers look
/// like on the wire (issue 8 asks for a capture excerpt).
#[derive(Debug)]
pub struct Capture {
    process: Process,
    file: PathBuf,
    _dir: tempfile::TempDir,
}

/// Where Debian's `wireshark-common`/`tshark` put the capture tool.
pub const DUMPCAP: &str = "/usr/bin/dumpcap";

impl Capture {
    /// Whether captures can be taken on this machine.
    pub fn available() -> bool {
        Path::new(DUMPCAP).exists() && Path::new("/usr/bin/tshark").exists()
    }

    /// Starts capturing on `ifaces` in `netns` and waits (bounded) until
    /// dumpcap has opened them: it prints `File: ...` only after every
    /// interface is open, so packets sent afterwards are in the file.
    pub fn start(name: &str, netns: &str, ifaces: &[&str]) -> Result<Capture, VpnError> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("hv-cap-{name}-"))
            .tempdir()
            .map_err(io_err("creating the capture directory"))?;
        let file = dir.path().join(format!("{name}.pcapng"));
        let mut spec = Spec::new(DUMPCAP);
        for i in ifaces {
            spec = spec.args(["-i", i]);
        }
        // A small snap length: headers are what the excerpt is about.
        let spec = spec.args(["-s", "256", "-w"]).arg(&file);
        let mut process = Process::spawn(&format!("dumpcap-{name}"), spec, Some(netns))?;
        let mut exited = false;
        wait_for(
            &format!("dumpcap on {ifaces:?}"),
            Duration::from_secs(10),
            || {
                exited = !process.is_running();
                exited || process.log().contains("File:")
            },
        )?;
        if exited {
            return Err(VpnError::Command {
                cmd: format!("dumpcap in {netns}"),
                status: "exited".into(),
                output: process.log_tail(10),
            });
        }
        Ok(Capture {
            process,
            file,
            _dir: dir,
        })
    }

    /// How many packets dumpcap says it has written so far (its progress
    /// line `Packets: N` on stderr).
    pub fn packets(&self) -> u64 {
        let log = self.process.log();
        log.rsplit("Packets: ")
            .next()
            .filter(|_| log.contains("Packets: "))
            .and_then(|t| {
                let digits: String = t.chars().take_while(char::is_ascii_digit).collect();
                digits.parse().ok()
            })
            .unwrap_or(0)
    }

    /// Waits (bounded) until dumpcap has written at least `min_packets`,
    /// stops it (SIGINT) and returns `tshark -r FILE` with the given extra
    /// arguments (e.g. `-T fields -e ...`, a display filter `-Y ...`, `-V`).
    ///
    /// The wait matters: libpcap hands packets to dumpcap a ring block at a
    /// time, and a block not yet retired when dumpcap stops is lost, so a
    /// capture stopped right after the traffic can be empty.
    pub fn stop_and_read(
        &mut self,
        min_packets: u64,
        tshark_args: &[&str],
    ) -> Result<String, VpnError> {
        let waited = wait_for(
            &format!("{min_packets} packets in the capture"),
            Duration::from_secs(10),
            || self.packets() >= min_packets,
        );
        self.process.signal(libc::SIGINT)?;
        self.process.wait_exit(Duration::from_secs(10))?;
        waited?;
        self.read(tshark_args)
    }

    /// `tshark -r FILE ARGS` on the capture so far (after a stop).
    pub fn read(&self, tshark_args: &[&str]) -> Result<String, VpnError> {
        let mut c = Command::new("tshark");
        c.arg("-r").arg(&self.file).args(tshark_args);
        run(&mut c)
    }
}

/// One IKE SA as `swanctl --list-sas` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IkeSa {
    /// The connection name.
    pub name: String,
    /// charon's unique id (`#N`).
    pub unique_id: u32,
    /// `ESTABLISHED`, `CONNECTING`, ...
    pub state: String,
    /// Initiator and responder SPIs, as printed: the SA's identity across
    /// MOBIKE updates [RFC 4555 § 3.5].
    pub spis: String,
    /// The local IKE endpoint.
    pub local: Option<SocketAddrV4>,
    /// The remote IKE endpoint.
    pub remote: Option<SocketAddrV4>,
    /// Local virtual addresses (the client's TIA).
    pub local_vips: Vec<Ipv4Addr>,
    /// Remote virtual addresses (on the gateway: the client's TIA).
    pub remote_vips: Vec<Ipv4Addr>,
    /// The CHILD_SAs.
    pub children: Vec<ChildSa>,
}

/// One CHILD_SA of an [`IkeSa`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildSa {
    /// The child name.
    pub name: String,
    /// `INSTALLED`, ...
    pub state: String,
    /// The mode, e.g. `TUNNEL-in-UDP` (ESP in UDP, RFC 3948) behind a NAT.
    pub mode: String,
}

/// `a.b.c.d[port]` as swanctl prints endpoints.
fn parse_endpoint(s: &str) -> Option<SocketAddrV4> {
    let (a, p) = s.split_once('[')?;
    let p = p.strip_suffix(']')?;
    Some(SocketAddrV4::new(a.parse().ok()?, p.parse().ok()?))
}

/// `[a.b.c.d]` groups after the endpoint: virtual addresses.
fn parse_vips(words: &[&str]) -> Vec<Ipv4Addr> {
    words
        .iter()
        .filter_map(|w| w.strip_prefix('[')?.strip_suffix(']')?.parse().ok())
        .collect()
}

/// Parses the text of `swanctl --list-sas`. Unknown lines are ignored, so a
/// newer strongSwan printing more does not break it.
///
/// ```text
/// home: #1, ESTABLISHED, IKEv2, 47a01f7302bb84eb_i* 8f0729d1d901ef1f_r
///   local  'client@haven.test' @ 198.19.10.2[4500] [198.18.200.1]
///   remote 'gw.haven.test' @ 203.0.113.66[4500]
///   intranet: #1, reqid 1, INSTALLED, TUNNEL-in-UDP, ESP:AES_GCM_16-128
/// ```
pub fn parse_list_sas(text: &str) -> Vec<IkeSa> {
    let mut out: Vec<IkeSa> = Vec::new();
    for line in text.lines() {
        let indent = line.len() - line.trim_start().len();
        let t = line.trim();
        let Some((name, rest)) = t.split_once(": #") else {
            if let Some(sa) = out.last_mut() {
                let words: Vec<&str> = t.split_whitespace().collect();
                let endpoint = || {
                    let at = words.iter().position(|w| *w == "@")?;
                    Some((
                        words.get(at + 1).and_then(|w| parse_endpoint(w)),
                        parse_vips(words.get(at + 2..).unwrap_or_default()),
                    ))
                };
                match words.first() {
                    Some(&"local") if indent == 2 => {
                        if let Some((ep, vips)) = endpoint() {
                            sa.local = ep;
                            sa.local_vips = vips;
                        }
                    }
                    Some(&"remote") if indent == 2 => {
                        if let Some((ep, vips)) = endpoint() {
                            sa.remote = ep;
                            sa.remote_vips = vips;
                        }
                    }
                    _ => {}
                }
            }
            continue;
        };
        let fields: Vec<&str> = rest.split(", ").collect();
        if indent == 0 {
            let (Some(id), Some(state)) = (fields.first(), fields.get(1)) else {
                continue;
            };
            let Ok(unique_id) = id.parse() else { continue };
            out.push(IkeSa {
                name: name.to_owned(),
                unique_id,
                state: (*state).to_owned(),
                spis: fields.get(3).map_or_else(String::new, |s| (*s).to_owned()),
                local: None,
                remote: None,
                local_vips: Vec::new(),
                remote_vips: Vec::new(),
                children: Vec::new(),
            });
        } else if let Some(sa) = out.last_mut() {
            // "name: #N, reqid R, STATE, MODE, ..."
            sa.children.push(ChildSa {
                name: name.to_owned(),
                state: fields.get(2).map_or_else(String::new, |s| (*s).to_owned()),
                mode: fields.get(3).map_or_else(String::new, |s| (*s).to_owned()),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT_SAS: &str = "home: #1, ESTABLISHED, IKEv2, 47a01f7302bb84eb_i* 8f0729d1d901ef1f_r
  local  'client@haven.test' @ 198.19.10.2[4500] [198.18.200.1]
  remote 'gw.haven.test' @ 203.0.113.66[4500]
  AES_CBC-128/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/MODP_2048
  established 0s ago, rekeying in 13524s
  intranet: #1, reqid 1, INSTALLED, TUNNEL-in-UDP, ESP:AES_GCM_16-128
    installed 0s ago, rekeying in 3368s, expires in 3960s
    in  618325b1,      0 bytes,     0 packets
    out c95d24c0,      0 bytes,     0 packets
    local  198.18.200.1/32
    remote 198.18.100.0/23
";

    const GW_SAS: &str = "rw: #3, ESTABLISHED, IKEv2, 47a01f7302bb84eb_i 8f0729d1d901ef1f_r*
  local  'gw.haven.test' @ 203.0.113.66[4500]
  remote 'client@haven.test' @ 203.0.113.2[4500] [198.18.200.1]
  intranet: #2, reqid 1, INSTALLED, TUNNEL-in-UDP, ESP:AES_GCM_16-128
";

    #[test]
    fn parses_client_sas() {
        let sas = parse_list_sas(CLIENT_SAS);
        assert_eq!(sas.len(), 1);
        let sa = &sas[0];
        assert_eq!(sa.name, "home");
        assert_eq!(sa.unique_id, 1);
        assert_eq!(sa.state, "ESTABLISHED");
        assert_eq!(sa.spis, "47a01f7302bb84eb_i* 8f0729d1d901ef1f_r");
        assert_eq!(sa.local, Some("198.19.10.2:4500".parse().unwrap()));
        assert_eq!(sa.remote, Some("203.0.113.66:4500".parse().unwrap()));
        assert_eq!(sa.local_vips, vec![Ipv4Addr::new(198, 18, 200, 1)]);
        assert!(sa.remote_vips.is_empty());
        assert_eq!(
            sa.children,
            vec![ChildSa {
                name: "intranet".into(),
                state: "INSTALLED".into(),
                mode: "TUNNEL-in-UDP".into()
            }]
        );
    }

    #[test]
    fn parses_gateway_sas_and_garbage() {
        let sas = parse_list_sas(GW_SAS);
        assert_eq!(sas[0].unique_id, 3);
        assert_eq!(sas[0].remote_vips, vec![Ipv4Addr::new(198, 18, 200, 1)]);
        assert!(sas[0].local_vips.is_empty());
        assert_eq!(sas[0].children.len(), 1);
        assert!(parse_list_sas("").is_empty());
        assert!(parse_list_sas("x: #y, z\n  local @ nonsense[\n").is_empty());
    }

    #[test]
    fn configs_are_one_setting_per_line_and_checked() {
        let psk = "00".repeat(32);
        let g = GatewayConfig::lab(&psk).swanctl_conf().unwrap();
        assert!(g.contains("pools = tia\n") && g.contains("addrs = 198.18.200.0/24\n"));
        assert!(g.contains("local_ts = 198.18.100.0/23\n"));
        let c = ClientConfig::lab(&psk).swanctl_conf().unwrap();
        assert!(c.contains("vips = 0.0.0.0\n") && c.contains("mobike = yes\n"));
        assert!(c.contains(&format!("secret = 0x{psk}\n")));
        let mut bad = ClientConfig::lab(&psk);
        bad.id = "evil }\nconnections {".into();
        assert!(matches!(bad.swanctl_conf(), Err(VpnError::Invalid(_))));
        assert!(matches!(
            ClientConfig::lab("short").swanctl_conf(),
            Err(VpnError::Invalid(_))
        ));
    }

    #[test]
    fn psks_are_fresh() {
        let (a, b) = (test_psk().unwrap(), test_psk().unwrap());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
    }
}

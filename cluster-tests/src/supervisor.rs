//! # Process supervisor for the end-to-end tests
//!
//! DESIGN.md §8: the cluster tests run the real binaries (`haven-ha-node`,
//! `haven-dispatcher`, helpers) inside the lab's namespaces and kill them
//! for real. This module starts such a process with its output in a log
//! file, waits on conditions (a port answering, a Prometheus metric reaching
//! a value) with a bound instead of sleeping, signals and restarts it, and on
//! a failing test prints the tail of every process's log so the failure can
//! be read from the test output alone.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

/// What a supervisor operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum SupError {
    /// Spawning, signalling, or reading a log failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: io::Error,
    },
    /// A condition did not become true within its bound.
    #[error("timed out after {bound:?} waiting for {what}")]
    Timeout {
        /// The condition.
        what: String,
        /// The bound.
        bound: Duration,
    },
    /// `cargo build` of a workspace binary failed.
    #[error("building {0} failed")]
    Build(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> SupError {
    let what = what.into();
    move |source| SupError::Io { what, source }
}

/// How often conditions are polled: short enough that waits end within a
/// few milliseconds of the condition, long enough not to spin.
const POLL: Duration = Duration::from_millis(10);

/// Polls `cond` every few milliseconds until it returns true or `bound`
/// passes. `what` names the condition in the timeout error.
pub fn wait_for(
    what: &str,
    bound: Duration,
    mut cond: impl FnMut() -> bool,
) -> Result<(), SupError> {
    let deadline = Instant::now() + bound;
    loop {
        if cond() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(SupError::Timeout {
                what: what.to_owned(),
                bound,
            });
        }
        std::thread::sleep(POLL);
    }
}

/// Transport of a port to wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// A TCP listener accepting connections.
    Tcp,
    /// A UDP service that answers `probe` datagrams with any datagram.
    Udp,
}

/// One attempt: does `addr` answer? For UDP, `probe` is sent and any reply
/// counts (a UDP port cannot be told open otherwise).
pub fn port_answers(addr: SocketAddr, proto: Proto, probe: &[u8]) -> bool {
    match proto {
        Proto::Tcp => TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok(),
        Proto::Udp => (|| -> io::Result<bool> {
            let bind: SocketAddr = if addr.is_ipv4() {
                ([0, 0, 0, 0], 0).into()
            } else {
                ([0u16; 8], 0).into()
            };
            let s = UdpSocket::bind(bind)?;
            s.connect(addr)?;
            s.set_read_timeout(Some(Duration::from_millis(50)))?;
            s.send(probe)?;
            let mut buf = [0u8; 1500];
            Ok(s.recv(&mut buf).is_ok())
        })()
        .unwrap_or(false),
    }
}

/// Waits until `addr` answers (see [`port_answers`]), in the namespace
/// `netns` if given (the probe runs on a thread that entered it).
pub fn wait_port(
    addr: SocketAddr,
    proto: Proto,
    probe: &[u8],
    netns: Option<&str>,
    bound: Duration,
) -> Result<(), SupError> {
    wait_for(
        &format!("{proto:?} {addr} to answer"),
        bound,
        || match netns {
            Some(ns) => {
                crate::topo::in_netns(ns, || port_answers(addr, proto, probe)).unwrap_or(false)
            }
            None => port_answers(addr, proto, probe),
        },
    )
}

/// Fetches a metrics page with `curl -s`, inside `netns` if given
/// (`ip netns exec NS curl ...`).
pub fn scrape(url: &str, netns: Option<&str>) -> Result<String, SupError> {
    let mut c = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "curl"]);
            c
        }
        None => Command::new("curl"),
    };
    let out = c
        .args(["-sf", "--max-time", "2", url])
        .stdin(Stdio::null())
        .output()
        .map_err(io_err(format!("curl {url}")))?;
    if !out.status.success() {
        return Err(SupError::Io {
            what: format!("curl {url}"),
            source: io::Error::other(out.status.to_string()),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A sample's labels, in the order written.
type Labels = Vec<(String, String)>;

/// Splits `name{a="x",b="y"} value [timestamp]` into its parts. Label
/// values may contain escaped quotes (`\"`), backslashes and newlines
/// (Prometheus text format 0.0.4).
fn parse_sample(line: &str) -> Option<(&str, Labels, f64)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(['{', ' ', '\t']).unwrap_or(line.len());
    let name = line.get(..name_end)?;
    let mut rest = line.get(name_end..)?;
    let mut labels = Vec::new();
    if let Some(r) = rest.strip_prefix('{') {
        let mut chars = r.char_indices();
        let mut key = String::new();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '}' => {
                    end = Some(i + 1);
                    break;
                }
                ',' | ' ' => {}
                '=' => {
                    // The value: a quoted string with escapes.
                    if chars.next().map(|(_, c)| c) != Some('"') {
                        return None;
                    }
                    let mut val = String::new();
                    loop {
                        match chars.next()?.1 {
                            '"' => break,
                            '\\' => match chars.next()?.1 {
                                'n' => val.push('\n'),
                                other => val.push(other),
                            },
                            other => val.push(other),
                        }
                    }
                    labels.push((std::mem::take(&mut key).trim().to_owned(), val));
                }
                other => key.push(other),
            }
        }
        rest = r.get(end?..)?;
    }
    let value = rest.split_whitespace().next()?;
    let v = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().ok()?,
    };
    Some((name, labels, v))
}

/// The value of the first sample named `name` whose labels include all of
/// `labels` (others may be present), from Prometheus text exposition.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|l| {
        let (n, ls, v) = parse_sample(l)?;
        let all = labels
            .iter()
            .all(|(k, want)| ls.iter().any(|(lk, lv)| lk == k && lv == want));
        (n == name && all).then_some(v)
    })
}

/// Scrapes `url` until `name{labels}` exists and satisfies `pred`, within
/// `bound`; returns the value that did.
pub fn await_metric(
    url: &str,
    netns: Option<&str>,
    name: &str,
    labels: &[(&str, &str)],
    pred: impl Fn(f64) -> bool,
    bound: Duration,
) -> Result<f64, SupError> {
    let mut last = None;
    wait_for(&format!("{name}{labels:?} at {url}"), bound, || {
        last = scrape(url, netns)
            .ok()
            .and_then(|t| metric(&t, name, labels))
            .filter(|v| pred(*v));
        last.is_some()
    })?;
    last.ok_or_else(|| SupError::Timeout {
        what: name.to_owned(),
        bound,
    })
}

/// A port number not handed out before by this process, currently free for
/// both TCP and UDP on loopback.
///
/// Ports come from below the kernel's ephemeral range
/// (`net.ipv4.ip_local_port_range`): a port the kernel chose for `bind(0)`
/// and which we released again can be handed to any other socket that binds
/// port 0 or connects in the meantime (CI saw exactly that race), while a port
/// outside the range is only ever taken by someone asking for it by number.
/// Each process starts at its own offset so concurrent test processes rarely
/// probe the same ports.
pub fn free_port() -> u16 {
    static NEXT: OnceLock<Mutex<(u16, u16, u16)>> = OnceLock::new();
    let state = NEXT.get_or_init(|| {
        let (lo, hi) = non_ephemeral_ports();
        let span = hi - lo;
        let start = lo + (std::process::id() as u16).wrapping_mul(331) % span;
        Mutex::new((lo, span, start))
    });
    let mut g = state.lock().unwrap_or_else(PoisonError::into_inner);
    let (lo, span, _) = *g;
    for _ in 0..span {
        let port = g.2;
        g.2 = lo + (port - lo + 1) % span;
        let tcp = TcpListener::bind(("127.0.0.1", port));
        let udp = UdpSocket::bind(("127.0.0.1", port));
        if tcp.is_ok() && udp.is_ok() {
            return port;
        }
    }
    panic!("no free loopback port left in {lo}..{}", lo + span);
}

/// The ports the kernel never picks by itself: below the ephemeral range if
/// there is room, else above it.
fn non_ephemeral_ports() -> (u16, u16) {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| {
            let mut it = t.split_whitespace().map(|w| w.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        });
    match range {
        Some((lo, _)) if lo >= 12_000 => (10_000, lo),
        Some((_, hi)) if hi <= 63_000 => (hi + 1, 65_535),
        _ => (10_000, 30_000),
    }
}

/// The path of a workspace binary, building it once per process if need
/// be.
///
/// `CARGO_BIN_EXE_<bin>` wins when set in the environment (cargo sets it at
/// compile time for integration tests of the binary's own package; callers
/// can forward it). Otherwise `cargo build -p package --bin bin` runs once per
/// (package, bin) and the binary is taken from `<target>/debug/`.
///
/// With `HAVEN_PREBUILT_BINS=1` (set by `scripts/test.sh` after
/// `cargo test --no-run` built every binary with the suite's own feature
/// set) an existing binary is used as it is: a `cargo build -p` from inside
/// a test would resolve features differently and rebuild half the workspace
/// while a lab's watchdog is running.
pub fn workspace_binary(package: &str, bin: &str) -> Result<PathBuf, SupError> {
    if let Some(p) = std::env::var_os(format!("CARGO_BIN_EXE_{bin}")) {
        return Ok(PathBuf::from(p));
    }
    static BUILT: OnceLock<Mutex<HashSet<(String, String)>>> = OnceLock::new();
    let built = BUILT.get_or_init(|| Mutex::new(HashSet::new()));
    // Held across the build: two tests asking at once build once.
    let mut done = built.lock().unwrap_or_else(PoisonError::into_inner);
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace.join("target"), PathBuf::from);
    let path = target.join("debug").join(bin);
    if std::env::var_os("HAVEN_PREBUILT_BINS").is_some_and(|v| v == "1") && path.exists() {
        return Ok(path);
    }
    let key = (package.to_owned(), bin.to_owned());
    if !done.contains(&key) {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-q", "-p", package, "--bin", bin])
            .current_dir(&workspace)
            .stdin(Stdio::null())
            .status()
            .map_err(io_err(format!("cargo build -p {package} --bin {bin}")))?;
        if !status.success() {
            return Err(SupError::Build(format!("{package}/{bin}")));
        }
        done.insert(key);
    }
    Ok(path)
}

/// What to run: a program, its arguments and extra environment.
#[derive(Debug, Clone)]
pub struct Spec {
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
}

impl Spec {
    /// Runs `program` (a path, or a name looked up in `PATH`).
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        Spec {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            env: Vec::new(),
        }
    }

    /// One more argument.
    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Self {
        self.args.push(a.as_ref().to_owned());
        self
    }

    /// More arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// An environment variable for the process.
    pub fn env(mut self, k: impl AsRef<OsStr>, v: impl AsRef<OsStr>) -> Self {
        self.env
            .push((k.as_ref().to_owned(), v.as_ref().to_owned()));
        self
    }
}

/// A supervised child process. Dropping it SIGKILLs and reaps the child; if
/// the thread is panicking (a failing test), the log tail is printed first.
#[derive(Debug)]
pub struct Process {
    name: String,
    spec: Spec,
    netns: Option<String>,
    child: Option<Child>,
    status: Option<ExitStatus>,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

/// How many log lines a failing test shows per process.
const TAIL_LINES: usize = 40;

impl Process {
    /// Starts `spec`, in namespace `netns` if given, with stdout and stderr
    /// appended to `<tempdir>/<name>.log`.
    pub fn spawn(name: &str, spec: Spec, netns: Option<&str>) -> Result<Process, SupError> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("hv-{name}-"))
            .tempdir()
            .map_err(io_err("creating the log directory"))?;
        let log = dir.path().join(format!("{name}.log"));
        let mut p = Process {
            name: name.to_owned(),
            spec,
            netns: netns.map(str::to_owned),
            child: None,
            status: None,
            log,
            _dir: dir,
        };
        p.start()?;
        Ok(p)
    }

    fn start(&mut self) -> Result<(), SupError> {
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(io_err(format!("opening {}", self.log.display())))?;
        let err = out.try_clone().map_err(io_err("duplicating the log fd"))?;
        let mut c = match &self.netns {
            // `ip netns exec` execs the program: the child's pid is its own.
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec"]).arg(ns).arg(&self.spec.program);
                c
            }
            None => Command::new(&self.spec.program),
        };
        c.args(&self.spec.args)
            .envs(self.spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = c
            .spawn()
            .map_err(io_err(format!("spawning {}", self.name)))?;
        self.child = Some(child);
        self.status = None;
        Ok(())
    }

    /// The name given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace it runs in, if any.
    pub fn netns(&self) -> Option<&str> {
        self.netns.as_deref()
    }

    /// The pid of the running child.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The log file (stdout and stderr, across restarts).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The whole log so far.
    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Whether the child has not exited yet (reaps it if it has).
    pub fn is_running(&mut self) -> bool {
        self.try_status().is_none()
    }

    fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none()
            && let Some(c) = self.child.as_mut()
            && let Ok(Some(st)) = c.try_wait()
        {
            self.status = Some(st);
        }
        self.status
    }

    /// Sends `sig` (e.g. `libc::SIGTERM`) to the child.
    pub fn signal(&mut self, sig: i32) -> Result<(), SupError> {
        let pid = self
            .pid()
            .and_then(|p| i32::try_from(p).ok())
            .ok_or_else(|| SupError::Io {
                what: format!("signalling {}", self.name),
                source: io::Error::other("not started"),
            })?;
        if self.try_status().is_some() {
            // Already reaped: its pid may belong to someone else now.
            return Ok(());
        }
        // SAFETY: kill(2) on our own unreaped child's pid.
        if unsafe { libc::kill(pid, sig) } != 0 {
            return Err(SupError::Io {
                what: format!("signalling {}", self.name),
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// SIGKILL: the crash the cluster must survive.
    pub fn sigkill(&mut self) -> Result<(), SupError> {
        self.signal(libc::SIGKILL)
    }

    /// Waits for the child to exit, within `bound`.
    pub fn wait_exit(&mut self, bound: Duration) -> Result<ExitStatus, SupError> {
        let what = format!("{} to exit", self.name);
        wait_for(&what, bound, || self.try_status().is_some())?;
        self.status.ok_or(SupError::Timeout { what, bound })
    }

    /// Kills the child if still running, then starts the same spec again
    /// (the log continues in the same file).
    pub fn restart(&mut self) -> Result<(), SupError> {
        self.kill_and_reap();
        let _ = writeln!(
            OpenOptions::new()
                .append(true)
                .open(&self.log)
                .map_err(io_err("log"))?,
            "----- {} restarted -----",
            self.name
        );
        self.start()
    }

    /// Waits until a port answers, in this process's namespace.
    pub fn wait_port(
        &self,
        addr: SocketAddr,
        proto: Proto,
        probe: &[u8],
        bound: Duration,
    ) -> Result<(), SupError> {
        wait_port(addr, proto, probe, self.netns.as_deref(), bound)
    }

    /// Scrapes a metrics URL from inside this process's namespace.
    pub fn scrape(&self, url: &str) -> Result<String, SupError> {
        scrape(url, self.netns.as_deref())
    }

    /// [`await_metric`] from inside this process's namespace.
    pub fn await_metric(
        &self,
        url: &str,
        name: &str,
        labels: &[(&str, &str)],
        pred: impl Fn(f64) -> bool,
        bound: Duration,
    ) -> Result<f64, SupError> {
        await_metric(url, self.netns.as_deref(), name, labels, pred, bound)
    }

    fn kill_and_reap(&mut self) {
        if let Some(mut c) = self.child.take()
            && self.status.is_none()
        {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.status = None;
    }

    /// The exit status if the child has exited (as signal or code).
    pub fn describe_exit(st: ExitStatus) -> String {
        match (st.code(), st.signal()) {
            (Some(c), _) => format!("exit code {c}"),
            (None, Some(s)) => format!("signal {s}"),
            _ => st.to_string(),
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let state = match self.try_status() {
                Some(st) => Process::describe_exit(st),
                None => "running".to_owned(),
            };
            eprintln!(
                "===== {} ({state}) last {TAIL_LINES} lines of {} =====\n{}\n===== end {} =====",
                self.name,
                self.log.display(),
                self.log_tail(TAIL_LINES),
                self.name
            );
        }
        self.kill_and_reap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXPO: &str = r#"# HELP haven_registrations_total Registrations handled.
# TYPE haven_registrations_total counter
haven_registrations_total{realm="a",result="accepted"} 17
haven_registrations_total{realm="a",result="denied"} 3
haven_registrations_total{realm="b",result="accepted"} 5 1700000000000
haven_bindings 42
haven_weird{path="x\"y\\z",n="1"} 2.5e3
haven_up{} +Inf
"#;

    #[test]
    fn metric_by_labels() {
        assert_eq!(
            metric(
                EXPO,
                "haven_registrations_total",
                &[("realm", "a"), ("result", "denied")]
            ),
            Some(3.0)
        );
        assert_eq!(
            metric(EXPO, "haven_registrations_total", &[("realm", "b")]),
            Some(5.0)
        );
        // No label filter: the first sample.
        assert_eq!(metric(EXPO, "haven_registrations_total", &[]), Some(17.0));
        assert_eq!(metric(EXPO, "haven_bindings", &[]), Some(42.0));
        assert_eq!(
            metric(EXPO, "haven_weird", &[("path", "x\"y\\z")]),
            Some(2500.0)
        );
        assert_eq!(metric(EXPO, "haven_up", &[]), Some(f64::INFINITY));
    }

    #[test]
    fn metric_absent() {
        assert_eq!(metric(EXPO, "haven_registrations", &[]), None);
        assert_eq!(metric(EXPO, "haven_bindings", &[("realm", "a")]), None);
        assert_eq!(
            metric(EXPO, "haven_registrations_total", &[("realm", "c")]),
            None
        );
        // HELP/TYPE lines are not samples.
        assert_eq!(metric(EXPO, "#", &[]), None);
        assert_eq!(metric("haven_x{a=\"1\" 3", "haven_x", &[]), None);
        assert_eq!(metric("haven_x notanumber", "haven_x", &[]), None);
    }

    #[test]
    fn free_ports_are_unique() {
        let ports: HashSet<u16> = (0..200).map(|_| free_port()).collect();
        assert_eq!(ports.len(), 200);
    }

    #[test]
    fn wait_for_times_out_and_succeeds() {
        let e = wait_for("never", Duration::from_millis(30), || false);
        assert!(matches!(e, Err(SupError::Timeout { .. })));
        let mut n = 0;
        assert!(
            wait_for("third call", Duration::from_secs(5), || {
                n += 1;
                n == 3
            })
            .is_ok()
        );
        assert_eq!(n, 3);
    }
}

//! The continuous registration load of the replication tests, and the
//! invariant they check with it (DESIGN.md § 9, first line): every
//! registration a client saw acknowledged is in the surviving binding
//! table — the acknowledged care-of address, or one the client sent after
//! it, unacknowledged, which may have committed too.
//!
//! A thread drives `count` sans-IO [`MobileNode`]s over their own loopback
//! sockets, each registering back to back with a new care-of address every
//! time, each registration to one of the current targets (round robin; the
//! test changes the targets as the dispatcher would by health).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use haven_cluster_tests::mn::{Event, MnConfig, MobileNode};
use haven_cluster_tests::mnsim::unix_now;
use haven_cluster_tests::supervisor::wait_for;
use haven_cluster_tests::topo::in_netns;

use super::node::{BOUND, Table};

/// A target of the load: node id and the realm's VIP socket on it.
pub type Target = (u64, SocketAddrV4);

/// The mobile nodes of a load and how they retransmit.
#[derive(Debug, Clone, Copy)]
pub struct LoadConfig {
    pub count: usize,
    /// Home address of mobile node 0; node `i` has `base + i`.
    pub base: Ipv4Addr,
    pub spi: u32,
    pub key: &'static [u8],
    /// A registration is abandoned after 3 tries: `initial_timeout`, then
    /// `max_timeout` twice (RFC 5944 § 3.6.3 back-off, capped).
    pub initial_timeout: Duration,
    pub max_timeout: Duration,
    /// When the targets change, a registration outstanding at a node that
    /// is no longer one moves at once to a current target (its care-of
    /// address stays in `later`: it may have committed). Otherwise it runs
    /// its tries out where it is.
    pub move_outstanding: bool,
}

/// What the load saw, shared while it runs.
#[derive(Debug, Default)]
struct Seen {
    /// Acknowledgements: when, by which node, and when the client started
    /// that registration.
    acks: Vec<(Instant, u64, Instant)>,
    /// Transactions abandoned (no reply after every try to one node).
    abandoned: u64,
    /// Each mobile node now: (last acknowledged care-of address, care-of
    /// addresses sent since, unacknowledged).
    now: HashMap<Ipv4Addr, (Option<Ipv4Addr>, Vec<Ipv4Addr>)>,
}

/// One mobile node of the load (at the end, or in a snapshot).
#[derive(Debug, Clone)]
pub struct MnEnd {
    pub hoa: Ipv4Addr,
    /// The care-of address last acknowledged.
    pub acked: Option<Ipv4Addr>,
    /// Care-of addresses sent after it, unacknowledged.
    pub later: Vec<Ipv4Addr>,
    /// Longest time between two acknowledgements (or start and the first);
    /// zero in a snapshot.
    pub worst_gap: Duration,
}

pub struct Load {
    stop: Arc<AtomicBool>,
    targets: Arc<Mutex<Vec<Target>>>,
    seen: Arc<Mutex<Seen>>,
    handle: Option<JoinHandle<Vec<MnEnd>>>,
}

impl Load {
    /// Starts the load against `targets`.
    pub fn start(cfg: LoadConfig, targets: Vec<Target>) -> Load {
        Self::start_in(cfg, targets, None)
    }

    /// [`Load::start`] with the mobile nodes' sockets inside namespace `ns`.
    pub fn start_in(cfg: LoadConfig, targets: Vec<Target>, ns: Option<String>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let targets = Arc::new(Mutex::new(targets));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (s, t, v) = (stop.clone(), targets.clone(), seen.clone());
        let handle = std::thread::spawn(move || match ns {
            Some(ns) => in_netns(&ns, || run(cfg, &s, &t, &v)).expect("enter the namespace"),
            None => run(cfg, &s, &t, &v),
        });
        Load {
            stop,
            targets,
            seen,
            handle: Some(handle),
        }
    }

    /// New registrations go to `t` from now on (none while it is empty).
    pub fn set_targets(&self, t: Vec<Target>) {
        *self.targets.lock().unwrap_or_else(PoisonError::into_inner) = t;
    }

    fn seen(&self) -> MutexGuard<'_, Seen> {
        lock(&self.seen)
    }

    /// What every mobile node saw so far.
    pub fn snapshot(&self) -> Vec<MnEnd> {
        self.seen()
            .now
            .iter()
            .map(|(hoa, (acked, later))| MnEnd {
                hoa: *hoa,
                acked: *acked,
                later: later.clone(),
                worst_gap: Duration::ZERO,
            })
            .collect()
    }

    pub fn acks(&self) -> usize {
        self.seen().acks.len()
    }

    /// Every acknowledgement so far: (at, by node, registration started).
    pub fn ack_log(&self) -> Vec<(Instant, u64, Instant)> {
        self.seen().acks.clone()
    }

    pub fn acks_by(&self, node: u64) -> usize {
        self.seen()
            .acks
            .iter()
            .filter(|(_, n, _)| *n == node)
            .count()
    }

    pub fn abandoned(&self) -> u64 {
        self.seen().abandoned
    }

    /// The first acknowledgement of a registration started after `t`.
    pub fn first_ack_started_after(&self, t: Instant) -> Option<Instant> {
        self.seen()
            .acks
            .iter()
            .filter(|(_, _, started)| *started > t)
            .map(|(at, _, _)| *at)
            .min()
    }

    /// Waits for `n` more acknowledgements than now.
    pub fn await_more(&self, n: usize, what: &str) {
        let from = self.acks();
        wait_for(what, BOUND, || self.acks() >= from + n).expect(what);
    }

    pub fn finish(mut self) -> Vec<MnEnd> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .expect("running")
            .join()
            .expect("load thread")
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn lock(s: &Mutex<Seen>) -> MutexGuard<'_, Seen> {
    s.lock().unwrap_or_else(PoisonError::into_inner)
}

struct LoadMn {
    hoa: Ipv4Addr,
    sock: UdpSocket,
    core: Option<(MobileNode, u64, Instant)>,
    seq: u32,
    acked: Option<Ipv4Addr>,
    later: Vec<Ipv4Addr>,
    last_ack: Instant,
    worst_gap: Duration,
}

fn run(
    cfg: LoadConfig,
    stop: &AtomicBool,
    targets: &Mutex<Vec<Target>>,
    seen: &Mutex<Seen>,
) -> Vec<MnEnd> {
    let started = Instant::now();
    let mut mns: Vec<LoadMn> = (0..cfg.count)
        .map(|i| {
            let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
            sock.set_nonblocking(true).expect("nonblocking");
            LoadMn {
                hoa: Ipv4Addr::from(u32::from(cfg.base) + i as u32),
                sock,
                core: None,
                seq: 0,
                acked: None,
                later: Vec::new(),
                last_ack: started,
                worst_gap: Duration::ZERO,
            }
        })
        .collect();
    let mut buf = [0u8; 2048];
    let mut rr = 0usize;
    // After `stop`, outstanding registrations may still finish (bounded).
    let mut drain_until: Option<Instant> = None;
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        if stopping && drain_until.is_none() {
            drain_until = Some(Instant::now() + Duration::from_secs(3));
        }
        if drain_until.is_some_and(|d| Instant::now() >= d)
            || (stopping && mns.iter().all(|m| m.core.is_none()))
        {
            break;
        }
        let now = unix_now();
        let mut busy = false;
        let current = targets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for (i, m) in mns.iter_mut().enumerate() {
            // Behind the dispatcher a retransmission reaches whichever node
            // serves now; with `move_outstanding` the client moves its
            // registration there itself.
            if cfg.move_outstanding
                && !stopping
                && !current.is_empty()
                && let Some((_, busy_with, _)) = &m.core
                && !current.iter().any(|(node, _)| node == busy_with)
            {
                m.core = None;
            }
            if m.core.is_none() && !stopping {
                if current.is_empty() {
                    continue;
                }
                rr += 1;
                let (node, vip) = current[(rr + i) % current.len()];
                m.seq += 1;
                let coa = Ipv4Addr::new(198, 19, i as u8, (m.seq % 250 + 1) as u8);
                let mut c = MnConfig::new(m.hoa, *vip.ip(), coa, cfg.spi, cfg.key);
                c.home_agent_port = vip.port();
                c.initial_timeout = cfg.initial_timeout;
                c.max_timeout = cfg.max_timeout;
                c.max_attempts = 3;
                let mut core = MobileNode::new(c);
                core.register(now);
                m.later.push(coa);
                m.core = Some((core, node, Instant::now()));
                lock(seen).now.insert(m.hoa, (m.acked, m.later.clone()));
            }
            let Some((core, node, began)) = m.core.as_mut() else {
                continue;
            };
            loop {
                match m.sock.recv_from(&mut buf) {
                    Ok((n, SocketAddr::V4(from))) => {
                        busy = true;
                        let _ = core.handle(now, from, &buf[..n]);
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            if core.poll_timeout().is_some_and(|t| t <= now) {
                core.handle_timeout(now);
            }
            while let Some((dst, bytes)) = core.poll_transmit() {
                let _ = m.sock.send_to(&bytes, dst);
            }
            let mut done = false;
            while let Some(ev) = core.poll_event() {
                match ev {
                    Event::Accepted { .. } => {
                        let at = Instant::now();
                        m.worst_gap = m.worst_gap.max(at - m.last_ack);
                        m.last_ack = at;
                        m.acked = Some(core.care_of_address());
                        m.later.clear();
                        let mut s = lock(seen);
                        s.acks.push((at, *node, *began));
                        s.now.insert(m.hoa, (m.acked, Vec::new()));
                        done = true;
                    }
                    Event::GaveUp | Event::Denied { .. } => {
                        lock(seen).abandoned += 1;
                        done = true;
                    }
                    _ => {}
                }
            }
            if done {
                m.core = None;
            }
        }
        if !busy {
            // Pacing of the generator's own poll loop, not a wait for a
            // condition of the system under test.
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    mns.into_iter()
        .map(|m| MnEnd {
            hoa: m.hoa,
            acked: m.acked,
            later: m.later,
            worst_gap: m.worst_gap,
        })
        .collect()
}

/// Every acknowledged registration of `mns` is in `table` (its
/// acknowledged care-of address or a later one); returns how many were
/// checked.
pub fn assert_acknowledged_present(table: &Table, mns: &[MnEnd]) -> usize {
    let mut checked = 0;
    for m in mns {
        let Some(a) = m.acked else { continue };
        checked += 1;
        let got = table.get(&m.hoa).copied();
        assert!(
            got == Some(a) || got.is_some_and(|g| m.later.contains(&g)),
            "acknowledged {} -> {a} lost: the table holds {got:?} (later attempts {:?})",
            m.hoa,
            m.later
        );
    }
    checked
}

/// Polls `views` (every node's table; `None` while one cannot be read)
/// within [`BOUND`] until all are identical; returns that table.
pub fn await_identical(what: &str, mut views: impl FnMut() -> Option<Vec<Table>>) -> Table {
    let mut last = HashMap::new();
    wait_for(what, BOUND, || {
        let Some(views) = views() else { return false };
        let same = views.windows(2).all(|w| w[0] == w[1]);
        last = views.into_iter().next().unwrap_or_default();
        same
    })
    .expect(what);
    last
}

//! The one-command rack (issue 10 item 1), run as a user would run it: the
//! real `haven-rack` binary, non-interactively, with `--plain` output whose
//! `event …` lines are checked.
//!
//! * namespaces (root): the raft leader is SIGKILLed, the survivors must
//!   hold every mobile node's binding and keep accepting registrations
//!   ("healed … on 2/2 live nodes"); after the restart the node must catch
//!   up with the leader and hold every binding ("healed … on 3/3 nodes");
//! * namespaces (root): the active dispatcher host is SIGKILLed, the
//!   Backup takes both VIPs and registrations go on through it;
//! * loopback (no root needed): the node kill and restart of the first (no
//!   data plane there: TUN devices need root).
//!
//! In the namespace rack every mobile node also sends 2 packets/s through
//! its RFC 3519 tunnel to the correspondent, which echoes them back through
//! the dispatchers' gateway path: the nodes' data-plane counters must move
//! both ways and the echoes must reach the mobile nodes.
//!
//! Timeline of a run: the mobile nodes start spread over 3 s and move 4 s
//! after their start (4-7 s in), then re-register at 80 % of their 10 s
//! lifetime; the rack fires a scheduled kill only once every mobile node
//! is registered, so the moves land on the survivors (or on the Backup
//! dispatcher) before the restart at 9.5-10 s, however slow the machine.
//!
//! Every run is bounded (`--duration`, a `timeout`-style kill here, and the
//! rack's own lab watchdog); every mobile node must have registered and
//! none may have given up.

use std::io::Read as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use haven_cluster_tests::supervisor::workspace_binary;
use haven_cluster_tests::topo;

/// Runs `haven-rack --plain ARGS`, killing it after `bound`; returns its
/// stdout and whether it exited successfully.
fn rack(args: &[&str], bound: Duration) -> (String, bool) {
    // Built with the suite (cargo builds a package's binaries for its
    // integration tests); the nodes and dispatchers come from
    // `workspace_binary` inside the rack.
    let bin = env!("CARGO_BIN_EXE_haven-rack");
    workspace_binary("haven-ha-node", "ha-node").expect("build ha-node");
    workspace_binary("haven-dispatcher", "dispatcher").expect("build dispatcher");
    let mut child = Command::new(bin)
        .arg("--plain")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn haven-rack");
    let mut stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + bound;
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break Some(st);
        }
        if Instant::now() >= deadline {
            // SIGTERM first: the rack tears its namespaces down on it.
            // SAFETY: kill(2) on our own unreaped child.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
            let grace = Instant::now() + Duration::from_secs(3);
            while Instant::now() < grace && child.try_wait().ok().flatten().is_none() {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = reader.join().unwrap_or_default();
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let ok = status.is_some_and(|s| s.success());
    if !ok {
        eprintln!("haven-rack {args:?}: status {status:?}\nstderr:\n{err}");
    }
    println!("{out}");
    (out, ok)
}

/// The index of the first line starting with `prefix` at or after `from`.
fn find(lines: &[&str], from: usize, prefix: &str) -> Option<usize> {
    lines
        .iter()
        .skip(from)
        .position(|l| l.starts_with(prefix))
        .map(|i| i + from)
}

fn expect(lines: &[&str], from: usize, prefix: &str) -> usize {
    find(lines, from, prefix).unwrap_or_else(|| {
        panic!(
            "no line starting with {prefix:?} after line {from}:\n{}",
            lines.get(from..).unwrap_or_default().join("\n")
        )
    })
}

/// Every fleet registered all of its mobile nodes and none gave up.
fn fleets_whole(lines: &[&str], realms: &[(&str, usize)]) {
    for (realm, n) in realms {
        let want = format!(
            "event fleet {realm} registered={n} of {n} moves={n} gave_up=0 never_registered=0"
        );
        assert!(
            lines.contains(&want.as_str()),
            "{want:?} missing:\n{}",
            lines.join("\n")
        );
    }
}

/// The data plane carried traffic both ways: the nodes counted packets in
/// from and out to the mobile nodes, the correspondent received data from
/// every fleet's mobile nodes and the echoes came back through the tunnels.
fn data_flowed(lines: &[&str], mobile_nodes: usize) {
    expect(lines, 0, "event dataplane flowing");
    let data = lines[expect(lines, 0, "event data sent=")];
    let field = |k: &str| -> u64 {
        data.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{k} in {data:?}"))
    };
    let (sent, at_cn, flows, back) = (
        field("sent="),
        field("at_cn="),
        field("flows="),
        field("back_at_mns="),
    );
    assert!(sent > 0 && at_cn > 0 && back > 0, "{data}");
    // Every mobile node's home address reached the correspondent (the
    // killed node's share came through the survivors).
    assert_eq!(flows, mobile_nodes as u64, "{data}");
    // Most of it arrived (a kill and the moves lose a little).
    assert!(at_cn * 10 >= sent * 8, "{data}");
    assert!(back * 10 >= at_cn * 7, "{data}");
}

/// The node kill heals before the restart, the restart catches up.
fn assert_kill_and_catch_up(out: &str, expected: usize, nodes_live_after_kill: usize) {
    let lines: Vec<&str> = out.lines().collect();
    let up = expect(&lines, 0, "event rack up");
    let reg = expect(
        &lines,
        up,
        &format!("event registered bindings={expected} on 3/3 nodes"),
    );
    let killed = expect(&lines, reg, "event node-");
    assert!(
        lines[killed].contains("killed (the leader"),
        "{}",
        lines[killed]
    );
    let name = lines[killed]
        .split_whitespace()
        .nth(1)
        .expect("node name")
        .to_owned();
    let healed = expect(
        &lines,
        killed,
        &format!(
            "event healed bindings={expected} on {nodes_live_after_kill}/{nodes_live_after_kill} live nodes"
        ),
    );
    let restarted = expect(&lines, killed, &format!("event restarted {name}"));
    assert!(
        healed < restarted,
        "the kill must heal before the restart:\n{out}"
    );
    let new_leader = expect(&lines, killed, "event leader node-");
    assert!(
        !lines[new_leader].starts_with(&format!("event leader {name} ")),
        "a new leader: {}",
        lines[new_leader]
    );
    let caught = expect(
        &lines,
        restarted,
        &format!("event healed bindings={expected} on 3/3 nodes"),
    );
    assert!(
        lines[caught].contains(&format!("caught up: {name}")),
        "{}",
        lines[caught]
    );
    expect(&lines, caught, "event done");
    let done = lines[expect(&lines, caught, "event done")];
    assert!(done.contains("settled=true"), "{done}");
    assert!(done.contains(" denied=0 "), "{done}");
    expect(&lines, caught, "event torn down");
}

#[test]
fn rack_heals_a_leader_kill_and_catches_up_after_the_restart() {
    if topo::skip_without_root() {
        return;
    }
    let (out, ok) = rack(
        &[
            "--inner",
            "150",
            "--outer",
            "90",
            "--start-over",
            "3",
            "--move-after",
            "4",
            "--kill-node-after",
            "4.5",
            "--restart-after",
            "10",
            "--duration",
            "13.5",
        ],
        Duration::from_secs(75),
    );
    assert!(ok, "haven-rack failed:\n{out}");
    assert!(out.contains("event rack up mode=namespaces"), "{out}");
    assert_kill_and_catch_up(&out, 240, 2);
    let lines: Vec<&str> = out.lines().collect();
    fleets_whole(&lines, &[("inner", 150), ("outer", 90)]);
    data_flowed(&lines, 240);
    // Both dispatchers of the inner realm saw the node go and come back.
    let killed = expect(&lines, 0, "event node-");
    let name = lines[killed].split_whitespace().nth(1).unwrap_or_default();
    for realm in ["inner", "outer"] {
        let down = expect(
            &lines,
            killed,
            &format!("event disp-a/{realm} sees {name} down"),
        );
        expect(
            &lines,
            down,
            &format!("event disp-a/{realm} sees {name} up"),
        );
    }
}

#[test]
fn rack_survives_the_active_dispatcher() {
    if topo::skip_without_root() {
        return;
    }
    let (out, ok) = rack(
        &[
            "--inner",
            "150",
            "--outer",
            "90",
            "--start-over",
            "3",
            "--move-after",
            "4",
            "--kill-dispatcher-after",
            "3.8",
            "--restart-after",
            "10",
            "--duration",
            "12",
        ],
        Duration::from_secs(75),
    );
    assert!(ok, "haven-rack failed:\n{out}");
    let lines: Vec<&str> = out.lines().collect();
    let reg = expect(&lines, 0, "event registered bindings=240 on 3/3 nodes");
    let killed = expect(&lines, reg, "event dispatcher disp-a killed");
    let inner = expect(&lines, killed, "event vip inner owner disp-b");
    let outer = expect(&lines, killed, "event vip outer owner disp-b");
    let healed = expect(
        &lines,
        killed,
        "event healed dispatcher takeover, bindings=240 on 3/3 nodes",
    );
    let restarted = expect(&lines, killed, "event restarted disp-a/inner,disp-a/outer");
    assert!(
        inner < restarted && outer < restarted && healed < restarted,
        "the Backup took both VIPs and served registrations before the restart:\n{out}"
    );
    // Preemption (priority 200) gives the VIPs back; the run waits for it
    // past --duration if the restart was slow (`event overtime …`).
    let back = expect(&lines, restarted, "event healed vip back on disp-a");
    assert!(
        lines[restarted..back]
            .iter()
            .any(|l| l.starts_with("event vip inner owner disp-a"))
            && lines[restarted..back]
                .iter()
                .any(|l| l.starts_with("event vip outer owner disp-a")),
        "the VIPs came back without the owner changes being seen:\n{out}"
    );
    let done = lines[expect(&lines, restarted, "event done")];
    assert!(
        done.contains("settled=true") && done.contains(" denied=0 "),
        "{done}"
    );
    fleets_whole(&lines, &[("inner", 150), ("outer", 90)]);
    data_flowed(&lines, 240);
}

#[test]
fn loopback_rack_heals_a_leader_kill() {
    let (out, ok) = rack(
        &[
            "--loopback",
            "--inner",
            "120",
            "--start-over",
            "3",
            "--move-after",
            "4",
            "--kill-node-after",
            "4.5",
            "--restart-after",
            "9.5",
            "--duration",
            "12",
        ],
        Duration::from_secs(75),
    );
    assert!(ok, "haven-rack failed:\n{out}");
    assert!(out.contains("event rack up mode=loopback"), "{out}");
    assert_kill_and_catch_up(&out, 120, 2);
    let lines: Vec<&str> = out.lines().collect();
    fleets_whole(&lines, &[("inner", 120)]);
}

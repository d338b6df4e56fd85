//! The process supervisor on real processes: spawn, wait for a port,
//! SIGKILL/SIGTERM and observe the exit, restart, log tails, metric
//! scraping inside a namespace. Reference: DESIGN.md §8.

use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use haven_cluster_tests::supervisor::{
    Process, Proto, Spec, await_metric, free_port, port_answers, workspace_binary,
};
use haven_cluster_tests::topo::{Topology, skip_without_root};

const ECHO: &str = env!("CARGO_BIN_EXE_udp-echo");
const BOUND: Duration = Duration::from_secs(10);

fn pid_alive(pid: u32) -> bool {
    // /proc/<pid> vanishes once the process is reaped.
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn spawn_wait_port_kill_restart() {
    let port = free_port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut p = Process::spawn(
        "echo",
        Spec::new(ECHO).args(["serve", &addr.to_string()]),
        None,
    )
    .expect("spawn");
    p.wait_port(addr, Proto::Udp, b"probe", BOUND)
        .expect("port");
    assert!(p.is_running());
    assert!(
        p.log().contains(&format!("listening {addr}")),
        "{}",
        p.log()
    );

    p.sigkill().expect("kill");
    let st = p.wait_exit(BOUND).expect("exit");
    assert_eq!(st.signal(), Some(libc::SIGKILL));
    assert!(!port_answers(addr, Proto::Udp, b"probe"));

    p.restart().expect("restart");
    p.wait_port(addr, Proto::Udp, b"probe", BOUND)
        .expect("port again");
    p.signal(libc::SIGTERM).expect("term");
    assert_eq!(
        p.wait_exit(BOUND).expect("exit").signal(),
        Some(libc::SIGTERM)
    );
    assert!(p.log().contains("restarted"));
}

#[test]
fn wait_exit_reports_exit_code_and_log_tail() {
    let mut p = Process::spawn(
        "counter",
        Spec::new("sh").args(["-c", "for i in $(seq 1 100); do echo line$i; done; exit 3"]),
        None,
    )
    .expect("spawn");
    let st = p.wait_exit(BOUND).expect("exit");
    assert_eq!(st.code(), Some(3));
    let tail = p.log_tail(40);
    let lines: Vec<&str> = tail.lines().collect();
    assert_eq!(lines.len(), 40);
    assert_eq!(lines.first(), Some(&"line61"));
    assert_eq!(lines.last(), Some(&"line100"));
}

#[test]
fn short_wait_times_out() {
    let mut p = Process::spawn("sleeper", Spec::new("sleep").arg("600"), None).expect("spawn");
    assert!(p.wait_exit(Duration::from_millis(50)).is_err());
    assert!(p.is_running());
}

#[test]
fn drop_kills_children_even_when_panicking() {
    let pid = std::sync::Mutex::new(0u32);
    let r = std::panic::catch_unwind(|| {
        let p = Process::spawn("doomed", Spec::new("sleep").arg("600"), None).expect("spawn");
        *pid.lock().unwrap_or_else(|e| e.into_inner()) = p.pid().unwrap_or(0);
        panic!("deliberate failure with a child running");
    });
    assert!(r.is_err());
    let pid = pid.into_inner().unwrap_or_else(|e| e.into_inner());
    assert!(pid > 0);
    assert!(!pid_alive(pid), "child {pid} survived its supervisor");
}

#[test]
fn free_port_is_bindable() {
    let port = free_port();
    assert!(std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok());
    assert_ne!(free_port(), port);
}

#[test]
fn workspace_binary_finds_udp_echo() {
    let p = workspace_binary("haven-cluster-tests", "udp-echo").expect("binary");
    assert!(p.ends_with("debug/udp-echo"), "{}", p.display());
    assert!(p.exists());
}

#[test]
fn scrape_metrics_inside_a_namespace() {
    if skip_without_root() {
        return;
    }
    let lab = Topology::builder()
        .host("m")
        .expire_after(Duration::from_secs(60))
        .build()
        .expect("build");
    let dir = tempfile::tempdir().expect("tempdir");
    let page = dir.path().join("metrics");
    std::fs::write(
        &page,
        "# TYPE haven_bindings gauge\nhaven_bindings{realm=\"a\"} 1\n",
    )
    .expect("write");
    let port = free_port();
    let srv = Process::spawn(
        "http",
        Spec::new("python3").args([
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            "--directory",
            &dir.path().to_string_lossy(),
            &port.to_string(),
        ]),
        lab.ns_name("m"),
    )
    .expect("spawn http");
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    srv.wait_port(addr, Proto::Tcp, b"", BOUND)
        .expect("http up");
    // Only inside the namespace: the root namespace's loopback is another.
    assert!(!port_answers(addr, Proto::Tcp, b""));
    let url = format!("http://{addr}/metrics");
    let v = srv
        .await_metric(
            &url,
            "haven_bindings",
            &[("realm", "a")],
            |v| v >= 1.0,
            BOUND,
        )
        .expect("metric");
    assert_eq!(v, 1.0);
    std::fs::write(&page, "haven_bindings{realm=\"a\"} 7\n").expect("write");
    let v = await_metric(
        &url,
        lab.ns_name("m"),
        "haven_bindings",
        &[("realm", "a")],
        |v| v > 5.0,
        BOUND,
    )
    .expect("updated metric");
    assert_eq!(v, 7.0);
}

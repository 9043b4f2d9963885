//! The capture rules in real network namespaces, for both iptables backends: a "pod" namespace
//! and a "peer" namespace joined by a veth pair (10.211.<n>.0/30), made by each test under a
//! unique name and deleted when it ends. Stand-in proxies (tokio listeners on the pod's 4143 and
//! 4140, in a thread that joined the pod's namespace) answer with a marker and the
//! `SO_ORIGINAL_DST` they saw; clients are `bash`'s `/dev/tcp` run by `ip netns exec`, as a
//! chosen uid through `setpriv`.
//!
//! Needs root, `ip`, `iptables-nft`, `iptables-legacy`, `setpriv`, `bash` and `timeout`
//! (`scripts/install-test-deps`). Without root every test fails saying so, unless
//! `ONEMESH_SKIP_NETNS_TESTS=1` is set. Namespace names carry the test process's pid, so the
//! tests run in parallel.

use onemesh_capture::{
    Backend, CHAIN_PREFIX, Rules, apply, parse_cidrs, parse_ports, remove, render, show,
};
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

const PROXY_UID: u32 = 2102;
const APP_UID: u32 = 1000;

/// `false` (after saying so) when the tests are to be skipped; panics when they cannot run.
fn runnable() -> bool {
    let euid = std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(u32::MAX);
    if euid != 0 {
        if std::env::var("ONEMESH_SKIP_NETNS_TESTS").as_deref() == Ok("1") {
            eprintln!("SKIPPED: ONEMESH_SKIP_NETNS_TESTS=1 and not root (uid {euid})");
            return false;
        }
        panic!(
            "the network-namespace tests need root (running as uid {euid}): run them as root, or \
             set ONEMESH_SKIP_NETNS_TESTS=1 to skip them knowingly"
        );
    }
    for tool in [
        "ip",
        "iptables-nft-restore",
        "iptables-legacy-restore",
        "setpriv",
        "bash",
        "timeout",
    ] {
        let found = Command::new("sh")
            .args([
                "-c",
                &format!("PATH=$PATH:/usr/sbin:/sbin command -v {tool}"),
            ])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            found,
            "{tool} is not installed: run scripts/install-test-deps"
        );
    }
    true
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One network namespace, deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new(name: String) -> Self {
        sh(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        sh(&["ip", "-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A pod and a peer, joined by `eth0` on each side: pod 10.211.n.1, peer 10.211.n.2, and the
/// peer also owns 10.212.n.2 (reached through the same link) for the skipped-network case.
struct Pair {
    pod: Netns,
    peer: Netns,
    pod_ip: Ipv4Addr,
    peer_ip: Ipv4Addr,
    peer_other_ip: Ipv4Addr,
}

impl Pair {
    fn new(test: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}-{n}", std::process::id());
        let pod = Netns::new(format!("onemesh-capt-{id}-{test}-pod"));
        let peer = Netns::new(format!("onemesh-capt-{id}-{test}-peer"));
        let subnet = ((std::process::id() + n) % 250) as u8;
        let pod_ip = Ipv4Addr::new(10, 211, subnet, 1);
        let peer_ip = Ipv4Addr::new(10, 211, subnet, 2);
        let peer_other_ip = Ipv4Addr::new(10, 212, subnet, 2);
        let (p, q) = (pod.name.as_str(), peer.name.as_str());
        sh(&[
            "ip", "-n", p, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns",
            q,
        ]);
        sh(&[
            "ip",
            "-n",
            p,
            "addr",
            "add",
            &format!("{pod_ip}/30"),
            "dev",
            "eth0",
        ]);
        sh(&[
            "ip",
            "-n",
            q,
            "addr",
            "add",
            &format!("{peer_ip}/30"),
            "dev",
            "eth0",
        ]);
        sh(&[
            "ip",
            "-n",
            q,
            "addr",
            "add",
            &format!("{peer_other_ip}/32"),
            "dev",
            "eth0",
        ]);
        sh(&["ip", "-n", p, "link", "set", "eth0", "up"]);
        sh(&["ip", "-n", q, "link", "set", "eth0", "up"]);
        sh(&[
            "ip",
            "-n",
            p,
            "route",
            "add",
            &format!("10.212.{subnet}.0/24"),
            "dev",
            "eth0",
        ]);
        Pair {
            pod,
            peer,
            pod_ip,
            peer_ip,
            peer_other_ip,
        }
    }
}

impl Pair {
    fn peer_other_network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.peer_other_ip) & 0xffff_ff00)
    }
}

/// Runs `f` on a thread that joined `ns`'s network namespace (a thread's namespace is its own;
/// the programs it starts inherit it).
fn in_netns<T: Send + 'static>(ns: &Netns, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{}", ns.name);
    std::thread::spawn(move || {
        enter(&path);
        f()
    })
    .join()
    .unwrap_or_else(|_| panic!("the thread in {} panicked", ns.name))
}

fn enter(path: &str) {
    let file = File::open(path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
        .unwrap_or_else(|e| panic!("setns {path}: {e}"));
}

/// TCP listeners in one namespace; each accepted connection gets `<marker> <original dst>\n`
/// (`none` when the kernel has no NAT record for it) and is closed. Stopped on drop.
struct Listeners {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Listeners {
    fn start(ns: &Netns, specs: &[(SocketAddr, &'static str)]) -> Self {
        let path = format!("/run/netns/{}", ns.name);
        let specs = specs.to_vec();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            enter(&path);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime");
            rt.block_on(async move {
                let mut listeners = Vec::new();
                for (addr, marker) in specs {
                    match tokio::net::TcpListener::bind(addr).await {
                        Ok(l) => listeners.push((l, marker)),
                        Err(e) => {
                            let _ = ready_tx.send(Err(format!("bind {addr}: {e}")));
                            return;
                        }
                    }
                }
                let _ = ready_tx.send(Ok(()));
                for (listener, marker) in listeners {
                    tokio::spawn(serve(listener, marker));
                }
                let _ = stopped.await;
            });
        });
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("listeners in {}: {e}", ns.name),
            Err(e) => panic!("listeners in {} did not start: {e}", ns.name),
        }
        Listeners {
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Listeners {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve(listener: tokio::net::TcpListener, marker: &'static str) {
    while let Ok((mut stream, _)) = listener.accept().await {
        let original =
            nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::OriginalDst)
                .map(|sa| {
                    SocketAddrV4::new(
                        Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)),
                        u16::from_be(sa.sin_port),
                    )
                    .to_string()
                })
                .unwrap_or_else(|_| "none".to_owned());
        let _ = stream
            .write_all(format!("{marker} {original}\n").as_bytes())
            .await;
        let _ = stream.shutdown().await;
    }
}

/// Connects from `ns` as `uid` to `ip:port` with bash's `/dev/tcp` and returns what the server
/// said (or the failure).
fn connect(ns: &Netns, uid: u32, ip: Ipv4Addr, port: u16) -> String {
    let uid = uid.to_string();
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .args([
            "setpriv",
            "--reuid",
            &uid,
            "--regid",
            &uid,
            "--clear-groups",
        ])
        .args(["timeout", "5", "bash", "-c"])
        .arg("exec 3<>/dev/tcp/$0/$1 && cat <&3")
        .args([ip.to_string(), port.to_string()])
        .output()
        .expect("running ip netns exec");
    if out.status.success() {
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    } else {
        format!(
            "failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )
    }
}

fn any(port: u16) -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], port))
}

fn apply_in(ns: &Netns, rules: &Rules, backend: Backend) {
    let rules = rules.clone();
    let started = Instant::now();
    in_netns(ns, move || apply(&rules, backend))
        .unwrap_or_else(|e| panic!("apply with {backend}: {e}"));
    eprintln!(
        "apply with iptables-{backend}: {} ms",
        started.elapsed().as_millis()
    );
}

fn inbound_capture(backend: Backend) {
    if !runnable() {
        return;
    }
    let pair = Pair::new(&format!("in-{backend}"));
    let _pod = Listeners::start(
        &pair.pod,
        &[
            (any(4143), "proxy-inbound"),
            (any(4191), "admin"),
            (any(8080), "app"),
            (any(8081), "app"),
        ],
    );
    // Before the rules, the app's port answers itself.
    assert!(connect(&pair.peer, APP_UID, pair.pod_ip, 8080).starts_with("app "));

    let rules = Rules {
        skip_inbound_ports: parse_ports("8081").unwrap(),
        ..Rules::default()
    };
    apply_in(&pair.pod, &rules, backend);

    let ip = pair.pod_ip;
    assert_eq!(
        connect(&pair.peer, APP_UID, ip, 8080),
        format!("proxy-inbound {ip}:8080"),
        "a connection to the app's port lands on the proxy's inbound with its original destination"
    );
    assert!(
        connect(&pair.peer, APP_UID, ip, 8081).starts_with("app "),
        "a skipped inbound port reaches the app"
    );
    assert!(
        connect(&pair.peer, APP_UID, ip, 4191).starts_with("admin "),
        "the admin port is never captured"
    );
    assert!(
        connect(&pair.peer, APP_UID, ip, 4143).starts_with("proxy-inbound "),
        "peers' proxies reach the inbound port directly"
    );
}

fn outbound_capture(backend: Backend) {
    if !runnable() {
        return;
    }
    let pair = Pair::new(&format!("out-{backend}"));
    let _pod = Listeners::start(
        &pair.pod,
        &[
            (any(4140), "proxy-outbound"),
            (SocketAddr::from(([127, 0, 0, 1], 7000)), "localhost-app"),
            (any(7001), "own-app"),
        ],
    );
    let _peer = Listeners::start(&pair.peer, &[(any(9000), "peer"), (any(9001), "peer")]);
    let rules = Rules {
        skip_outbound_ports: parse_ports("9001").unwrap(),
        // The peer's second address is in 10.212.<n>.0/24, skipped.
        skip_outbound_cidrs: parse_cidrs(&format!("{}/24", pair.peer_other_network())).unwrap(),
        ..Rules::default()
    };
    apply_in(&pair.pod, &rules, backend);

    let (peer, other) = (pair.peer_ip, pair.peer_other_ip);
    assert_eq!(
        connect(&pair.pod, APP_UID, peer, 9000),
        format!("proxy-outbound {peer}:9000"),
        "the app's connection lands on the proxy's outbound with its original destination"
    );
    assert!(
        connect(&pair.pod, PROXY_UID, peer, 9000).starts_with("peer "),
        "the proxy's own connection goes out, not back to itself"
    );
    assert!(
        connect(&pair.pod, APP_UID, peer, 9001).starts_with("peer "),
        "a skipped outbound port goes direct"
    );
    assert!(
        connect(&pair.pod, APP_UID, other, 9000).starts_with("peer "),
        "a skipped outbound network goes direct"
    );
    assert!(
        connect(&pair.pod, APP_UID, Ipv4Addr::LOCALHOST, 7000).starts_with("localhost-app "),
        "127.0.0.1 is not captured"
    );
    assert!(
        connect(&pair.pod, APP_UID, pair.pod_ip, 7001).starts_with("own-app "),
        "the app calling its own pod IP (over lo) reaches itself"
    );
}

fn idempotent_and_removable(backend: Backend) {
    if !runnable() {
        return;
    }
    let pair = Pair::new(&format!("idem-{backend}"));
    let rules = Rules {
        skip_inbound_ports: parse_ports("22,8000-8010").unwrap(),
        skip_outbound_cidrs: parse_cidrs("10.96.0.0/12").unwrap(),
        ..Rules::default()
    };
    apply_in(&pair.pod, &rules, backend);
    apply_in(&pair.pod, &rules, backend);

    let save = |ns: &Netns, program: &str| -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &ns.name, program, "-t", "nat"])
            .output()
            .expect("iptables-save");
        assert!(
            out.status.success(),
            "{program}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let dump = save(&pair.pod, backend.save_program());
    let mut saved: Vec<&str> = dump
        .lines()
        .filter(|l| l.starts_with("-A ") && l.contains(CHAIN_PREFIX))
        .collect();
    let rendered = render(&rules);
    let mut expected: Vec<&str> = rendered.lines().filter(|l| l.starts_with("-A ")).collect();
    saved.sort_unstable();
    expected.sort_unstable();
    assert_eq!(
        saved, expected,
        "after two applies, each rule once, as rendered:\n{dump}"
    );

    // What `show` reports is the same, and the other backend holds nothing of ours.
    let ns_show = in_netns(&pair.pod, move || show(backend)).expect("show");
    assert_eq!(
        ns_show.lines().filter(|l| l.starts_with("-A ")).count(),
        expected.len()
    );
    let other = match backend {
        Backend::Nft => Backend::Legacy,
        Backend::Legacy => Backend::Nft,
    };
    assert!(!save(&pair.pod, other.save_program()).contains(CHAIN_PREFIX));
    assert_eq!(
        in_netns(&pair.pod, Backend::detect),
        backend,
        "auto-detection picks the backend that holds our rules"
    );

    // A third apply with inbound capture off leaves no inbound chain behind.
    let outbound_only = Rules {
        capture_inbound: false,
        ..rules.clone()
    };
    apply_in(&pair.pod, &outbound_only, backend);
    let dump = save(&pair.pod, backend.save_program());
    assert!(
        !dump.contains("ONEMESH_PREROUTING") && !dump.contains("ONEMESH_INBOUND"),
        "{dump}"
    );
    assert_eq!(dump.matches("-j ONEMESH_OUTPUT").count(), 1, "{dump}");

    assert!(
        in_netns(&pair.pod, move || remove(backend)).expect("remove"),
        "remove finds our rules"
    );
    let dump = save(&pair.pod, backend.save_program());
    assert!(
        !dump.contains(CHAIN_PREFIX) && !dump.contains("onemesh"),
        "{dump}"
    );
    assert!(
        !in_netns(&pair.pod, move || remove(backend)).expect("remove"),
        "a second remove finds nothing"
    );
}

/// Without root's capabilities (the thread switches its own uid to 1000; the iptables programs
/// it starts inherit that), both backends fail with the stderr and the capabilities to add.
#[test]
fn without_net_admin_the_error_names_the_capabilities_to_add() {
    if !runnable() {
        return;
    }
    let ns = Netns::new(format!("onemesh-capt-{}-nocap", std::process::id()));
    for backend in [Backend::Nft, Backend::Legacy] {
        let err = in_netns(&ns, move || {
            // SAFETY: the raw syscall changes this thread's credentials only (glibc's setresuid
            // would change every thread's); the thread ends right after.
            let rc = unsafe { libc::syscall(libc::SYS_setresuid, APP_UID, APP_UID, APP_UID) };
            assert_eq!(rc, 0, "setresuid: {}", std::io::Error::last_os_error());
            apply(&Rules::default(), backend)
        })
        .expect_err("apply without privileges must fail");
        let message = err.to_string();
        assert!(
            message.contains("Permission denied"),
            "{backend}: {message}"
        );
        assert!(
            message.contains("add NET_ADMIN and NET_RAW"),
            "{backend}: {message}"
        );
        assert!(
            message.contains(backend.save_program()),
            "{backend}: {message}"
        );
    }
}

#[test]
fn inbound_capture_nft() {
    inbound_capture(Backend::Nft);
}

#[test]
fn inbound_capture_legacy() {
    inbound_capture(Backend::Legacy);
}

#[test]
fn outbound_capture_nft() {
    outbound_capture(Backend::Nft);
}

#[test]
fn outbound_capture_legacy() {
    outbound_capture(Backend::Legacy);
}

#[test]
fn apply_is_idempotent_and_remove_leaves_nothing_nft() {
    idempotent_and_removable(Backend::Nft);
}

#[test]
fn apply_is_idempotent_and_remove_leaves_nothing_legacy() {
    idempotent_and_removable(Backend::Legacy);
}

//! Runs `onemesh up` as a user would (the real binaries: onemesh, onemesh-control, onemesh-proxy)
//! on free ports with a private state directory, and stops it — and checks that nothing it started
//! is left behind — when dropped.
//!
//! [`Up::start_isolated`] runs `onemesh up --isolate` (root only). Its apps and outbound ports
//! listen on the loopback of a workload's network namespace: the helpers here take an address
//! `host:port@<netns>` (see [`Up::in_netns`]) and connect from a thread that joined that
//! namespace; a plain `host:port` is dialled from the test's own namespace.

#![allow(dead_code)]

pub mod platform;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// Directory holding this build's binaries (`scripts/test` builds them all before the tests).
pub fn bin_dir() -> PathBuf {
    let onemesh = PathBuf::from(env!("CARGO_BIN_EXE_onemesh"));
    let dir = onemesh
        .parent()
        .expect("binary has a directory")
        .to_path_buf();
    for b in ["onemesh-control", "onemesh-proxy"] {
        assert!(
            dir.join(b).exists(),
            "{b} is not built in {}: run `cargo build --workspace --bins` first (scripts/test does)",
            dir.display()
        );
    }
    dir
}

pub struct Up {
    pub dir: PathBuf,
    pub config: PathBuf,
    /// Started with `--isolate`.
    pub isolated: bool,
    child: Option<Child>,
}

fn unique_dir(tag: &str) -> PathBuf {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir = std::env::temp_dir().join(format!("onemesh-{tag}-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Up {
    /// Writes `mesh_yaml` to a fresh directory and starts `onemesh up` on it; waits until
    /// `onemesh check` passes.
    pub fn start(tag: &str, mesh_yaml: &str) -> Up {
        Up::start_with(tag, mesh_yaml, &[])
    }

    /// [`Up::start`] with `--isolate` (needs root: fails saying so otherwise).
    pub fn start_isolated(tag: &str, mesh_yaml: &str) -> Up {
        assert_root();
        Up::start_with(tag, mesh_yaml, &["--isolate"])
    }

    /// [`Up::start`], isolated when `isolate` is set.
    pub fn start_maybe_isolated(tag: &str, mesh_yaml: &str, isolate: bool) -> Up {
        if isolate {
            Up::start_isolated(tag, mesh_yaml)
        } else {
            Up::start(tag, mesh_yaml)
        }
    }

    /// [`Up::start`] with more `onemesh up` flags.
    pub fn start_with(tag: &str, mesh_yaml: &str, extra_args: &[&str]) -> Up {
        let dir = unique_dir(tag);
        let config = dir.join("mesh.yaml");
        std::fs::write(&config, mesh_yaml).unwrap();
        let child = spawn_up(&dir, &config, extra_args);
        let up = Up {
            dir,
            config,
            isolated: extra_args.contains(&"--isolate"),
            child: Some(child),
        };
        up.wait_checked();
        up
    }

    /// Starts `onemesh up` again on the same state directory (after the last one was stopped or
    /// killed), with `extra_args`; waits until `onemesh check` passes.
    pub fn restart(&mut self, extra_args: &[&str]) {
        if let Some(mut old) = self.child.take() {
            let _ = old.wait();
        }
        self.child = Some(spawn_up(&self.dir, &self.config, extra_args));
        self.wait_checked();
    }

    /// The pid of the `onemesh up` process.
    pub fn up_pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn wait_checked(&self) {
        let up = self;
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let (ok, out) = up.cli(&["check"]);
            if ok {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "onemesh check did not pass within 90 s:\n{out}\n--- up.log:\n{}",
                up.log()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

impl Up {
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("up.log")).unwrap_or_default()
    }

    /// Runs `onemesh <args>` against this mesh: (exit 0?, stdout + stderr).
    pub fn cli(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_onemesh"))
            .arg("--state-dir")
            .arg(self.dir.join("state"))
            .args(args)
            .output()
            .expect("run onemesh");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    pub fn status(&self) -> Value {
        let (ok, out) = self.cli(&["status", "-o", "json"]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("status -o json ({ok}): {e}: {out}"))
    }

    /// The workload `namespace/name` from `onemesh status -o json`.
    pub fn workload(&self, key: &str) -> Value {
        let status = self.status();
        status["workloads"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| {
                format!(
                    "{}/{}",
                    w["namespace"].as_str().unwrap(),
                    w["name"].as_str().unwrap()
                ) == key
            })
            .cloned()
            .unwrap_or_else(|| panic!("no workload {key} in {status}"))
    }

    /// `addr` as reached from inside workload `key`'s network namespace when the mesh is
    /// isolated (`addr@netns`, for [`connect`]), else `addr` itself.
    pub fn in_netns(&self, key: &str, addr: &str) -> String {
        match self.workload(key)["netns"].as_str() {
            Some(ns) => format!("{addr}@{ns}"),
            None => addr.to_string(),
        }
    }

    /// Where workload `key`'s app takes `declared` port, as [`connect`] reaches it.
    pub fn app_addr(&self, key: &str, declared: u16) -> String {
        let w = self.workload(key);
        let port = w["app_ports"][declared.to_string()]
            .as_u64()
            .unwrap_or_else(|| panic!("{key} has no port {declared}: {w}"));
        self.in_netns(key, &format!("127.0.0.1:{port}"))
    }

    /// Workload `key`'s proxy's outbound port, as its app (and [`connect`]) reaches it.
    pub fn outbound_addr(&self, key: &str) -> String {
        let w = self.workload(key);
        self.in_netns(key, w["outbound"].as_str().unwrap())
    }

    /// Every pid the layout names (up, control plane, proxies, apps).
    pub fn pids(&self) -> Vec<i32> {
        let s = self.status();
        let mut pids = vec![s["pid"].as_i64().unwrap() as i32];
        if let Some(p) = s["control"]["pid"].as_i64() {
            pids.push(p as i32);
        }
        for w in s["workloads"].as_array().unwrap() {
            for k in ["app_pid", "proxy_pid"] {
                if let Some(p) = w[k].as_i64() {
                    pids.push(p as i32);
                }
            }
        }
        pids
    }

    pub fn edit_config(&self, f: impl FnOnce(&str) -> String) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        let tmp = self.config.with_extension("tmp");
        std::fs::write(&tmp, f(&text)).unwrap();
        std::fs::rename(&tmp, &self.config).unwrap();
    }

    /// Stops `onemesh up` with `onemesh down`, and returns whether it exited 0.
    pub fn down(&mut self) -> bool {
        let (ok, out) = self.cli(&["down"]);
        assert!(ok, "onemesh down failed: {out}");
        match self.child.take() {
            Some(mut c) => c.wait().map(|s| s.success()).unwrap_or(false),
            None => true,
        }
    }
}

impl Up {
    /// Stops `onemesh up` (as dropping does) and removes its directory: for the end of a test that
    /// passed (a failed one keeps its directory, with `up.log`, to look at).
    pub fn stop_and_clean(self) {
        let dir = self.dir.clone();
        drop(self);
        let _ = std::fs::remove_dir_all(dir);
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Panics saying what to do when the tests do not run as root (`up --isolate` needs it).
pub fn assert_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test runs `onemesh up --isolate`, which needs root: run the tests as root (CI does)"
    );
}

/// The network namespaces (`ip netns` names) and root-namespace interfaces whose names carry
/// `onemesh up --isolate`'s tag for state directory `state_dir` (canonical path).
pub fn leftovers(tag: &str) -> Vec<String> {
    let names = |dir: &str| -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut found: Vec<String> = names("/run/netns")
        .into_iter()
        .filter(|n| n.starts_with(&format!("onemesh-up-{tag}-")))
        .collect();
    found.extend(
        names("/sys/class/net")
            .into_iter()
            .filter(|n| n.starts_with(&format!("om{tag}"))),
    );
    found
}

/// A TCP connection to `addr`: `host:port` from here, or `host:port@netns` from inside that
/// network namespace (a thread joins it and makes the socket there; the socket stays in it).
pub async fn connect(addr: &str) -> std::io::Result<tokio::net::TcpStream> {
    let Some((target, netns)) = addr.rsplit_once('@') else {
        return tokio::net::TcpStream::connect(addr).await;
    };
    let target: std::net::SocketAddr = target
        .parse()
        .map_err(|e| std::io::Error::other(format!("{target}: {e}")))?;
    let path = format!("/run/netns/{netns}");
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let made = std::fs::File::open(&path)
            .and_then(|f| {
                nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::from)
            })
            .and_then(|()| std::net::TcpStream::connect_timeout(&target, Duration::from_secs(2)))
            .and_then(|s| s.set_nonblocking(true).map(|()| s));
        let _ = tx.send(made);
    });
    let stream = rx
        .await
        .map_err(|_| std::io::Error::other("the connecting thread died"))??;
    tokio::net::TcpStream::from_std(stream)
}

/// Whether a process is still alive.
pub fn alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

/// A plain HTTP/1.1 request to `addr` (a proxy's outbound port, as an app would send it;
/// `host:port@netns` from inside a namespace, see [`connect`]).
pub async fn request(
    addr: &str,
    method: &str,
    host: &str,
    path: &str,
    body: &'static [u8],
) -> (u16, hyper::HeaderMap, String) {
    let stream = connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", host)
        .body(Full::new(Bytes::from_static(body)))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), send.send_request(req))
        .await
        .expect("request timed out")
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

/// GETs `path` from the control plane's API of `up` with its token: (status, JSON or text).
pub async fn api(up: &Up, path: &str) -> (u16, serde_json::Value) {
    let addr = up.status()["dashboard"].as_str().unwrap().to_string();
    let token = std::fs::read_to_string(up.dir.join("state/dashboard-token")).unwrap();
    let auth = format!("Bearer {}", token.trim());
    platform::call(
        &addr,
        "GET",
        path,
        None,
        &[("authorization", &auth)],
        Duration::from_secs(10),
    )
    .await
    .unwrap()
}

/// A proxy's `/metrics` text.
pub async fn metrics(admin: &str) -> String {
    let stream = connect(admin).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get("/metrics")
        .header("host", admin)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Starts `onemesh up` on `dir/state` with free ports, its output in `dir/up.log` (appended).
fn spawn_up(dir: &Path, config: &Path, extra_args: &[&str]) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("up.log"))
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_onemesh"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .args(["up", "-f"])
        .arg(config)
        .args([
            "--identity-addr=127.0.0.1:0",
            "--destination-addr=127.0.0.1:0",
            "--policy-addr=127.0.0.1:0",
            "--dashboard-addr=127.0.0.1:0",
            // The control plane's metrics window scrapes every second (default 10 s).
            "--metrics-resolution=1s",
            "--expose-any-port",
        ])
        .args(extra_args)
        .arg("--bin-dir")
        .arg(bin_dir())
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start onemesh up")
}

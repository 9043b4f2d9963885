//! Test harness: the five services in-process on 127.0.0.1 port 0 (each with its own SQLite
//! file in a fresh temp dir), wired to each other by URL, and a small JSON HTTP client.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use onemesh_platform::common::client::ClientConfig;
use onemesh_platform::common::serve::serve;
use onemesh_platform::run::{
    DEFAULT_MERCHANT_KEY, Service, ServiceConfig, Upstreams, build_app, open_db,
};
use serde_json::Value;

/// The seeded merchant key of the shop.
pub const MERCHANT_KEY: &str = DEFAULT_MERCHANT_KEY;

/// A running platform.
pub struct Platform {
    pub addrs: HashMap<Service, SocketAddr>,
    pub dir: PathBuf,
    pub upstreams: Upstreams,
    pub http: Http,
}

/// A fresh temporary directory.
pub fn temp_dir(tag: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("onemesh-platform-{tag}-{:016x}", fastrand::u64(..)));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Platform {
    /// Starts every service except those in `skip` (their ports are reserved then released,
    /// so calls to them fail to connect until [`Platform::serve`] starts them).
    pub async fn start(skip: &[Service]) -> Platform {
        let dir = temp_dir("chain");
        let mut listeners = HashMap::new();
        let mut addrs = HashMap::new();
        for s in Service::ALL {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            addrs.insert(s, l.local_addr().unwrap());
            listeners.insert(s, l);
        }
        let url = |s: Service| format!("http://{}", addrs[&s]);
        let upstreams = Upstreams {
            pg: url(Service::Pg),
            appcard: url(Service::Appcard),
            card: url(Service::Card),
            bank: url(Service::Bank),
        };
        let platform = Platform {
            addrs,
            dir,
            upstreams,
            http: Http::new(),
        };
        for (s, l) in listeners {
            if skip.contains(&s) {
                drop(l);
            } else {
                platform.spawn(s, l);
            }
        }
        platform
    }

    fn spawn(&self, service: Service, listener: tokio::net::TcpListener) {
        let config = ServiceConfig {
            service,
            upstreams: self.upstreams.clone(),
            client: ClientConfig {
                timeout: Duration::from_secs(5),
                attempts: 3,
                backoff: Duration::from_millis(20),
                use_env_proxy: false,
            },
            merchant_key: MERCHANT_KEY.into(),
        };
        let db = open_db(&self.dir, service).unwrap();
        let app = build_app(&config, db).unwrap();
        tokio::spawn(serve(listener, app, std::future::pending()));
    }

    /// Starts a service that was skipped, on its reserved address.
    pub async fn serve(&self, service: Service) {
        let l = tokio::net::TcpListener::bind(self.addrs[&service])
            .await
            .unwrap();
        self.spawn(service, l);
    }

    /// The base URL of a service.
    pub fn url(&self, service: Service) -> String {
        format!("http://{}", self.addrs[&service])
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A small JSON client (no proxy, timeouts on everything).
#[derive(Clone)]
pub struct Http {
    client: reqwest::Client,
}

impl Http {
    pub fn new() -> Http {
        Http {
            client: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap(),
        }
    }

    /// GET; returns status and JSON body.
    pub async fn get(&self, url: &str) -> (u16, Value) {
        self.get_with(url, &[]).await
    }

    /// GET with headers.
    pub async fn get_with(&self, url: &str, headers: &[(&str, &str)]) -> (u16, Value) {
        let mut req = self.client.get(url);
        for (n, v) in headers {
            req = req.header(*n, *v);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// POST JSON with an idempotency key; returns status and JSON body.
    pub async fn post(&self, url: &str, key: &str, body: Value) -> (u16, Value) {
        let r = self
            .client
            .post(url)
            .header("idempotency-key", key)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }
}

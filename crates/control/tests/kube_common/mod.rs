//! Helpers of the tests that need the test cluster (`scripts/k8s-testenv up`, then
//! `eval "$(scripts/k8s-testenv env)"`): an admin client from `KUBECONFIG`, the CRDs applied,
//! and namespaces of their own that are deleted when the test ends.
//!
//! Without a reachable cluster every helper panics with what to do: these tests never skip.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::core::crd::CustomResourceExt;
use serde_json::json;

/// A fresh directory for one test (`onemesh-kube-<what>-<pid>-<random>`).
pub fn temp_dir(what: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "onemesh-kube-{what}-{}-{:08x}",
        std::process::id(),
        fastrand_u32()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A CA made the way `onemesh install` puts it into the issuer Secret: a directory with
/// `ca.crt`, `tls.crt` and `tls.key`.
pub fn issuer_secret_dir() -> std::path::PathBuf {
    use onemesh_control::pki::{CaSettings, CaState};
    let made = temp_dir("ca-made");
    CaState::open(&made, "cluster.local", CaSettings::default()).unwrap();
    let secret = temp_dir("ca-secret");
    for (file, key) in [
        ("trust-anchors.pem", "ca.crt"),
        ("issuer.crt", "tls.crt"),
        ("issuer.key", "tls.key"),
    ] {
        std::fs::copy(made.join(file), secret.join(key)).unwrap();
    }
    let _ = std::fs::remove_dir_all(&made);
    secret
}

/// A gRPC channel to the control plane at `addr` over mTLS, expecting `server`'s identity.
pub async fn channel(
    addr: std::net::SocketAddr,
    config: std::sync::Arc<rustls::ClientConfig>,
    server: &onemesh_identity::SpiffeId,
) -> tonic::transport::Channel {
    let connector = tokio_rustls::TlsConnector::from(config);
    let name = server.tls_server_name();
    let connect = tower::service_fn(move |_| {
        let (connector, name) = (connector.clone(), name.clone());
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            let tls = connector.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    });
    tonic::transport::Endpoint::from_static("http://onemesh-control")
        .connect_timeout(Duration::from_secs(20))
        .connect_with_connector(connect)
        .await
        .unwrap()
}

pub const HOW: &str =
    "needs the test cluster: scripts/k8s-testenv up; eval $(scripts/k8s-testenv env)";

/// An admin client for the cluster `KUBECONFIG` names; panics (never skips) without one.
pub async fn client() -> Client {
    let path =
        std::env::var_os("KUBECONFIG").unwrap_or_else(|| panic!("KUBECONFIG is not set: {HOW}"));
    let kubeconfig = kube::config::Kubeconfig::read_from(&path)
        .unwrap_or_else(|e| panic!("cannot read KUBECONFIG {path:?}: {e}; {HOW}"));
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap_or_else(|e| panic!("bad KUBECONFIG {path:?}: {e}; {HOW}"));
    let client = Client::try_from(config).unwrap_or_else(|e| panic!("no client: {e}; {HOW}"));
    client
        .apiserver_version()
        .await
        .unwrap_or_else(|e| panic!("the test cluster does not answer: {e}; {HOW}"));
    client
}

/// Applies onemesh's CRDs (server-side apply) and waits until the API server serves them.
pub async fn apply_crds(client: &Client) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let pp = PatchParams::apply("onemesh-tests").force();
    for crd in [
        onemesh_crds::AuthorizationPolicy::crd(),
        onemesh_crds::Route::crd(),
        onemesh_crds::RateLimitPolicy::crd(),
    ] {
        let name = crd.metadata.name.clone().expect("a CRD has a name");
        api.patch(&name, &pp, &Patch::Apply(&crd))
            .await
            .unwrap_or_else(|e| panic!("applying CRD {name}: {e}"));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let got = api.get(&name).await.expect("read back the CRD");
            let established = got
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            if established {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "CRD {name} not established in 20 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A namespace of the test's own (`<prefix>-<random>`), meshed when asked; deleted on drop.
pub struct TestNamespace {
    pub name: String,
    client: Client,
}

impl TestNamespace {
    pub async fn new(client: &Client, prefix: &str, meshed: bool) -> Self {
        let name = format!("{prefix}-{:08x}", fastrand_u32());
        let mut ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": {}}
        }))
        .expect("namespace json");
        if meshed {
            ns.metadata
                .labels
                .get_or_insert_default()
                .insert("onemesh.dev/mesh".into(), "enabled".into());
        }
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("creating namespace {name}: {e}"));
        TestNamespace {
            name,
            client: client.clone(),
        }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        // The client's connection task runs on the test's runtime: block this worker only (the
        // tests use the multi-threaded runtime), also while a failed test unwinds.
        let api = Api::<Namespace>::all(self.client.clone());
        let name = self.name.clone();
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(async move {
                let _ = api.delete(&name, &DeleteParams::default()).await;
            })
        });
    }
}

/// A random number from the OS (names only).
pub fn fastrand_u32() -> u32 {
    let mut b = [0u8; 4];
    let f = std::fs::File::open("/dev/urandom").and_then(|mut f| {
        use std::io::Read;
        f.read_exact(&mut b)
    });
    f.expect("read /dev/urandom");
    u32::from_ne_bytes(b)
}

/// Creates an object written as JSON.
pub async fn create<K>(api: &Api<K>, value: serde_json::Value) -> K
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(value).expect("object json");
    api.create(&PostParams::default(), &obj)
        .await
        .unwrap_or_else(|e| panic!("create: {e}"))
}

/// A pod running as service account `sa` (it stays Pending: no node runs it), with the proxy beside
/// its app container.
pub fn pod_json(name: &str, sa: &str) -> serde_json::Value {
    json!({
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "serviceAccountName": sa,
            "containers": [
                {"name": "app", "image": "app", "ports": [{"containerPort": 8080}]},
                {"name": "onemesh-proxy", "image": "proxy", "ports": [{"containerPort": 4143}]},
            ],
        },
    })
}

/// A token of `sa` bound to pod `pod` (its uid), for `audience`.
pub async fn token(client: &Client, ns: &str, sa: &str, pod: &Pod, audience: &str) -> String {
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: Some(vec![audience.to_string()]),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
            expiration_seconds: Some(600),
            ..Default::default()
        }),
        ..Default::default()
    };
    sas.create_token_request(sa, &PostParams::default(), &request)
        .await
        .unwrap_or_else(|e| panic!("token request for {ns}/{sa}: {e}"))
        .status
        .expect("token status")
        .token
        .expect("a token")
}

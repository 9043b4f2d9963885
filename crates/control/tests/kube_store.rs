//! The Kubernetes store against the real API server: every kind's add, update and delete reaches a
//! subscriber (each propagation is measured and printed), onemesh objects get their `Accepted`
//! condition and an Event when refused, and ServiceAccount tokens map to SPIFFE ids or are refused
//! with the reason.

mod kube_common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Event as K8sEvent, Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Client;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use onemesh_control::kubestore::{KubeSettings, KubeStore};
use onemesh_control::model::Mesh;
use onemesh_control::state::MeshState;
use onemesh_control::store::{Store, StoreError};
use serde_json::json;
use tokio::sync::watch;

use kube_common::{TestNamespace, apply_crds, client, create, pod_json, token};

const LIMIT: Duration = Duration::from_secs(3);

async fn start(client: &Client, settings: KubeSettings) -> KubeStore {
    let store = KubeStore::start(client.clone(), settings);
    store
        .wait_ready(Duration::from_secs(20))
        .await
        .expect("the store lists everything");
    store
}

/// Waits until the published mesh satisfies `pred`; returns how long it took.
async fn until(
    rx: &mut watch::Receiver<Arc<MeshState>>,
    what: &str,
    since: Instant,
    pred: impl Fn(&Mesh) -> bool,
) -> Duration {
    let deadline = since + Duration::from_secs(10);
    loop {
        if pred(&rx.borrow_and_update().mesh) {
            let took = since.elapsed();
            eprintln!("propagation: {what}: {} ms", took.as_millis());
            assert!(took < LIMIT, "{what} took {took:?}");
            return took;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if tokio::time::timeout(left, rx.changed()).await.is_err() {
            panic!(
                "{what}: not seen within 10 s; mesh: {:#?}",
                rx.borrow().mesh
            );
        }
    }
}

fn k(ns: &str, name: &str) -> (String, String) {
    (ns.to_string(), name.to_string())
}

async fn set_pod_ip(pods: &Api<Pod>, name: &str, ip: &str) {
    pods.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}})),
    )
    .await
    .unwrap_or_else(|e| panic!("pod status: {e}"));
}

fn slice_json(name: &str, service: &str, endpoints: &[(&str, &str, bool)]) -> serde_json::Value {
    let endpoints: Vec<_> = endpoints
        .iter()
        .map(|(pod, ip, ready)| {
            json!({"addresses": [ip], "conditions": {"ready": ready}, "targetRef": {"kind": "Pod", "name": pod}})
        })
        .collect();
    json!({
        "metadata": {"name": name, "labels": {
            "kubernetes.io/service-name": service,
            "endpointslice.kubernetes.io/managed-by": "onemesh-tests",
        }},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    })
}

fn endpoint_addrs(m: &Mesh, ns: &str, svc: &str) -> Vec<String> {
    m.services
        .get(&k(ns, svc))
        .map(|s| {
            s.ports[0]
                .endpoints
                .iter()
                .map(|e| e.addr.to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the test cluster: scripts/k8s-testenv up; eval $(scripts/k8s-testenv env)"]
async fn kube_store_every_kind_reaches_a_subscriber() {
    let client = client().await;
    apply_crds(&client).await;
    let store = start(&client, KubeSettings::default()).await;
    let mut rx = store.subscribe();
    let mut times = Vec::new();

    // Namespace: meshed by its label.
    let t = Instant::now();
    let shop = TestNamespace::new(&client, "store", true).await;
    let ns = shop.name.clone();
    times.push(
        until(&mut rx, "namespace add", t, |m| {
            m.namespaces.contains_key(&ns)
        })
        .await,
    );

    // Pod: a workload; its IP makes an instance.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let t = Instant::now();
    create(&pods, pod_json("web", "default")).await;
    times.push(
        until(&mut rx, "pod add", t, |m| {
            m.workloads
                .get(&k(&ns, "web"))
                .is_some_and(|w| w.ports.len() == 1 && w.ports[0].port == 8080)
        })
        .await,
    );
    let t = Instant::now();
    set_pod_ip(&pods, "web", "10.244.7.1").await;
    times.push(
        until(&mut rx, "pod update (ip)", t, |m| {
            m.workloads
                .get(&k(&ns, "web"))
                .is_some_and(|w| w.instances.len() == 1)
        })
        .await,
    );

    // Service and EndpointSlice.
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let t = Instant::now();
    create(
        &services,
        json!({"metadata": {"name": "web"}, "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}),
    )
    .await;
    times.push(
        until(&mut rx, "service add", t, |m| {
            m.services.contains_key(&k(&ns, "web"))
        })
        .await,
    );
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns);
    let t = Instant::now();
    create(
        &slices,
        slice_json("web-1", "web", &[("web", "10.244.7.1", true)]),
    )
    .await;
    times.push(
        until(&mut rx, "endpointslice add", t, |m| {
            endpoint_addrs(m, &ns, "web") == ["10.244.7.1:4143"]
        })
        .await,
    );
    let t = Instant::now();
    slices
        .patch(
            "web-1",
            &PatchParams::default(),
            &Patch::Merge(json!({"endpoints": [{"addresses": ["10.244.7.1"], "conditions": {"ready": false}, "targetRef": {"kind": "Pod", "name": "web"}}]})),
        )
        .await
        .expect("slice update");
    times.push(
        until(&mut rx, "endpointslice update (not ready)", t, |m| {
            m.services.contains_key(&k(&ns, "web")) && endpoint_addrs(m, &ns, "web").is_empty()
        })
        .await,
    );
    let t = Instant::now();
    slices
        .delete("web-1", &DeleteParams::default())
        .await
        .expect("slice delete");
    // Nothing visible changes (it was not ready): wait for the mesh to stay the same instead.
    let _ = t;

    // AuthorizationPolicy and Route.
    let ar = ApiResource::erase::<onemesh_crds::AuthorizationPolicy>(&());
    let policies: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ar);
    let t = Instant::now();
    let p: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "onemesh.dev/v1", "kind": "AuthorizationPolicy",
        "metadata": {"name": "allow"},
        "spec": {"target": {"workload": "web", "port": 8080}, "from": {"namespaces": ["bank"]}},
    }))
    .unwrap();
    policies
        .create(&PostParams::default(), &p)
        .await
        .expect("policy");
    times.push(
        until(&mut rx, "policy add", t, |m| {
            m.policies.iter().any(|p| p.namespace == ns)
        })
        .await,
    );
    let t = Instant::now();
    policies
        .patch(
            "allow",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"from": {"namespaces": ["bank", "card"]}}})),
        )
        .await
        .expect("policy update");
    times.push(
        until(&mut rx, "policy update", t, |m| {
            m.policies
                .iter()
                .any(|p| p.namespace == ns && p.from_namespaces.len() == 2)
        })
        .await,
    );
    let rar = ApiResource::erase::<onemesh_crds::Route>(&());
    let routes: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &rar);
    let t = Instant::now();
    let r: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "onemesh.dev/v1", "kind": "Route",
        "metadata": {"name": "reads"},
        "spec": {"service": "web", "match": {"methods": ["GET"]}, "timeout": "2s"},
    }))
    .unwrap();
    routes
        .create(&PostParams::default(), &r)
        .await
        .expect("route");
    times.push(
        until(&mut rx, "route add", t, |m| {
            m.routes.iter().any(|r| r.namespace == ns)
        })
        .await,
    );
    let t = Instant::now();
    routes
        .delete("reads", &DeleteParams::default())
        .await
        .expect("route delete");
    times.push(
        until(&mut rx, "route delete", t, |m| {
            !m.routes.iter().any(|r| r.namespace == ns)
        })
        .await,
    );
    let t = Instant::now();
    policies
        .delete("allow", &DeleteParams::default())
        .await
        .expect("policy delete");
    times.push(
        until(&mut rx, "policy delete", t, |m| {
            !m.policies.iter().any(|p| p.namespace == ns)
        })
        .await,
    );

    // Deletes of the rest.
    let t = Instant::now();
    services
        .delete("web", &DeleteParams::default())
        .await
        .expect("service delete");
    times.push(
        until(&mut rx, "service delete", t, |m| {
            !m.services.contains_key(&k(&ns, "web"))
        })
        .await,
    );
    let t = Instant::now();
    pods.delete(
        "web",
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        },
    )
    .await
    .expect("pod delete");
    times.push(
        until(&mut rx, "pod delete", t, |m| {
            !m.workloads.contains_key(&k(&ns, "web"))
        })
        .await,
    );
    // The namespace loses its label: it leaves the mesh.
    let t = Instant::now();
    Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .patch(
            &ns,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"onemesh.dev/mesh": null}}})),
        )
        .await
        .expect("unlabel");
    times.push(
        until(&mut rx, "namespace unmeshed", t, |m| {
            !m.namespaces.contains_key(&ns)
        })
        .await,
    );

    times.sort();
    eprintln!(
        "propagation over {} changes: median {} ms, max {} ms",
        times.len(),
        times[times.len() / 2].as_millis(),
        times[times.len() - 1].as_millis()
    );
    store.stop();
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the test cluster: scripts/k8s-testenv up; eval $(scripts/k8s-testenv env)"]
async fn kube_store_reports_refused_objects_and_keeps_the_rest() {
    let client = client().await;
    apply_crds(&client).await;
    let store = start(&client, KubeSettings::default()).await;
    let mut rx = store.subscribe();
    let shop = TestNamespace::new(&client, "status", true).await;
    let ns = shop.name.clone();
    let rar = ApiResource::erase::<onemesh_crds::Route>(&());
    let routes: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &rar);
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    create(
        &services,
        json!({"metadata": {"name": "web"}, "spec": {"ports": [{"port": 80}]}}),
    )
    .await;
    for (name, service) in [("good", "web"), ("dangling", "vault")] {
        let r: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "onemesh.dev/v1", "kind": "Route",
            "metadata": {"name": name},
            "spec": {"service": service},
        }))
        .unwrap();
        routes
            .create(&PostParams::default(), &r)
            .await
            .expect("route");
    }
    until(&mut rx, "good route", Instant::now(), |m| {
        m.routes
            .iter()
            .any(|r| r.namespace == ns && r.name == "good")
    })
    .await;
    assert!(
        !rx.borrow()
            .mesh
            .routes
            .iter()
            .any(|r| r.name == "dangling" && r.namespace == ns)
    );

    // The conditions are written.
    let deadline = Instant::now() + Duration::from_secs(10);
    let condition = |o: &DynamicObject| -> Option<(String, String, String)> {
        let c = o.data.get("status")?.get("conditions")?.get(0)?;
        Some((
            c["status"].as_str()?.to_string(),
            c["reason"].as_str()?.to_string(),
            c["message"].as_str()?.to_string(),
        ))
    };
    loop {
        let good = condition(&routes.get("good").await.unwrap());
        let bad = condition(&routes.get("dangling").await.unwrap());
        if let (Some(good), Some(bad)) = (&good, &bad) {
            assert_eq!(good.0, "True");
            assert_eq!(bad.0, "False");
            assert_eq!(bad.1, "UnknownReference");
            assert!(bad.2.contains("spec.service: unknown service"), "{bad:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "conditions not written: {good:?} {bad:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And the refused one has a Warning Event.
    let events: Api<K8sEvent> = Api::namespaced(client.clone(), &ns);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let list = events.list(&Default::default()).await.expect("events");
        if list.items.iter().any(|e| {
            e.involved_object.name.as_deref() == Some("dangling")
                && e.reason.as_deref() == Some("UnknownReference")
        }) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no Event for the refused route: {list:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Once the service exists, the route is accepted.
    let t = Instant::now();
    create(
        &services,
        json!({"metadata": {"name": "vault"}, "spec": {"ports": [{"port": 80}]}}),
    )
    .await;
    until(
        &mut rx,
        "route accepted after its service appeared",
        t,
        |m| {
            m.routes
                .iter()
                .any(|r| r.namespace == ns && r.name == "dangling")
        },
    )
    .await;
    store.stop();
}

/// A service account and a pod running as it; waits until the store has seen the pod when its
/// namespace is meshed.
async fn sa_and_pod(client: &Client, store: &KubeStore, ns: &str, sa: &str, pod: &str) -> Pod {
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    create(&sas, json!({"metadata": {"name": sa}})).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let created = create(&pods, pod_json(pod, sa)).await;
    let mut rx = store.subscribe();
    if rx.borrow().mesh.namespaces.contains_key(ns) {
        until(&mut rx, "pod seen", Instant::now(), |m| {
            m.workloads.contains_key(&k(ns, pod))
        })
        .await;
    }
    created
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the test cluster: scripts/k8s-testenv up; eval $(scripts/k8s-testenv env)"]
async fn kube_store_maps_service_account_tokens_to_ids() {
    let client = client().await;
    apply_crds(&client).await;
    let meshed = TestNamespace::new(&client, "token", true).await;
    let other = TestNamespace::new(&client, "plain", false).await;
    let control = TestNamespace::new(&client, "ctl", false).await;
    let settings = KubeSettings {
        control_namespace: control.name.clone(),
        ..KubeSettings::default()
    };
    let store = start(&client, settings).await;
    let ns = meshed.name.clone();
    let mut rx = store.subscribe();
    until(&mut rx, "namespace", Instant::now(), |m| {
        m.namespaces.contains_key(&ns)
    })
    .await;

    let bank = sa_and_pod(&client, &store, &ns, "bank", "bank-0").await;
    let good = token(&client, &ns, "bank", &bank, "onemesh").await;
    let id = store
        .token_identity(&good)
        .await
        .expect("a good token")
        .expect("an id");
    assert_eq!(
        id.to_string(),
        format!("spiffe://cluster.local/ns/{ns}/sa/bank")
    );

    // Another audience.
    let other_aud = token(&client, &ns, "bank", &bank, "vault").await;
    let e = store
        .token_identity(&other_aud)
        .await
        .expect_err("wrong audience");
    assert!(matches!(e, StoreError::TokenRefused(_)), "{e}");
    // A forged token.
    let e = store
        .token_identity("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln")
        .await
        .expect_err("forged");
    assert!(matches!(e, StoreError::TokenRefused(_)), "{e}");

    // The bound pod is deleted: its token is refused.
    let gone = sa_and_pod(&client, &store, &ns, "gone", "gone-0").await;
    let gone_token = token(&client, &ns, "gone", &gone, "onemesh").await;
    assert!(store.token_identity(&gone_token).await.is_ok());
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let t = Instant::now();
    pods.delete(
        "gone-0",
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        },
    )
    .await
    .expect("delete pod");
    // The store's watch refuses it within its propagation time (the API server's token cache
    // would still accept it for up to 10 s)...
    loop {
        match store.token_identity(&gone_token).await {
            Err(StoreError::PodGone(_)) => break,
            other => assert!(t.elapsed() < Duration::from_secs(2), "{other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "token of a deleted pod: refused by the store after {} ms",
        t.elapsed().as_millis()
    );
    // ...and the API server later too.
    wait_refused(&store, &gone_token, "token of a deleted pod").await;

    // The service account is deleted: its token is refused.
    let sa_gone = sa_and_pod(&client, &store, &ns, "sagone", "sagone-0").await;
    let sa_token = token(&client, &ns, "sagone", &sa_gone, "onemesh").await;
    assert!(store.token_identity(&sa_token).await.is_ok());
    Api::<ServiceAccount>::namespaced(client.clone(), &ns)
        .delete("sagone", &DeleteParams::default())
        .await
        .expect("delete sa");
    wait_refused(&store, &sa_token, "token of a deleted service account").await;

    // A namespace that is not meshed.
    let plain = sa_and_pod(&client, &store, &other.name, "app", "app-0").await;
    let plain_token = token(&client, &other.name, "app", &plain, "onemesh").await;
    let e = store
        .token_identity(&plain_token)
        .await
        .expect_err("unmeshed");
    assert!(
        matches!(e, StoreError::NotMeshed(ref n) if *n == other.name),
        "{e}"
    );

    // The control plane's namespace: only its own service account.
    let intruder = sa_and_pod(&client, &store, &control.name, "intruder", "intruder-0").await;
    let intruder_token = token(&client, &control.name, "intruder", &intruder, "onemesh").await;
    let e = store
        .token_identity(&intruder_token)
        .await
        .expect_err("control namespace");
    assert!(matches!(e, StoreError::ControlNamespace(_)), "{e}");
    let own = sa_and_pod(&client, &store, &control.name, "control", "control-0").await;
    let own_token = token(&client, &control.name, "control", &own, "onemesh").await;
    let id = store
        .token_identity(&own_token)
        .await
        .expect("own")
        .expect("id");
    assert_eq!(id.service_account(), "control");

    // A token not bound to a pod.
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    let unbound = sas
        .create_token_request(
            "bank",
            &PostParams::default(),
            &TokenRequest {
                spec: Some(TokenRequestSpec {
                    audiences: Some(vec!["onemesh".into()]),
                    expiration_seconds: Some(600),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await
        .expect("unbound token")
        .status
        .expect("status")
        .token
        .expect("a token");
    let e = store.token_identity(&unbound).await.expect_err("unbound");
    assert!(matches!(e, StoreError::NotBoundToPod(_)), "{e}");
    store.stop();
}

/// The API server's token cache may answer for a few seconds after a delete: wait for the refusal.
async fn wait_refused(store: &KubeStore, token: &str, what: &str) {
    let t = Instant::now();
    loop {
        match store.token_identity(token).await {
            Err(StoreError::TokenRefused(reason)) => {
                eprintln!(
                    "{what}: refused after {} ms: {reason}",
                    t.elapsed().as_millis()
                );
                return;
            }
            other => assert!(
                t.elapsed() < Duration::from_secs(30),
                "{what}: still {other:?} after 30 s"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the test cluster: scripts/k8s-testenv up; eval $(scripts/k8s-testenv env)"]
async fn kube_store_one_replica_leads_and_another_takes_over() {
    use k8s_openapi::api::coordination::v1::Lease;
    use onemesh_control::kubestore::lease::{LeaseSettings, spawn};
    let client = client().await;
    let ns = TestNamespace::new(&client, "lease", false).await;
    let settings = |who: &str| LeaseSettings {
        duration: Duration::from_secs(3),
        renew: Duration::from_millis(300),
        ..LeaseSettings::new(&ns.name, who)
    };
    let api: Api<Lease> = Api::namespaced(client.clone(), &ns.name);
    let (mut a, a_task) = spawn(api.clone(), settings("replica-a"));
    let (mut b, b_task) = spawn(api.clone(), settings("replica-b"));
    let both = async {
        loop {
            if *a.borrow() || *b.borrow() {
                break;
            }
            tokio::select! { _ = a.changed() => {}, _ = b.changed() => {} }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), both)
        .await
        .expect("someone leads");
    // For a while, exactly one leads.
    for _ in 0..10 {
        assert!(
            *a.borrow() ^ *b.borrow(),
            "a={} b={}",
            *a.borrow(),
            *b.borrow()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (mut leader, mut follower, leader_task, follower_task) = if *a.borrow() {
        (a, b, a_task, b_task)
    } else {
        (b, a, b_task, a_task)
    };
    // The leader dies without a word: the follower takes over after the lease expires.
    let t = Instant::now();
    leader_task.abort();
    tokio::time::timeout(Duration::from_secs(10), follower.wait_for(|l| *l))
        .await
        .expect("the follower takes over")
        .unwrap();
    let took = t.elapsed();
    eprintln!(
        "lease takeover after the leader died: {} ms (lease 3 s)",
        took.as_millis()
    );
    assert!(
        took >= Duration::from_millis(2000),
        "took over too early: {took:?}"
    );
    let held = api.get("onemesh-control").await.unwrap().spec.unwrap();
    assert!(held.lease_transitions.unwrap_or(0) >= 2);
    let _ = leader.borrow_and_update();
    follower_task.abort();
}

/// A TCP relay to the API server that the test can cut (every connection closed, new ones refused)
/// and restore.
struct Relay {
    addr: std::net::SocketAddr,
    up: Arc<std::sync::atomic::AtomicBool>,
    conns: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(to: String) -> Relay {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let conns: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (up2, conns2) = (up.clone(), conns.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                if !up2.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let to = to.clone();
                let conn = tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(&to).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                conns2.lock().unwrap().push(conn.abort_handle());
            }
        });
        Relay {
            addr,
            up,
            conns,
            task,
        }
    }

    fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the test cluster: scripts/k8s-testenv up; eval $(scripts/k8s-testenv env)"]
async fn kube_store_keeps_the_last_good_state_while_the_api_is_unreachable() {
    let admin = client().await;
    apply_crds(&admin).await;
    let shop = TestNamespace::new(&admin, "outage", true).await;
    let ns = shop.name.clone();
    let services: Api<Service> = Api::namespaced(admin.clone(), &ns);
    create(
        &services,
        json!({"metadata": {"name": "before"}, "spec": {"ports": [{"port": 80}]}}),
    )
    .await;

    // The store talks to the API server through a relay the test can cut.
    let path = std::env::var_os("KUBECONFIG").unwrap();
    let kubeconfig = kube::config::Kubeconfig::read_from(&path).unwrap();
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    let api = config.cluster_url.authority().unwrap().to_string();
    let relay = Relay::start(api).await;
    config.cluster_url = format!("https://{}", relay.addr).parse().unwrap();
    let store = start(&Client::try_from(config).unwrap(), KubeSettings::default()).await;
    let mut rx = store.subscribe();
    until(&mut rx, "service before the outage", Instant::now(), |m| {
        m.services.contains_key(&k(&ns, "before"))
    })
    .await;
    let before = rx.borrow().clone();

    // Outage: every watch drops, reconnects are refused; meanwhile the cluster changes.
    relay.cut();
    create(
        &services,
        json!({"metadata": {"name": "during"}, "spec": {"ports": [{"port": 80}]}}),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        *rx.borrow() == before,
        "the state changed while the API server was unreachable"
    );
    assert!(rx.borrow().mesh.services.contains_key(&k(&ns, "before")));

    // Back: the watchers reconnect with backoff and catch up, losing nothing.
    let t = Instant::now();
    relay.restore();
    let deadline = t + Duration::from_secs(40);
    loop {
        {
            let s = rx.borrow_and_update();
            if s.mesh.services.contains_key(&k(&ns, "during")) {
                assert!(s.mesh.services.contains_key(&k(&ns, "before")));
                break;
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            tokio::time::timeout(left, rx.changed()).await.is_ok(),
            "the store did not catch up within 40 s of the API server's return"
        );
    }
    eprintln!(
        "caught up {} ms after the API server came back",
        t.elapsed().as_millis()
    );
    store.stop();
}

//! What a request is for, and the cache of resolved targets.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;
use crate::discover::{BoxFuture, DiscoverError};

/// Discovery that says "outside the mesh" and counts its calls.
#[derive(Default)]
struct Counting(AtomicUsize);

impl Discover for Counting {
    fn resolve(&self, _: &Target) -> BoxFuture<Result<Resolution, DiscoverError>> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Box::pin(async { Ok(Resolution::External) })
    }
}

#[test]
fn the_uri_authority_comes_before_the_host_header() {
    let mut req = Request::new(crate::body::empty());
    *req.uri_mut() = "http://web.bank:8080/a".parse().expect("a valid uri");
    req.headers_mut()
        .insert(header::HOST, HeaderValue::from_static("other"));
    assert_eq!(host_of(&req), Some(&b"web.bank:8080"[..]));
    *req.uri_mut() = "/a".parse().expect("a valid path");
    assert_eq!(host_of(&req), Some(&b"other"[..]));
}

#[tokio::test]
async fn every_spelling_of_a_target_shares_one_resolution() {
    let discover = Arc::new(Counting::default());
    let targets = Targets::new(discover.clone());
    let a = targets.of_request(Some(b"Web.Bank"), None).await;
    let b = targets.of_request(Some(b"web.bank:80"), None).await;
    let (a, b) = (a.expect("resolved"), b.expect("resolved"));
    assert!(Arc::ptr_eq(&a, &b));
    assert_eq!(&*a.authority, "web.bank:80");
    assert_eq!(discover.0.load(Ordering::Relaxed), 1);
    // a spelling seen before asks nobody
    targets
        .of_request(Some(b"Web.Bank"), None)
        .await
        .expect("cached");
    assert_eq!(discover.0.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn a_request_without_host_or_original_destination_is_malformed() {
    let targets = Targets::new(Arc::new(Counting::default()));
    let err = targets.of_request(None, None).await.err();
    assert!(matches!(err, Some(ProxyError::Malformed(_))), "{err:?}");
    let bad = targets.of_request(Some(b"a b"), None).await.err();
    assert!(matches!(bad, Some(ProxyError::Malformed(_))), "{bad:?}");
}

//! The timeout stage of the outbound stack: a route's `timeout` bounds everything below it (every
//! attempt of the retry stage, connects included); when it passes the request ends with `504
//! timeout`. A request without a route timeout is not wrapped at all.

use std::future::Future;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::Either;
use http::Response;

use crate::body::Body;
use crate::error::ProxyError;

/// `attempts`, bounded by `timeout` when there is one.
pub fn within<F>(
    timeout: Option<Duration>,
    attempts: F,
) -> impl Future<Output = Result<Response<Body>, ProxyError>>
where
    F: Future<Output = Result<Response<Body>, ProxyError>>,
{
    match timeout {
        Some(t) => Either::Left(
            tokio::time::timeout(t, attempts)
                .map(move |r| r.unwrap_or(Err(ProxyError::Timeout(t)))),
        ),
        None => Either::Right(attempts),
    }
}

#[cfg(test)]
mod tests;

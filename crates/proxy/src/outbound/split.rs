//! The split stage of the outbound stack: a route with `backends` sends each request it matches
//! to one of them, drawn by weight (a canary: `bank` 90, `bank-v2` 10). A backend is another
//! service, resolved like any target on the port the request was sent to; its endpoints, load,
//! retry budget and metric handles are its own. A route without backends (or a draw that lands
//! on the route's own service) costs nothing here.
//!
//! The request keeps its `Host`: the chosen service answers for the name the app asked for, as a
//! Gateway API backendRef does.

use crate::discover::{Backend, Service, Target};

/// The backend of one request on a route with `backends`, drawn with `draw` (uniform over
/// `u64`); `None` when it is the service the request was sent to (or every weight is 0).
pub fn backend<'a>(backends: &'a [Backend], service: &Service, draw: u64) -> Option<&'a Backend> {
    let chosen = pick(backends, draw)?;
    (*chosen.name != *service.name).then_some(chosen)
}

/// The backend `draw` lands on: each backend's share of `u64` is its weight over the sum.
pub fn pick(backends: &[Backend], draw: u64) -> Option<&Backend> {
    let total: u64 = backends.iter().map(|b| u64::from(b.weight)).sum();
    if total == 0 {
        return None;
    }
    // (Lemire's multiply-shift: uniform enough for weights below 2^32, no division.)
    let mut at = ((u128::from(draw) * u128::from(total)) >> 64) as u64;
    for b in backends {
        let w = u64::from(b.weight);
        if at < w {
            return Some(b);
        }
        at -= w;
    }
    None
}

/// The target a backend is resolved as: its name on the request's service port.
pub fn target(backend: &Backend, port: u16) -> Target {
    Target::Name {
        host: backend.name.to_string(),
        port,
    }
}

#[cfg(test)]
mod tests;

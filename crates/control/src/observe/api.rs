//! The dashboard/API listener's requests: the Host guard, login, the JSON API, the static pages.
//!
//! | path | auth | what |
//! |---|---|---|
//! | `/`, `/assets/*` | none (no data in them) | the dashboard's page and scripts |
//! | `GET /login?token=T`, `POST /login` (form `token`) | the token | sets the session cookie, `303` to `/` |
//! | `GET /api/v1/overview?window=60s` | token | workloads and edges |
//! | `GET /api/v1/workloads/{ns}/{name}/series?window=1h` | token | a workload's time series |
//! | `GET /api/v1/routes`, `/api/v1/authz`, `/api/v1/targets` | token | routes, policies, scrape targets |
//! | `GET /api/v1/tap?workload=ns/name&…` | token | live requests, NDJSON (see [`super::tap`]) |
//! | `GET /api/v1/authz/explain?from=…&to=ns/name&port=…&method=…&path=…` | token | the target proxy's decision and a fix ([`crate::authz::explain`]) |
//! | `POST /api/v1/authz/diff?window=1m&file=NAME` (body: yaml) | token | edges a policy change would change ([`crate::authz::diff`]) |
//!
//! "token": `Authorization: Bearer <token>` or the cookie `onemesh_session` that `/login` sets
//! (`HttpOnly; SameSite=Strict`, so another site's page cannot send it). Every answer is
//! `Cache-Control: no-store`.

use std::convert::Infallible;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::Frame;
use hyper::{Method, Request, Response, StatusCode, header};
use serde::Serialize;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use super::{Shared, assets, tap};

#[cfg(test)]
mod authz_tests;
#[cfg(test)]
mod tests;

/// The body of every answer.
pub type Body = BoxBody<Bytes, Infallible>;

/// The session cookie's name.
pub const COOKIE: &str = "onemesh_session";
/// The window when a query names none.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60);

/// Answers one request.
pub async fn handle<B>(shared: &Shared, req: Request<B>) -> Response<Body>
where
    B: hyper::body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if let Some(refused) = misdirected(shared, &req) {
        return refused;
    }
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/login") => login(shared, param(&query, "token").as_deref()),
        (&Method::POST, "/login") => {
            let form = match Limited::new(req.into_body(), 4096).collect().await {
                Ok(body) => body.to_bytes(),
                Err(_) => {
                    return text(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "the login form is too large\n",
                    );
                }
            };
            let form = String::from_utf8_lossy(&form).into_owned();
            login(shared, param(&form, "token").as_deref())
        }
        (&Method::GET, "/api/v1/authz/explain") => {
            if !authenticated(shared, &req) {
                return unauthorized();
            }
            authz_explain(shared, &query).await
        }
        (&Method::POST, "/api/v1/authz/diff") => {
            if !authenticated(shared, &req) {
                return unauthorized();
            }
            let body = match Limited::new(req.into_body(), MAX_DIFF_BODY).collect().await {
                Ok(body) => body.to_bytes(),
                Err(_) => {
                    return json_status(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        &serde_json::json!({ "error": format!("the body is larger than {MAX_DIFF_BODY} bytes: send only the policies to compare") }),
                    );
                }
            };
            authz_diff(shared, &query, &body)
        }
        (&Method::GET, p) if p.starts_with("/api/") => {
            if !authenticated(shared, &req) {
                return unauthorized();
            }
            api(shared, p, &query)
        }
        (&Method::GET, p) => match assets::find(p) {
            Some((ctype, bytes)) => {
                let mut r = respond(StatusCode::OK, ctype, Bytes::from_static(bytes));
                r.headers_mut().insert(
                    header::CONTENT_SECURITY_POLICY,
                    header::HeaderValue::from_static(
                        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
                    ),
                );
                r
            }
            None => text(
                StatusCode::NOT_FOUND,
                "not found: the dashboard is at /, the API under /api/v1/\n",
            ),
        },
        _ => text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET (and POST /login, POST /api/v1/authz/diff)\n",
        ),
    }
}

/// The largest body `POST /api/v1/authz/diff` reads (a whole mesh.yaml).
pub const MAX_DIFF_BODY: usize = 4 << 20;

fn unauthorized() -> Response<Body> {
    json_status(
        StatusCode::UNAUTHORIZED,
        &serde_json::json!({ "error": "log in: send `Authorization: Bearer <token>` or open /login?token=<token> (local mode: `onemesh up` prints it; Kubernetes: `onemesh dashboard`)" }),
    )
}

/// `GET /api/v1/authz/explain`: the target proxy's own decision, relayed ([`crate::authz::explain`]).
async fn authz_explain(shared: &Shared, query: &str) -> Response<Body> {
    use crate::authz::explain::{ExplainQuery, explain};
    let q = match ExplainQuery::parse(query) {
        Ok(q) => q,
        Err(e) => return bad_request(&e.to_string()),
    };
    let state = shared.state.borrow().clone();
    match explain(&state.mesh, &shared.trust_domain, &shared.credentials, &q).await {
        Ok(answer) => json(&answer),
        Err(e) => json_status(e.status(), &serde_json::json!({ "error": e.to_string() })),
    }
}

/// `POST /api/v1/authz/diff`: every edge whose decision the body would change, with its traffic
/// in the window ([`crate::authz::diff`]).
fn authz_diff(shared: &Shared, query: &str, body: &[u8]) -> Response<Body> {
    use crate::authz::diff;
    let window = match window_of(shared, query) {
        Ok(w) => w,
        Err(e) => return bad_request(&e),
    };
    let file = param(query, "file").unwrap_or_else(|| "body".to_string());
    let Ok(text) = std::str::from_utf8(body) else {
        return bad_request(&format!(
            "{file}: the body is not utf-8 text: send the yaml file as is"
        ));
    };
    let state = shared.state.borrow().clone();
    let proposed = match diff::proposed(&state.mesh, std::path::Path::new(&file), text) {
        Ok(m) => m,
        Err(e) => return bad_request(&e.to_string()),
    };
    let edges = shared.window().overview(SystemTime::now(), window).edges;
    let rates = diff::Rates::from_edges(&edges);
    json(&diff::diff(
        &state.mesh,
        &proposed,
        &shared.trust_domain,
        &rates,
    ))
}

fn api(shared: &Shared, path: &str, query: &str) -> Response<Body> {
    let window = match window_of(shared, query) {
        Ok(w) => w,
        Err(e) => return bad_request(&e),
    };
    let now = SystemTime::now();
    let segments: Vec<&str> = path.trim_start_matches("/api/v1/").split('/').collect();
    match segments.as_slice() {
        ["overview"] => json(&shared.window().overview(now, window)),
        ["routes"] => json(&shared.window().routes(now, window)),
        ["authz"] => json(&shared.window().authz(now, window)),
        ["targets"] => json(&shared.window().targets()),
        ["workloads", ns, name, "series"] => match shared.window().series(ns, name, now, window) {
            Some(series) => json(&series),
            None => json_status(
                StatusCode::NOT_FOUND,
                &serde_json::json!({ "error": format!("no workload {ns}/{name} in the window: see /api/v1/overview") }),
            ),
        },
        ["tap"] => tap(shared, query),
        _ => json_status(
            StatusCode::NOT_FOUND,
            &serde_json::json!({ "error": "unknown API path: use /api/v1/overview, /api/v1/workloads/<ns>/<name>/series, /api/v1/routes, /api/v1/authz, /api/v1/targets or /api/v1/tap" }),
        ),
    }
}

fn tap(shared: &Shared, query: &str) -> Response<Body> {
    let q = match tap::TapQuery::parse(query) {
        Ok(q) => q,
        Err(e) => return bad_request(&e.to_string()),
    };
    let state = shared.state.borrow().clone();
    let lines = match tap::start(&state, &shared.trust_domain, &shared.credentials, &q) {
        Ok(lines) => lines,
        Err(e @ (tap::TapError::UnknownWorkload(_) | tap::TapError::NothingToTap(_))) => {
            return json_status(
                StatusCode::NOT_FOUND,
                &serde_json::json!({ "error": e.to_string() }),
            );
        }
        Err(e) => return bad_request(&e.to_string()),
    };
    tracing::info!(workload = %format!("{}/{}", q.namespace, q.workload), "tap started by the operator");
    let stream = ReceiverStream::new(lines).map(|line| Ok::<_, Infallible>(Frame::data(line)));
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/x-ndjson"),
    );
    no_store(&mut r);
    r
}

fn window_of(shared: &Shared, query: &str) -> Result<Duration, String> {
    let Some(w) = param(query, "window") else {
        return Ok(DEFAULT_WINDOW.min(shared.retention));
    };
    let parsed = crate::config::parse_duration(&w)
        .or_else(|| w.parse::<u64>().ok().map(Duration::from_secs))
        .filter(|d| !d.is_zero());
    match parsed {
        Some(d) if d <= shared.retention => Ok(d),
        Some(_) => Err(format!(
            "window={w}: longer than the retention ({:?}); ask for less",
            shared.retention
        )),
        None => Err(format!("window={w:?}: give a duration, e.g. 60s, 5m or 1h")),
    }
}

fn login(shared: &Shared, token: Option<&str>) -> Response<Body> {
    if token.is_some_and(|t| shared.token.matches(t)) {
        let mut r = respond(
            StatusCode::SEE_OTHER,
            "text/plain",
            Bytes::from_static(b"logged in\n"),
        );
        r.headers_mut()
            .insert(header::LOCATION, header::HeaderValue::from_static("./"));
        let cookie = format!(
            "{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/",
            shared.token.reveal()
        );
        if let Ok(v) = header::HeaderValue::from_str(&cookie) {
            r.headers_mut().insert(header::SET_COOKIE, v);
        }
        return r;
    }
    let mut r = respond(
        StatusCode::UNAUTHORIZED,
        "text/html; charset=utf-8",
        Bytes::from_static(LOGIN_PAGE.as_bytes()),
    );
    no_store(&mut r);
    r
}

const LOGIN_PAGE: &str = "<!doctype html><meta charset=utf-8><title>onemesh: log in</title>\
<p>The token was missing or wrong. Local mode: <code>onemesh up</code> prints a login link \
(the token is in <code>.onemesh/dashboard-token</code>); Kubernetes: run <code>onemesh dashboard</code>.\
<form method=post action=/login><input name=token type=password autofocus size=70> \
<button>Log in</button></form>";

fn authenticated<B>(shared: &Shared, req: &Request<B>) -> bool {
    let bearer = req
        .headers()
        .get_all(header::AUTHORIZATION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.strip_prefix("Bearer "))
        .any(|t| shared.token.matches(t.trim()));
    bearer
        || req
            .headers()
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().split_once('='))
            .any(|(k, v)| k == COOKIE && shared.token.matches(v))
}

/// A 421 for a request not addressed to one of the dashboard's names (checked on the `Host`
/// header and on an absolute-form target's authority, whichever are present; at least one must
/// be, and there may be only one `Host`).
fn misdirected<B>(shared: &Shared, req: &Request<B>) -> Option<Response<Body>> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let header = hosts.next();
    let named = [
        header.map(|h| h.to_str().unwrap_or("")),
        req.uri().authority().map(|a| a.as_str()),
    ];
    let bad = named.iter().flatten().find(|h| !shared.hosts.allows(h));
    let shown = match (bad, named) {
        _ if hosts.next().is_some() => "the request has more than one Host".to_string(),
        (Some(h), _) => format!("Host {h:?} is not a name of this dashboard"),
        (None, [None, None]) => "the request names no Host".to_string(),
        (None, _) => return None,
    };
    let port = shared.addr.port();
    Some(text(
        StatusCode::MISDIRECTED_REQUEST,
        &format!(
            "refused: {shown} (a guard against DNS rebinding). Open http://localhost:{port}/ \
             or http://127.0.0.1:{port}/, or give the name you use to the control plane's \
             --dashboard-host (`onemesh up --dashboard-host NAME`).\n"
        ),
    ))
}

/// The value of `key` in an `a=b&c=d` string, percent-decoded.
fn param(query: &str, key: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

fn json<T: Serialize>(v: &T) -> Response<Body> {
    json_status(StatusCode::OK, v)
}

fn json_status<T: Serialize>(status: StatusCode, v: &T) -> Response<Body> {
    match serde_json::to_vec(v) {
        Ok(body) => respond(status, "application/json", body.into()),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("cannot encode the answer: {e}\n"),
        ),
    }
}

fn bad_request(why: &str) -> Response<Body> {
    json_status(
        StatusCode::BAD_REQUEST,
        &serde_json::json!({ "error": why }),
    )
}

fn text(status: StatusCode, body: &str) -> Response<Body> {
    respond(
        status,
        "text/plain; charset=utf-8",
        Bytes::from(body.to_string()),
    )
}

fn respond(status: StatusCode, ctype: &'static str, body: Bytes) -> Response<Body> {
    let mut r = Response::new(BodyExt::boxed(Full::new(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(ctype),
    );
    no_store(&mut r);
    r
}

fn no_store<B>(r: &mut Response<B>) {
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    r.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
}

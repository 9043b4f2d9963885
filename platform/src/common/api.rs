//! The HTTP surface every service shares: the JSON error body, the `ApiError` trait that each
//! service's error enum implements, extractors that turn malformed input into JSON 400/422
//! errors (axum's own rejections are plain text, which an OpenAPI client cannot parse), and the
//! `Reply` type that carries a (possibly replayed) stored response.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Header carrying the idempotency key of a mutating call.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Response header set to `true` when a stored response is replayed.
pub const REPLAYED: &str = "idempotent-replayed";

/// Every error response: `{"error": "...", "code": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// What failed and what to do, in words.
    pub error: String,
    /// A stable machine-readable reason, e.g. `insufficient_funds`, `wrong_pin`.
    pub code: String,
}

/// Implemented by each service's error enum; `IntoResponse` is derived from it with
/// [`error_response`].
pub trait ApiError: std::error::Error {
    /// The HTTP status of this error.
    fn status(&self) -> StatusCode;
    /// The stable reason code.
    fn code(&self) -> String;
}

/// Builds the JSON error response for an error.
pub fn error_response<E: ApiError>(err: &E) -> Response {
    let status = err.status();
    if status.is_server_error() {
        tracing::error!(code = %err.code(), error = %err, "request failed");
    } else {
        tracing::info!(code = %err.code(), error = %err, "request refused");
    }
    let body = ErrorBody {
        error: err.to_string(),
        code: err.code(),
    };
    (status, axum::Json(body)).into_response()
}

/// Why a request was refused before it reached a handler.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The body is not JSON, or not the right content type.
    #[error("invalid request body: {0}; send a JSON object with content-type application/json")]
    InvalidBody(String),
    /// The body is JSON but a field is missing or has the wrong type or value.
    #[error("invalid request data: {0}")]
    InvalidData(String),
    /// A query parameter is malformed.
    #[error("invalid query string: {0}")]
    InvalidQuery(String),
    /// A path segment could not be decoded.
    #[error("invalid path: {0}")]
    InvalidPath(String),
    /// A mutating call came without an `Idempotency-Key` header.
    #[error(
        "missing Idempotency-Key header; every mutating call needs a unique key per intended effect"
    )]
    MissingIdempotencyKey,
    /// The `Idempotency-Key` header is empty, too long or not printable ASCII.
    #[error("invalid Idempotency-Key header; use 1 to 200 characters")]
    InvalidIdempotencyKey,
}

impl ApiError for RequestError {
    fn status(&self) -> StatusCode {
        match self {
            RequestError::InvalidData(_) => StatusCode::UNPROCESSABLE_ENTITY,
            RequestError::InvalidBody(_)
            | RequestError::InvalidQuery(_)
            | RequestError::InvalidPath(_)
            | RequestError::MissingIdempotencyKey
            | RequestError::InvalidIdempotencyKey => StatusCode::BAD_REQUEST,
        }
    }

    fn code(&self) -> String {
        match self {
            RequestError::InvalidBody(_) => "invalid_body",
            RequestError::InvalidData(_) => "invalid_data",
            RequestError::InvalidQuery(_) => "invalid_query",
            RequestError::InvalidPath(_) => "invalid_path",
            RequestError::MissingIdempotencyKey => "missing_idempotency_key",
            RequestError::InvalidIdempotencyKey => "invalid_idempotency_key",
        }
        .to_string()
    }
}

impl IntoResponse for RequestError {
    fn into_response(self) -> Response {
        error_response(&self)
    }
}

/// A JSON body whose rejections are JSON errors (400 for bad JSON, 422 for bad data).
#[derive(Debug, Clone)]
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = RequestError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        use axum::extract::rejection::JsonRejection;
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(ApiJson(value)),
            Err(JsonRejection::JsonDataError(e)) => Err(RequestError::InvalidData(e.body_text())),
            Err(e) => Err(RequestError::InvalidBody(e.body_text())),
        }
    }
}

/// Query parameters whose rejection is a JSON 400.
#[derive(Debug, Clone)]
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = RequestError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|e| RequestError::InvalidQuery(e.body_text()))
    }
}

/// Path parameters whose rejection is a JSON 400.
#[derive(Debug, Clone)]
pub struct ApiPath<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = RequestError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|e| RequestError::InvalidPath(e.body_text()))
    }
}

/// The required `Idempotency-Key` header of a mutating call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdemKey(pub String);

impl<S: Send + Sync> FromRequestParts<S> for IdemKey {
    type Rejection = RequestError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let value = parts
            .headers
            .get(IDEMPOTENCY_KEY)
            .ok_or(RequestError::MissingIdempotencyKey)?;
        // Visible ASCII only: a lossy decoding would turn distinct non-UTF-8 keys into one
        // (every bad byte becomes U+FFFD), so two requests would share a key.
        let text = value
            .to_str()
            .map_err(|_| RequestError::InvalidIdempotencyKey)?;
        if text.is_empty() || text.len() > 200 {
            return Err(RequestError::InvalidIdempotencyKey);
        }
        Ok(IdemKey(text.to_string()))
    }
}

/// A response stored under an idempotency key, or about to be.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// HTTP status.
    pub status: StatusCode,
    /// JSON body.
    pub body: serde_json::Value,
    /// True when this is a replay of an earlier response.
    pub replayed: bool,
}

impl Reply {
    /// A fresh (not replayed) reply.
    pub fn new<T: Serialize>(status: StatusCode, body: &T) -> Reply {
        Reply {
            status,
            body: serde_json::to_value(body).unwrap_or(serde_json::Value::Null),
            replayed: false,
        }
    }

    /// A fresh error reply for a final (4xx) outcome.
    pub fn from_error<E: ApiError>(err: &E) -> Reply {
        Reply::new(
            err.status(),
            &ErrorBody {
                error: err.to_string(),
                code: err.code(),
            },
        )
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body)).into_response();
        if self.replayed {
            response
                .headers_mut()
                .insert(REPLAYED, HeaderValue::from_static("true"));
        }
        response
    }
}

/// A response body as JSON, for storing with an idempotency record (our own types always serialize).
pub fn value<T: Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or_default()
}

/// Checks a text field: 1..=`max` characters (as the OpenAPI schema says; any characters).
pub fn check_text(field: &str, value: &str, max: usize) -> Result<(), RequestError> {
    let len = value.chars().count();
    if len == 0 || len > max {
        return Err(RequestError::InvalidData(format!(
            "{field} must be 1 to {max} characters"
        )));
    }
    Ok(())
}

/// Serde helper for integer fields: accepts JSON integers and integral numbers such as `12.0`
/// (JSON Schema counts both as integers), refuses fractions and out-of-range values.
pub mod int {
    use serde::{Deserialize, Deserializer, de::Error};

    /// Deserializes an `i64` from an integral JSON number.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        let n = serde_json::Number::deserialize(d)?;
        if let Some(i) = n.as_i64() {
            return Ok(i);
        }
        match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(f as i64),
            _ => Err(D::Error::custom(format!("{n} is not an integer in range"))),
        }
    }
}

/// The `Idempotency-Key` header as an OpenAPI parameter (see [`IdemKey`] for the extractor).
#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
pub struct IdemHeader {
    /// Unique per intended effect; reuse it to retry. Derived from the payment along the chain.
    #[param(rename = "Idempotency-Key", min_length = 1, max_length = 200)]
    pub idempotency_key: String,
}

/// Checks an amount in won: 1..=`MAX_AMOUNT`.
pub fn check_amount(field: &str, value: i64) -> Result<(), RequestError> {
    if !(1..=MAX_AMOUNT).contains(&value) {
        return Err(RequestError::InvalidData(format!(
            "{field} must be between 1 and {MAX_AMOUNT} won"
        )));
    }
    Ok(())
}

/// The largest single amount any service accepts (one trillion won).
pub const MAX_AMOUNT: i64 = 1_000_000_000_000;

#[cfg(test)]
mod tests {
    use axum::http::{HeaderValue, Request};

    use super::*;

    async fn key(value: HeaderValue) -> Result<IdemKey, RequestError> {
        let (mut parts, ()) = Request::builder()
            .header(IDEMPOTENCY_KEY, value)
            .body(())
            .unwrap()
            .into_parts();
        IdemKey::from_request_parts(&mut parts, &()).await
    }

    #[tokio::test]
    async fn idempotency_keys_are_visible_ascii_of_1_to_200() {
        let ok = key(HeaderValue::from_static("pay-1:order_7"))
            .await
            .unwrap();
        assert_eq!(ok.0, "pay-1:order_7");
        assert!(
            key(HeaderValue::from_str(&"k".repeat(200)).unwrap())
                .await
                .is_ok()
        );
        for bad in [
            HeaderValue::from_static(""),
            HeaderValue::from_str(&"k".repeat(201)).unwrap(),
            // Two distinct keys that a lossy decoding would make equal.
            HeaderValue::from_bytes(b"k\xff").unwrap(),
            HeaderValue::from_bytes(b"k\xfe").unwrap(),
        ] {
            assert!(
                matches!(
                    key(bad.clone()).await,
                    Err(RequestError::InvalidIdempotencyKey)
                ),
                "{bad:?} was accepted"
            );
        }
    }
}

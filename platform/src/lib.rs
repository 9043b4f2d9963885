//! The reference platform: five organisations of a card-payment chain as real services —
//! `order` (a table-ordering shop), `pg` (payment gateway), `appcard` (app-card wallet), `card`
//! (card issuer) and `bank` — each an axum app over its own SQLite database.
//!
//! Services call each other only by plain HTTP at base URLs (through `HTTP_PROXY` when the mesh
//! runs them); they hold no certificates. Every mutating call carries an `Idempotency-Key`
//! derived from the payment, so retries never charge twice. The `traffic` module drives a
//! realistic mix of payments against `order`.

pub mod appcard;
pub mod bank;
pub mod card;
pub mod common;
pub mod order;
pub mod pg;
pub mod run;
pub mod traffic;

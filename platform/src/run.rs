//! Wiring a service from configuration: which service, where its database lives, where its
//! upstreams are. Shared by the binary and the tests, so both build services the same way.
//!
//! Configuration is read through a lookup function (the process environment in the binary, a
//! map in tests), never by setting process environment variables.

use std::path::{Path, PathBuf};

use axum::Router;

use crate::common::client::{ClientBuildError, ClientConfig, Upstream};
use crate::common::db::{Db, DbError};
use crate::{appcard, bank, card, order, pg};

/// One of the five services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    /// The table-ordering shop.
    Order,
    /// The payment gateway.
    Pg,
    /// The app-card wallet.
    Appcard,
    /// The card issuer.
    Card,
    /// The bank.
    Bank,
}

impl Service {
    /// All services, in chain order.
    pub const ALL: [Service; 5] = [
        Service::Order,
        Service::Pg,
        Service::Appcard,
        Service::Card,
        Service::Bank,
    ];

    /// The service's name (also its namespace and its database file's stem).
    pub fn name(self) -> &'static str {
        match self {
            Service::Order => "order",
            Service::Pg => "pg",
            Service::Appcard => "appcard",
            Service::Card => "card",
            Service::Bank => "bank",
        }
    }
}

/// Upstream base URLs. Defaults are the mesh names (`http://pg.pg`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstreams {
    /// `PG_URL`.
    pub pg: String,
    /// `APPCARD_URL`.
    pub appcard: String,
    /// `CARD_URL`.
    pub card: String,
    /// `BANK_URL`.
    pub bank: String,
}

impl Default for Upstreams {
    fn default() -> Self {
        Upstreams {
            pg: "http://pg.pg".into(),
            appcard: "http://appcard.appcard".into(),
            card: "http://card.card".into(),
            bank: "http://bank.bank".into(),
        }
    }
}

impl Upstreams {
    /// Reads `PG_URL`, `APPCARD_URL`, `CARD_URL`, `BANK_URL`, each defaulting to its mesh name.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Upstreams {
        let d = Upstreams::default();
        Upstreams {
            pg: get("PG_URL").unwrap_or(d.pg),
            appcard: get("APPCARD_URL").unwrap_or(d.appcard),
            card: get("CARD_URL").unwrap_or(d.card),
            bank: get("BANK_URL").unwrap_or(d.bank),
        }
    }
}

/// The seeded merchant key the shop uses at the gateway (override with `MERCHANT_KEY`).
pub const DEFAULT_MERCHANT_KEY: &str = "sk_test_tableshop";

/// Everything needed to build a service's app.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Which service.
    pub service: Service,
    /// Upstream base URLs.
    pub upstreams: Upstreams,
    /// Upstream call behaviour.
    pub client: ClientConfig,
    /// The shop's merchant key (order only).
    pub merchant_key: String,
}

impl ServiceConfig {
    /// A config with mesh defaults and environment proxy use, reading overrides via `get`.
    pub fn from_lookup(
        service: Service,
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<ServiceConfig, ConfigError> {
        let mut client = ClientConfig::default();
        if let Some(text) = get("UPSTREAM_ATTEMPTS") {
            client.attempts = match text.trim().parse::<u32>() {
                Ok(n @ 1..=10) => n,
                _ => return Err(ConfigError::Attempts(text)),
            };
        }
        Ok(ServiceConfig {
            service,
            merchant_key: get("MERCHANT_KEY").unwrap_or_else(|| DEFAULT_MERCHANT_KEY.into()),
            upstreams: Upstreams::from_lookup(get),
            client,
        })
    }
}

/// A setting that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `UPSTREAM_ATTEMPTS` is not 1-10.
    #[error(
        "UPSTREAM_ATTEMPTS={0:?} is not a number of attempts: use 1-10 (1: calls to the next service are never retried by the app, e.g. when the mesh retries them)"
    )]
    Attempts(String),
}

/// Why a service could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The database could not be opened or migrated.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The upstream client could not be built.
    #[error(transparent)]
    Client(#[from] ClientBuildError),
}

/// The database migrations of a service.
pub fn migrations(service: Service) -> &'static [crate::common::db::Migration] {
    match service {
        Service::Order => order::MIGRATIONS,
        Service::Pg => pg::MIGRATIONS,
        Service::Appcard => appcard::MIGRATIONS,
        Service::Card => card::MIGRATIONS,
        Service::Bank => bank::MIGRATIONS,
    }
}

/// The database file of a service in a data directory.
pub fn db_path(data_dir: &Path, service: Service) -> PathBuf {
    data_dir.join(format!("{}.db", service.name()))
}

/// Opens (creating and seeding on first start) the service's database in `data_dir`.
pub fn open_db(data_dir: &Path, service: Service) -> Result<Db, DbError> {
    Db::open_in_dir(data_dir, service.name(), migrations(service))
}

/// Builds the service's app over an open database.
pub fn build_app(config: &ServiceConfig, db: Db) -> Result<Router, BuildError> {
    let up = |name: &'static str, url: &str| Upstream::new(name, url, config.client.clone());
    let u = &config.upstreams;
    Ok(match config.service {
        Service::Order => order::app(order::OrderState {
            db,
            pg: up("pg", &u.pg)?,
            merchant_key: config.merchant_key.clone(),
        }),
        Service::Pg => pg::app(pg::PgState {
            db,
            appcard: up("appcard", &u.appcard)?,
            card: up("card", &u.card)?,
        }),
        Service::Appcard => appcard::app(appcard::AppcardState {
            db,
            card: up("card", &u.card)?,
        }),
        Service::Card => card::app(card::CardState {
            db,
            bank: up("bank", &u.bank)?,
        }),
        Service::Bank => bank::app(bank::BankState { db }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(attempts: Option<&str>) -> Result<ServiceConfig, ConfigError> {
        ServiceConfig::from_lookup(Service::Pg, |k| {
            (k == "UPSTREAM_ATTEMPTS").then(|| attempts.map(str::to_string))?
        })
    }

    #[test]
    fn upstream_attempts_default_to_four_and_may_be_one() {
        assert_eq!(config(None).unwrap().client.attempts, 4);
        assert_eq!(config(Some("1")).unwrap().client.attempts, 1);
        assert_eq!(config(Some(" 10 ")).unwrap().client.attempts, 10);
    }

    #[test]
    fn upstream_attempts_out_of_range_are_refused_with_the_range() {
        for bad in ["0", "11", "-1", "two", ""] {
            let err = config(Some(bad)).unwrap_err().to_string();
            assert!(err.contains("use 1-10"), "{bad}: {err}");
            assert!(err.contains(&format!("{bad:?}")), "{bad}: {err}");
        }
    }
}

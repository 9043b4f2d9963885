//! order — a table-ordering shop's back end and the platform's public entry: the menu, carts
//! that become orders, paying an order through the payment gateway, order status (`PENDING`,
//! `PAID`, `FAILED`, `CANCELLED`), and cancelling a paid order (refunded through the chain).
//!
//! Paying asks the gateway with the key `order:{order}:pay`, the same on every retry, and the
//! first pay request's hash is pinned on the order, so two different pay requests for one order
//! can never both reach the gateway. A decline makes the order `FAILED` (final: place a new
//! order to try again); an unreachable gateway leaves it `PENDING` with a 503 that says to retry.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::common::api::value;
use crate::common::api::{
    ApiError, ApiJson, ApiPath, ApiQuery, ErrorBody, IdemHeader, IdemKey, Reply, RequestError,
    error_response,
};
use crate::common::client::{Upstream, UpstreamError};
use crate::common::db::{Db, DbError, Migration};
use crate::common::idem::{self, Begin};
use crate::common::{derive_key, new_id, now_ms, request_hash};

#[cfg(test)]
mod tests;

/// Schema and seed data, applied in order.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        name: "0001_orders",
        sql: "CREATE TABLE menu (
                  id TEXT PRIMARY KEY,
                  name TEXT NOT NULL,
                  price INTEGER NOT NULL,
                  available INTEGER NOT NULL DEFAULT 1
              );
              CREATE TABLE carts (
                  id TEXT PRIMARY KEY,
                  table_no INTEGER NOT NULL,
                  status TEXT NOT NULL CHECK (status IN ('OPEN', 'CHECKED_OUT')),
                  order_id TEXT,
                  created_ms INTEGER NOT NULL
              );
              CREATE TABLE cart_items (
                  cart_id TEXT NOT NULL REFERENCES carts (id),
                  menu_id TEXT NOT NULL REFERENCES menu (id),
                  qty INTEGER NOT NULL,
                  PRIMARY KEY (cart_id, menu_id)
              );
              CREATE TABLE orders (
                  id TEXT PRIMARY KEY,
                  table_no INTEGER NOT NULL,
                  amount INTEGER NOT NULL,
                  status TEXT NOT NULL CHECK (status IN ('PENDING', 'PAID', 'FAILED', 'CANCELLED')),
                  pay_request_hash TEXT,
                  payment_id TEXT,
                  approval_no TEXT,
                  failure_code TEXT,
                  failure_message TEXT,
                  created_ms INTEGER NOT NULL,
                  updated_ms INTEGER NOT NULL
              );
              CREATE TABLE order_items (
                  order_id TEXT NOT NULL REFERENCES orders (id),
                  menu_id TEXT NOT NULL,
                  name TEXT NOT NULL,
                  price INTEGER NOT NULL,
                  qty INTEGER NOT NULL
              );
              CREATE INDEX order_items_order ON order_items (order_id);",
    },
    Migration {
        name: "0002_seed",
        sql: "INSERT INTO menu (id, name, price) VALUES
                  ('m-bibimbap', 'Bibimbap', 12000),
                  ('m-bulgogi', 'Bulgogi', 18000),
                  ('m-kimchi-jjigae', 'Kimchi stew', 9000),
                  ('m-tteokbokki', 'Tteokbokki', 7000),
                  ('m-soju', 'Soju', 5000),
                  ('m-hanwoo', 'Hanwoo beef set', 150000);",
    },
];

/// What the shop refuses or fails at.
#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    /// The request was malformed.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// No such order.
    #[error("order {0} does not exist")]
    NoOrder(String),
    /// No such cart.
    #[error("cart {0} does not exist")]
    NoCart(String),
    /// No such menu item.
    #[error("menu item {0} does not exist; see GET /menu")]
    NoMenuItem(String),
    /// The cart is empty or already checked out.
    #[error("cart {id} cannot be used: {why}")]
    CartClosed {
        /// Cart id.
        id: String,
        /// Why.
        why: &'static str,
    },
    /// The order is not in a state for this action.
    #[error("order {id} is {status}; {hint}")]
    WrongState {
        /// Order id.
        id: String,
        /// Its status.
        status: String,
        /// What to do.
        hint: &'static str,
    },
    /// A method's details are missing.
    #[error("{0}")]
    MissingDetails(&'static str),
    /// The gateway declined the payment.
    #[error("payment declined: {message}")]
    Declined {
        /// The reason code (e.g. `wrong_pin`, `insufficient_funds`, `over_limit`).
        code: String,
        /// The reason.
        message: String,
    },
    /// The gateway refused the cancel.
    #[error("the payment gateway refused the cancel: {0}")]
    CancelRefused(String),
    /// The gateway could not be reached: the outcome is not known yet.
    #[error("payment outcome unknown ({0}); retry the same request, it will not charge twice")]
    Unavailable(UpstreamError),
    /// An idempotency key was reused for another request.
    #[error(transparent)]
    Conflict(#[from] idem::Conflict),
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<rusqlite::Error> for OrderError {
    fn from(e: rusqlite::Error) -> Self {
        OrderError::Db(DbError::Sqlite(e))
    }
}

impl ApiError for OrderError {
    fn status(&self) -> StatusCode {
        match self {
            OrderError::Request(e) => e.status(),
            OrderError::NoOrder(_) | OrderError::NoCart(_) => StatusCode::NOT_FOUND,
            OrderError::NoMenuItem(_) | OrderError::MissingDetails(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            OrderError::CartClosed { .. }
            | OrderError::WrongState { .. }
            | OrderError::CancelRefused(_)
            | OrderError::Conflict(_) => StatusCode::CONFLICT,
            OrderError::Declined { .. } => StatusCode::PAYMENT_REQUIRED,
            OrderError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            OrderError::Db(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code(&self) -> String {
        match self {
            OrderError::Request(e) => return e.code(),
            OrderError::Declined { code, .. } => return code.clone(),
            OrderError::NoOrder(_) => "no_order",
            OrderError::NoCart(_) => "no_cart",
            OrderError::NoMenuItem(_) => "no_menu_item",
            OrderError::CartClosed { .. } => "cart_closed",
            OrderError::WrongState { .. } => "wrong_state",
            OrderError::MissingDetails(_) => "missing_details",
            OrderError::CancelRefused(_) => "cancel_refused",
            OrderError::Unavailable(_) => "payment_unavailable",
            OrderError::Conflict(_) => "idempotency_conflict",
            OrderError::Db(_) => "internal",
        }
        .to_string()
    }
}

impl IntoResponse for OrderError {
    fn into_response(self) -> Response {
        error_response(&self)
    }
}

/// The shop's shared state.
#[derive(Debug, Clone)]
pub struct OrderState {
    /// Its database.
    pub db: Db,
    /// The payment gateway.
    pub pg: Upstream,
    /// The shop's merchant key at the gateway.
    pub merchant_key: String,
}

/// A dish on the menu.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MenuItem {
    /// Menu id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Price in won.
    pub price: i64,
}

/// A line to order.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LineRequest {
    /// Menu id.
    #[schema(min_length = 1, max_length = 64, example = "m-bibimbap")]
    pub menu_id: String,
    /// Quantity.
    #[schema(minimum = 1, maximum = 20)]
    #[serde(deserialize_with = "crate::common::api::int::deserialize")]
    pub qty: i64,
}

/// A line of a cart or order.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Line {
    /// Menu id.
    pub menu_id: String,
    /// Name.
    pub name: String,
    /// Unit price in won.
    pub price: i64,
    /// Quantity.
    #[serde(deserialize_with = "crate::common::api::int::deserialize")]
    pub qty: i64,
}

/// Open a cart at a table.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NewCart {
    /// Table number.
    #[schema(minimum = 1, maximum = 100)]
    #[serde(deserialize_with = "crate::common::api::int::deserialize")]
    pub table_no: i64,
}

/// A cart.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Cart {
    /// Cart id.
    pub id: String,
    /// Table number.
    #[serde(deserialize_with = "crate::common::api::int::deserialize")]
    pub table_no: i64,
    /// `OPEN` or `CHECKED_OUT`.
    pub status: String,
    /// The order it became.
    pub order_id: Option<String>,
    /// Lines.
    pub items: Vec<Line>,
    /// Total in won.
    pub total: i64,
}

/// Place an order directly (a cart in one call).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NewOrder {
    /// Table number.
    #[schema(minimum = 1, maximum = 100)]
    #[serde(deserialize_with = "crate::common::api::int::deserialize")]
    pub table_no: i64,
    /// Lines (1 to 20).
    #[schema(min_items = 1, max_items = 20)]
    pub items: Vec<LineRequest>,
}

/// An order.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Order {
    /// Order id.
    pub id: String,
    /// Table number.
    #[serde(deserialize_with = "crate::common::api::int::deserialize")]
    pub table_no: i64,
    /// Lines.
    pub items: Vec<Line>,
    /// Total in won.
    #[serde(deserialize_with = "crate::common::api::int::deserialize")]
    pub amount: i64,
    /// `PENDING`, `PAID`, `FAILED` or `CANCELLED`.
    pub status: String,
    /// The gateway's payment id, once asked.
    pub payment_id: Option<String>,
    /// The issuer's approval number, once paid.
    pub approval_no: Option<String>,
    /// Why paying failed.
    pub failure_code: Option<String>,
    /// The failure in words.
    pub failure_message: Option<String>,
    /// Creation time, Unix ms.
    pub created_ms: i64,
}

/// How the customer pays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PayMethod {
    /// App-card wallet, confirmed with a PIN.
    Appcard,
    /// Card number.
    Card,
}

/// Pay an order.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PayRequest {
    /// `appcard` (user_id, card_id, pin) or `card` (card_number).
    pub method: PayMethod,
    /// App-card: the wallet user.
    #[schema(min_length = 1, max_length = 64, example = "u-kim")]
    pub user_id: Option<String>,
    /// App-card: the card in the wallet.
    #[schema(min_length = 1, max_length = 64, example = "c-kim-1")]
    pub card_id: Option<String>,
    /// App-card: the PIN.
    #[schema(pattern = "^[0-9]{4,6}$", example = "1234")]
    pub pin: Option<String>,
    /// Card: the 16-digit number.
    #[schema(pattern = "^[0-9]{16}$", example = "9410000000000001")]
    pub card_number: Option<String>,
}

/// Filter for listing orders.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OrderQuery {
    /// Only orders in this status.
    #[param(pattern = "^(PENDING|PAID|FAILED|CANCELLED)$")]
    pub status: Option<String>,
}

/// The shop's routes.
pub fn routes(state: OrderState) -> Router {
    Router::new()
        .route("/menu", get(menu))
        .route("/carts", post(create_cart))
        .route("/carts/{id}", get(get_cart))
        .route("/carts/{id}/items", post(add_item))
        .route("/carts/{id}/checkout", post(checkout))
        .route("/orders", post(create_order).get(list_orders))
        .route("/orders/{id}", get(get_order))
        .route("/orders/{id}/pay", post(pay))
        .route("/orders/{id}/cancel", post(cancel))
        .with_state(state)
}

/// The whole shop service.
pub fn app(state: OrderState) -> Router {
    crate::common::serve::with_common("order", routes(state), ApiDoc::openapi())
}

/// The shop's OpenAPI description.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "order",
        description = "Table-ordering shop: menu, carts, orders, pay, cancel."
    ),
    paths(
        menu,
        create_cart,
        get_cart,
        add_item,
        checkout,
        create_order,
        list_orders,
        get_order,
        pay,
        cancel,
        crate::common::serve::healthz
    ),
    components(schemas(
        MenuItem,
        LineRequest,
        Line,
        NewCart,
        Cart,
        NewOrder,
        Order,
        PayMethod,
        PayRequest,
        ErrorBody
    ))
)]
pub struct ApiDoc;

fn menu_item(c: &Connection, id: &str) -> Result<MenuItem, OrderError> {
    c.query_row(
        "SELECT id, name, price FROM menu WHERE id = ?1 AND available = 1",
        [id],
        |r| {
            Ok(MenuItem {
                id: r.get(0)?,
                name: r.get(1)?,
                price: r.get(2)?,
            })
        },
    )
    .optional()?
    .ok_or_else(|| OrderError::NoMenuItem(id.to_string()))
}

fn check_line(line: &LineRequest) -> Result<(), RequestError> {
    crate::common::api::check_text("menu_id", &line.menu_id, 64)?;
    if !(1..=20).contains(&line.qty) {
        return Err(RequestError::InvalidData("qty must be 1 to 20".into()));
    }
    Ok(())
}

fn check_table(table_no: i64) -> Result<(), RequestError> {
    if !(1..=100).contains(&table_no) {
        return Err(RequestError::InvalidData(
            "table_no must be 1 to 100".into(),
        ));
    }
    Ok(())
}

fn read_order(c: &Connection, id: &str) -> Result<Order, OrderError> {
    let mut order = c
        .query_row(
            "SELECT id, table_no, amount, status, payment_id, approval_no, failure_code, failure_message, created_ms
             FROM orders WHERE id = ?1",
            [id],
            |r| {
                Ok(Order {
                    id: r.get(0)?,
                    table_no: r.get(1)?,
                    items: Vec::new(),
                    amount: r.get(2)?,
                    status: r.get(3)?,
                    payment_id: r.get(4)?,
                    approval_no: r.get(5)?,
                    failure_code: r.get(6)?,
                    failure_message: r.get(7)?,
                    created_ms: r.get(8)?,
                })
            },
        )
        .optional()?
        .ok_or_else(|| OrderError::NoOrder(id.to_string()))?;
    let mut stmt = c.prepare_cached(
        "SELECT menu_id, name, price, qty FROM order_items WHERE order_id = ?1 ORDER BY rowid",
    )?;
    order.items = stmt
        .query_map([id], |r| {
            Ok(Line {
                menu_id: r.get(0)?,
                name: r.get(1)?,
                price: r.get(2)?,
                qty: r.get(3)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(order)
}

fn insert_order(c: &Connection, table_no: i64, lines: &[LineRequest]) -> Result<Order, OrderError> {
    let id = new_id("ord");
    let now = now_ms();
    let mut amount = 0_i64;
    let mut items = Vec::new();
    for line in lines {
        let item = menu_item(c, &line.menu_id)?;
        amount += item.price * line.qty;
        items.push((item, line.qty));
    }
    c.execute(
        "INSERT INTO orders (id, table_no, amount, status, created_ms, updated_ms) VALUES (?1, ?2, ?3, 'PENDING', ?4, ?4)",
        params![id, table_no, amount, now],
    )?;
    for (item, qty) in items {
        c.execute(
            "INSERT INTO order_items (order_id, menu_id, name, price, qty) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![id, item.id, item.name, item.price, qty],
        )?;
    }
    read_order(c, &id)
}

fn read_cart(c: &Connection, id: &str) -> Result<Cart, OrderError> {
    let (table_no, status, order_id) = c
        .query_row(
            "SELECT table_no, status, order_id FROM carts WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?
        .ok_or_else(|| OrderError::NoCart(id.to_string()))?;
    let mut stmt = c.prepare_cached(
        "SELECT m.id, m.name, m.price, ci.qty FROM cart_items ci JOIN menu m ON m.id = ci.menu_id
         WHERE ci.cart_id = ?1 ORDER BY m.id",
    )?;
    let items = stmt
        .query_map([id], |r| {
            Ok(Line {
                menu_id: r.get(0)?,
                name: r.get(1)?,
                price: r.get(2)?,
                qty: r.get(3)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let total = items.iter().map(|l| l.price * l.qty).sum();
    Ok(Cart {
        id: id.to_string(),
        table_no,
        status,
        order_id,
        items,
        total,
    })
}

/// The menu.
#[utoipa::path(get, path = "/menu", tag = "menu",
    responses((status = 200, description = "available dishes", body = [MenuItem])))]
pub async fn menu(State(state): State<OrderState>) -> Result<Json<Vec<MenuItem>>, OrderError> {
    state
        .db
        .run(|c| {
            let mut stmt =
                c.prepare("SELECT id, name, price FROM menu WHERE available = 1 ORDER BY id")?;
            let items = stmt
                .query_map([], |r| {
                    Ok(MenuItem {
                        id: r.get(0)?,
                        name: r.get(1)?,
                        price: r.get(2)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Json(items))
        })
        .await
}

/// Open a cart at a table.
#[utoipa::path(post, path = "/carts", tag = "carts", request_body = NewCart,
    params(IdemHeader),
    responses((status = 201, description = "opened (or replayed)", body = Cart),
              (status = 400, description = "malformed request", body = ErrorBody),
              (status = 409, description = "key reused for another request", body = ErrorBody),
              (status = 422, description = "invalid data", body = ErrorBody)))]
pub async fn create_cart(
    State(state): State<OrderState>,
    key: IdemKey,
    ApiJson(req): ApiJson<NewCart>,
) -> Result<Reply, OrderError> {
    check_table(req.table_no)?;
    let hash = request_hash(&req);
    state
        .db
        .run(move |c| {
            idem::execute(c, "cart", &key.0, &hash, StatusCode::CREATED, |c| {
                let id = new_id("cart");
                c.execute(
                    "INSERT INTO carts (id, table_no, status, created_ms) VALUES (?1, ?2, 'OPEN', ?3)",
                    params![id, req.table_no, now_ms()],
                )?;
                Ok(value(&read_cart(c, &id)?))
            })
        })
        .await
}

/// A cart.
#[utoipa::path(get, path = "/carts/{id}", tag = "carts",
    params(("id" = String, Path, description = "cart id")),
    responses((status = 200, description = "the cart", body = Cart),
              (status = 400, description = "malformed path", body = ErrorBody),
              (status = 404, description = "no such cart", body = ErrorBody)))]
pub async fn get_cart(
    State(state): State<OrderState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Cart>, OrderError> {
    state.db.run(move |c| read_cart(c, &id).map(Json)).await
}

/// Add a dish to a cart (quantities add up, at most 20 per dish).
#[utoipa::path(post, path = "/carts/{id}/items", tag = "carts", request_body = LineRequest,
    params(("id" = String, Path, description = "cart id"),
           IdemHeader),
    responses((status = 200, description = "the cart (or replayed)", body = Cart),
              (status = 400, description = "malformed request", body = ErrorBody),
              (status = 404, description = "no such cart", body = ErrorBody),
              (status = 409, description = "cart checked out, or key reused", body = ErrorBody),
              (status = 422, description = "invalid data or unknown dish", body = ErrorBody)))]
pub async fn add_item(
    State(state): State<OrderState>,
    ApiPath(id): ApiPath<String>,
    key: IdemKey,
    ApiJson(req): ApiJson<LineRequest>,
) -> Result<Reply, OrderError> {
    check_line(&req)?;
    let hash = request_hash(&(&id, &req));
    state
        .db
        .run(move |c| {
            idem::execute(c, "cart_item", &key.0, &hash, StatusCode::OK, |c| {
                let cart = read_cart(c, &id)?;
                if cart.status != "OPEN" {
                    return Err(OrderError::CartClosed {
                        id,
                        why: "it is already checked out",
                    });
                }
                menu_item(c, &req.menu_id)?;
                let current = cart
                    .items
                    .iter()
                    .find(|l| l.menu_id == req.menu_id)
                    .map_or(0, |l| l.qty);
                let qty = (current + req.qty).min(20);
                c.execute(
                    "INSERT INTO cart_items (cart_id, menu_id, qty) VALUES (?1, ?2, ?3)
                     ON CONFLICT (cart_id, menu_id) DO UPDATE SET qty = excluded.qty",
                    params![id, req.menu_id, qty],
                )?;
                Ok(value(&read_cart(c, &id)?))
            })
        })
        .await
}

/// Turn a cart into a `PENDING` order.
#[utoipa::path(post, path = "/carts/{id}/checkout", tag = "carts",
    params(("id" = String, Path, description = "cart id"),
           IdemHeader),
    responses((status = 201, description = "the new order (or replayed)", body = Order),
              (status = 400, description = "malformed request", body = ErrorBody),
              (status = 404, description = "no such cart", body = ErrorBody),
              (status = 409, description = "cart empty or checked out, or key reused", body = ErrorBody)))]
pub async fn checkout(
    State(state): State<OrderState>,
    ApiPath(id): ApiPath<String>,
    key: IdemKey,
) -> Result<Reply, OrderError> {
    let hash = request_hash(&id);
    state
        .db
        .run(move |c| {
            idem::execute(c, "checkout", &key.0, &hash, StatusCode::CREATED, |c| {
                let cart = read_cart(c, &id)?;
                if cart.status != "OPEN" {
                    return Err(OrderError::CartClosed {
                        id,
                        why: "it is already checked out",
                    });
                }
                if cart.items.is_empty() {
                    return Err(OrderError::CartClosed {
                        id,
                        why: "it is empty; add dishes first",
                    });
                }
                let lines: Vec<LineRequest> = cart
                    .items
                    .iter()
                    .map(|l| LineRequest {
                        menu_id: l.menu_id.clone(),
                        qty: l.qty,
                    })
                    .collect();
                let order = insert_order(c, cart.table_no, &lines)?;
                c.execute(
                    "UPDATE carts SET status = 'CHECKED_OUT', order_id = ?2 WHERE id = ?1",
                    params![id, order.id],
                )?;
                Ok(value(&order))
            })
        })
        .await
}

/// Place an order directly.
#[utoipa::path(post, path = "/orders", tag = "orders", request_body = NewOrder,
    params(IdemHeader),
    responses((status = 201, description = "the new order (or replayed)", body = Order),
              (status = 400, description = "malformed request", body = ErrorBody),
              (status = 409, description = "key reused for another request", body = ErrorBody),
              (status = 422, description = "invalid data or unknown dish", body = ErrorBody)))]
pub async fn create_order(
    State(state): State<OrderState>,
    key: IdemKey,
    ApiJson(req): ApiJson<NewOrder>,
) -> Result<Reply, OrderError> {
    check_table(req.table_no)?;
    if req.items.is_empty() || req.items.len() > 20 {
        return Err(RequestError::InvalidData("items must hold 1 to 20 lines".into()).into());
    }
    for line in &req.items {
        check_line(line)?;
    }
    let hash = request_hash(&req);
    state
        .db
        .run(move |c| {
            idem::execute(c, "order", &key.0, &hash, StatusCode::CREATED, |c| {
                Ok(value(&insert_order(c, req.table_no, &req.items)?))
            })
        })
        .await
}

/// Orders, newest last, optionally by status.
#[utoipa::path(get, path = "/orders", tag = "orders", params(OrderQuery),
    responses((status = 200, description = "orders", body = [Order]),
              (status = 400, description = "malformed query", body = ErrorBody)))]
pub async fn list_orders(
    State(state): State<OrderState>,
    ApiQuery(q): ApiQuery<OrderQuery>,
) -> Result<Json<Vec<Order>>, OrderError> {
    if let Some(s) = &q.status
        && !["PENDING", "PAID", "FAILED", "CANCELLED"].contains(&s.as_str())
    {
        return Err(RequestError::InvalidQuery(
            "status must be PENDING, PAID, FAILED or CANCELLED".into(),
        )
        .into());
    }
    state
        .db
        .run(move |c| {
            let mut stmt = c.prepare(
                "SELECT id FROM orders WHERE (?1 IS NULL OR status = ?1) ORDER BY created_ms, id",
            )?;
            let ids = stmt
                .query_map([&q.status], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            let orders = ids
                .iter()
                .map(|id| read_order(c, id))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Json(orders))
        })
        .await
}

/// One order.
#[utoipa::path(get, path = "/orders/{id}", tag = "orders",
    params(("id" = String, Path, description = "order id")),
    responses((status = 200, description = "the order", body = Order),
              (status = 400, description = "malformed path", body = ErrorBody),
              (status = 404, description = "no such order", body = ErrorBody)))]
pub async fn get_order(
    State(state): State<OrderState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Order>, OrderError> {
    state.db.run(move |c| read_order(c, &id).map(Json)).await
}

#[derive(Deserialize)]
struct PgPayment {
    id: String,
    approval_no: Option<String>,
}

/// Pay a `PENDING` order through the payment gateway.
#[utoipa::path(post, path = "/orders/{id}/pay", tag = "orders", request_body = PayRequest,
    params(("id" = String, Path, description = "order id"),
           IdemHeader),
    responses(
        (status = 200, description = "paid (or replayed)", body = Order),
        (status = 400, description = "malformed request", body = ErrorBody),
        (status = 402, description = "declined; the order is FAILED; code says why (wrong_pin, insufficient_funds, over_limit, ...)", body = ErrorBody),
        (status = 404, description = "no such order", body = ErrorBody),
        (status = 409, description = "order not PENDING, another pay request in progress, or key reused", body = ErrorBody),
        (status = 422, description = "invalid data or missing method details", body = ErrorBody),
        (status = 503, description = "outcome unknown: gateway unavailable; retry the same request", body = ErrorBody)))]
pub async fn pay(
    State(state): State<OrderState>,
    ApiPath(id): ApiPath<String>,
    key: IdemKey,
    ApiJson(req): ApiJson<PayRequest>,
) -> Result<Reply, OrderError> {
    for (name, field) in [("user_id", &req.user_id), ("card_id", &req.card_id)] {
        if let Some(v) = field {
            crate::common::api::check_text(name, v, 64)?;
        }
    }
    if let Some(pin) = &req.pin
        && (!(4..=6).contains(&pin.len()) || !pin.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(RequestError::InvalidData("pin must be 4 to 6 digits".into()).into());
    }
    if let Some(n) = &req.card_number
        && (n.len() != 16 || !n.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(
            RequestError::InvalidData("card_number must be exactly 16 digits".into()).into(),
        );
    }
    match req.method {
        PayMethod::Appcard
            if req.user_id.is_none() || req.card_id.is_none() || req.pin.is_none() =>
        {
            return Err(OrderError::MissingDetails(
                "an appcard payment needs user_id, card_id and pin",
            ));
        }
        PayMethod::Card if req.card_number.is_none() => {
            return Err(OrderError::MissingDetails(
                "a card payment needs card_number",
            ));
        }
        _ => {}
    }
    let hash = request_hash(&(&id, &req));
    const SCOPE: &str = "pay";
    let (k, h, i) = (key.0.clone(), hash.clone(), id.clone());
    let order = match state
        .db
        .run(move |c| {
            idem::begin(c, SCOPE, &k, &h, |c| {
                let order = read_order(c, &i)?;
                if order.status != "PENDING" {
                    return Err(OrderError::WrongState {
                        id: order.id,
                        status: order.status,
                        hint: "only a PENDING order can be paid",
                    });
                }
                let pinned: Option<String> = c.query_row(
                    "SELECT pay_request_hash FROM orders WHERE id = ?1",
                    [&i],
                    |r| r.get(0),
                )?;
                match pinned {
                    Some(p) if p != h => Err(OrderError::WrongState {
                        id: order.id,
                        status: order.status,
                        hint: "another pay request for this order is in progress; retry that one",
                    }),
                    Some(_) => Ok(order),
                    None => {
                        c.execute(
                            "UPDATE orders SET pay_request_hash = ?2, updated_ms = ?3 WHERE id = ?1",
                            params![i, h, now_ms()],
                        )?;
                        Ok(order)
                    }
                }
            })
        })
        .await?
    {
        Begin::Done(reply) => return Ok(reply),
        Begin::Proceed(order) => order,
    };

    let body = serde_json::json!({
        "order_id": order.id,
        "amount": order.amount,
        "method": req.method,
        "user_id": req.user_id,
        "card_id": req.card_id,
        "pin": req.pin,
        "card_number": req.card_number,
    });
    let outcome = state
        .pg
        .post::<_, PgPayment>(
            "/payments",
            &derive_key("order", &id, "pay"),
            &[(crate::pg::MERCHANT_KEY, &state.merchant_key)],
            &body,
        )
        .await;
    if let Err(e @ (UpstreamError::Unavailable { .. } | UpstreamError::BadResponse { .. })) =
        outcome
    {
        return Err(OrderError::Unavailable(e));
    }
    state
        .db
        .run(move |c| {
            idem::execute_with(c, SCOPE, &key.0, &hash, |c| {
                let current = read_order(c, &id)?;
                if current.status != "PENDING" {
                    // A concurrent retry finished first; report what it recorded.
                    return Ok(Reply::new(StatusCode::OK, &current));
                }
                match outcome {
                    Ok(payment) => {
                        c.execute(
                            "UPDATE orders SET status = 'PAID', payment_id = ?2, approval_no = ?3, updated_ms = ?4 WHERE id = ?1",
                            params![id, payment.id, payment.approval_no, now_ms()],
                        )?;
                        Ok(Reply::new(StatusCode::OK, &read_order(c, &id)?))
                    }
                    Err(UpstreamError::Rejected {
                        status: 402, body, ..
                    }) => {
                        c.execute(
                            "UPDATE orders SET status = 'FAILED', failure_code = ?2, failure_message = ?3, updated_ms = ?4 WHERE id = ?1",
                            params![id, body.code, body.error, now_ms()],
                        )?;
                        Ok(Reply::new(StatusCode::PAYMENT_REQUIRED, &ErrorBody {
                            error: body.error,
                            code: body.code,
                        }))
                    }
                    Err(UpstreamError::Rejected { body, .. }) => Err(OrderError::WrongState {
                        id: id.clone(),
                        status: current.status,
                        hint: if body.code == "duplicate_order" {
                            "the gateway already has a payment for this order under another request"
                        } else {
                            "the gateway refused the request; see the logs"
                        },
                    }),
                    Err(e) => Err(OrderError::Unavailable(e)),
                }
            })
        })
        .await
}

/// Cancel an order: a `PAID` order is refunded through the chain; a `PENDING` order that was
/// never paid is simply cancelled.
#[utoipa::path(post, path = "/orders/{id}/cancel", tag = "orders",
    params(("id" = String, Path, description = "order id"),
           IdemHeader),
    responses(
        (status = 200, description = "cancelled (or already cancelled)", body = Order),
        (status = 400, description = "malformed request", body = ErrorBody),
        (status = 404, description = "no such order", body = ErrorBody),
        (status = 409, description = "order FAILED or payment in progress, or key reused", body = ErrorBody),
        (status = 503, description = "gateway unavailable; retry the same request", body = ErrorBody)))]
pub async fn cancel(
    State(state): State<OrderState>,
    ApiPath(id): ApiPath<String>,
    key: IdemKey,
) -> Result<Reply, OrderError> {
    let hash = request_hash(&id);
    const SCOPE: &str = "cancel";
    let (k, h, i) = (key.0.clone(), hash.clone(), id.clone());
    let order = match state
        .db
        .run(move |c| {
            idem::begin(c, SCOPE, &k, &h, |c| {
                let order = read_order(c, &i)?;
                let pinned: Option<String> = c.query_row(
                    "SELECT pay_request_hash FROM orders WHERE id = ?1",
                    [&i],
                    |r| r.get(0),
                )?;
                match order.status.as_str() {
                    "PAID" | "CANCELLED" => Ok(order),
                    "PENDING" if pinned.is_none() => Ok(order),
                    "PENDING" => Err(OrderError::WrongState {
                        id: order.id,
                        status: order.status,
                        hint: "a payment is in progress; retry pay until it is PAID or FAILED, then cancel",
                    }),
                    _ => Err(OrderError::WrongState {
                        id: order.id,
                        status: order.status,
                        hint: "a failed order has nothing to cancel",
                    }),
                }
            })
        })
        .await?
    {
        Begin::Done(reply) => return Ok(reply),
        Begin::Proceed(order) => order,
    };
    let outcome = match (order.status.as_str(), &order.payment_id) {
        ("PAID", Some(payment)) => match state
            .pg
            .post::<_, serde_json::Value>(
                &format!("/payments/{payment}/cancel"),
                &derive_key("order", &id, "cancel"),
                &[(crate::pg::MERCHANT_KEY, &state.merchant_key)],
                &serde_json::json!({}),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(UpstreamError::Rejected { body, .. }) => Err(OrderError::CancelRefused(body.error)),
            Err(e) => return Err(OrderError::Unavailable(e)),
        },
        _ => Ok(()),
    };
    state
        .db
        .run(move |c| {
            idem::execute(c, SCOPE, &key.0, &hash, StatusCode::OK, |c| {
                outcome?;
                c.execute(
                    "UPDATE orders SET status = 'CANCELLED', updated_ms = ?2
                     WHERE id = ?1 AND (status = 'PAID' OR (status = 'PENDING' AND pay_request_hash IS NULL))",
                    params![id, now_ms()],
                )?;
                Ok(value(&read_order(c, &id)?))
            })
        })
        .await
}

//! The orders service: a customer places orders and watches them move;
//! a back-office system advances them. Built on dsf's public API alone —
//! copy this crate to start a service of your own.
//!
//! | type            | kind   | who                  | body → reply                         |
//! |-----------------|--------|----------------------|--------------------------------------|
//! | `order.place`   | write  | a logged-in user     | `{item, qty}` → `{id, status}`       |
//! | `order.get`     | read   | a logged-in user     | `{id}` → `{id, item, qty, status, owner}` |
//! | `order.list`    | read   | a logged-in user     | `{}` → `{orders: [...]}`, newest first |
//! | `order.advance` | write  | an app key           | `{id}` → `{id, status}`              |
//! | `order.watch`   | stream | a logged-in user     | `{id}` → events `status`, then `{id, status}` |
//!
//! A write runs once however often the client resends it: its SQL joins
//! the transaction that records it (`call.tx`). A change wakes the
//! watches of its order on every node (`call.wake`).

use std::time::Duration;

use app_server::prelude::*;
use app_server::Migration;
use dsf_proto::message;
use serde::{Deserialize, Serialize};

/// The service's schema, in the `orders` namespace of `schema_migrations`.
pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "orders",
    sql: include_str!("../migrations/0001_orders.sql"),
}];

/// Longest item name, in characters.
pub const ITEM_MAX: usize = 100;
/// Most items in one order.
pub const QTY_MAX: u32 = 1000;
/// Most orders `order.list` returns.
pub const LIST_MAX: u32 = 500;
/// How often a watch reads its order even without a wake-up (one lost
/// with a peer link is then seen this late).
pub const WATCH_POLL: Duration = Duration::from_millis(500);

/// `order.place`'s body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewOrder {
    pub item: String,
    pub qty: u32,
}

/// An order named by its id (`order.get`, `order.advance`, `order.watch`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderRef {
    pub id: u64,
}

/// Where an order is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderStatus {
    pub id: u64,
    pub status: String,
}

/// One order, as its owner sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    pub id: u64,
    pub item: String,
    pub qty: u32,
    pub status: String,
    pub owner: String,
}

/// One order of a listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    pub id: u64,
    pub item: String,
    pub qty: u32,
    pub status: String,
}

/// `order.list`'s reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Orders {
    pub orders: Vec<Line>,
}

/// `order.watch`'s event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub status: String,
}

// ANCHOR: messages
message!(
    /// Places an order for the logged-in user.
    pub Place = "order.place", Viewer, write: NewOrder => OrderStatus
);
message!(
    /// One of the caller's orders.
    pub Get = "order.get", Viewer, read: OrderRef => Order
);
message!(
    /// The caller's orders, newest first.
    pub List = "order.list", Viewer, read: Empty => Orders
);
message!(
    /// Moves an order on: placed → shipped → delivered (a back-office call).
    pub Advance = "order.advance", App, write: OrderRef => OrderStatus
);
message!(
    /// The caller's order's status now, then each change; ends once delivered.
    pub Watch = "order.watch", Viewer, stream: OrderRef => OrderStatus, event "status": Status
);
// ANCHOR_END: messages

// ANCHOR: service
/// The orders service, for `app_server::main(|s| s.service(orders::service()))`.
pub fn service() -> Service {
    Service::new("orders")
        .requires("accounts")
        .migrations(MIGRATIONS)
        .unary::<Place>(place)
        .unary::<Get>(get)
        .unary::<List>(list)
        .unary::<Advance>(advance)
        .stream::<Watch>(watch)
}
// ANCHOR_END: service

fn topic(id: u64) -> String {
    format!("order:{id}")
}

// ANCHOR: place
fn place(call: &Call, b: NewOrder) -> Result<OrderStatus> {
    let chars = b.item.chars().count();
    if !(1..=ITEM_MAX).contains(&chars) {
        return Err(Error::BadRequest(format!(
            "item: {chars} characters; give 1 to {ITEM_MAX}"
        )));
    }
    if !(1..=QTY_MAX).contains(&b.qty) {
        return Err(Error::BadRequest(format!(
            "qty: {}; give 1 to {QTY_MAX}",
            b.qty
        )));
    }
    let owner = call.user()?.id;
    let id = call.tx(|tx| {
        tx.exec_drop(
            "INSERT INTO orders (owner, item, qty) VALUES (?, ?, ?)",
            (owner, &b.item, b.qty),
        )?;
        Ok(tx.last_insert_id())
    })?;
    Ok(OrderStatus {
        id,
        status: "placed".into(),
    })
}
// ANCHOR_END: place

fn get(call: &Call, b: OrderRef) -> Result<Order> {
    let user = call.user()?;
    let row: Option<(String, u32, String)> = call.conn(|c| {
        Ok(c.exec_first(
            "SELECT item, qty, status FROM orders WHERE id = ? AND owner = ?",
            (b.id, user.id),
        )?)
    })?;
    let (item, qty, status) = row.ok_or_else(|| not_found(b.id))?;
    Ok(Order {
        id: b.id,
        item,
        qty,
        status,
        owner: user.name.clone(),
    })
}

fn list(call: &Call, _: Empty) -> Result<Orders> {
    let owner = call.user()?.id;
    let rows: Vec<(u64, String, u32, String)> = call.conn(|c| {
        Ok(c.exec(
            "SELECT id, item, qty, status FROM orders WHERE owner = ? ORDER BY id DESC LIMIT ?",
            (owner, LIST_MAX),
        )?)
    })?;
    let orders = rows
        .into_iter()
        .map(|(id, item, qty, status)| Line {
            id,
            item,
            qty,
            status,
        })
        .collect();
    Ok(Orders { orders })
}

fn advance(call: &Call, b: OrderRef) -> Result<OrderStatus> {
    let status = call.tx(|tx| {
        let now: Option<String> =
            tx.exec_first("SELECT status FROM orders WHERE id = ? FOR UPDATE", (b.id,))?;
        let next = match now.as_deref() {
            None => return Err(not_found(b.id).into()),
            Some("placed") => "shipped",
            Some("shipped") => "delivered",
            Some(_) => {
                let e = Error::Conflict(format!("order {} is delivered already", b.id));
                return Err(e.into());
            }
        };
        tx.exec_drop("UPDATE orders SET status = ? WHERE id = ?", (next, b.id))?;
        Ok(next)
    })?;
    call.wake(topic(b.id));
    Ok(OrderStatus {
        id: b.id,
        status: status.into(),
    })
}

// ANCHOR: watch
fn watch(call: &Call, b: OrderRef, stream: Stream<Watch>) -> Result<()> {
    let owner = call.user()?.id;
    let id = b.id;
    let read = move |db: &app_server::Db| -> Result<Option<String>> {
        Ok(db.with_conn_result("order.watch", |c| {
            Ok(c.exec_first(
                "SELECT status FROM orders WHERE id = ? AND owner = ?",
                (id, owner),
            )?)
        })?)
    };
    // Not the caller's (or no such order): refused before the stream opens.
    read(call.db())?.ok_or_else(|| not_found(id))?;
    let db = call.db().clone();
    let mut last = None;
    call.node()
        .follow(topic(id), WATCH_POLL, stream, move |stream| {
            let status = read(&db)?.ok_or_else(|| not_found(id))?;
            if last.as_ref() != Some(&status) {
                let event = Status {
                    status: status.clone(),
                };
                if stream.event(&event).is_err() {
                    return Ok(Step::Wait);
                }
                last = Some(status.clone());
            }
            Ok(match status.as_str() {
                "delivered" => Step::Finish(OrderStatus { id, status }),
                _ => Step::Wait,
            })
        });
    Ok(())
}
// ANCHOR_END: watch

fn not_found(id: u64) -> Error {
    Error::NotFound(format!("no order {id} of yours"))
}

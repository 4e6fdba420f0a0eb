//! `client pins list|drop`: proxy mode's stored routes on a balancer
//! (`lb.pins`, `lb.unpin`), signed with the cluster secret.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use dsf_common::wire::keys;
use dsf_common::wire::Key;
use dsf_proto::lb::{PinPage, PinsBody, UnpinBody, Unpinned, PINS_MAX};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::conn::{Connection, Failure, IntoError, Signer};
use crate::error::{Error, Result};

use super::output::Out;

/// Where the balancer's cluster port is, and the secret it takes.
#[derive(Debug, Args)]
pub struct Target {
    /// The balancer's cluster port (its --cluster-listen).
    #[arg(long, env = "DSF_LB_CLUSTER", default_value = "127.0.0.1:6200")]
    pub cluster: String,
    /// File holding the cluster secret; otherwise DSF_CLUSTER_SECRET is read.
    #[arg(long, value_name = "FILE", env = "DSF_CLUSTER_SECRET_FILE")]
    pub cluster_secret_file: Option<PathBuf>,
}

/// `client pins ...`
#[derive(Debug, Subcommand)]
pub enum PinsCmd {
    /// List stored routes: key, node, idle time (--all for every page).
    #[command(
        after_help = "Example, with `scripts/cluster up`'s exports, from the repository:\n  client pins list --cluster 127.0.0.1:6200 --cluster-secret-file .dsf/cluster.secret"
    )]
    List {
        #[command(flatten)]
        target: Target,
        /// Only the pins to this node.
        #[arg(long)]
        node: Option<String>,
        /// Start after this cursor (the `next` a page printed).
        #[arg(long)]
        after: Option<String>,
        /// Pins per page (at most 1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Every page, not just the first.
        #[arg(long)]
        all: bool,
    },
    /// Drop the pin of one key, or every pin to one node: the next
    /// connection with that key is routed by the ring again.
    #[command(
        after_help = "Example, with `scripts/cluster up`'s exports, from the repository:\n  client pins drop sensor-1 --cluster 127.0.0.1:6200 --cluster-secret-file .dsf/cluster.secret"
    )]
    Drop {
        #[command(flatten)]
        target: Target,
        /// The routing key (an MQTT client id, a client IP for tcp mode).
        key: Option<String>,
        /// Every pin to this node.
        #[arg(long)]
        node: Option<String>,
    },
}

/// TLS to the cluster port, when the balancer speaks it (`--tls-ca`).
pub type Tls = Option<std::sync::Arc<rustls::ClientConfig>>;

pub fn run(cmd: &PinsCmd, timeout: Duration, tls: &Tls, out: &mut Out) -> Result<()> {
    match cmd {
        PinsCmd::List {
            target,
            node,
            after,
            limit,
            all,
        } => {
            if *limit == 0 || *limit > PINS_MAX {
                return Err(Error::Config(format!("--limit: 1 to {PINS_MAX}")));
            }
            let mut body = PinsBody {
                after: after.clone(),
                limit: Some(*limit),
                node: node.clone(),
            };
            let mut rows = Vec::new();
            let mut next;
            loop {
                let page: PinPage = call(target, "lb.pins", &body, timeout, tls)?;
                rows.extend(page.pins);
                next = page.next;
                match &next {
                    Some(n) if *all => body.after = Some(n.clone()),
                    _ => break,
                }
            }
            let v = serde_json::json!({ "pins": rows, "next": next });
            out.pins(&v);
        }
        PinsCmd::Drop { target, key, node } => {
            if key.is_none() && node.is_none() {
                return Err(Error::Config(
                    "name what to drop: a KEY, or --node ID for every pin to that node".into(),
                ));
            }
            let body = UnpinBody {
                key: key.clone(),
                node: node.clone(),
            };
            let r: Unpinned = call(target, "lb.unpin", &body, timeout, tls)?;
            let v = serde_json::to_value(r).expect("a number serialises");
            out.value(&v, &format!("dropped {} pins", r.dropped));
        }
    }
    Ok(())
}

fn call<B: Serialize, R: DeserializeOwned>(
    target: &Target,
    kind: &str,
    body: &B,
    timeout: Duration,
    tls: &Tls,
) -> Result<R> {
    let secret = keys::cluster_secret(target.cluster_secret_file.as_deref())
        .map_err(|e| Error::Config(e.to_string()))?;
    let signer = Signer {
        app: keys::CLUSTER_APP.into(),
        key: Key::new(secret.expose()),
    };
    let addr = &target.cluster;
    let mut conn = Connection::connect_tls(addr, addr, signer, timeout, 1 << 20, tls.as_ref()).map_err(|e| {
        Error::Config(format!(
            "cannot connect to the balancer's cluster port {addr}: {e} (pass --cluster HOST:PORT, its --cluster-listen)"
        ))
    })?;
    let body = serde_json::to_string(body).expect("a body serialises");
    let raw = conn
        .round_trip(kind, &body, None, Instant::now() + timeout)
        .map_err(|f| match f {
            // The balancer's answer to a request signed with another
            // secret is unsigned: say which secret to check.
            Failure::BadReply(reason) => Error::BadReply {
                server: addr.clone(),
                reason: format!(
                    "{kind}: {reason}; is DSF_CLUSTER_SECRET (or --cluster-secret-file) the balancer's cluster secret?"
                ),
            },
            f => f.into_error(kind, addr),
        })?;
    serde_json::from_str(raw.get()).map_err(|e| Error::BadReply {
        server: addr.clone(),
        reason: format!("{kind} reply: {e}"),
    })
}

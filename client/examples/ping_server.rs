//! A minimal dsf server for measuring `client bench` itself: one reactor
//! thread answering `sys.ping`, `gate.check` (never a hit) and `lb.resolve`
//! (always itself) inline, with full admission (signature, replay guard).
//! Whatever `client bench` reports against it is the ceiling of the
//! reactor plus the bench tool, with no application work behind it.
//!
//! ```text
//! DSF_APP_SECRET=s cargo run --release -p dsf-client --example ping_server -- 127.0.0.1:7999
//! DSF_APP_SECRET=s client bench --op ping --target 127.0.0.1:7999 --conns 50 --pipeline 16
//! ```

#![forbid(unsafe_code)]

use std::sync::Arc;

use dsf_common::reactor::{Context, Dispatch, Reactor, ReactorConfig, Service};
use dsf_common::wire::{self, Admission, AppKeys, ReplayGuard};

struct Ping {
    admission: Arc<Admission>,
    me: String,
}

impl Service for Ping {
    fn on_frame(&mut self, payload: &[u8], cx: &mut Context<'_>) -> Dispatch {
        let a = match self.admission.admit(payload) {
            Ok(a) => a,
            Err(refused) => {
                cx.refuse(&refused);
                return Dispatch::Done;
            }
        };
        let r = &a.request;
        let body = match r.kind.as_str() {
            "sys.ping" => "{\"node\":\"ping-server\"}".to_string(),
            "gate.check" => "{\"hit\":false}".to_string(),
            "lb.resolve" => format!(
                "{{\"node\":\"ping-server\",\"addr\":\"{}\",\"view\":1}}",
                self.me
            ),
            other => {
                let e =
                    dsf_common::Error::UnknownType(format!("ping_server does not answer {other}"));
                a.error(&e, cx.out());
                return Dispatch::Done;
            }
        };
        a.ok(&body, cx.out());
        Dispatch::Done
    }
}

fn main() -> std::io::Result<()> {
    let listen = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7999".into());
    let secret = std::env::var(wire::keys::APP_SECRET_ENV).unwrap_or_default();
    if secret.is_empty() {
        eprintln!("set DSF_APP_SECRET (the secret of app `cli`)");
        std::process::exit(2);
    }
    let mut keys = AppKeys::new();
    keys.insert("cli", secret.as_bytes());
    let svc = Ping {
        admission: Arc::new(Admission::new(keys, ReplayGuard::default())),
        me: listen.clone(),
    };
    let addr = listen.parse().map_err(|e| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{listen}: {e}"))
    })?;
    let reactor = Reactor::bind(ReactorConfig::default(), &[addr], svc)?;
    println!("listening on {}", reactor.local_addrs()[0]);
    reactor.run()
}

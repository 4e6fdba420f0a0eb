//! `orders-server`: dsf's accounts and the orders service, with every
//! flag, subcommand and config key of `app-server` (`migrate`,
//! `create-admin`, `--check-config`, TLS, heartbeats, drain, `/metrics`).

fn main() {
    app_server::main(|server| {
        server
            .service(app_server::accounts())
            .service(orders::service())
    });
}

//! `app-server`: every dsf service (accounts, blacklist with gate checks,
//! tasks, messaging) on the framework's command line ([`app_server::main`]).

fn main() {
    app_server::main(|server| {
        server
            .service(app_server::accounts())
            .service(app_server::blacklist())
            .service(app_server::tasks())
            .service(app_server::messaging())
    })
}

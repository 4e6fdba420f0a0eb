//! The command line of every app server binary, `app-server` and a user's
//! alike: [`main`] parses the flags, the `DSF_*` environment and the
//! `--config` file, and runs one of
//!
//! - (no command) or `run`: serve the composed services until SIGTERM or
//!   SIGINT, then drain and exit 0;
//! - `migrate --db URL`: create the database if needed and apply every
//!   composed service's migrations, each in its own namespace;
//! - `create-admin --db URL --name NAME`: the first admin, the password
//!   read from stdin (with the accounts service);
//! - `--check-config`: check the configuration, print it, exit.

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use dsf_common::config::{self, ConfigArgs};
use dsf_sql::password::Cost;
use dsf_sql::Db;

use crate::config::AppConfig;
use crate::server::Server;

/// Application server: serves the message types of the services it is
/// composed of, over MySQL.
///
/// Clients sign with a key from --app-keys. Heartbeats to the collector are
/// signed with this node's own key (--node-key-file, DSF_NODE_KEY), and
/// peer.* frames to the other app servers with the peer secret
/// (DSF_PEER_SECRET, --peer-secret-file); the cluster secret
/// (DSF_CLUSTER_SECRET) stands in for either where they are not used.
/// SIGTERM or SIGINT drains and exits 0.
#[derive(Parser)]
#[command(
    name = "app-server",
    version,
    args_conflicts_with_subcommands = true,
    after_help = "Examples:\n  \
  app-server migrate --db mysql://dsf@127.0.0.1:3306/dsf --db-password-file /etc/dsf/db.password\n  \
  echo \"$ADMIN_PW\" | app-server create-admin --db mysql://dsf@127.0.0.1:3306/dsf --db-password-file /etc/dsf/db.password --name root\n  \
  DSF_PEER_SECRET=… app-server --listen 127.0.0.1:7000 --node-id a1 --node-key-file a1.key \\\n      \
  --db mysql://dsf@127.0.0.1:3306/dsf --db-password-file /etc/dsf/db.password \\\n      \
  --collector 127.0.0.1:6400 --app-keys keys.toml\n\n\
The database password comes from --db-password-file (mode 0600) or DSF_DB_PASSWORD, never a flag:\n\
flags show in `ps`. --check-config shows any password in a URL as ***.\n\n\
Every flag can also be set as DSF_<FLAG> (e.g. DSF_NODE_ID=a1) or as a key of the --config file.\n\
Logs go to stderr; RUST_LOG=debug shows every request."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Serve (the default when no command is given).
    Run(Box<RunArgs>),
    /// Create the database if needed and apply every service's migrations.
    Migrate(DbArgs),
    /// Create an admin user; the password is read from stdin.
    CreateAdmin {
        #[command(flatten)]
        db: DbArgs,
        /// The admin's user name.
        #[arg(long, value_name = "NAME")]
        name: String,
    },
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    files: ConfigArgs,
    #[command(flatten)]
    config: AppConfig,
}

#[derive(Args)]
struct DbArgs {
    /// TOML file of settings; only its `db` and `db_password_file` are used here.
    #[arg(long, value_name = "FILE")]
    config: Option<std::path::PathBuf>,
    /// The database, mysql://USER@HOST:PORT/DB; its password comes from
    /// --db-password-file or DSF_DB_PASSWORD.
    #[arg(long, value_name = "URL")]
    db: Option<dsf_common::config::SecretUrl>,
    /// File (mode 0600) holding the database password.
    #[arg(long, value_name = "FILE")]
    db_password_file: Option<std::path::PathBuf>,
}

/// How long `migrate` and `create-admin` wait for the database.
const ONE_SHOT_DB_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The name this binary was run as (`app-server`, `orders-server`).
fn program() -> String {
    std::env::args()
        .next()
        .and_then(|p| {
            std::path::Path::new(&p)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "app-server".into())
}

fn fail(code: i32, e: impl std::fmt::Display) -> ! {
    eprintln!("{}: {e}", program());
    std::process::exit(code)
}

fn db_config(args: &DbArgs) -> dsf_sql::DbConfig {
    let cli = AppConfig {
        db: args.db.clone(),
        db_password_file: args.db_password_file.clone(),
        workers: Some(1),
        ..AppConfig::default()
    };
    let cfg = config::load(args.config.as_deref(), &cli).unwrap_or_else(|e| fail(2, e));
    let mut db = cfg.db_config().unwrap_or_else(|e| fail(2, e));
    // A one-shot command waits briefly for a database that is starting, not
    // the two minutes a server waits: whoever typed it is watching.
    db.startup_deadline = Some(ONE_SHOT_DB_WAIT);
    db
}

/// An error of a one-shot command, with what to check when the database
/// could not be reached.
fn with_db_hint(e: impl std::fmt::Display) -> String {
    let msg = e.to_string();
    if msg.contains("unavailable") {
        format!("{msg}\n  check --db (DSF_DB) and that the database runs, e.g. `scripts/mariadb start` and `scripts/mariadb url`")
    } else {
        msg
    }
}

fn run(server: Server, args: RunArgs) {
    server.check().unwrap_or_else(|e| fail(2, e));
    let settings = args.files.load_or_exit(&args.config, |c| {
        let s = c.settings()?;
        // What only the composed services can say: a scoped key may name
        // only their types.
        server.check_keys(&s.app_keys)?;
        Ok::<_, crate::Error>(s)
    });
    let signals = dsf_common::signals::Terminate::install();
    let running = server.start(settings).unwrap_or_else(|e| fail(1, e));
    let stop = running.stop_handle();
    if let Err(e) = signals.and_then(|t| t.then(move || stop.trigger())) {
        log::warn!("cannot install signal handlers: {e}");
    }
    match running.wait() {
        Ok(report) => log::info!(
            "{} stopped (draining reported: {}, workers finished: {}, left: {})",
            program(),
            report.reported_draining,
            report.workers_finished,
            report.left
        ),
        Err(e) => fail(1, e),
    }
}

/// The whole command line of an app server composed by `compose`: a
/// user's binary is this one call.
///
/// ```no_run
/// // src/main.rs
/// app_server::main(|server| server.service(app_server::accounts()));
/// ```
pub fn main(compose: impl FnOnce(Server) -> Server) {
    dsf_common::memory::return_large_frees();
    dsf_common::logging::init(dsf_common::logging::DEFAULT_FILTER);
    let server = compose(Server::new());
    let name = program();
    let cmd = Cli::command().name(name.clone()).bin_name(name);
    let mut cmd = config::with_env(cmd, config::ENV_PREFIX);
    let cli = cmd
        .try_get_matches_from_mut(std::env::args_os())
        .and_then(|m| Cli::from_arg_matches(&m).map_err(|e| e.format(&mut cmd)))
        .unwrap_or_else(|e| e.exit());
    match cli.command {
        None => run(server, cli.run),
        Some(Command::Run(args)) => run(server, *args),
        Some(Command::Migrate(args)) => {
            server.check().unwrap_or_else(|e| fail(2, e));
            let reports = crate::admin::migrate(&db_config(&args), &server.migrations())
                .unwrap_or_else(|e| fail(1, with_db_hint(e)));
            for r in reports {
                println!(
                    "{} schema at version {} (applied now: {:?})",
                    r.namespace, r.version, r.applied
                );
            }
        }
        Some(Command::CreateAdmin { db, name }) => {
            if !server.names().contains(&"accounts") {
                fail(2, "create-admin makes a user of the accounts service, which this server does not run");
            }
            let cfg = db_config(&db);
            let password = crate::admin::read_password().unwrap_or_else(|e| fail(2, e));
            let db = Db::connect(&cfg).unwrap_or_else(|e| fail(1, with_db_hint(e)));
            let user = crate::admin::create_admin(&db, &name, &password, Cost::DEFAULT)
                .unwrap_or_else(|e| fail(1, e));
            println!("admin {:?} created (id {})", user.name, user.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_definitions_are_consistent() {
        Cli::command().debug_assert();
    }
}

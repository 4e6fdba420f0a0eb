//! `app-server`: flags, config, signals and the three commands; everything
//! else is in the library.

use clap::{Args, Parser, Subcommand};
use dsf_common::config::{self, ConfigArgs};
use dsf_sql::password::Cost;
use dsf_sql::Db;

use app_server::config::AppConfig;

/// Application server: serves the dsf message types over MySQL.
///
/// Clients sign with a key from --app-keys. Heartbeats to the collector are
/// signed with this node's own key (--node-key-file, DSF_NODE_KEY), and
/// peer.notify to the other app servers with the peer secret
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
    /// Create the database if needed and apply the schema migrations.
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

fn fail(code: i32, e: impl std::fmt::Display) -> ! {
    eprintln!("app-server: {e}");
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

/// How long `migrate` and `create-admin` wait for the database.
const ONE_SHOT_DB_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

fn run(args: RunArgs) {
    let settings = args.files.load_or_exit(&args.config, AppConfig::settings);
    let signals = dsf_common::signals::Terminate::install();
    let running = app_server::start(settings).unwrap_or_else(|e| fail(1, e));
    let stop = running.stop_handle();
    if let Err(e) = signals.and_then(|t| t.then(move || stop.trigger())) {
        log::warn!("cannot install signal handlers: {e}");
    }
    match running.wait() {
        Ok(report) => log::info!(
            "app-server stopped (draining reported: {}, workers finished: {}, left: {})",
            report.reported_draining,
            report.workers_finished,
            report.left
        ),
        Err(e) => fail(1, e),
    }
}

fn main() {
    dsf_common::logging::init(dsf_common::logging::DEFAULT_FILTER);
    let cli: Cli = config::parse();
    match cli.command {
        None => run(cli.run),
        Some(Command::Run(args)) => run(*args),
        Some(Command::Migrate(args)) => {
            let report = app_server::admin::migrate(&db_config(&args))
                .unwrap_or_else(|e| fail(1, with_db_hint(e)));
            println!(
                "schema at version {} (applied now: {:?})",
                report.version, report.applied
            );
        }
        Some(Command::CreateAdmin { db, name }) => {
            let cfg = db_config(&db);
            let password = app_server::admin::read_password().unwrap_or_else(|e| fail(2, e));
            let db = Db::connect(&cfg).unwrap_or_else(|e| fail(1, with_db_hint(e)));
            let user = app_server::admin::create_admin(&db, &name, &password, Cost::DEFAULT)
                .unwrap_or_else(|e| fail(1, e));
            println!("admin {:?} created (id {})", user.name, user.id);
        }
    }
}

//! `collector`: flags, config and signals; everything else is in the library.

#![forbid(unsafe_code)]

use clap::Parser;
use collector::config::CollectorConfig;
use dsf_common::config::{self, ConfigArgs};

/// Membership and load for a dsf cluster: takes app servers' heartbeats,
/// health-checks static backends, evicts the dead, and pushes versioned
/// views to every balancer.
#[derive(Parser)]
#[command(
    name = "collector",
    version,
    after_help = "Examples:\n  \
  # one balancer (started with --cluster-listen 127.0.0.1:6200), app servers heartbeating here,\n  \
  # each under its own key (node-keys.toml: node_id = \"key\", one line per app server):\n  \
  DSF_CLUSTER_SECRET=… collector --lb 127.0.0.1:6200 --app-keys keys.toml --node-keys node-keys.toml\n\n  \
  # two balancers and two servers that send no heartbeats, checked by TCP connect:\n  \
  DSF_CLUSTER_SECRET=… collector --lb 10.0.0.1:6200,10.0.0.2:6200 \\\n      \
  --target a=10.0.0.5:8080 --target b=10.0.0.6:8080,2\n\n  \
  curl -s http://127.0.0.1:9400/metrics      # Prometheus text format\n  \
  client status --collector 127.0.0.1:6400   # the node table\n\n\
Every flag can also be set as DSF_<FLAG> (e.g. DSF_DEAD_AFTER=5s) or as a key of the --config file.\n\
The cluster secret comes from DSF_CLUSTER_SECRET or --cluster-secret-file, never from a flag value.\n\
Logs go to stderr; RUST_LOG=debug shows every heartbeat and push."
)]
struct Cli {
    #[command(flatten)]
    files: ConfigArgs,
    #[command(flatten)]
    config: CollectorConfig,
}

fn main() {
    dsf_common::memory::return_large_frees();
    dsf_common::logging::init(dsf_common::logging::DEFAULT_FILTER);
    let cli: Cli = config::parse();
    let settings = cli
        .files
        .load_or_exit(&cli.config, CollectorConfig::settings);
    if let Err(e) = collector::server::run(settings) {
        eprintln!("collector: {e}");
        std::process::exit(1);
    }
    log::info!("collector stopped");
}

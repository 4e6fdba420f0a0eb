//! `lb-server`: flags, config and signals; everything else is in the library.

use clap::Parser;
use dsf_common::config::{self, ConfigArgs};
use lb_server::config::LbConfig;

/// Consistent-hash balancer: tells each client which server owns its key.
///
/// Clients send `lb.resolve {"key": …}` (signed with their app key) to the
/// client port and connect to the node named in the reply. Members come from
/// --backend flags (standalone, in front of any TCP servers) or from a dsf
/// collector pushing views to the cluster port. In proxy mode
/// (--proxy-listen) clients that cannot speak dsf (MQTT devices, plain TCP)
/// are spliced to a backend by a stored route per device.
#[derive(Parser)]
#[command(
    name = "lb-server",
    version,
    after_help = "Examples:\n  \
  # standalone, three backends, one twice as heavy:\n  \
  DSF_CLUSTER_SECRET=… lb-server --app-keys keys.toml \\\n      \
  --backend a=10.0.0.1:7000 --backend b=10.0.0.2:7000 --backend c=10.0.0.3:7000,2\n\n  \
  # fed by a collector (which runs with --lb 127.0.0.1:6200):\n  \
  DSF_CLUSTER_SECRET=… lb-server --app-keys keys.toml --cluster-listen 127.0.0.1:6200\n\n  \
  # proxy mode: MQTT devices on 1883 spliced to two brokers, routed by client id, pinned:\n  \
  DSF_CLUSTER_SECRET=… lb-server --app-keys keys.toml --backend b1=10.0.0.1:1883 --backend b2=10.0.0.2:1883 \\\n      \
  --proxy-listen 0.0.0.0:1883 --proxy-protocol mqtt [--pins-db mysql://…/pins]\n\n\
Every flag can also be set as DSF_<FLAG> (e.g. DSF_BOUNDED_LOAD=off) or as a key of the --config file.\n\
The cluster secret comes from DSF_CLUSTER_SECRET or --cluster-secret-file, never from a flag value.\n\
Logs go to stderr; RUST_LOG=debug shows every request."
)]
struct Cli {
    #[command(flatten)]
    files: ConfigArgs,
    #[command(flatten)]
    config: LbConfig,
}

fn main() {
    dsf_common::memory::return_large_frees();
    dsf_common::logging::init(dsf_common::logging::DEFAULT_FILTER);
    let cli: Cli = config::parse();
    let settings = cli.files.load_or_exit(&cli.config, LbConfig::settings);
    let signals = dsf_common::signals::Terminate::install();
    let running = match lb_server::server::start(settings) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("lb-server: {e}");
            std::process::exit(1);
        }
    };
    let shutdown = running.shutdown_handle();
    if let Err(e) = signals.and_then(|t| t.then(move || shutdown.trigger())) {
        log::warn!("cannot install signal handlers: {e}");
    }
    if let Err(e) = running.wait() {
        eprintln!("lb-server: {e}");
        std::process::exit(1);
    }
    log::info!("lb-server stopped");
}

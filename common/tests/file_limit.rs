//! The reactor raises RLIMIT_NOFILE to what `max_conns` needs. In a process
//! of its own: it lowers the limit first, which other tests' sockets would
//! trip over.

mod support;

use dsf_common::reactor::ReactorConfig;
use support::*;

#[test]
fn the_file_limit_is_raised_to_what_max_conns_needs() {
    let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
    let low = 256.min(hard);
    rlimit::setrlimit(rlimit::Resource::NOFILE, low, hard).unwrap();
    let want = 3_000u64;
    let cfg = ReactorConfig {
        max_conns: want as usize,
        ..Default::default()
    };
    let server = Server::start(cfg, 1, 4);
    let (now, _) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
    assert!(
        now >= (want + 128).min(hard),
        "soft limit {now} after asking for {want} connections (hard {hard}, was {soft})"
    );
    let mut s = server.connect();
    ping(&mut s, 1);
}

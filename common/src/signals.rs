//! SIGTERM and SIGINT as a shutdown request, for every server binary.

use std::io;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// Runs `f` on a thread named `signals` when the process first gets SIGTERM
/// or SIGINT. A second signal exits at once with status 130, for an
/// operator who does not want to wait for the graceful path.
pub fn on_terminate<F: FnOnce() + Send + 'static>(f: F) -> io::Result<()> {
    let mut signals = Signals::new([SIGTERM, SIGINT])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut f = Some(f);
            for sig in signals.forever() {
                match f.take() {
                    Some(f) => {
                        log::info!("got signal {sig}: shutting down gracefully (send it again to exit at once)");
                        f();
                    }
                    None => {
                        log::warn!("got signal {sig} again: exiting now");
                        std::process::exit(130);
                    }
                }
            }
        })?;
    Ok(())
}

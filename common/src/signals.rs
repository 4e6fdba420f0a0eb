//! SIGTERM and SIGINT as a shutdown request, for every server binary.

use std::io;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// SIGTERM and SIGINT, caught from [`Terminate::install`] on and acted on
/// from [`Terminate::then`]: a binary installs it before it starts its
/// server, so a signal that arrives while the server starts is held until
/// the server can stop gracefully, instead of killing the process.
pub struct Terminate(Signals);

impl Terminate {
    /// Catches SIGTERM and SIGINT from now on.
    pub fn install() -> io::Result<Terminate> {
        Ok(Terminate(Signals::new([SIGTERM, SIGINT])?))
    }

    /// Runs `f` on a thread named `signals` at the first signal (at once if
    /// one came since [`Terminate::install`]). A second signal exits at
    /// once with status 130, for an operator who does not want to wait for
    /// the graceful path.
    pub fn then<F: FnOnce() + Send + 'static>(self, f: F) -> io::Result<()> {
        let mut signals = self.0;
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
}

/// [`Terminate::install`] and [`Terminate::then`] at once.
pub fn on_terminate<F: FnOnce() + Send + 'static>(f: F) -> io::Result<()> {
    Terminate::install()?.then(f)
}

//! Logging set-up every binary shares: `env_logger` to stderr, one line per
//! record with a millisecond UTC timestamp, the level, the thread's name and
//! the module:
//!
//! ```text
//! 2026-11-21T15:04:05.123Z INFO  [reactor] dsf_common::reactor: listening on 127.0.0.1:7000
//! ```
//!
//! `RUST_LOG` (env_logger's syntax, e.g. `info,dsf_common::reactor=debug`)
//! overrides the binary's default filter.

use std::io::Write;
use std::sync::Once;

/// The filter used when `RUST_LOG` is unset and the binary asks for none.
pub const DEFAULT_FILTER: &str = "info";

/// The variable that overrides the default filter.
pub const FILTER_ENV: &str = "RUST_LOG";

/// Installs the logger: `RUST_LOG` if set, else `default_filter` (for
/// example [`DEFAULT_FILTER`]). Safe to call more than once, and from tests
/// running in parallel: the first call wins, later ones do nothing. (If
/// another logger was installed first, that one stays.)
pub fn init(default_filter: &str) {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let _ = builder(default_filter).try_init();
    });
}

/// The logger [`init`] installs, for a binary that wants to adjust it (a
/// different target, say) before calling `try_init` itself.
pub fn builder(default_filter: &str) -> env_logger::Builder {
    let env = env_logger::Env::default().filter_or(FILTER_ENV, default_filter);
    let mut builder = env_logger::Builder::from_env(env);
    builder.format(|buf, record| {
        let thread = std::thread::current();
        writeln!(
            buf,
            "{} {:<5} [{}] {}: {}",
            buf.timestamp_millis(),
            record.level(),
            thread.name().unwrap_or("unnamed"),
            record.target(),
            record.args()
        )
    });
    builder
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_twice_is_harmless() {
        init(DEFAULT_FILTER);
        init("debug");
        log::info!("logging initialised twice");
    }

    #[test]
    fn lines_carry_millisecond_time_level_and_thread_name() {
        // Render one record through the same format into a buffer.
        let out = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let pipe = Capture(out.clone());
        let logger = builder("info")
            .filter_level(log::LevelFilter::Trace)
            .target(env_logger::Target::Pipe(Box::new(pipe)))
            .build();
        std::thread::Builder::new()
            .name("worker-3".into())
            .spawn(move || {
                log::Log::log(
                    &logger,
                    &log::Record::builder()
                        .level(log::Level::Warn)
                        .target("dsf_common::pool")
                        .args(format_args!("queue full"))
                        .build(),
                );
                log::Log::flush(&logger);
            })
            .unwrap()
            .join()
            .unwrap();
        let line = String::from_utf8(out.lock().unwrap().clone()).unwrap();
        // 2026-11-21T15:04:05.123Z WARN  [worker-3] dsf_common::pool: queue full
        let (stamp, rest) = line.split_once(' ').unwrap();
        assert_eq!(stamp.len(), "2026-11-21T15:04:05.123Z".len(), "{line}");
        assert_eq!(&stamp[19..20], ".", "milliseconds: {line}");
        assert_eq!(rest, "WARN  [worker-3] dsf_common::pool: queue full\n");
    }

    struct Capture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl Write for Capture {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}

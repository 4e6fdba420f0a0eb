//! `app-server`: Application server: mio reactor feeding a worker pool, a controller routing message types to handlers over MySQL.
//!
//! Work in progress: see the project's open issues.

#![forbid(unsafe_code)]

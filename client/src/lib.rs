//! `dsf-client`: The dsf SDK and command-line tool.
//!
//! Work in progress: see the project's open issues.

#![forbid(unsafe_code)]

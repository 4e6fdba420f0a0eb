//! `dsf-sql`: The MySQL layer: pool, migrations, one repository per table, error mapping.
//!
//! Work in progress: see the project's open issues.

#![forbid(unsafe_code)]

//! `lb-server`: Consistent-hash balancer (MD5 virtual nodes, weights, bounded load), usable standalone.
//!
//! Work in progress: see the project's open issues.

#![forbid(unsafe_code)]

//! `collector`: Membership and load: heartbeats, health checks, views pushed to every balancer, status and Prometheus metrics.
//!
//! Work in progress: see the project's open issues.

#![forbid(unsafe_code)]

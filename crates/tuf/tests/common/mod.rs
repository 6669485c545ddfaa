//! Shared test support: a repository simulator and an HTTP file server.
#![allow(dead_code)]

pub mod server;
pub mod sim;

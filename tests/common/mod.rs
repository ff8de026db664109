//! The fixtures the integration tests share, one file per kind, so that each test file says
//! only what it tests:
//! - [`process`]: a child process killed when the test ends, signals, memory;
//! - [`wait`]: waiting on a condition with a bounded deadline, never a bare sleep;
//! - [`conductor`]: a conductor binary on 127.0.0.1, and announcing as a member would;
//! - [`swarm`]: sample data, temporary swarms (a file, its `.orch`, a seed folder), members;
//! - [`events`]: reading the `--json` events a member wrote;
//! - [`proxy`]: a rate-limited relay in front of a member;
//! - [`fake_peer`]: an in-process peer that speaks the member-to-member protocol;
//! - [`delay_link`]: a relay that adds a round trip to every connection through it;
//! - [`nginx`]: a real nginx serving a folder, the HTTP origin of the origin tests;
//! - [`bad_http`]: an HTTP server that gets Range requests wrong in a chosen way.
//!
//! Every test file includes this module with `mod common;` and `use common::*;`; each uses a
//! different subset, hence `dead_code` and unused re-exports are allowed here.
#![allow(dead_code, unused_imports)]

pub mod bad_http;
pub mod conductor;
pub mod delay_link;
pub mod events;
pub mod fake_peer;
pub mod nginx;
pub mod process;
pub mod proxy;
pub mod swarm;
pub mod wait;

pub use bad_http::*;
pub use conductor::*;
pub use delay_link::*;
pub use events::*;
pub use fake_peer::*;
pub use nginx::*;
pub use process::*;
pub use proxy::*;
pub use swarm::*;
pub use wait::*;

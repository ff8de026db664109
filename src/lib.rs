//! torrentnchill: get one large file from one machine to many, every byte verified.
//!
//! The library does the work; the three binaries (`composer`, `conductor`, `member`) only parse
//! flags and report. [`orch`] is the metadata file, [`wire`] the protocol, [`hashing`] the
//! parallel file hasher that composer and member share, [`compose`] makes a `.orch`,
//! [`conductor`] is the tracker service and [`member`] the peer, each started as a handle that
//! reports typed events and stops every thread it started; [`secure`] makes a swarm private
//! (its key, the Noise handshake and sealed frames of peer links). Under them: [`net`] (deadlines and
//! socket calls), [`sync`] (locks that do not poison), [`cli`] (what the programs share about
//! talking to people) and [`json`] (their `--json` lines). docs/ARCHITECTURE.md has the map.

pub mod atomic_file;
pub mod cli;
pub mod compose;
pub mod conductor;
pub mod hashing;
pub mod json;
pub mod member;
pub mod net;
pub mod orch;
pub mod secure;
pub mod sync;
pub mod wire;

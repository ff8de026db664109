//! torrentnchill: get one large file from one machine to many, every byte verified.
//!
//! The library does the work; the three binaries (`composer`, `conductor`, `member`) only parse
//! flags and report. [`orch`] is the metadata file, [`wire`] the protocol, [`hashing`] the
//! parallel file hasher that composer and member share, [`conductor`] the tracker service and
//! [`member`] the peer.

pub mod cli;
pub mod compose;
pub mod conductor;
pub mod hashing;
pub mod json;
pub mod member;
pub mod net;
pub mod orch;
pub mod sync;
pub mod wire;

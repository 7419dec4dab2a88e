//! p2pshare: peer-to-peer file sharing on a LAN.
//!
//! A [`tracker`] knows which live peers hold which files; each [`peer`] serves its shared folder
//! over gRPC and downloads from every holder at once, verifying every piece against the file's
//! BLAKE3 content id ([`chunking`]). [`grpc`] is the plumbing both sides share.
//!
//! The public API is what the binaries (`tracker`, `peer`, `swarm-demo`, `p2pshare-bench`) and
//! the integration tests use; everything else is `pub(crate)`. `docs/architecture.md` maps the
//! modules, the data flow of a `get` and of `Register`/`WhoHas`, the invariants and the lock
//! order.

#![warn(missing_docs)]
#![warn(unreachable_pub)]

pub(crate) mod bench;
pub mod chunking;
pub mod cli;
pub mod console;
pub mod grpc;
pub mod human;
pub mod metrics;
pub mod names;
pub mod peer;
pub(crate) mod progress;
pub mod tracker;

#[cfg(test)]
mod testing;

/// Code generated from `proto/` by `build.rs`.
#[allow(missing_docs, clippy::all)]
pub mod pb {
    /// `p2pshare.tracker.v1`: the Tracker service.
    pub mod tracker {
        tonic::include_proto!("p2pshare.tracker.v1");
    }
    /// `p2pshare.peer.v1`: the Peer service.
    pub mod peer {
        tonic::include_proto!("p2pshare.peer.v1");
    }
}

//! btd: a BitTorrent client built as a synchronous, thread-per-peer daemon.
//!
//! The library holds the engine; `src/main.rs` is only the command line around it.
//! See DESIGN.md for which thread owns what and what crosses each channel.

pub mod atomic_file;
pub mod backoff;
pub mod bencode;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod dht;
pub mod engine;
pub mod hex;
pub mod http_server;
pub mod inspect;
pub mod listener;
pub mod lsd;
pub mod magnet;
pub mod metadata_fetch;
pub mod metainfo;
pub mod peer;
pub mod percent;
pub mod pidfile;
pub mod profile;
pub mod ratelimit;
pub mod record;
pub mod relocate;
pub mod remote;
pub mod resume;
pub mod rpc;
pub mod selection;
pub mod session_settings;
pub mod state_writer;
pub mod status;
pub mod storage;
#[cfg(test)]
mod test_dir;
pub mod torrent;
pub mod tracker;
pub mod tracker_server;
pub mod watched;
pub mod wire;

//! btd's integration tests: the `btd` binary as separate processes on loopback, against itself
//! and against real clients (libtorrent, transmission, transmission's web client in headless
//! Chromium) and a real tracker (opentracker).
//! The programs they need are Debian packages that `scripts/test` installs; a test whose program
//! is missing fails and says so.

mod support;

mod bep21;
mod bep47;
mod bep7;
mod btd_tracker;
mod cli;
mod cli_rpc;
mod corpora;
mod create;
mod daemon;
mod daemon_accounting;
mod daemon_magnet;
mod daemon_parking;
mod daemon_queue;
mod daemon_reload;
mod daemon_state;
mod daemon_stop;
mod daemon_tracker;
mod dht;
mod encryption;
mod extension;
mod fake_peer;
mod faults;
mod files;
mod hostile;
mod libtorrent;
mod low_space;
mod lsd;
mod magnet;
mod malformed;
mod pex;
mod rpc;
mod rpc_clients;
mod rpc_diff;
mod rpc_security;
mod rpc_web;
mod swarm;
mod tracker;
mod tracker_refusal;
mod transmission;
mod udp_tracker;
mod watch;
mod web_seed;

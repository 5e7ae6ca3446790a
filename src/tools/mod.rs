//! The everyday tools: `show` and `set`, `wg show` and `wg set` for the
//! tunnels' UAPI sockets in DIR (`--tmpdir`, else [`crate::uapi::default_dir`]).
//!
//! The stock `wg` only looks in `/var/run/wireguard`, which an unprivileged
//! user cannot write, so without these a user's own tunnels could not be
//! inspected without root or a symlink. They speak the same protocol as `wg`
//! (WireGuard's cross-platform UAPI, <https://www.wireguard.com/xplatform/>)
//! and print exactly what `wg` prints, so `wireguard4netns show wg0 dump` can
//! replace `wg show wg0 dump` in a script.
//!
//! In layers, as in `uapi`: [`proto`] parses and writes the protocol text,
//! [`client`] carries it over the socket with timeouts, [`show`] and [`set`]
//! are the commands (argument grammar and output formats).

#![forbid(unsafe_code)]

pub mod client;
pub mod proto;
pub mod set;
pub mod show;

pub use set::{SetArgs, SetError, set};
pub use show::{ShowArgs, ShowError, show};

//! wireguard4netns: give an unprivileged network namespace its network through a
//! userspace WireGuard tunnel.
//!
//! A forked helper joins the target's user and network namespaces, creates a TUN
//! device there and hands its file descriptor back over a unix socketpair. The
//! host side runs gotatun's WireGuard engine on that descriptor; its UDP socket
//! lives in the caller's namespace. See `DESIGN.md` in the shared docs for the
//! order of things and why namespace work happens before any thread exists.

#![deny(unsafe_op_in_unsafe_fn)]

pub mod attach;
pub mod cli;
pub mod command;
pub mod config;
pub mod daemon;
pub mod engine;
pub mod exec;
pub mod fdpass;
pub mod inspector;
pub mod keys;
pub mod lifecycle;
pub mod named;
pub mod netlink;
pub mod netns;
pub mod offload;
pub mod peer;
pub mod publish;
pub mod resolver;
pub mod run;
pub mod sandbox;
pub mod sidecar;
#[cfg(test)]
mod testns;
pub mod tools;
pub mod tun;
pub mod uapi;
pub mod udp;

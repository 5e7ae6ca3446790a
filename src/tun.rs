//! The TUN device: creating it (`/dev/net/tun` + `TUNSETIFF`) and moving IP
//! packets between it and the WireGuard engine.
//!
//! `TUNSETIFF` creates the device in the network namespace of the *calling
//! process*, not of the file, so [`create`] runs in the helper after it has
//! joined the target's namespaces; the descriptor then travels to the host side
//! (see `fdpass`), where [`TunDevice`] keeps using it. The device lives as long as
//! that descriptor: when we exit, the interface disappears with us.
//!
//! We ask for `IFF_TUN | IFF_NO_PI` (bare IP packets, no 4-byte packet
//! information header, as gotatun expects) and `IFF_TUN_EXCL`, so an existing
//! interface of the same name is an error (`EBUSY`) instead of being silently
//! attached to, which would hijack someone else's persistent TUN.
//!
//! [`TunDevice`] implements gotatun's [`IpRecv`]/[`IpSend`]. Both are driven by
//! tokio's `AsyncFd` on the non-blocking descriptor. An error from `IpRecv` is
//! fatal to the engine, so packets the kernel should never hand us (too short to
//! be IP) are dropped here, and only a dead device (`EBADFD` after the interface
//! was deleted) is reported.

use std::ffi::CStr;
use std::fs::OpenOptions;
use std::io;
use std::iter;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;

use gotatun::packet::{Ip, Packet, PacketBufPool};
use gotatun::tun::{IpRecv, IpSend, MtuWatcher};
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

/// Path of the TUN clone device.
pub const TUN_PATH: &str = "/dev/net/tun";

/// Longest interface name the kernel accepts (`IFNAMSIZ` minus the NUL).
pub const IFNAME_MAX: usize = libc::IFNAMSIZ - 1;

/// The largest packet the engine's buffers hold (gotatun's pool buffers are 4 KiB);
/// MTUs above this would truncate packets.
pub const MAX_MTU: u16 = 4096;

/// Errors creating or configuring a TUN device.
#[derive(Debug, thiserror::Error)]
pub enum TunError {
    #[error("invalid interface name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error(
        "{TUN_PATH} does not exist (hint: load the tun module with `modprobe tun`, or create it as root: `mknod {TUN_PATH} c 10 200 && chmod 0666 {TUN_PATH}`)"
    )]
    NoDevice,
    #[error(
        "cannot open {TUN_PATH}: permission denied (hint: most distributions make it mode 0666; as root run `chmod 0666 {TUN_PATH}`)"
    )]
    DeviceNotAccessible,
    #[error("cannot open {TUN_PATH}: {0}")]
    Open(io::Error),
    #[error(
        "{TUN_PATH} is not the TUN device: it refuses TUNSETIFF ({0}) (hint: it must be the character device 10,200; as root: `rm {TUN_PATH} && mknod {TUN_PATH} c 10 200 && chmod 0666 {TUN_PATH}`)"
    )]
    NotTunDevice(io::Error),
    #[error(
        "interface {name} already exists in the target's network namespace; pick another name or delete it (`ip link del {name}` inside)"
    )]
    Exists { name: String },
    #[error(
        "not allowed to create interface {name} in the target's network namespace: {error} (hint: the namespace must be owned by a user namespace you own, e.g. one made by `unshare --user --map-root-user --net`)"
    )]
    NotPermitted { name: String, error: io::Error },
    #[error("cannot create TUN interface {name}: {error}")]
    Create { name: String, error: io::Error },
    #[error("cannot make the TUN descriptor non-blocking: {0}")]
    NonBlocking(io::Error),
}

/// Check an interface name the way the kernel's `dev_valid_name()` does, so a
/// bad name is reported before any namespace is touched.
pub fn validate_ifname(name: &str) -> Result<(), TunError> {
    let reason = if name.is_empty() {
        Some("it is empty")
    } else if name.len() > IFNAME_MAX {
        Some("it is longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("'.' and '..' are not interface names")
    } else if name.contains('/') {
        Some("it contains '/'")
    } else if name.contains(':') {
        Some("it contains ':'")
    } else if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Some("it contains whitespace or control characters")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(TunError::InvalidName {
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// `struct ifreq` as `TUNSETIFF` reads it: the name, then the flags in the union.
#[repr(C)]
struct IfReqFlags {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

nix::ioctl_write_ptr_bad!(tunsetiff, libc::TUNSETIFF, IfReqFlags);

/// Create the TUN interface `name` in the current network namespace and return
/// its (blocking, close-on-exec) descriptor.
pub fn create(name: &str) -> Result<OwnedFd, TunError> {
    validate_ifname(name)?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(TUN_PATH)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ENXIO) | Some(libc::ENODEV) => TunError::NoDevice,
            Some(libc::EACCES) | Some(libc::EPERM) => TunError::DeviceNotAccessible,
            _ => TunError::Open(e),
        })?;

    let mut req = IfReqFlags {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TUN | libc::IFF_NO_PI | libc::IFF_TUN_EXCL) as libc::c_short,
        _pad: [0; 22],
    };
    for (dst, src) in req.name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: `req` is a properly initialised `struct ifreq` prefix (name with a
    // NUL terminator, since `name` is at most IFNAMSIZ-1 bytes, then the flags
    // union member) padded to the kernel's 40-byte `struct ifreq`; the fd is an
    // open /dev/net/tun descriptor that outlives the call.
    let res = unsafe { tunsetiff(file.as_raw_fd(), &req) };
    if let Err(errno) = res {
        return Err(tunsetiff_error(name, errno));
    }
    Ok(OwnedFd::from(file))
}

/// What a failed `TUNSETIFF` means for the user.
fn tunsetiff_error(name: &str, errno: Errno) -> TunError {
    let error = io::Error::from(errno);
    let name = name.to_owned();
    match errno {
        Errno::EBUSY | Errno::EEXIST => TunError::Exists { name },
        Errno::EPERM | Errno::EACCES => TunError::NotPermitted { name, error },
        // Something other than the TUN clone device is at the path (a file, or
        // /dev/null bind-mounted over it).
        Errno::ENOTTY => TunError::NotTunDevice(error),
        _ => TunError::Create { name, error },
    }
}

/// The name the kernel gave the device (read back with `TUNGETIFF`); used in
/// tests and diagnostics.
pub fn name_of(fd: &impl AsFd) -> io::Result<String> {
    nix::ioctl_read_bad!(tungetiff, libc::TUNGETIFF, IfReqFlags);
    let mut req = IfReqFlags {
        name: [0; libc::IFNAMSIZ],
        flags: 0,
        _pad: [0; 22],
    };
    // SAFETY: TUNGETIFF writes a `struct ifreq` (40 bytes, matching `IfReqFlags`)
    // into `req`, which lives across the call; the fd is borrowed for its duration.
    unsafe { tungetiff(fd.as_fd().as_raw_fd(), &mut req) }?;
    let bytes: Vec<u8> = req.name.iter().map(|&c| c as u8).collect();
    let name = CStr::from_bytes_until_nul(&bytes)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "unterminated name"))?;
    Ok(name.to_string_lossy().into_owned())
}

/// The host side of the TUN: gotatun's packet source and sink.
#[derive(Clone)]
pub struct TunDevice {
    inner: Arc<Inner>,
}

struct Inner {
    fd: AsyncFd<OwnedFd>,
    mtu: u16,
    gone: watch::Sender<bool>,
}

impl TunDevice {
    /// Wrap a TUN descriptor (from [`create`], possibly made in another
    /// namespace). Must be called inside a tokio runtime.
    pub fn new(fd: OwnedFd, mtu: u16) -> Result<Self, TunError> {
        let flags = fcntl(&fd, FcntlArg::F_GETFL).map_err(|e| TunError::NonBlocking(e.into()))?;
        let flags = OFlag::from_bits_retain(flags) | OFlag::O_NONBLOCK;
        fcntl(&fd, FcntlArg::F_SETFL(flags)).map_err(|e| TunError::NonBlocking(e.into()))?;
        // SAFETY: an `OwnedFd` is a valid open descriptor whose `as_raw_fd()`
        // never changes, and the `AsyncFd` owns it until it is dropped.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(|e| TunError::NonBlocking(e.into()))?;
        Ok(Self {
            inner: Arc::new(Inner {
                fd,
                mtu,
                gone: watch::Sender::new(false),
            }),
        })
    }

    /// Resolves once the interface has been deleted (reads fail with `EBADFD`).
    pub async fn gone(&self) {
        let mut rx = self.inner.gone.subscribe();
        // An error means the sender is gone, which cannot happen while `self` lives.
        let _ = rx.wait_for(|gone| *gone).await;
    }

    fn check_gone(&self, err: &io::Error) {
        if matches!(
            err.raw_os_error(),
            Some(libc::EBADFD) | Some(libc::ENODEV) | Some(libc::EBADF)
        ) {
            self.inner.gone.send_replace(true);
        }
    }
}

impl IpRecv for TunDevice {
    async fn recv<'a>(
        &'a mut self,
        pool: &mut PacketBufPool,
    ) -> io::Result<impl Iterator<Item = Packet<Ip>> + Send + 'a> {
        loop {
            // Wait for ERROR too: a deleted interface only ever reports EPOLLERR,
            // which plain `readable()` would sleep through forever.
            let mut guard = self
                .inner
                .fd
                .ready(Interest::READABLE | Interest::ERROR)
                .await?;
            let mut packet = pool.get();
            let read = guard.try_io(|fd| Ok(nix::unistd::read(fd, &mut packet)?));
            match read {
                Err(_would_block) => continue,
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => {
                    self.check_gone(&e);
                    return Err(e);
                }
                Ok(Ok(n)) => {
                    packet.truncate(n);
                    match packet.try_into_ip() {
                        Ok(ip) => return Ok(iter::once(ip)),
                        Err(e) => tracing::debug!("dropping a non-IP packet from the TUN: {e}"),
                    }
                }
            }
        }
    }

    fn mtu(&self) -> MtuWatcher {
        MtuWatcher::new(self.inner.mtu)
    }
}

impl IpSend for TunDevice {
    async fn send(&mut self, packet: Packet<Ip>) -> io::Result<()> {
        let bytes = packet.into_bytes();
        loop {
            let mut guard = self.inner.fd.writable().await?;
            match guard.try_io(|fd| Ok(nix::unistd::write(fd, &bytes)?)) {
                Err(_would_block) => continue,
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => {
                    self.check_gone(&e);
                    return Err(e);
                }
                Ok(Ok(_)) => return Ok(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_follow_the_kernel_rules() {
        for good in ["wg0", "tun-1", "a", "fifteen_chars_x"] {
            assert!(validate_ifname(good).is_ok(), "{good}");
        }
        for (bad, why) in [
            ("", "empty"),
            ("sixteen_chars_xx", "longer than 15"),
            ("wg/0", "'/'"),
            ("wg 0", "whitespace"),
            ("wg\t0", "whitespace"),
            ("wg:0", "':'"),
            (".", "'.'"),
            ("..", "'.'"),
        ] {
            let err = validate_ifname(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }

    #[test]
    fn tunsetiff_errors_say_what_to_do() {
        let err = tunsetiff_error("wg0", Errno::ENOTTY).to_string();
        assert!(err.contains("is not the TUN device"), "{err}");
        assert!(err.contains("mknod /dev/net/tun c 10 200"), "{err}");
        let err = tunsetiff_error("wg0", Errno::EBUSY).to_string();
        assert!(err.contains("wg0 already exists"), "{err}");
        // The OS error is in the message, so it must not be the source too:
        // the binary prints the source chain and would repeat it.
        let err = tunsetiff_error("wg0", Errno::EPERM);
        assert!(std::error::Error::source(&err).is_none(), "{err}");
        let os = io::Error::from(Errno::EPERM).to_string();
        assert!(err.to_string().contains(&os), "{err}");
    }

    #[test]
    fn ifreq_has_the_kernel_size() {
        assert_eq!(std::mem::size_of::<IfReqFlags>(), 40);
        assert_eq!(
            std::mem::size_of::<IfReqFlags>(),
            std::mem::size_of::<libc::ifreq>()
        );
    }
}

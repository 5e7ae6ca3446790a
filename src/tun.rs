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
//! Offloads: we also ask for `IFF_VNET_HDR` and enable `TUNSETOFFLOAD` (checksum,
//! TSO4/TSO6, and USO4/USO6 where the kernel has them, Linux 6.2+). Every read
//! and write then starts with a `virtio_net_hdr` ([`VNET_HDR_LEN`] bytes, set
//! with `TUNSETVNETHDRSZ`), a read may return a 64 KiB TCP/UDP super-packet
//! that we split into MTU-sized packets, and a write may carry a super-packet
//! that we coalesced from the engine's decrypted segments. The packet work is
//! in `offload`; this module does the I/O around it. The kernel sets the TUN's
//! features per interface, so the helper does it right after `TUNSETIFF`,
//! inside the namespace; [`TunDevice`] learns from `TUNGETIFF` whether the
//! descriptor it was handed speaks `virtio_net_hdr`, and handles both kinds.
//!
//! [`TunDevice`] implements gotatun's [`IpRecv`]/[`IpSend`], driven by tokio's
//! `AsyncFd` on the non-blocking descriptor. `IpRecv::recv` reads one
//! (super-)packet with a `readv` scattered over buffers from gotatun's pool,
//! laid out for the shape of the last super-packet (headers and segment size,
//! which a flow keeps): each segment's payload lands in its own buffer after
//! room for the headers, so splitting writes only headers and checksums. A
//! frame of another shape is gathered into a reused 64 KiB buffer and split
//! by copying, and its shape is kept for the next read. gotatun's send task
//! hands `IpSend::send_many` whatever it has queued (up to [`WRITE_BATCH`], a
//! method our vendored copy adds); we coalesce that and write each result with
//! one `writev`, on that task, without another queue in between. An error from
//! `IpRecv` is fatal to the engine, so packets the kernel should never hand us
//! (too short to be IP, malformed GSO) are dropped here, and only a dead device
//! (`EBADFD` after the interface was deleted) is reported.

use std::ffi::CStr;
use std::fs::OpenOptions;
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use gotatun::packet::{Ip, Packet, PacketBufPool};
use gotatun::tun::{IpRecv, IpSend, MtuWatcher};
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

use crate::offload::{self, Coalescer, VirtioNetHdr};

pub use crate::offload::VNET_HDR_LEN;

/// Path of the TUN clone device.
pub const TUN_PATH: &str = "/dev/net/tun";

/// Longest interface name the kernel accepts (`IFNAMSIZ` minus the NUL).
pub const IFNAME_MAX: usize = libc::IFNAMSIZ - 1;

/// The largest packet the engine's buffers hold (gotatun's pool buffers are 4 KiB);
/// MTUs above this would truncate packets.
pub const MAX_MTU: u16 = 4096;

/// Offloads we ask for with `TUNSETOFFLOAD`, best first: UDP segmentation
/// needs Linux 6.2, so older kernels get TCP segmentation only, and a kernel
/// refusing both still gets checksum offload (or nothing).
const OFFLOADS: [libc::c_uint; 4] = [
    libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_USO4 | libc::TUN_F_USO6,
    libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6,
    libc::TUN_F_CSUM,
    0,
];

/// Packets `send_many` takes at once, coalesces and writes (a 64 KiB
/// super-packet is ~46 segments of 1420 bytes).
pub const WRITE_BATCH: usize = 64;

/// Size of gotatun's pool buffers, which a read fills first.
const POOL_BUF: usize = 4096;

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
nix::ioctl_read_bad!(tungetiff, libc::TUNGETIFF, IfReqFlags);
nix::ioctl_write_ptr_bad!(tunsetvnethdrsz, libc::TUNSETVNETHDRSZ, libc::c_int);
nix::ioctl_write_int_bad!(tunsetoffload, libc::TUNSETOFFLOAD);

/// Create the TUN interface `name` in the current network namespace and return
/// its (blocking, close-on-exec) descriptor, with `virtio_net_hdr` and the
/// offloads the kernel accepts (see the module docs).
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
        flags: (libc::IFF_TUN | libc::IFF_NO_PI | libc::IFF_TUN_EXCL | libc::IFF_VNET_HDR)
            as libc::c_short,
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
    let fd = OwnedFd::from(file);
    let size = VNET_HDR_LEN as libc::c_int;
    // SAFETY: TUNSETVNETHDRSZ reads one `int` from the pointer, which is valid
    // for the call; the fd is an open TUN descriptor.
    unsafe { tunsetvnethdrsz(fd.as_raw_fd(), &size) }.map_err(|errno| TunError::Create {
        name: name.to_owned(),
        error: errno.into(),
    })?;
    set_offloads(&fd);
    Ok(fd)
}

/// Enable the best set of [`OFFLOADS`] the kernel accepts on a TUN with
/// `IFF_VNET_HDR`, and return it. Offloads only make the data path faster, so a
/// kernel that refuses them all leaves a working TUN.
pub fn set_offloads(fd: &impl AsFd) -> libc::c_uint {
    for flags in OFFLOADS {
        // SAFETY: TUNSETOFFLOAD takes its argument by value (no pointer); the
        // fd is borrowed for the call.
        if unsafe { tunsetoffload(fd.as_fd().as_raw_fd(), flags as libc::c_int) }.is_ok() {
            return flags;
        }
    }
    0
}

/// `TUNGETIFF` on `fd`: the name and flags the kernel gave the device.
fn getiff(fd: &impl AsFd) -> io::Result<IfReqFlags> {
    let mut req = IfReqFlags {
        name: [0; libc::IFNAMSIZ],
        flags: 0,
        _pad: [0; 22],
    };
    // SAFETY: TUNGETIFF writes a `struct ifreq` (40 bytes, matching `IfReqFlags`)
    // into `req`, which lives across the call; the fd is borrowed for its duration.
    unsafe { tungetiff(fd.as_fd().as_raw_fd(), &mut req) }?;
    Ok(req)
}

/// Whether reads and writes on this TUN descriptor carry a `virtio_net_hdr`.
pub fn has_vnet_hdr(fd: &impl AsFd) -> io::Result<bool> {
    let flags = getiff(fd)?.flags as libc::c_int;
    Ok(flags & libc::IFF_VNET_HDR != 0)
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
    let req = getiff(fd)?;
    let bytes: Vec<u8> = req.name.iter().map(|&c| c as u8).collect();
    let name = CStr::from_bytes_until_nul(&bytes)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "unterminated name"))?;
    Ok(name.to_string_lossy().into_owned())
}

/// The host side of the TUN: gotatun's packet source and sink.
///
/// Clones share the descriptor; each clone has its own receive and send
/// buffers (allocated on first use), since gotatun receives on one clone and
/// sends on another.
pub struct TunDevice {
    inner: Arc<Inner>,
    rx: Option<Box<RxBuf>>,
    tx: Option<Box<TxBuf>>,
}

impl Clone for TunDevice {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
            rx: None,
            tx: None,
        }
    }
}

struct Inner {
    fd: AsyncFd<OwnedFd>,
    mtu: u16,
    /// Reads and writes carry a `virtio_net_hdr`.
    vnet: bool,
    /// The kernel takes UDP super-packets (`GSO_UDP_L4`) on writes.
    udp_gro: bool,
    gone: watch::Sender<bool>,
    /// Frames dropped for GSO parameters no kernel TUN produces.
    forged_gso: AtomicU64,
}

/// What `recv` reuses from one call to the next.
struct RxBuf {
    /// Pool buffers a `virtio_net_hdr` read is scattered into, laid out by
    /// `shape`: the segments of a super-packet of that shape land in place.
    /// Those a read fills go out as packets and are replaced before the next.
    lanes: Vec<Packet<[u8]>>,
    shape: Shape,
    /// What a read has beyond the lanes lands here, at its offset in the
    /// frame; a frame that does not fit the shape is gathered here (the lanes'
    /// parts copied in front) and split by copying.
    spill: Box<[u8]>,
    /// The packets the last `recv` returned (drained by the caller): one
    /// read's, at most `offload::MAX_GSO_SEGMENTS`.
    out: Vec<Packet<Ip>>,
}

impl RxBuf {
    fn new() -> Box<Self> {
        Box::new(Self {
            lanes: Vec::with_capacity(offload::MAX_GSO_SEGMENTS),
            shape: Shape::PLAIN,
            spill: vec![0; POOL_BUF + offload::MAX_PACKET].into_boxed_slice(),
            out: Vec::with_capacity(offload::MAX_GSO_SEGMENTS),
        })
    }
}

/// How a `virtio_net_hdr` read is scattered, guessed from the last
/// super-packet (a flow's next one has the same headers and segment size):
/// the first `hdrs + gso_size` bytes into lane 0, each next `gso_size` bytes
/// into the next lane after `hdrs` bytes of room, which is where that
/// segment's payload belongs once its headers are written in front. The
/// kernel's copy thus does the split, and only the headers are copied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Shape {
    hdrs: usize,
    gso_size: usize,
    lanes: usize,
}

impl Shape {
    /// Before any super-packet: a plain packet lands whole in one pool buffer.
    const PLAIN: Shape = Shape {
        hdrs: 0,
        gso_size: POOL_BUF,
        lanes: 1,
    };

    /// The shape of super-packets split as `plan`, with lanes for the largest
    /// one; `PLAIN` if a segment would not fit a pool buffer.
    fn of(plan: &offload::GsoPlan) -> Shape {
        let (hdrs, gso_size) = (plan.hdrs(), plan.gso_size());
        if hdrs + gso_size > POOL_BUF {
            return Shape::PLAIN;
        }
        let lanes = (offload::MAX_PACKET - hdrs)
            .div_ceil(gso_size)
            .clamp(1, offload::MAX_GSO_SEGMENTS);
        Shape {
            hdrs,
            gso_size,
            lanes,
        }
    }

    /// Where in lane `k` its part of the frame goes, and how long it is.
    fn in_lane(&self, k: usize) -> (usize, usize) {
        if k == 0 {
            (0, self.hdrs + self.gso_size)
        } else {
            (self.hdrs, self.gso_size)
        }
    }

    /// Where in the frame lane `k`'s part starts.
    fn in_frame(&self, k: usize) -> usize {
        if k == 0 {
            0
        } else {
            self.hdrs + k * self.gso_size
        }
    }

    /// How many bytes of a frame the lanes hold; the rest goes to the spill.
    fn covers(&self) -> usize {
        self.in_frame(self.lanes)
    }
}

/// What `send_many` reuses from one call to the next.
struct TxBuf {
    batch: Vec<Packet<[u8]>>,
    gro: Coalescer,
    writes: Vec<offload::Write>,
}

impl TxBuf {
    fn new(udp_gro: bool) -> Box<Self> {
        Box::new(Self {
            batch: Vec::with_capacity(WRITE_BATCH),
            gro: Coalescer::new(udp_gro),
            writes: Vec::with_capacity(WRITE_BATCH),
        })
    }
}

impl TunDevice {
    /// Wrap a TUN descriptor (from [`create`], possibly made in another
    /// namespace). Must be called inside a tokio runtime (the descriptor is
    /// registered with its reactor).
    pub fn new(fd: OwnedFd, mtu: u16) -> Result<Self, TunError> {
        // A TUN made without IFF_VNET_HDR (not by `create`) still works, one
        // packet per read and write.
        let vnet = has_vnet_hdr(&fd).unwrap_or(false);
        // Asking again is harmless (the helper already did, inside the
        // namespace; the device owner may do it from anywhere) and tells us
        // whether this kernel does USO, and so takes UDP super-packets too.
        let offloads = if vnet { set_offloads(&fd) } else { 0 };
        let udp_gro = offloads & libc::TUN_F_USO4 != 0;
        let flags = fcntl(&fd, FcntlArg::F_GETFL).map_err(|e| TunError::NonBlocking(e.into()))?;
        let flags = OFlag::from_bits_retain(flags) | OFlag::O_NONBLOCK;
        fcntl(&fd, FcntlArg::F_SETFL(flags)).map_err(|e| TunError::NonBlocking(e.into()))?;
        // SAFETY: an `OwnedFd` is a valid open descriptor whose `as_raw_fd()`
        // never changes, and the `AsyncFd` owns it until it is dropped.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(|e| TunError::NonBlocking(e.into()))?;
        let inner = Arc::new(Inner {
            fd,
            mtu,
            vnet,
            udp_gro,
            gone: watch::Sender::new(false),
            forged_gso: AtomicU64::new(0),
        });
        Ok(Self {
            inner,
            rx: None,
            tx: None,
        })
    }

    /// Has the interface been deleted (seen by a failed read or write)?
    pub fn is_gone(&self) -> bool {
        *self.inner.gone.borrow()
    }

    /// Resolves once the interface has been deleted (reads fail with `EBADFD`).
    pub async fn gone(&self) {
        let mut rx = self.inner.gone.subscribe();
        // An error means the sender is gone, which cannot happen while `self` lives.
        let _ = rx.wait_for(|gone| *gone).await;
    }

    /// How many frames from the TUN were dropped because their GSO parameters
    /// are ones no kernel produces (see [`offload::gso_split`]): someone
    /// inside the namespace wrote their own `virtio_net_hdr`.
    pub fn forged_gso_drops(&self) -> u64 {
        self.inner.forged_gso.load(Ordering::Relaxed)
    }
}

impl Inner {
    /// Log and count a frame `split_read` refused. Forged GSO frames are
    /// counted and reported at the 1st, 2nd, 4th, 8th, … one, so a flood of
    /// them cannot flood the log too.
    fn dropped(&self, e: &offload::OffloadError) {
        if !e.is_forged_gso() {
            tracing::debug!("dropping a packet from the TUN: {e}");
            return;
        }
        let n = self.forged_gso.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_power_of_two() {
            tracing::warn!(
                "dropping a frame from the TUN that no kernel sends ({e}); {n} so far: something inside the namespace writes its own virtio_net_hdr"
            );
        } else {
            tracing::debug!("dropping a frame from the TUN: {e}");
        }
    }

    fn check_gone(&self, err: &io::Error) {
        if is_fatal(err) {
            self.gone.send_replace(true);
        }
    }

    /// One `writev` of a whole packet, waiting while the queue is full.
    async fn write(&self, iov: &[IoSlice<'_>]) -> io::Result<()> {
        loop {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|fd| Ok(nix::sys::uio::writev(fd, iov)?)) {
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

    /// Write one batch: coalesced with `virtio_net_hdr`s, or one packet per
    /// write without. Only an error that kills the device is returned; a
    /// packet the kernel refuses is dropped, as a NIC would.
    async fn write_batch(
        &self,
        batch: &mut [Packet<[u8]>],
        gro: &mut Coalescer,
        writes: &mut Vec<offload::Write>,
    ) -> io::Result<()> {
        if !self.vnet {
            for packet in batch.iter() {
                self.drop_unless_fatal(self.write(&[IoSlice::new(packet)]).await)?;
            }
            return Ok(());
        }
        gro.coalesce_into(batch, writes);
        for w in writes.iter() {
            let hdr = w.hdr.encode();
            let mut iov = [IoSlice::new(&[]); WRITE_BATCH + 1];
            iov[0] = IoSlice::new(&hdr);
            let mut n = 1;
            for part in gro.parts(w, batch) {
                iov[n] = IoSlice::new(part);
                n += 1;
            }
            self.drop_unless_fatal(self.write(&iov[..n]).await)?;
        }
        Ok(())
    }

    fn drop_unless_fatal(&self, result: io::Result<()>) -> io::Result<()> {
        match result {
            Err(e) if is_fatal(&e) => Err(e),
            Err(e) => {
                tracing::debug!("the TUN refused a packet: {e}");
                Ok(())
            }
            Ok(()) => Ok(()),
        }
    }
}

/// Errors after which the TUN is unusable (the interface was deleted).
fn is_fatal(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EBADFD) | Some(libc::ENODEV) | Some(libc::EBADF)
    )
}

impl IpRecv for TunDevice {
    async fn recv<'a>(
        &'a mut self,
        pool: &mut PacketBufPool,
    ) -> io::Result<impl Iterator<Item = Packet<Ip>> + Send + 'a> {
        let inner = &*self.inner;
        let rx = self.rx.get_or_insert_with(RxBuf::new);
        rx.out.clear();
        loop {
            // Wait for ERROR too: a deleted interface only ever reports EPOLLERR,
            // which plain `readable()` would sleep through forever.
            let mut guard = inner.fd.ready(Interest::READABLE | Interest::ERROR).await?;
            if inner.vnet {
                rx.top_up(pool);
            }
            let mut plain = None;
            let mut hdr = [0u8; VNET_HDR_LEN];
            let read = guard.try_io(|fd| {
                if inner.vnet {
                    rx.scatter_read(fd, &mut hdr)
                } else {
                    let packet = plain.get_or_insert_with(|| pool.get());
                    Ok(nix::unistd::read(fd, packet)?)
                }
            });
            let n = match read {
                Err(_would_block) => continue,
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => {
                    inner.check_gone(&e);
                    return Err(e);
                }
                Ok(Ok(n)) => n,
            };
            if let Some(mut packet) = plain {
                packet.truncate(n);
                push_ip(&mut rx.out, packet);
            } else if let Err(e) = split_read(&hdr, n, rx, pool, inner.mtu) {
                inner.dropped(&e);
            }
            if !rx.out.is_empty() {
                return Ok(rx.out.drain(..));
            }
        }
    }

    fn mtu(&self) -> MtuWatcher {
        MtuWatcher::new(self.inner.mtu)
    }
}

impl RxBuf {
    /// Give every lane of the shape a pool buffer.
    fn top_up(&mut self, pool: &PacketBufPool) {
        self.lanes.truncate(self.shape.lanes);
        while self.lanes.len() < self.shape.lanes {
            self.lanes.push(pool.get());
        }
    }

    /// One `readv` of a `virtio_net_hdr` frame: the header into `hdr`, the
    /// frame scattered over the lanes and the spill (see [`Shape`]).
    fn scatter_read(&mut self, fd: impl AsFd, hdr: &mut [u8]) -> io::Result<usize> {
        let shape = self.shape;
        let mut iov: [IoSliceMut; offload::MAX_GSO_SEGMENTS + 2] =
            std::array::from_fn(|_| IoSliceMut::new(&mut []));
        iov[0] = IoSliceMut::new(hdr);
        let n = 1 + self.lanes.len();
        for (k, (slot, lane)) in iov[1..].iter_mut().zip(&mut self.lanes).enumerate() {
            let (at, len) = shape.in_lane(k);
            *slot = IoSliceMut::new(&mut lane[at..at + len]);
        }
        iov[n] = IoSliceMut::new(&mut self.spill[shape.covers()..]);
        Ok(nix::sys::uio::readv(fd, &mut iov[..=n])?)
    }

    /// Copy the lanes' parts of a frame `len` bytes long in front of its rest
    /// in the spill, which then holds the whole frame.
    fn gather(&mut self, len: usize) {
        let shape = self.shape;
        for (k, lane) in self.lanes.iter().enumerate() {
            let from = shape.in_frame(k);
            if from >= len {
                break;
            }
            let (at, max) = shape.in_lane(k);
            let part = max.min(len - from);
            self.spill[from..from + part].copy_from_slice(&lane[at..at + part]);
        }
    }
}

fn push_ip(out: &mut Vec<Packet<Ip>>, packet: Packet<[u8]>) {
    match packet.try_into_ip() {
        Ok(ip) => out.push(ip),
        Err(e) => tracing::debug!("dropping a non-IP packet from the TUN: {e}"),
    }
}

/// Turn one `virtio_net_hdr` read of `n` bytes (header included), scattered
/// over `rx`'s lanes and spill, into IP packets in `rx.out`: in place when it
/// landed as its shape foresaw (a plain packet in lane 0, or a super-packet's
/// segments each in its lane), else gathered and split into buffers from
/// `pool`, and the shape learnt for the next read.
fn split_read(
    hdr: &[u8; VNET_HDR_LEN],
    n: usize,
    rx: &mut RxBuf,
    pool: &PacketBufPool,
    mtu: u16,
) -> Result<(), offload::OffloadError> {
    let hdr = VirtioNetHdr::decode(hdr).ok_or(offload::OffloadError::Truncated)?;
    let len = n
        .checked_sub(VNET_HDR_LEN)
        .ok_or(offload::OffloadError::Truncated)?;
    let mtu = usize::from(mtu);
    let shape = rx.shape;
    let first = shape.in_lane(0).1;
    if hdr.gso() == VirtioNetHdr::GSO_NONE {
        let mut packet = if len <= first {
            std::mem::replace(&mut rx.lanes[0], pool.get())
        } else if len <= POOL_BUF {
            let mut packet = pool.get();
            rx.gather(len);
            packet[..len].copy_from_slice(&rx.spill[..len]);
            packet
        } else {
            // Only with an MTU above what the engine's buffers hold.
            return Err(offload::OffloadError::TooLong);
        };
        packet.truncate(len);
        offload::complete_checksum(&mut packet, &hdr)?;
        push_ip(&mut rx.out, packet);
        return Ok(());
    }
    let head = &rx.lanes[0][..first.min(len)];
    if let Ok(plan) = offload::gso_plan(head, len, &hdr, mtu)
        && plan.hdrs() == shape.hdrs
        && plan.gso_size() == shape.gso_size
        && len <= shape.covers()
    {
        for (i, mut segment) in rx.lanes.drain(..plan.count()).enumerate() {
            segment.truncate(plan.segment_len(i));
            plan.finish(&mut segment, i);
            push_ip(&mut rx.out, segment);
        }
        return Ok(());
    }
    rx.gather(len);
    let whole = &rx.spill[..len];
    let plan = offload::gso_plan(whole, len, &hdr, mtu)?;
    let out = &mut rx.out;
    offload::gso_split(
        whole,
        &hdr,
        mtu,
        |len| {
            let mut p = pool.get();
            if len <= p.len() {
                p.truncate(len);
            } else {
                p.buf_mut().resize(len, 0);
            }
            p
        },
        |segment| push_ip(out, segment),
    )?;
    rx.shape = Shape::of(&plan);
    Ok(())
}

impl TunDevice {
    /// Coalesce and write `packets`. Only an error that kills the device comes
    /// back: a packet the kernel refuses is dropped, as a NIC would.
    async fn flush(&mut self, packets: impl Iterator<Item = Packet<Ip>>) -> io::Result<()> {
        let inner = &*self.inner;
        let tx = self.tx.get_or_insert_with(|| TxBuf::new(inner.udp_gro));
        // A send cancelled half-way (gotatun restarts its tasks when the port
        // or key changes) leaves its batch here: drop it rather than write
        // it again, in front of newer packets.
        tx.batch.clear();
        tx.batch.extend(packets.map(Packet::into_bytes));
        let mut result = Ok(());
        for start in (0..tx.batch.len()).step_by(WRITE_BATCH) {
            let end = (start + WRITE_BATCH).min(tx.batch.len());
            result = inner
                .write_batch(&mut tx.batch[start..end], &mut tx.gro, &mut tx.writes)
                .await;
            if result.is_err() {
                break;
            }
        }
        tx.batch.clear();
        result
    }
}

impl IpSend for TunDevice {
    async fn send(&mut self, packet: Packet<Ip>) -> io::Result<()> {
        self.flush(std::iter::once(packet)).await
    }

    fn max_batch(&self) -> usize {
        WRITE_BATCH
    }

    async fn send_many(&mut self, packets: &mut Vec<Packet<Ip>>) -> io::Result<()> {
        self.flush(packets.drain(..)).await
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

    /// One read of `pkt` (behind `hdr`) laid out over `rx` as `recv`'s
    /// `readv` scatters it (lanes of the current shape, then the spill), and
    /// split: the packets that came out.
    fn read_frame(
        rx: &mut RxBuf,
        pool: &PacketBufPool,
        hdr: &VirtioNetHdr,
        pkt: &[u8],
        mtu: u16,
    ) -> Result<Vec<Vec<u8>>, offload::OffloadError> {
        rx.top_up(pool);
        rx.out.clear();
        let shape = rx.shape;
        let mut at = 0;
        for (k, lane) in rx.lanes.iter_mut().enumerate() {
            let (off, len) = shape.in_lane(k);
            let part = len.min(pkt.len() - at);
            lane[off..off + part].copy_from_slice(&pkt[at..at + part]);
            at += part;
        }
        let rest = pkt.len() - at;
        rx.spill[shape.covers()..shape.covers() + rest].copy_from_slice(&pkt[at..]);
        let r = split_read(&hdr.encode(), VNET_HDR_LEN + pkt.len(), rx, pool, mtu);
        let out = rx.out.drain(..).map(|p| p.into_bytes().to_vec()).collect();
        r.map(|()| out)
    }

    fn tso4(gso_size: u16) -> VirtioNetHdr {
        VirtioNetHdr {
            flags: VirtioNetHdr::F_NEEDS_CSUM,
            gso_type: VirtioNetHdr::GSO_TCPV4,
            hdr_len: 40,
            gso_size,
            csum_start: 20,
            csum_offset: 16,
        }
    }

    /// What `gso_split` makes of `pkt` by copying, the reference.
    fn reference_split(hdr: &VirtioNetHdr, pkt: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        offload::gso_split(pkt, hdr, 1420, |len| vec![0; len], |s| out.push(s)).expect("splits");
        out
    }

    #[test]
    fn split_read_drops_forged_gso_frames_whole() {
        use crate::offload::testing::{Flow, pattern};
        let flow = Flow::v4(1, 2);
        let pkt = flow.tcp(1, 1, 0, 0x10, 500, &[], &pattern(0, 60_000));
        let pool = PacketBufPool::new(4);
        let mut learnt = RxBuf::new();
        // As the kernel cuts it for MTU 1420: 44 segments.
        let segments = read_frame(&mut learnt, &pool, &tso4(1380), &pkt, 1420).expect("splits");
        assert_eq!(segments.len(), 44);
        assert_ne!(learnt.shape, Shape::PLAIN);
        for (gso_size, mtu) in [(1, 1420), (100, 1420), (1381, 1420), (1380, 1400)] {
            // Whether the read was scattered for this flow's frames or not.
            for rx in [&mut RxBuf::new(), &mut learnt] {
                let r = read_frame(rx, &pool, &tso4(gso_size), &pkt, mtu);
                assert!(
                    r.is_err_and(|e| e.is_forged_gso()),
                    "gso_size {gso_size}, MTU {mtu}"
                );
                assert!(rx.out.is_empty(), "nothing of a dropped frame is passed on");
            }
        }
    }

    #[test]
    fn split_read_splits_in_place_once_it_knows_the_shape() {
        use crate::offload::testing::{Flow, pattern, verify};
        let flow = Flow::v4(1, 2);
        let pool = PacketBufPool::new(4);
        let mut rx = RxBuf::new();
        let frame = |seq: u32, len: usize| flow.tcp(1, seq, 0, 0x18, 500, &[], &pattern(3, len));
        // The first super-packet is gathered and split by copying; it teaches
        // the shape, 40 bytes of headers and 1380 of payload per segment.
        let first = frame(1, 60_000);
        let out = read_frame(&mut rx, &pool, &tso4(1380), &first, 1420).expect("splits");
        assert_eq!(out, reference_split(&tso4(1380), &first));
        let lanes = (offload::MAX_PACKET - 40).div_ceil(1380);
        assert_eq!(
            rx.shape,
            Shape {
                hdrs: 40,
                gso_size: 1380,
                lanes
            }
        );
        // The next ones land in place: their segments are the lanes they
        // filled (those are used up), byte for byte what copying makes.
        for len in [60_000, 65_495, 1380 * 3, 1381, 1] {
            let pkt = frame(60_001, len);
            let out = read_frame(&mut rx, &pool, &tso4(1380), &pkt, 1420).expect("splits");
            assert_eq!(out, reference_split(&tso4(1380), &pkt), "{len}");
            assert_eq!(rx.lanes.len(), lanes - out.len(), "{len}: not in place");
            for s in &out {
                verify(s).expect("a valid segment");
            }
        }
        // A plain packet lands whole in the first lane.
        let plain = frame(7, 1000);
        let out = read_frame(&mut rx, &pool, &VirtioNetHdr::default(), &plain, 1420);
        assert_eq!(out.expect("passes"), vec![plain]);
        assert_eq!(rx.lanes.len(), lanes, "the first lane went out, and back");
        // Another segment size: copied, and learnt.
        let pkt = frame(9, 30_000);
        let out = read_frame(&mut rx, &pool, &tso4(1000), &pkt, 1420).expect("splits");
        assert_eq!(out.len(), 30);
        assert_eq!(rx.shape.gso_size, 1000);
        // A plain packet longer than the first lane of a smaller shape is
        // gathered from the lanes it spread over.
        let small = frame(11, 300);
        read_frame(&mut rx, &pool, &tso4(100), &small, 1420).expect("splits");
        assert_eq!(rx.shape.in_lane(0).1, 140);
        let plain = frame(13, 1000);
        let out = read_frame(&mut rx, &pool, &VirtioNetHdr::default(), &plain, 1420);
        assert_eq!(out.expect("passes"), vec![plain]);
    }

    #[test]
    fn ifreq_has_the_kernel_size() {
        assert_eq!(std::mem::size_of::<IfReqFlags>(), 40);
        assert_eq!(
            std::mem::size_of::<IfReqFlags>(),
            std::mem::size_of::<libc::ifreq>()
        );
    }

    // ---- against the kernel: TSO/USO super-packets it makes, GRO writes it
    // must accept -----------------------------------------------------------

    use std::fs::File;
    use std::io::{Read, Write};
    use std::net::{IpAddr, TcpListener, TcpStream, UdpSocket};
    use std::time::{Duration, Instant};

    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use nix::sched::{CloneFlags, unshare};

    use crate::offload::testing::{Flow, pattern, timestamps, verify};
    use crate::testns::{Isolation, Stop, ensure, in_namespace};

    const TIMEOUT: Duration = Duration::from_secs(5);
    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;
    const PSH: u8 = 0x08;

    /// The TUN as the tests drive it: blocking reads with a deadline.
    struct Tun {
        file: File,
        buf: Vec<u8>,
    }

    impl Tun {
        /// The next packet the kernel sends out of the TUN, with its header.
        fn read(&mut self) -> Result<(VirtioNetHdr, Vec<u8>), Stop> {
            let mut fds = [PollFd::new(self.file.as_fd(), PollFlags::POLLIN)];
            let ready = poll(&mut fds, PollTimeout::from(TIMEOUT.as_millis() as u16))
                .map_err(|e| Stop::Fail(format!("poll: {e}")))?;
            ensure(ready == 1, || "no packet from the TUN in time".into())?;
            let n = self.file.read(&mut self.buf)?;
            let hdr = VirtioNetHdr::decode(&self.buf[..n]).ok_or("short read".to_owned())?;
            Ok((hdr, self.buf[VNET_HDR_LEN..n].to_vec()))
        }

        /// The next packet of `flow`'s reverse direction, as IP packets (split
        /// if it was a super-packet, checksum completed if it was partial),
        /// each checked by the reference implementation. Also returns the
        /// header and the super-packet as read.
        #[allow(clippy::type_complexity)] // reason: test helper
        fn read_flow(
            &mut self,
            flow: &Flow,
            proto: u8,
        ) -> Result<(VirtioNetHdr, Vec<u8>, Vec<Vec<u8>>), Stop> {
            let deadline = Instant::now() + TIMEOUT;
            while Instant::now() < deadline {
                let (hdr, mut pkt) = self.read()?;
                let Some((l4, p)) = l4_of(&pkt) else { continue };
                if p != proto
                    || (pkt[0] >> 4 == 6) != flow.src.is_ipv6()
                    || pkt.len() < l4 + 4
                    || pkt[l4..l4 + 2] != flow.dport.to_be_bytes()
                    || pkt[l4 + 2..l4 + 4] != flow.sport.to_be_bytes()
                {
                    continue; // router solicitations, MLD reports, ...
                }
                let segments = if hdr.gso() == VirtioNetHdr::GSO_NONE {
                    let mut single = pkt.clone();
                    offload::complete_checksum(&mut single, &hdr)
                        .map_err(|e| format!("complete_checksum: {e}"))?;
                    vec![single]
                } else {
                    let mut out = Vec::new();
                    // The TUN's default MTU.
                    offload::gso_split(&pkt, &hdr, 1500, |len| vec![0; len], |s| out.push(s))
                        .map_err(|e| format!("gso_split of {hdr:?}: {e}"))?;
                    out
                };
                for (i, s) in segments.iter().enumerate() {
                    verify(s).map_err(|e| format!("segment {i} of {hdr:?}: {e}"))?;
                }
                pkt.truncate(pkt.len());
                return Ok((hdr, pkt, segments));
            }
            Err(Stop::Fail("no packet of the flow in time".into()))
        }

        fn write(&mut self, hdr: &VirtioNetHdr, pkt: &[u8]) -> Result<(), Stop> {
            let mut bytes = hdr.encode().to_vec();
            bytes.extend_from_slice(pkt);
            self.write_raw(&bytes)
        }

        fn write_raw(&mut self, bytes: &[u8]) -> Result<(), Stop> {
            let n = self
                .file
                .write(bytes)
                .map_err(|e| format!("the TUN refused a write of {} bytes: {e}", bytes.len()))?;
            ensure(n == bytes.len(), || format!("short write {n}"))
        }
    }

    fn l4_of(pkt: &[u8]) -> Option<(usize, u8)> {
        match pkt.first()? >> 4 {
            4 if pkt.len() >= 20 => Some((usize::from(pkt[0] & 0xf) * 4, pkt[9])),
            6 if pkt.len() >= 40 => Some((40, pkt[6])),
            _ => None,
        }
    }

    /// The value of TCP option `kind` in the segment whose TCP header is at `l4`.
    fn tcp_option(pkt: &[u8], l4: usize, kind: u8) -> Option<&[u8]> {
        let end = l4 + usize::from(pkt[l4 + 12] >> 4) * 4;
        let mut at = l4 + 20;
        while at < end {
            match pkt[at] {
                0 => return None,
                1 => at += 1,
                k => {
                    let len = usize::from(*pkt.get(at + 1)?);
                    if len < 2 || at + len > end {
                        return None;
                    }
                    if k == kind {
                        return Some(&pkt[at + 2..at + len]);
                    }
                    at += len;
                }
            }
        }
        None
    }

    fn be32(b: &[u8], at: usize) -> u32 {
        u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
    }

    /// With `W4N_CAPTURE` set, print a super-packet's header and IP/TCP/UDP
    /// headers, the material of the fixtures in `offload`'s tests.
    fn capture(what: &str, hdr: &VirtioNetHdr, pkt: &[u8], hdrs: usize) {
        if std::env::var_os("W4N_CAPTURE").is_some() {
            let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
            let _ = writeln!(
                io::stderr(),
                "CAPTURE {what}: vnet {} headers {} payload {}",
                hex(&hdr.encode()),
                hex(&pkt[..hdrs]),
                pkt.len() - hdrs
            );
        }
    }

    /// A TCP connection between the kernel (listening at `flow.dst`) and us,
    /// playing the peer on the TUN by hand: the kernel's TSO super-packets are
    /// split and verified, and our segments go in coalesced.
    fn tcp_both_ways(tun: &mut Tun, flow: Flow) -> Result<(), Stop> {
        let listener = TcpListener::bind((flow.dst, flow.dport))?;
        let v6 = flow.src.is_ipv6();
        let isn: u32 = 0xfff0_0000; // our sequence numbers wrap during the test
        let our_mss: u16 = if v6 { 1340 } else { 1360 };
        let mut syn_opts = vec![2, 4];
        syn_opts.extend_from_slice(&our_mss.to_be_bytes());
        syn_opts.extend_from_slice(&[4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7]);
        tun.write(
            &VirtioNetHdr::default(),
            &flow.tcp(1, isn, 0, SYN, 65535, &syn_opts, &[]),
        )?;
        let (_, synack, _) = tun.read_flow(&flow, 6)?;
        let l4 = if v6 { 40 } else { 20 };
        ensure(synack[l4 + 13] == SYN | ACK, || "no SYN-ACK".into())?;
        let their_isn = be32(&synack, l4 + 4);
        let their_mss = tcp_option(&synack, l4, 2)
            .map(|o| u16::from_be_bytes([o[0], o[1]]))
            .ok_or("no MSS in the SYN-ACK".to_owned())?;
        let mut their_ts = tcp_option(&synack, l4, 8)
            .map(|o| be32(o, 0))
            .ok_or("no timestamps in the SYN-ACK".to_owned())?;
        let ack_to = |id: u16, ack: u32, ecr: u32| {
            flow.tcp(
                id,
                isn.wrapping_add(1),
                ack,
                ACK,
                65535,
                &timestamps(2, ecr),
                &[],
            )
        };
        tun.write(
            &VirtioNetHdr::default(),
            &ack_to(2, their_isn.wrapping_add(1), their_ts),
        )?;
        listener.set_nonblocking(true)?;
        let deadline = Instant::now() + TIMEOUT;
        let stream = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(e) => return Err(format!("accept: {e}").into()),
            }
        };
        stream.set_nonblocking(false)?;

        // Kernel to us: 200 003 bytes, odd on purpose, in TSO super-packets.
        let sent = pattern(3, 200_003);
        let mut writer = stream.try_clone()?;
        let to_send = sent.clone();
        let writing = std::thread::spawn(move || writer.write_all(&to_send));
        let mut got = Vec::new();
        let mut expected = their_isn.wrapping_add(1);
        let (mut supers, mut most) = (0, 0);
        let mut id = 3u16;
        while got.len() < sent.len() {
            let (hdr, pkt, segments) = tun.read_flow(&flow, 6)?;
            if hdr.gso() != VirtioNetHdr::GSO_NONE {
                if supers == 0 {
                    capture(if v6 { "tcp6" } else { "tcp4" }, &hdr, &pkt, l4 + 32);
                }
                supers += 1;
                most = most.max(segments.len());
                ensure(
                    hdr.gso()
                        == if v6 {
                            VirtioNetHdr::GSO_TCPV6
                        } else {
                            VirtioNetHdr::GSO_TCPV4
                        },
                    || format!("GSO type {hdr:?}"),
                )?;
            }
            for s in &segments {
                let hdrs = l4 + usize::from(s[l4 + 12] >> 4) * 4;
                if let Some(o) = tcp_option(s, l4, 8) {
                    their_ts = be32(o, 0);
                }
                if be32(s, l4 + 4) == expected {
                    got.extend_from_slice(&s[hdrs..]);
                    expected = expected.wrapping_add((s.len() - hdrs) as u32);
                }
            }
            id = id.wrapping_add(1);
            tun.write(&VirtioNetHdr::default(), &ack_to(id, expected, their_ts))?;
        }
        writing.join().map_err(|_| "writer panicked".to_owned())??;
        ensure(got == sent, || {
            "the kernel's stream arrived corrupted".into()
        })?;
        ensure(supers > 0 && most > 1, || {
            format!("the kernel sent no TSO super-packets ({supers}, at most {most} segments)")
        })?;

        // Us to the kernel: segments of its MSS, coalesced into super-packets.
        let payload_mss = usize::from(their_mss) - 12;
        let ours = pattern(11, 150_001);
        let mut reader = stream;
        let want = ours.len();
        let reading = std::thread::spawn(move || {
            let mut buf = vec![0; want];
            reader.read_exact(&mut buf).map(|()| buf)
        });
        let mut gro = Coalescer::new(false);
        let mut seq = isn.wrapping_add(1);
        let mut off = 0;
        let mut coalesced = 0;
        while off < ours.len() {
            // 30 segments (~40 KB) per batch, within the kernel's first window.
            let mut batch = Vec::new();
            while batch.len() < 30 && off < ours.len() {
                let n = payload_mss.min(ours.len() - off);
                let last = batch.len() == 29 || off + n == ours.len();
                let flags = if last { ACK | PSH } else { ACK };
                id = id.wrapping_add(1);
                let opts = timestamps(3, their_ts);
                batch.push(flow.tcp(id, seq, expected, flags, 65535, &opts, &ours[off..off + n]));
                seq = seq.wrapping_add(n as u32);
                off += n;
            }
            let writes = gro.coalesce(&mut batch);
            ensure(writes.len() == 1, || {
                format!("{} writes for one batch", writes.len())
            })?;
            if writes[0].segments > 1 {
                coalesced += 1;
            }
            for w in &writes {
                tun.write_raw(&gro.assemble(w, &batch))?;
            }
            // Wait until the kernel acknowledged everything.
            loop {
                let (_, pkt, _) = tun.read_flow(&flow, 6)?;
                if pkt[l4 + 13] & ACK != 0 && be32(&pkt, l4 + 8) == seq {
                    break;
                }
            }
        }
        let received = reading
            .join()
            .map_err(|_| "reader panicked".to_owned())?
            .map_err(|e| format!("reading what we sent: {e}"))?;
        ensure(received == ours, || {
            "our coalesced stream arrived corrupted".into()
        })?;
        ensure(coalesced > 0, || "nothing was coalesced".into())?;
        Ok(())
    }

    /// UDP between a kernel socket at `flow.dst` and us: a plain datagram
    /// (checksum left partial), a `UDP_SEGMENT` send (a USO super-packet where
    /// the TUN has USO), and, with USO, our datagrams coalesced into one write.
    fn udp_both_ways(tun: &mut Tun, flow: Flow, uso: bool) -> Result<(), Stop> {
        let sock = UdpSocket::bind((flow.dst, flow.dport))?;
        sock.connect((flow.src, flow.sport))?;
        sock.set_read_timeout(Some(TIMEOUT))?;
        let v6 = flow.src.is_ipv6();
        let l4 = if v6 { 40 } else { 20 };

        let small = pattern(0, 101);
        sock.send(&small)?;
        let (_, _, segments) = tun.read_flow(&flow, 17)?;
        ensure(
            segments.len() == 1 && segments[0][l4 + 8..] == small[..],
            || "the small datagram arrived wrong".into(),
        )?;

        nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::UdpGsoSegment, &1200)
            .map_err(|e| format!("UDP_SEGMENT: {e}"))?;
        let big = pattern(5, 10_001);
        sock.send(&big)?;
        let mut got = Vec::new();
        let mut supers = 0;
        while got.len() < big.len() {
            let (hdr, pkt, segments) = tun.read_flow(&flow, 17)?;
            if hdr.gso() == VirtioNetHdr::GSO_UDP_L4 {
                capture(if v6 { "udp6" } else { "udp4" }, &hdr, &pkt, l4 + 8);
                supers += 1;
            }
            for s in &segments {
                got.extend_from_slice(&s[l4 + 8..]);
            }
        }
        ensure(got == big, || "the UDP_SEGMENT send arrived wrong".into())?;
        ensure(!uso || supers == 1, || {
            format!("{supers} USO super-packets, expected 1")
        })?;

        let mut datagrams: Vec<Vec<u8>> = (0..9)
            .map(|i| flow.udp(i, &pattern(i as usize * 1200, 1200)))
            .collect();
        datagrams.push(flow.udp(9, &pattern(10_800, 401)));
        let mut gro = Coalescer::new(uso);
        let mut batch = datagrams.clone();
        let writes = gro.coalesce(&mut batch);
        ensure(writes.len() == if uso { 1 } else { 10 }, || {
            format!("{} writes", writes.len())
        })?;
        for w in &writes {
            tun.write_raw(&gro.assemble(w, &batch))?;
        }
        let mut buf = vec![0; 2000];
        for (i, d) in datagrams.iter().enumerate() {
            let n = sock
                .recv(&mut buf)
                .map_err(|e| format!("datagram {i}: {e}"))?;
            ensure(buf[..n] == d[l4 + 8..], || {
                format!("datagram {i} arrived wrong")
            })?;
        }
        Ok(())
    }

    #[test]
    fn kernel_super_packets_split_and_coalesced_writes_accepted() {
        in_namespace(
            "kernel_super_packets_split_and_coalesced_writes_accepted",
            Isolation::OwnNetns,
            || {
                let name = "w4noffload0";
                let fd =
                    create(name).map_err(|e| Stop::Skip(format!("cannot create a TUN: {e}")))?;
                ensure(has_vnet_hdr(&fd)?, || "created without IFF_VNET_HDR".into())?;
                let offloads = set_offloads(&fd);
                ensure(offloads & libc::TUN_F_TSO4 != 0, || {
                    format!("offloads {offloads:#x}")
                })?;
                let uso = offloads & libc::TUN_F_USO4 != 0;
                if !uso {
                    let _ = writeln!(
                        io::stderr(),
                        "NOTE: this kernel has no USO; UDP GRO untested"
                    );
                }
                let addresses = [
                    "10.9.0.1/24".parse().expect("net"),
                    "fd09::1/64".parse().expect("net"),
                ];
                crate::netlink::configure_interface(name, 1420, &addresses, &[], true)
                    .map_err(|e| format!("configure {name}: {e}"))?;
                let mut tun = Tun {
                    file: File::from(fd),
                    buf: vec![0; VNET_HDR_LEN + offload::MAX_PACKET],
                };
                tcp_both_ways(&mut tun, Flow::v4(40000, 5001))?;
                tcp_both_ways(&mut tun, Flow::v6(40001, 5002))?;
                udp_both_ways(&mut tun, Flow::v4(6001, 6000), uso)?;
                udp_both_ways(&mut tun, Flow::v6(6003, 6002), uso)?;
                Ok(())
            },
        );
    }

    /// Runs `f` with the calling thread in the network namespace `ns`, then
    /// back in `back`. Sockets keep the namespace they were made in.
    fn in_netns<T>(ns: &File, back: &File, f: impl FnOnce() -> T) -> Result<T, Stop> {
        nix::sched::setns(ns, CloneFlags::CLONE_NEWNET).map_err(|e| format!("setns: {e}"))?;
        let t = f();
        nix::sched::setns(back, CloneFlags::CLONE_NEWNET).map_err(|e| format!("setns: {e}"))?;
        Ok(t)
    }

    /// This thread's counters of segments and datagrams dropped for a bad checksum.
    fn checksum_errors() -> Result<(u64, u64), Stop> {
        let snmp = std::fs::read_to_string("/proc/thread-self/net/snmp")?;
        let counter = |proto: &str| -> Option<u64> {
            let mut lines = snmp.lines().filter(|l| l.starts_with(proto));
            let names = lines.next()?.split_whitespace();
            let values = lines.next()?.split_whitespace();
            let (_, v) = names.zip(values).find(|(n, _)| *n == "InCsumErrors")?;
            v.parse().ok()
        };
        let tcp = counter("Tcp:").ok_or("no Tcp InCsumErrors".to_owned())?;
        let udp = counter("Udp:").ok_or("no Udp InCsumErrors".to_owned())?;
        Ok((tcp, udp))
    }

    /// Two gotatun devices on our `TunDevice`s, one per network namespace
    /// (their UDP over loopback in B), and real traffic between the
    /// namespaces: 10 MB each way over TCP (IPv4 and IPv6), UDP datagrams of
    /// every size echoed back, and `UDP_SEGMENT` sends. The data must arrive
    /// intact and neither kernel may have dropped a segment for a bad checksum.
    #[test]
    fn tunnel_between_two_namespaces_delivers_tcp_and_udp_intact() {
        in_namespace(
            "tunnel_between_two_namespaces_delivers_tcp_and_udp_intact",
            Isolation::OwnNetns,
            || {
                use gotatun::device::{self, Peer};
                use gotatun::x25519::{PublicKey, StaticSecret};

                let ns_a = File::open("/proc/thread-self/ns/net")?;
                let fd_a =
                    create("w4nA").map_err(|e| Stop::Skip(format!("cannot create a TUN: {e}")))?;
                let net = |s: &str| s.parse().expect("network");
                crate::netlink::configure_interface(
                    "w4nA",
                    1420,
                    &[net("10.77.0.1/24"), net("fd77::1/64")],
                    &[],
                    true,
                )
                .map_err(|e| format!("configure w4nA: {e}"))?;
                unshare(CloneFlags::CLONE_NEWNET)
                    .map_err(|e| Stop::Skip(format!("second netns: {e}")))?;
                let ns_b = File::open("/proc/thread-self/ns/net")?;
                let fd_b = create("w4nB").map_err(|e| format!("create w4nB: {e}"))?;
                crate::netlink::configure_interface(
                    "w4nB",
                    1420,
                    &[net("10.77.0.2/24"), net("fd77::2/64")],
                    &[],
                    true,
                )
                .map_err(|e| format!("configure w4nB: {e}"))?;

                // The runtime's threads start here, in B: the engines' UDP is there.
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()?;
                let (key_a, key_b) = (
                    StaticSecret::random_from_rng(rand_core::OsRng),
                    StaticSecret::random_from_rng(rand_core::OsRng),
                );
                let (pub_a, pub_b) = (PublicKey::from(&key_a), PublicKey::from(&key_b));
                let devices = rt.block_on(async {
                    let a = device::build()
                        .with_default_udp()
                        .with_ip(TunDevice::new(fd_a, 1420).map_err(|e| e.to_string())?)
                        .with_private_key(key_a)
                        .with_listen_port(51901)
                        .with_peers([Peer::new(pub_b)
                            .with_endpoint("127.0.0.1:51902".parse().expect("addr"))
                            .with_allowed_ips([net("10.77.0.2/32"), net("fd77::2/128")])])
                        .build()
                        .await
                        .map_err(|e| format!("device A: {e}"))?;
                    let b = device::build()
                        .with_default_udp()
                        .with_ip(TunDevice::new(fd_b, 1420).map_err(|e| e.to_string())?)
                        .with_private_key(key_b)
                        .with_listen_port(51902)
                        .with_peers([Peer::new(pub_a)
                            .with_endpoint("127.0.0.1:51901".parse().expect("addr"))
                            .with_allowed_ips([net("10.77.0.1/32"), net("fd77::1/128")])])
                        .build()
                        .await
                        .map_err(|e| format!("device B: {e}"))?;
                    Ok::<_, String>((a, b))
                })?;

                for (server, port) in [("10.77.0.1", 7001), ("fd77::1", 7002)] {
                    let addr: IpAddr = server.parse().expect("address");
                    let listener = in_netns(&ns_a, &ns_b, || TcpListener::bind((addr, port)))??;
                    let up = pattern(1, 10_000_000);
                    let down = pattern(2, 10_000_000);
                    let (up2, down2) = (up.clone(), down.clone());
                    let serving = std::thread::spawn(move || -> io::Result<bool> {
                        let (mut s, _) = listener.accept()?;
                        s.set_read_timeout(Some(Duration::from_secs(30)))?;
                        let mut got = vec![0; up2.len()];
                        s.read_exact(&mut got)?;
                        s.write_all(&down2)?;
                        Ok(got == up2)
                    });
                    let mut c = TcpStream::connect_timeout(&(addr, port).into(), TIMEOUT)?;
                    c.set_read_timeout(Some(Duration::from_secs(30)))?;
                    c.write_all(&up)?;
                    let mut got = vec![0; down.len()];
                    c.read_exact(&mut got)?;
                    let upload_ok = serving.join().map_err(|_| "server panicked".to_owned())??;
                    ensure(upload_ok, || format!("TCP to {server}: upload corrupted"))?;
                    ensure(got == down, || {
                        format!("TCP to {server}: download corrupted")
                    })?;
                }

                for (server, port) in [("10.77.0.1", 7003), ("fd77::1", 7004)] {
                    let addr: IpAddr = server.parse().expect("address");
                    let echo = in_netns(&ns_a, &ns_b, || UdpSocket::bind((addr, port)))??;
                    echo.set_read_timeout(Some(Duration::from_millis(500)))?;
                    let echoing = std::thread::spawn(move || {
                        let mut buf = vec![0; 65536];
                        while let Ok((n, from)) = echo.recv_from(&mut buf) {
                            let _ = echo.send_to(&buf[..n], from);
                        }
                    });
                    let c = UdpSocket::bind((
                        if addr.is_ipv6() {
                            "fd77::2"
                        } else {
                            "10.77.0.2"
                        },
                        0,
                    ))?;
                    c.connect((addr, port))?;
                    c.set_read_timeout(Some(Duration::from_secs(2)))?;
                    let max = if addr.is_ipv6() { 1420 - 48 } else { 1420 - 28 };
                    let mut buf = vec![0; 65536];
                    let mut echoed = 0;
                    for len in (1..=max).step_by(7).chain([max]) {
                        let d = pattern(len, len);
                        c.send(&d)?;
                        if let Ok(n) = c.recv(&mut buf) {
                            ensure(buf[..n] == d[..], || {
                                format!("UDP {len} B via {server} came back wrong")
                            })?;
                            echoed += 1;
                        }
                    }
                    ensure(echoed > 150, || {
                        format!("only {echoed} UDP datagrams came back via {server}")
                    })?;
                    // A UDP_SEGMENT send: a USO super-packet on B's TUN, split by us.
                    nix::sys::socket::setsockopt(
                        &c,
                        nix::sys::socket::sockopt::UdpGsoSegment,
                        &1000,
                    )
                    .map_err(|e| format!("UDP_SEGMENT: {e}"))?;
                    let big = pattern(9, 20_500);
                    c.send(&big)?;
                    let mut back = Vec::new();
                    while back.len() < big.len() {
                        let n = c
                            .recv(&mut buf)
                            .map_err(|e| format!("USO echo via {server}: {e}"))?;
                        back.extend_from_slice(&buf[..n]);
                    }
                    ensure(back == big, || {
                        format!("UDP_SEGMENT send via {server} came back wrong")
                    })?;
                    drop(c);
                    echoing.join().map_err(|_| "echo panicked".to_owned())?;
                }

                let errors_b = checksum_errors()?;
                let errors_a = in_netns(&ns_a, &ns_b, checksum_errors)??;
                ensure(errors_a == (0, 0) && errors_b == (0, 0), || {
                    format!("checksum errors (TCP, UDP): A {errors_a:?}, B {errors_b:?}")
                })?;
                drop(devices);
                Ok(())
            },
        );
    }
}

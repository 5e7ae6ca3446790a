//! Synchronous rtnetlink (`NETLINK_ROUTE`) inside the target network namespace:
//! MTU, link up, addresses and routes of the TUN device.
//!
//! # Mechanism
//! A netlink socket belongs to the network namespace of the process that
//! called `socket()`; a later `setns` does not move it. So the helper opens
//! [`Netlink`] only after it has joined the target's namespaces, and every
//! request then acts on that namespace.
//!
//! The helper is short-lived, single-threaded and forked before any runtime
//! exists (`setns(CLONE_NEWUSER)` refuses multi-threaded callers), so this
//! module uses a plain blocking socket instead of an async rtnetlink stack: a
//! handful of request/reply round trips need no executor. rtnetlink handles a
//! request in the sender's `sendmsg` call, so the reply is already queued when
//! `send` returns; the receive timeout only keeps a broken kernel from hanging
//! the helper.
//!
//! Each request carries `NLM_F_REQUEST | NLM_F_ACK` and a fresh sequence
//! number. The kernel answers with zero or more messages, then either an
//! `NLMSG_ERROR` whose code is 0 (the ACK) or `-errno`, or, for dumps, an
//! `NLMSG_DONE` (dumps are never ACKed, see `netlink_dump_start`). Messages
//! with another sequence number are left-overs of an earlier, aborted exchange
//! and are skipped. `NETLINK_EXT_ACK` makes the kernel add its own explanation
//! ("Device for nexthop is not up") to errors; `NETLINK_CAP_ACK` keeps it from
//! echoing our whole request back. The socket is connected to the kernel
//! (port 0), so no other process in the namespace can inject replies.
//!
//! # Order of things and kernel quirks
//! [`configure_interface`] sets the MTU first: IPv6 needs at least 1280 bytes,
//! below that the kernel drops the device's IPv6 state and refuses IPv6
//! addresses with `EINVAL` (`ipv6_add_dev`). Addresses go on while the link is
//! still down; routes only after it is up, because `fib_check_nh` and
//! `fib6_nh_init` refuse a nexthop device that is down with `ENETDOWN`. `lo`
//! comes up too: a fresh namespace has it down, so even 127.0.0.1 would be
//! unreachable.
//!
//! IPv6 addresses are added with `IFA_F_NODAD`. Otherwise they start
//! tentative until duplicate address detection finishes (about a second), and
//! during that time `bind()` to them fails with `EADDRNOTAVAIL` and the kernel
//! does not use them as a source. A TUN is `IFF_NOARP`, which already makes
//! the kernel skip DAD (`addrconf_dad_begin`), but `NODAD` states the intent
//! and holds for any link type. With `disable_ipv6 = 1` on the link the kernel
//! refuses IPv6 addresses and routes with `EACCES`; the error says so.
//!
//! Addresses and routes are created with `NLM_F_CREATE | NLM_F_EXCL`, as
//! `ip addr add` and `ip route add` do, so `EEXIST` really means "already
//! there" and is accepted, which makes the calls idempotent. This matters for
//! IPv4: the address 10.0.0.2/24 brings a kernel prefix route 10.0.0.0/24 with
//! the same priority (0) as ours, so adding AllowedIPs 10.0.0.0/24 answers
//! `EEXIST`. (For IPv6 the prefix route has metric 256 and ours gets the
//! default 1024, so both exist.) When the existing route goes through another
//! interface, though, traffic would not reach the tunnel, so that is an error
//! ([`NetlinkError::RouteConflict`]) rather than a silent success.

#![cfg_attr(not(test), forbid(unsafe_code))]

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_EXCL, NLM_F_REQUEST, NLMSG_NOOP,
    NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage,
};
use netlink_packet_route::link::{
    AfSpecInet6, AfSpecUnspec, LinkAttribute, LinkFlags, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use nix::sys::socket::{setsockopt, sockopt::ReceiveTimeout};
use nix::sys::time::{TimeVal, TimeValLike};

/// How long to wait for the kernel's answer. rtnetlink answers within the
/// `send` call, so this only bounds a kernel that never answers.
const RECV_TIMEOUT_SECS: i64 = 5;
/// How often to restart a dump that the kernel flagged `NLM_F_DUMP_INTR`
/// (the table changed while it was being dumped).
const DUMP_ATTEMPTS: usize = 3;
/// `IPV6_MIN_MTU`: below this the kernel removes IPv6 from a device.
const IPV6_MIN_MTU: u32 = 1280;
/// `IFNAMSIZ` including the terminating NUL.
const IFNAMSIZ: usize = 16;
/// `sizeof(struct nlmsghdr)`.
const NLMSG_HDRLEN: usize = 16;
/// `NLMSG_ERROR` flag (`include/uapi/linux/netlink.h`): the echoed request
/// is only its header.
const NLM_F_CAPPED: u16 = 0x100;
/// `NLMSG_ERROR` / `NLMSG_DONE` flag: extended-ACK attributes follow.
const NLM_F_ACK_TLVS: u16 = 0x200;
/// `NLMSGERR_ATTR_MSG`: the kernel's error text in an extended ACK.
const NLMSGERR_ATTR_MSG: u16 = 1;
/// `NLA_TYPE_MASK`: attribute type without the nested/byte-order bits.
const NLA_TYPE_MASK: u16 = 0x3fff;

/// What a request was trying to do; names the action and the object in
/// error messages (`cannot set MTU 1420 on wg0: …`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Operation {
    /// `RTM_GETLINK` by name.
    LookUpLink { name: String },
    /// `RTM_GETLINK` by index.
    ReadLink { link: String },
    /// `RTM_SETLINK` with `IFF_UP`.
    SetUp { link: String },
    /// `RTM_SETLINK` with `IFLA_MTU`.
    SetMtu { link: String, mtu: u32 },
    /// `RTM_NEWADDR`.
    AddAddress { link: String, address: IpNetwork },
    /// `RTM_NEWROUTE`.
    AddRoute {
        link: String,
        destination: IpNetwork,
    },
    /// `RTM_GETADDR` dump.
    ListAddresses { link: String },
    /// `RTM_GETROUTE` dump.
    ListRoutes { link: String },
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::LookUpLink { name } => write!(f, "look up interface {name}"),
            Self::ReadLink { link } => write!(f, "read the settings of {link}"),
            Self::SetUp { link } => write!(f, "bring {link} up"),
            Self::SetMtu { link, mtu } => write!(f, "set MTU {mtu} on {link}"),
            Self::AddAddress { link, address } => write!(f, "add address {address} to {link}"),
            Self::AddRoute { link, destination } => {
                write!(f, "add route {destination} dev {link}")
            }
            Self::ListAddresses { link } => write!(f, "list the addresses of {link}"),
            Self::ListRoutes { link } => write!(f, "list the routes of {link}"),
        }
    }
}

/// A likely cause of a kernel error, worked out from the errno and the state
/// of the link when the request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Hint {
    /// `EPERM`: no `CAP_NET_ADMIN` over the namespace.
    NotPrivileged,
    /// `net.ipv6.conf.LINK.disable_ipv6` is 1.
    Ipv6Disabled { link: String },
    /// The link's MTU is below 1280, so it has no IPv6.
    Ipv6MtuTooSmall { link: String, mtu: u32 },
    /// `EAFNOSUPPORT`: the kernel runs without IPv6.
    Ipv6Unsupported,
    /// `ENETDOWN` on a route: the link is still down.
    LinkDown { link: String },
}

impl fmt::Display for Hint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotPrivileged => f.write_str(
                "the helper is not privileged in that network namespace: \
                 is it owned by a user namespace you own?",
            ),
            Self::Ipv6Disabled { link } => write!(
                f,
                "IPv6 is disabled on {link} (net.ipv6.conf.{link}.disable_ipv6 = 1): \
                 enable it in the namespace or leave IPv6 out of the configuration"
            ),
            Self::Ipv6MtuTooSmall { link, mtu } => write!(
                f,
                "IPv6 needs an MTU of at least {IPV6_MIN_MTU} and {link} has {mtu}: \
                 raise the MTU or leave IPv6 out of the configuration"
            ),
            Self::Ipv6Unsupported => {
                f.write_str("this kernel has no IPv6 (booted with ipv6.disable=1?)")
            }
            Self::LinkDown { link } => {
                write!(f, "{link} is down; routes can only be added once it is up")
            }
        }
    }
}

/// Everything that can go wrong here. Messages name the action and the
/// object; kernel errors keep their errno as an [`io::Error`] source.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetlinkError {
    #[error("cannot open a netlink route socket: {0}")]
    Socket(#[source] io::Error),
    #[error(
        "invalid interface name {0:?}: it must be 1 to 15 bytes, not \".\" or \"..\", \
         without '/', ':' or whitespace"
    )]
    InvalidName(String),
    #[error("no network interface named {0} in this network namespace")]
    NoSuchLink(String),
    /// The kernel refused the request.
    #[error("cannot {op}: {source}{}", suffix(.kernel_message.as_deref(), .hint.as_ref()))]
    Kernel {
        op: Operation,
        #[source]
        source: io::Error,
        /// The kernel's own explanation (extended ACK), when it gave one.
        kernel_message: Option<String>,
        hint: Option<Hint>,
    },
    /// Sending or receiving on the socket failed (or the kernel did not answer).
    #[error("cannot {op}: netlink socket error: {source}")]
    Transport {
        op: Operation,
        #[source]
        source: io::Error,
    },
    /// The kernel's answer could not be understood.
    #[error("cannot {op}: unexpected netlink reply: {reason}")]
    Malformed { op: Operation, reason: String },
    /// The namespace already routes the destination through another link.
    #[error(
        "cannot {op}: the namespace already routes {destination} through {other} \
         (hint: delete that route first or leave {destination} out of AllowedIPs)"
    )]
    RouteConflict {
        op: Operation,
        destination: IpNetwork,
        other: String,
    },
}

impl NetlinkError {
    /// The errno behind this error, if the kernel reported one.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Self::Socket(source) | Self::Kernel { source, .. } | Self::Transport { source, .. } => {
                source.raw_os_error()
            }
            Self::NoSuchLink(_) => Some(libc::ENODEV),
            Self::RouteConflict { .. } => Some(libc::EEXIST),
            Self::InvalidName(_) | Self::Malformed { .. } => None,
        }
    }
}

/// Formats the optional tail of a kernel error: its own text, then our hint.
fn suffix(kernel_message: Option<&str>, hint: Option<&Hint>) -> String {
    let mut out = String::new();
    if let Some(message) = kernel_message {
        out.push_str(&format!(" (kernel: {message})"));
    }
    if let Some(hint) = hint {
        out.push_str(&format!(" (hint: {hint})"));
    }
    out
}

/// What went wrong in one exchange, before the public method knows which
/// operation to blame.
#[derive(Debug)]
enum Failure {
    Kernel { errno: i32, message: Option<String> },
    Transport(io::Error),
    Malformed(String),
    DumpInterrupted,
}

impl Failure {
    fn errno(&self) -> Option<i32> {
        match self {
            Self::Kernel { errno, .. } => Some(*errno),
            _ => None,
        }
    }

    fn into_error(self, op: Operation, hint: Option<Hint>) -> NetlinkError {
        match self {
            Self::Kernel { errno, message } => {
                let hint = hint.or_else(|| generic_hint(errno, &op));
                NetlinkError::Kernel {
                    op,
                    source: io::Error::from_raw_os_error(errno),
                    kernel_message: message,
                    hint,
                }
            }
            Self::Transport(source) => NetlinkError::Transport { op, source },
            Self::Malformed(reason) => NetlinkError::Malformed { op, reason },
            Self::DumpInterrupted => NetlinkError::Malformed {
                op,
                reason: format!(
                    "the kernel interrupted the dump {DUMP_ATTEMPTS} times \
                     (the table kept changing)"
                ),
            },
        }
    }
}

/// Hints that follow from the errno alone.
fn generic_hint(errno: i32, op: &Operation) -> Option<Hint> {
    match (errno, op) {
        (libc::EPERM, _) => Some(Hint::NotPrivileged),
        (libc::EAFNOSUPPORT, _) => Some(Hint::Ipv6Unsupported),
        (libc::ENETDOWN, Operation::AddRoute { link, .. }) => {
            Some(Hint::LinkDown { link: link.clone() })
        }
        _ => None,
    }
}

/// One address as the kernel lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AddressEntry {
    network: IpNetwork,
    /// `IFA_F_*`, from `IFA_FLAGS` when present (it has the bits above 8).
    flags: u32,
}

/// One main-table unicast route as the kernel lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RouteEntry {
    destination: IpNetwork,
    /// Output interfaces: `RTA_OIF` and those of `RTA_MULTIPATH` nexthops.
    interfaces: Vec<u32>,
}

/// A blocking rtnetlink socket in the network namespace that was current
/// when it was opened.
pub struct Netlink {
    socket: Socket,
    sequence: u32,
    /// Interface names we already know, so error messages need no lookup.
    names: Vec<(u32, String)>,
    buffer: Vec<u8>,
}

impl fmt::Debug for Netlink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Netlink")
            .field("sequence", &self.sequence)
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

impl Netlink {
    /// Opens a `NETLINK_ROUTE` socket in the current network namespace.
    pub fn open() -> Result<Self, NetlinkError> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(NetlinkError::Socket)?;
        socket.bind_auto().map_err(NetlinkError::Socket)?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(NetlinkError::Socket)?;
        // Best effort: without these (before Linux 4.12 / 4.3) errors carry
        // only the errno, and NLMSG_ERROR echoes the whole request.
        let _ = socket.set_ext_ack(true);
        let _ = socket.set_cap_ack(true);
        setsockopt(
            &socket,
            ReceiveTimeout,
            &TimeVal::seconds(RECV_TIMEOUT_SECS),
        )
        .map_err(|errno| NetlinkError::Socket(errno.into()))?;
        Ok(Self {
            socket,
            sequence: 0,
            names: Vec::new(),
            buffer: Vec::with_capacity(32 * 1024),
        })
    }

    /// The index of the interface called `name` (`RTM_GETLINK` by
    /// `IFLA_IFNAME`); [`NetlinkError::NoSuchLink`] if there is none.
    pub fn link_index(&mut self, name: &str) -> Result<u32, NetlinkError> {
        check_name(name)?;
        let op = || Operation::LookUpLink {
            name: name.to_owned(),
        };
        let mut request = LinkMessage::default();
        request
            .attributes
            .push(LinkAttribute::IfName(name.to_owned()));
        let replies = match self.exchange(RouteNetlinkMessage::GetLink(request), 0) {
            Err(Failure::Kernel {
                errno: libc::ENODEV,
                ..
            }) => return Err(NetlinkError::NoSuchLink(name.to_owned())),
            other => other.map_err(|failure| failure.into_error(op(), None))?,
        };
        let link = only_link(replies).map_err(|failure| failure.into_error(op(), None))?;
        let index = link.header.index;
        self.remember(index, name);
        Ok(index)
    }

    /// Whether an interface called `name` exists.
    pub fn link_exists(&mut self, name: &str) -> Result<bool, NetlinkError> {
        match self.link_index(name) {
            Ok(_) => Ok(true),
            Err(NetlinkError::NoSuchLink(_)) => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Sets `IFF_UP` on the link (`ip link set … up`).
    pub fn set_up(&mut self, index: u32) -> Result<(), NetlinkError> {
        let mut request = LinkMessage::default();
        request.header.index = index;
        request.header.flags = LinkFlags::Up;
        request.header.change_mask = LinkFlags::Up;
        self.exchange(RouteNetlinkMessage::SetLink(request), 0)
            .map(drop)
            .map_err(|failure| {
                let link = self.label(index);
                failure.into_error(Operation::SetUp { link }, None)
            })
    }

    /// Sets the link's MTU.
    pub fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<(), NetlinkError> {
        let mut request = LinkMessage::default();
        request.header.index = index;
        request.attributes.push(LinkAttribute::Mtu(mtu));
        self.exchange(RouteNetlinkMessage::SetLink(request), 0)
            .map(drop)
            .map_err(|failure| {
                let link = self.label(index);
                failure.into_error(Operation::SetMtu { link, mtu }, None)
            })
    }

    /// The link's current MTU.
    pub fn mtu(&mut self, index: u32) -> Result<u32, NetlinkError> {
        let link = self.read_link(index)?;
        link.attributes
            .iter()
            .find_map(|attribute| match attribute {
                LinkAttribute::Mtu(mtu) => Some(*mtu),
                _ => None,
            })
            .ok_or_else(|| {
                Failure::Malformed("the link has no IFLA_MTU".into()).into_error(
                    Operation::ReadLink {
                        link: self.label(index),
                    },
                    None,
                )
            })
    }

    /// Adds an address to the link. IPv4 gets `IFA_LOCAL` and `IFA_ADDRESS`
    /// (on a point-to-point link `IFA_ADDRESS` is the peer; the same value
    /// gives the usual prefix route); IPv6 gets `IFA_F_NODAD` so it is usable
    /// at once. An address that is already there is fine.
    pub fn add_address(&mut self, index: u32, address: IpNetwork) -> Result<(), NetlinkError> {
        let mut request = AddressMessage::default();
        request.header.family = family(address);
        request.header.prefix_len = address.prefix();
        request.header.index = index;
        match address.ip() {
            IpAddr::V4(ip) => {
                request
                    .attributes
                    .push(AddressAttribute::Local(IpAddr::V4(ip)));
                request
                    .attributes
                    .push(AddressAttribute::Address(IpAddr::V4(ip)));
            }
            IpAddr::V6(ip) => {
                // The header has room for the low 8 flag bits; IFA_FLAGS is
                // the full set and wins where the kernel knows it.
                request.header.flags = AddressHeaderFlags::Nodad;
                request
                    .attributes
                    .push(AddressAttribute::Address(IpAddr::V6(ip)));
                request
                    .attributes
                    .push(AddressAttribute::Flags(AddressFlags::Nodad));
            }
        }
        match self.exchange(
            RouteNetlinkMessage::NewAddress(request),
            NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Ok(_) => Ok(()),
            Err(failure) if failure.errno() == Some(libc::EEXIST) => Ok(()),
            Err(failure) => {
                let link = self.label(index);
                let hint = match address {
                    IpNetwork::V6(_) => self.ipv6_hint(index, &link),
                    IpNetwork::V4(_) => None,
                };
                Err(failure.into_error(Operation::AddAddress { link, address }, hint))
            }
        }
    }

    /// Adds a device route to `destination` (normalised to its network
    /// address; a /0 is the default route) through the link: table main,
    /// scope link, protocol static. The link must be up. A route that is
    /// already there through this link is fine.
    pub fn add_route(&mut self, index: u32, destination: IpNetwork) -> Result<(), NetlinkError> {
        let destination = normalise(destination);
        let mut request = RouteMessage::default();
        request.header.address_family = family(destination);
        request.header.destination_prefix_length = destination.prefix();
        request.header.table = RouteHeader::RT_TABLE_MAIN;
        request.header.protocol = RouteProtocol::Static;
        request.header.scope = RouteScope::Link;
        request.header.kind = RouteType::Unicast;
        // iproute2 leaves RTA_DST out for "default"; so do we.
        if destination.prefix() > 0 {
            request
                .attributes
                .push(RouteAttribute::Destination(RouteAddress::from(
                    destination.network(),
                )));
        }
        request.attributes.push(RouteAttribute::Oif(index));
        let failure = match self.exchange(
            RouteNetlinkMessage::NewRoute(request),
            NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Ok(_) => return Ok(()),
            Err(failure) => failure,
        };
        let link = self.label(index);
        let op = Operation::AddRoute {
            link: link.clone(),
            destination,
        };
        if failure.errno() == Some(libc::EEXIST) {
            return self.check_existing_route(index, destination, op);
        }
        let hint = match destination {
            IpNetwork::V6(_) => self.ipv6_hint(index, &link),
            IpNetwork::V4(_) => None,
        };
        Err(failure.into_error(op, hint))
    }

    /// The addresses on the link (`RTM_GETADDR` dump, filtered here).
    pub fn addresses(&mut self, index: u32) -> Result<Vec<IpNetwork>, NetlinkError> {
        Ok(self
            .address_entries(index)?
            .into_iter()
            .map(|entry| entry.network)
            .collect())
    }

    /// Destinations of the main-table unicast routes through the link,
    /// including the kernel's prefix routes (`RTM_GETROUTE` dump).
    pub fn routes(&mut self, index: u32) -> Result<Vec<IpNetwork>, NetlinkError> {
        let routes = self.route_entries().map_err(|failure| {
            failure.into_error(
                Operation::ListRoutes {
                    link: self.label(index),
                },
                None,
            )
        })?;
        Ok(routes
            .into_iter()
            .filter(|route| route.interfaces.contains(&index))
            .map(|route| route.destination)
            .collect())
    }

    fn address_entries(&mut self, index: u32) -> Result<Vec<AddressEntry>, NetlinkError> {
        let op = |this: &mut Self| Operation::ListAddresses {
            link: this.label(index),
        };
        let replies = match self.dump(RouteNetlinkMessage::GetAddress(AddressMessage::default())) {
            Ok(replies) => replies,
            Err(failure) => return Err(failure.into_error(op(self), None)),
        };
        let mut entries = Vec::new();
        for reply in replies {
            let RouteNetlinkMessage::NewAddress(message) = reply else {
                continue;
            };
            if message.header.index != index {
                continue;
            }
            match address_entry(&message) {
                Ok(Some(entry)) => entries.push(entry),
                Ok(None) => {}
                Err(failure) => return Err(failure.into_error(op(self), None)),
            }
        }
        Ok(entries)
    }

    fn route_entries(&mut self) -> Result<Vec<RouteEntry>, Failure> {
        let replies = self.dump(RouteNetlinkMessage::GetRoute(RouteMessage::default()))?;
        let mut entries = Vec::new();
        for reply in replies {
            if let RouteNetlinkMessage::NewRoute(message) = reply
                && let Some(entry) = route_entry(&message)?
            {
                entries.push(entry);
            }
        }
        Ok(entries)
    }

    /// After `EEXIST`: fine if the existing route goes through our link, a
    /// conflict if it goes through another one.
    fn check_existing_route(
        &mut self,
        index: u32,
        destination: IpNetwork,
        op: Operation,
    ) -> Result<(), NetlinkError> {
        let routes = self
            .route_entries()
            .map_err(|failure| failure.into_error(op.clone(), None))?;
        let same: Vec<RouteEntry> = routes
            .into_iter()
            .filter(|route| route.destination == destination)
            .collect();
        if same.iter().any(|route| route.interfaces.contains(&index)) {
            return Ok(());
        }
        match same.iter().flat_map(|route| &route.interfaces).next() {
            Some(&other) => Err(NetlinkError::RouteConflict {
                op,
                destination,
                other: self.label(other),
            }),
            // The kernel says it exists, yet we cannot see it (another type
            // or table): nothing to object to.
            None => Ok(()),
        }
    }

    /// Explains a failed IPv6 request from the link's state, if it can.
    fn ipv6_hint(&mut self, index: u32, link: &str) -> Option<Hint> {
        let message = self.link(index).ok()?;
        let mut disabled = false;
        for attribute in &message.attributes {
            match attribute {
                LinkAttribute::Mtu(mtu) if *mtu < IPV6_MIN_MTU => {
                    return Some(Hint::Ipv6MtuTooSmall {
                        link: link.to_owned(),
                        mtu: *mtu,
                    });
                }
                LinkAttribute::AfSpecUnspec(specs) => disabled |= ipv6_disabled(specs),
                _ => {}
            }
        }
        disabled.then(|| Hint::Ipv6Disabled {
            link: link.to_owned(),
        })
    }

    fn read_link(&mut self, index: u32) -> Result<LinkMessage, NetlinkError> {
        self.link(index).map_err(|failure| {
            failure.into_error(
                Operation::ReadLink {
                    link: self.label(index),
                },
                None,
            )
        })
    }

    /// `RTM_GETLINK` by index.
    fn link(&mut self, index: u32) -> Result<LinkMessage, Failure> {
        let mut request = LinkMessage::default();
        request.header.index = index;
        let link = only_link(self.exchange(RouteNetlinkMessage::GetLink(request), 0)?)?;
        if let Some(name) = link_name(&link) {
            self.remember(index, &name);
        }
        Ok(link)
    }

    fn remember(&mut self, index: u32, name: &str) {
        self.names.retain(|(known, _)| *known != index);
        self.names.push((index, name.to_owned()));
    }

    /// A name for the link in error messages, asking the kernel if need be.
    fn label(&mut self, index: u32) -> String {
        if let Some((_, name)) = self.names.iter().find(|(known, _)| *known == index) {
            return name.clone();
        }
        match self.link(index).ok().as_ref().and_then(link_name) {
            Some(name) => name,
            None => format!("interface #{index}"),
        }
    }

    /// A dump, restarted when the kernel flags it as interrupted.
    fn dump(&mut self, request: RouteNetlinkMessage) -> Result<Vec<RouteNetlinkMessage>, Failure> {
        for _ in 0..DUMP_ATTEMPTS {
            match self.exchange(request.clone(), NLM_F_DUMP) {
                Err(Failure::DumpInterrupted) => continue,
                other => return other,
            }
        }
        Err(Failure::DumpInterrupted)
    }

    /// Sends one request and collects its replies up to the ACK, the error or
    /// the end of the dump.
    fn exchange(
        &mut self,
        request: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, Failure> {
        self.sequence = self.sequence.wrapping_add(1).max(1);
        let sequence = self.sequence;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        header.sequence_number = sequence;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(request));
        packet.finalize();
        let mut bytes = vec![0; packet.buffer_len()];
        packet.serialize(&mut bytes);
        self.send(&bytes)?;

        let mut replies = Vec::new();
        let mut interrupted = false;
        loop {
            self.receive()?;
            let progress = parse_datagram(&self.buffer, sequence, &mut replies)?;
            interrupted |= progress.interrupted;
            if progress.done {
                break;
            }
        }
        if interrupted {
            return Err(Failure::DumpInterrupted);
        }
        Ok(replies)
    }

    fn send(&self, bytes: &[u8]) -> Result<(), Failure> {
        loop {
            match self.socket.send(bytes, 0) {
                Ok(sent) if sent == bytes.len() => return Ok(()),
                Ok(sent) => {
                    return Err(Failure::Transport(io::Error::other(format!(
                        "sent {sent} of {} bytes",
                        bytes.len()
                    ))));
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(Failure::Transport(error)),
            }
        }
    }

    /// Reads one whole datagram into `self.buffer`: peek at its size first
    /// so that a large reply is never truncated.
    fn receive(&mut self) -> Result<(), Failure> {
        let size = loop {
            self.buffer.clear();
            match self
                .socket
                .recv(&mut self.buffer, libc::MSG_PEEK | libc::MSG_TRUNC)
            {
                Ok(size) => break size,
                Err(error) => receive_failure(error)?,
            }
        };
        self.buffer.clear();
        self.buffer.reserve(size);
        let got = loop {
            match self.socket.recv(&mut self.buffer, 0) {
                Ok(got) => break got,
                Err(error) => receive_failure(error)?,
            }
        };
        if got != size || self.buffer.len() != size {
            return Err(Failure::Malformed(format!(
                "datagram of {size} bytes came in as {got}"
            )));
        }
        Ok(())
    }
}

/// `Ok(())` to retry after `EINTR`, else the failure.
fn receive_failure(error: io::Error) -> Result<(), Failure> {
    match error.kind() {
        io::ErrorKind::Interrupted => Ok(()),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            Err(Failure::Transport(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer from the kernel within {RECV_TIMEOUT_SECS} s"),
            )))
        }
        _ => Err(Failure::Transport(error)),
    }
}

/// Where a datagram left the exchange.
#[derive(Debug, Default, PartialEq, Eq)]
struct Progress {
    /// The ACK, the error or `NLMSG_DONE` for our request arrived.
    done: bool,
    /// A part of the dump carried `NLM_F_DUMP_INTR`.
    interrupted: bool,
}

/// Splits a datagram into netlink messages, keeps the replies to `sequence`
/// and stops at their end. Never trusts a length field.
fn parse_datagram(
    datagram: &[u8],
    sequence: u32,
    replies: &mut Vec<RouteNetlinkMessage>,
) -> Result<Progress, Failure> {
    let mut progress = Progress::default();
    let mut rest = datagram;
    while !rest.is_empty() {
        let (Some(length), Some(kind), Some(flags), Some(seq)) = (
            read_u32(rest, 0),
            read_u16(rest, 4),
            read_u16(rest, 6),
            read_u32(rest, 8),
        ) else {
            return Err(Failure::Malformed(format!(
                "{} stray bytes, shorter than a netlink header",
                rest.len()
            )));
        };
        let length = length as usize;
        if length < NLMSG_HDRLEN || length > rest.len() {
            return Err(Failure::Malformed(format!(
                "message length {length} does not fit the {} bytes left",
                rest.len()
            )));
        }
        let message = &rest[..length];
        rest = rest.get(align(length)..).unwrap_or_default();
        if seq != sequence || kind == NLMSG_NOOP {
            continue;
        }
        if flags & NLM_F_DUMP_INTR != 0 {
            progress.interrupted = true;
        }
        let parsed =
            NetlinkMessage::<RouteNetlinkMessage>::deserialize(message).map_err(|error| {
                Failure::Malformed(format!("cannot parse message of type {kind}: {error}"))
            })?;
        match parsed.payload {
            NetlinkPayload::InnerMessage(inner) => replies.push(inner),
            NetlinkPayload::Error(error) => {
                progress.done = true;
                if let Some(code) = error.code {
                    return Err(Failure::Kernel {
                        errno: errno_of(code.get()),
                        message: error_ack_message(&error.header, flags),
                    });
                }
                return Ok(progress);
            }
            NetlinkPayload::Done(done) => {
                progress.done = true;
                if done.code != 0 {
                    return Err(Failure::Kernel {
                        errno: errno_of(done.code),
                        message: (flags & NLM_F_ACK_TLVS != 0)
                            .then(|| ext_ack_message(&done.extended_ack))
                            .flatten(),
                    });
                }
                return Ok(progress);
            }
            NetlinkPayload::Overrun(_) => {
                return Err(Failure::Malformed("the kernel reported an overrun".into()));
            }
            // Noop is skipped above; the enum is non-exhaustive.
            _ => {}
        }
    }
    Ok(progress)
}

/// Kernel error codes are negative errnos; anything odd becomes `EIO`.
fn errno_of(code: i32) -> i32 {
    match code.checked_abs() {
        Some(errno) if errno != 0 => errno,
        _ => libc::EIO,
    }
}

/// The kernel's text in an `NLMSG_ERROR`: after the echoed request (only its
/// header when `NLM_F_CAPPED`) come the extended-ACK attributes.
fn error_ack_message(echo: &[u8], flags: u16) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    let echoed = if flags & NLM_F_CAPPED != 0 {
        NLMSG_HDRLEN
    } else {
        read_u32(echo, 0)? as usize
    };
    ext_ack_message(echo.get(align(echoed)..)?)
}

/// Finds `NLMSGERR_ATTR_MSG` in a run of netlink attributes.
fn ext_ack_message(mut attributes: &[u8]) -> Option<String> {
    while let (Some(length), Some(kind)) = (read_u16(attributes, 0), read_u16(attributes, 2)) {
        let length = usize::from(length);
        let value = attributes.get(4..length)?;
        if kind & NLA_TYPE_MASK == NLMSGERR_ATTR_MSG {
            let text = value.split(|byte| *byte == 0).next().unwrap_or_default();
            let text = String::from_utf8_lossy(text).trim().to_owned();
            return (!text.is_empty()).then_some(text);
        }
        attributes = attributes.get(align(length)..)?;
    }
    None
}

fn read_u16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

/// `NLMSG_ALIGN` / `NLA_ALIGN`.
fn align(length: usize) -> usize {
    length.saturating_add(3) & !3
}

/// Whether `IFLA_AF_SPEC` says `disable_ipv6` (`IFLA_INET6_CONF`).
fn ipv6_disabled(specs: &[AfSpecUnspec]) -> bool {
    specs.iter().any(|spec| match spec {
        AfSpecUnspec::Inet6(items) => items.iter().any(|item| match item {
            AfSpecInet6::DevConf(conf) => conf.disable_ipv6 != 0,
            _ => false,
        }),
        _ => false,
    })
}

/// The single link in a `RTM_GETLINK` answer.
fn only_link(replies: Vec<RouteNetlinkMessage>) -> Result<LinkMessage, Failure> {
    let mut links = replies.into_iter().filter_map(|reply| match reply {
        RouteNetlinkMessage::NewLink(link) => Some(link),
        _ => None,
    });
    match (links.next(), links.next()) {
        (Some(link), None) => Ok(link),
        (None, _) => Err(Failure::Malformed("no link in the answer".into())),
        (Some(_), Some(_)) => Err(Failure::Malformed(
            "more than one link in the answer".into(),
        )),
    }
}

fn link_name(link: &LinkMessage) -> Option<String> {
    link.attributes
        .iter()
        .find_map(|attribute| match attribute {
            LinkAttribute::IfName(name) => Some(name.clone()),
            _ => None,
        })
}

fn address_entry(message: &AddressMessage) -> Result<Option<AddressEntry>, Failure> {
    let mut local = None;
    let mut address = None;
    let mut flags = u32::from(message.header.flags.bits());
    for attribute in &message.attributes {
        match attribute {
            AddressAttribute::Local(ip) => local = Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            AddressAttribute::Flags(all) => flags = all.bits(),
            _ => {}
        }
    }
    // On IPv4 IFA_LOCAL is our address and IFA_ADDRESS may be the peer.
    let Some(ip) = local.or(address) else {
        return Ok(None);
    };
    let network = IpNetwork::new(ip, message.header.prefix_len).map_err(|error| {
        Failure::Malformed(format!(
            "address {ip}/{}: {error}",
            message.header.prefix_len
        ))
    })?;
    Ok(Some(AddressEntry { network, flags }))
}

fn route_entry(message: &RouteMessage) -> Result<Option<RouteEntry>, Failure> {
    let header = &message.header;
    let unspecified = match header.address_family {
        AddressFamily::Inet => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        AddressFamily::Inet6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        _ => return Ok(None),
    };
    if header.kind != RouteType::Unicast {
        return Ok(None);
    }
    let mut table = u32::from(header.table);
    let mut destination = unspecified;
    let mut interfaces = Vec::new();
    for attribute in &message.attributes {
        match attribute {
            RouteAttribute::Table(id) => table = *id,
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => destination = IpAddr::V4(*ip),
            RouteAttribute::Destination(RouteAddress::Inet6(ip)) => destination = IpAddr::V6(*ip),
            RouteAttribute::Oif(index) => interfaces.push(*index),
            RouteAttribute::MultiPath(hops) => {
                interfaces.extend(hops.iter().map(|hop| hop.interface_index));
            }
            _ => {}
        }
    }
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
        return Ok(None);
    }
    let prefix = header.destination_prefix_length;
    let destination = IpNetwork::new(destination, prefix)
        .map_err(|error| Failure::Malformed(format!("route {destination}/{prefix}: {error}")))?;
    Ok(Some(RouteEntry {
        destination,
        interfaces,
    }))
}

fn family(network: IpNetwork) -> AddressFamily {
    match network {
        IpNetwork::V4(_) => AddressFamily::Inet,
        IpNetwork::V6(_) => AddressFamily::Inet6,
    }
}

/// 10.0.0.5/24 → 10.0.0.0/24: IPv4 rejects a route whose destination has
/// host bits set (`EINVAL`, "Invalid prefix for given prefix length").
fn normalise(network: IpNetwork) -> IpNetwork {
    match network {
        IpNetwork::V4(net) => Ipv4Network::new(net.network(), net.prefix())
            .map(IpNetwork::V4)
            .unwrap_or(network),
        IpNetwork::V6(net) => Ipv6Network::new(net.network(), net.prefix())
            .map(IpNetwork::V6)
            .unwrap_or(network),
    }
}

/// The kernel's `dev_valid_name`, checked here so a bad name gets a clear
/// error instead of `EINVAL` from attribute validation.
fn check_name(name: &str) -> Result<(), NetlinkError> {
    let valid = !name.is_empty()
        && name.len() < IFNAMSIZ
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|byte| byte == b'/' || byte == b':' || byte == 0 || byte.is_ascii_whitespace());
    if valid {
        Ok(())
    } else {
        Err(NetlinkError::InvalidName(name.to_owned()))
    }
}

/// Configures the freshly created TUN `ifname` in the current network
/// namespace, over a socket of its own: sets its MTU and, with `bring_up`,
/// brings `lo` up, adds `addresses`, brings `ifname` up and adds `routes`
/// through it — in that order, because the kernel refuses routes through a
/// link that is down. Safe to repeat.
pub fn configure_interface(
    ifname: &str,
    mtu: u32,
    addresses: &[IpNetwork],
    routes: &[IpNetwork],
    bring_up: bool,
) -> Result<(), NetlinkError> {
    let mut netlink = Netlink::open()?;
    let index = netlink.link_index(ifname)?;
    netlink.set_mtu(index, mtu)?;
    if !bring_up {
        return Ok(());
    }
    let lo = netlink.link_index("lo")?;
    netlink.set_up(lo)?;
    for address in addresses {
        netlink.add_address(index, *address)?;
    }
    netlink.set_up(index)?;
    for route in routes {
        netlink.add_route(index, *route)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! Pure tests of the reply parser, then tests against the kernel: each of
    //! those runs in a forked child in fresh namespaces (see `testns`), works
    //! on `lo` and a TUN it creates, and reports over a pipe.

    use super::*;

    use std::fs::{self, File, OpenOptions};
    use std::io::Read;
    use std::net::{SocketAddr as InetSocketAddr, UdpSocket};
    use std::os::fd::{AsFd, AsRawFd};

    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

    use crate::testns::{Isolation, Stop, ensure, in_namespace};

    fn net(text: &str) -> IpNetwork {
        text.parse().expect("test network")
    }

    // ---- pure: the parser and the messages -------------------------------

    /// One netlink message: header, then `payload`, padded to 4 bytes.
    fn nlmsg(kind: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let length = u32::try_from(NLMSG_HDRLEN + payload.len()).expect("small");
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&length.to_ne_bytes());
        bytes.extend_from_slice(&kind.to_ne_bytes());
        bytes.extend_from_slice(&flags.to_ne_bytes());
        bytes.extend_from_slice(&seq.to_ne_bytes());
        bytes.extend_from_slice(&0u32.to_ne_bytes());
        bytes.extend_from_slice(payload);
        bytes.resize(align(bytes.len()), 0);
        bytes
    }

    /// An NLMSG_ERROR payload: code, capped echo of a request header, and
    /// optionally an NLMSGERR_ATTR_MSG.
    fn error_payload(code: i32, text: Option<&str>) -> Vec<u8> {
        let mut payload = code.to_ne_bytes().to_vec();
        payload.extend_from_slice(&nlmsg(16, 0, 7, &[])[..NLMSG_HDRLEN]);
        if let Some(text) = text {
            let value_len = text.len() + 1;
            let length = u16::try_from(4 + value_len).expect("short");
            payload.extend_from_slice(&length.to_ne_bytes());
            payload.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
            payload.extend_from_slice(text.as_bytes());
            payload.push(0);
            payload.resize(align(payload.len()), 0);
        }
        payload
    }

    #[test]
    fn parser_rejects_truncated_and_inconsistent_datagrams() {
        let mut replies = Vec::new();
        for (datagram, what) in [
            (vec![1u8; 10], "shorter than a header"),
            (
                nlmsg(NLMSG_ERROR_TYPE, 0, 7, &[0; 4])[..18].to_vec(),
                "length past the end",
            ),
            (
                {
                    let mut bytes = nlmsg(NLMSG_ERROR_TYPE, 0, 7, &[0; 4]);
                    bytes[..4].copy_from_slice(&8u32.to_ne_bytes());
                    bytes
                },
                "length below a header",
            ),
            (
                nlmsg(NLMSG_ERROR_TYPE, 0, 7, &[0; 2]),
                "error shorter than its code",
            ),
            (nlmsg(0x7fff, 0, 7, &[1, 2, 3, 4]), "unknown message type"),
            (nlmsg(NLMSG_OVERRUN_TYPE, 0, 7, &[]), "overrun"),
        ] {
            let result = parse_datagram(&datagram, 7, &mut replies);
            assert!(
                matches!(result, Err(Failure::Malformed(_))),
                "{what}: {result:?}"
            );
        }
        assert!(replies.is_empty());
    }

    #[test]
    fn parser_skips_other_sequences_and_reads_errors_with_kernel_text() {
        let mut replies = Vec::new();
        // A stale ACK for sequence 6, garbage of type 0x7fff for sequence 5
        // (never parsed), then our error.
        let mut datagram = nlmsg(NLMSG_ERROR_TYPE, 0, 6, &error_payload(0, None));
        datagram.extend(nlmsg(0x7fff, 0, 5, &[9; 3]));
        datagram.extend(nlmsg(
            NLMSG_ERROR_TYPE,
            NLM_F_CAPPED | NLM_F_ACK_TLVS,
            7,
            &error_payload(-libc::ENETDOWN, Some("Device for nexthop is not up")),
        ));
        match parse_datagram(&datagram, 7, &mut replies) {
            Err(Failure::Kernel { errno, message }) => {
                assert_eq!(errno, libc::ENETDOWN);
                assert_eq!(message.as_deref(), Some("Device for nexthop is not up"));
            }
            other => panic!("{other:?}"),
        }

        let ack = nlmsg(NLMSG_ERROR_TYPE, 0, 7, &error_payload(0, None));
        let progress = parse_datagram(&ack, 7, &mut replies).expect("ack");
        assert!(progress.done && !progress.interrupted);

        // A dump that was interrupted and ends with a DONE carrying 0.
        let done = nlmsg(NLMSG_DONE_TYPE, NLM_F_DUMP_INTR, 7, &0i32.to_ne_bytes());
        let progress = parse_datagram(&done, 7, &mut replies).expect("done");
        assert!(progress.done && progress.interrupted);
        let failed = nlmsg(NLMSG_DONE_TYPE, 0, 7, &(-libc::EBUSY).to_ne_bytes());
        assert!(matches!(
            parse_datagram(&failed, 7, &mut replies),
            Err(Failure::Kernel {
                errno: libc::EBUSY,
                message: None
            })
        ));
        // A lying attribute length inside the extended ACK is ignored.
        let mut bad_tlv = error_payload(-libc::EINVAL, Some("x"));
        let at = 4 + NLMSG_HDRLEN;
        bad_tlv[at..at + 2].copy_from_slice(&200u16.to_ne_bytes());
        let bad = nlmsg(NLMSG_ERROR_TYPE, NLM_F_CAPPED | NLM_F_ACK_TLVS, 7, &bad_tlv);
        assert!(matches!(
            parse_datagram(&bad, 7, &mut replies),
            Err(Failure::Kernel {
                errno: libc::EINVAL,
                message: None
            })
        ));
        assert!(replies.is_empty());
    }

    const NLMSG_ERROR_TYPE: u16 = 2;
    const NLMSG_DONE_TYPE: u16 = 3;
    const NLMSG_OVERRUN_TYPE: u16 = 4;

    #[test]
    fn names_networks_and_messages() {
        for good in ["lo", "wg0", "a", "0123456789abcde", "wg-x_1.2"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a:b",
            "a b",
            "0123456789abcdef",
            "a\0",
        ] {
            assert!(
                matches!(check_name(bad), Err(NetlinkError::InvalidName(_))),
                "{bad:?}"
            );
        }
        assert_eq!(normalise(net("10.0.0.5/24")), net("10.0.0.0/24"));
        assert_eq!(normalise(net("fd00::2/64")), net("fd00::/64"));
        assert_eq!(normalise(net("10.1.2.3/0")), net("0.0.0.0/0"));
        assert_eq!(normalise(net("10.1.2.3/32")), net("10.1.2.3/32"));

        let error = Failure::Kernel {
            errno: libc::EACCES,
            message: None,
        }
        .into_error(
            Operation::AddAddress {
                link: "wg0".into(),
                address: net("fd00::2/64"),
            },
            None,
        );
        assert_eq!(
            error.to_string(),
            "cannot add address fd00::2/64 to wg0: Permission denied (os error 13)"
        );
        assert_eq!(error.raw_os_error(), Some(libc::EACCES));
        let error = Failure::Kernel {
            errno: libc::EPERM,
            message: Some("nope".into()),
        }
        .into_error(
            Operation::SetMtu {
                link: "wg0".into(),
                mtu: 1420,
            },
            None,
        );
        assert_eq!(
            error.to_string(),
            "cannot set MTU 1420 on wg0: Operation not permitted (os error 1) \
             (kernel: nope) (hint: the helper is not privileged in that network \
             namespace: is it owned by a user namespace you own?)"
        );
        let source = std::error::Error::source(&error)
            .and_then(|source| source.downcast_ref::<io::Error>())
            .and_then(io::Error::raw_os_error);
        assert_eq!(source, Some(libc::EPERM));
    }

    // ---- against the kernel, in a forked child ---------------------------

    impl From<NetlinkError> for Stop {
        fn from(error: NetlinkError) -> Self {
            Self::Fail(format!("unexpected error: {error}"))
        }
    }

    /// Creates a TUN called `name` (`IFF_TUN | IFF_NO_PI`); it lives as long
    /// as the returned file.
    fn create_tun(name: &str) -> Result<File, Stop> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .map_err(|error| Stop::Skip(format!("cannot open /dev/net/tun: {error}")))?;
        // SAFETY: `ifreq` is plain old data, for which all zeroes is valid.
        let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
        for (slot, byte) in request.ifr_name.iter_mut().zip(name.bytes()) {
            *slot = byte as libc::c_char;
        }
        request.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes one `ifreq`, which outlives the
        // call; the fd is open.
        let result = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut request) };
        if result < 0 {
            return Err(Stop::Skip(format!(
                "cannot create TUN {name}: {}",
                io::Error::last_os_error()
            )));
        }
        Ok(file)
    }

    fn is_up(netlink: &mut Netlink, index: u32) -> Result<bool, Stop> {
        let link = netlink
            .link(index)
            .map_err(|failure| Stop::Fail(format!("RTM_GETLINK {index}: {failure:?}")))?;
        Ok(link.header.flags.contains(LinkFlags::Up))
    }

    /// Reads packets from the TUN until one satisfies `wanted` (up to a
    /// second of silence); the kernel may queue others (IPv6 router
    /// solicitations, MLD) first.
    fn capture(tun: &File, wanted: impl Fn(&[u8]) -> bool) -> Result<Vec<u8>, Stop> {
        fcntl(tun, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))
            .map_err(|error| format!("O_NONBLOCK on the TUN: {error}"))?;
        let mut buffer = vec![0u8; 65536];
        loop {
            let mut fds = [PollFd::new(tun.as_fd(), PollFlags::POLLIN)];
            let ready = poll(&mut fds, PollTimeout::from(1000u16))
                .map_err(|error| format!("poll on the TUN: {error}"))?;
            ensure(ready > 0, || {
                "no matching packet on the TUN within 1 s".into()
            })?;
            let length = (&*tun)
                .read(&mut buffer)
                .map_err(|error| format!("read from the TUN: {error}"))?;
            let packet = &buffer[..length];
            if wanted(packet) {
                return Ok(packet.to_vec());
            }
        }
    }

    #[test]
    fn loopback_index_and_up() {
        in_namespace("loopback_index_and_up", Isolation::OwnNetns, || {
            let mut netlink = Netlink::open()?;
            let lo = netlink.link_index("lo")?;
            ensure(lo == 1, || format!("lo has index {lo}, expected 1"))?;
            ensure(netlink.link_exists("lo")?, || "lo does not exist".into())?;
            ensure(!is_up(&mut netlink, lo)?, || {
                "lo is up in a new netns".into()
            })?;
            netlink.set_up(lo)?;
            netlink.set_up(lo)?;
            ensure(is_up(&mut netlink, lo)?, || "lo is still down".into())?;
            let addresses = netlink.addresses(lo)?;
            ensure(addresses.contains(&net("127.0.0.1/8")), || {
                format!("lo addresses after up: {addresses:?}")
            })?;
            let socket = UdpSocket::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
            socket
                .send_to(b"x", socket.local_addr().map_err(|e| e.to_string())?)
                .map_err(|error| format!("send over lo: {error}"))?;
            Ok(())
        });
    }

    #[test]
    fn tun_mtu_is_set_and_read_back() {
        in_namespace("tun_mtu_is_set_and_read_back", Isolation::OwnNetns, || {
            let _tun = create_tun("wgt0")?;
            let mut netlink = Netlink::open()?;
            ensure(netlink.link_exists("wgt0")?, || "wgt0 missing".into())?;
            let index = netlink.link_index("wgt0")?;
            netlink.set_mtu(index, 1420)?;
            ensure(netlink.mtu(index)? == 1420, || "MTU is not 1420".into())?;
            netlink.set_mtu(index, 9000)?;
            ensure(netlink.mtu(index)? == 9000, || "MTU is not 9000".into())?;
            // Below the TUN's minimum (68): the kernel says EINVAL.
            match netlink.set_mtu(index, 10) {
                Err(error) => {
                    let text = error.to_string();
                    ensure(error.raw_os_error() == Some(libc::EINVAL), || text.clone())?;
                    ensure(text.starts_with("cannot set MTU 10 on wgt0: "), || text)?;
                }
                Ok(()) => return Err(Stop::Fail("MTU 10 was accepted".into())),
            }
            ensure(netlink.mtu(index)? == 9000, || "MTU changed".into())?;
            Ok(())
        });
    }

    #[test]
    fn addresses_are_added_once_and_usable_at_once() {
        in_namespace(
            "addresses_are_added_once_and_usable_at_once",
            Isolation::OwnNetns,
            || {
                let _tun = create_tun("wgt0")?;
                let mut netlink = Netlink::open()?;
                let index = netlink.link_index("wgt0")?;
                let wanted = [net("10.0.0.2/24"), net("fd00::2/64")];
                for address in wanted {
                    netlink.add_address(index, address)?;
                    netlink.add_address(index, address)?;
                }
                let listed = netlink.addresses(index)?;
                for address in wanted {
                    let count = listed.iter().filter(|listed| **listed == address).count();
                    ensure(count == 1, || {
                        format!("{address} listed {count} times: {listed:?}")
                    })?;
                }
                netlink.set_up(index)?;
                let entries = netlink.address_entries(index)?;
                let v6 = entries
                    .iter()
                    .find(|entry| entry.network == net("fd00::2/64"))
                    .ok_or_else(|| format!("fd00::2/64 gone: {entries:?}"))?;
                let nodad = AddressFlags::Nodad.bits();
                let tentative = AddressFlags::Tentative.bits();
                ensure(v6.flags & nodad != 0 && v6.flags & tentative == 0, || {
                    format!("fd00::2/64 flags {:#x}", v6.flags)
                })?;
                // A tentative address would fail with EADDRNOTAVAIL.
                for address in ["10.0.0.2:0", "[fd00::2]:0"] {
                    UdpSocket::bind(address).map_err(|error| format!("bind {address}: {error}"))?;
                }
                Ok(())
            },
        );
    }

    #[test]
    fn routes_after_link_up_including_defaults() {
        in_namespace(
            "routes_after_link_up_including_defaults",
            Isolation::OwnNetns,
            || {
                let _tun = create_tun("wgt0")?;
                let mut netlink = Netlink::open()?;
                let index = netlink.link_index("wgt0")?;
                netlink.add_address(index, net("10.0.0.2/24"))?;
                netlink.add_address(index, net("fd00::2/64"))?;
                netlink.set_up(index)?;
                let asked = [
                    "10.0.0.0/24", // already the address's prefix route: EEXIST
                    "192.168.77.5/24",
                    "0.0.0.0/0",
                    "::/0",
                    "fd01::1/48",
                    "fd00::/64",
                ];
                for destination in asked {
                    netlink.add_route(index, net(destination))?;
                }
                let first = netlink.routes(index)?;
                for destination in asked {
                    netlink.add_route(index, net(destination))?;
                }
                let second = netlink.routes(index)?;
                ensure(first == second, || format!("{first:?} became {second:?}"))?;
                for expected in [
                    "10.0.0.0/24",
                    "192.168.77.0/24",
                    "0.0.0.0/0",
                    "::/0",
                    "fd01::/48",
                    "fd00::/64",
                ] {
                    ensure(first.contains(&net(expected)), || {
                        format!("no route to {expected}: {first:?}")
                    })?;
                }
                let v4_prefix = first
                    .iter()
                    .filter(|route| **route == net("10.0.0.0/24"))
                    .count();
                ensure(v4_prefix == 1, || {
                    format!("10.0.0.0/24 listed {v4_prefix} times")
                })?;
                Ok(())
            },
        );
    }

    #[test]
    fn route_through_another_link_is_a_conflict() {
        in_namespace(
            "route_through_another_link_is_a_conflict",
            Isolation::OwnNetns,
            || {
                let _first = create_tun("wgt0")?;
                let _second = create_tun("wgt1")?;
                let mut netlink = Netlink::open()?;
                let first = netlink.link_index("wgt0")?;
                let second = netlink.link_index("wgt1")?;
                netlink.set_up(first)?;
                netlink.set_up(second)?;
                netlink.add_route(first, net("0.0.0.0/0"))?;
                match netlink.add_route(second, net("0.0.0.0/0")) {
                    Err(error @ NetlinkError::RouteConflict { .. }) => {
                        let text = error.to_string();
                        ensure(
                            text.starts_with(
                                "cannot add route 0.0.0.0/0 dev wgt1: the namespace already \
                             routes 0.0.0.0/0 through wgt0",
                            ),
                            || text,
                        )
                    }
                    other => Err(Stop::Fail(format!("expected a conflict, got {other:?}"))),
                }
            },
        );
    }

    #[test]
    fn route_on_a_down_link_says_so() {
        in_namespace("route_on_a_down_link_says_so", Isolation::OwnNetns, || {
            let _tun = create_tun("wgt0")?;
            let mut netlink = Netlink::open()?;
            let index = netlink.link_index("wgt0")?;
            match netlink.add_route(index, net("10.9.0.0/16")) {
                Err(error) => {
                    let text = error.to_string();
                    ensure(error.raw_os_error() == Some(libc::ENETDOWN), || {
                        text.clone()
                    })?;
                    ensure(
                        text.starts_with("cannot add route 10.9.0.0/16 dev wgt0: ")
                            && text.contains("wgt0 is down"),
                        || text,
                    )
                }
                Ok(()) => Err(Stop::Fail("route on a down link was accepted".into())),
            }
        });
    }

    #[test]
    fn missing_links_and_bad_names() {
        in_namespace("missing_links_and_bad_names", Isolation::OwnNetns, || {
            let mut netlink = Netlink::open()?;
            match netlink.link_index("nosuch0") {
                Err(NetlinkError::NoSuchLink(name)) if name == "nosuch0" => {}
                other => return Err(Stop::Fail(format!("nosuch0: {other:?}"))),
            }
            ensure(!netlink.link_exists("nosuch0")?, || "nosuch0 exists".into())?;
            for bad in ["a/b", "0123456789abcdef", ""] {
                ensure(
                    matches!(netlink.link_exists(bad), Err(NetlinkError::InvalidName(_))),
                    || format!("{bad:?} accepted"),
                )?;
            }
            // An index nobody has: the message still names it.
            match netlink.set_mtu(4242, 1420) {
                Err(error) => {
                    let text = error.to_string();
                    ensure(error.raw_os_error() == Some(libc::ENODEV), || text.clone())?;
                    ensure(
                        text.starts_with("cannot set MTU 1420 on interface #4242: "),
                        || text,
                    )
                }
                Ok(()) => Err(Stop::Fail("MTU set on a missing link".into())),
            }
        });
    }

    #[test]
    fn disabled_ipv6_is_named_in_the_error() {
        in_namespace(
            "disabled_ipv6_is_named_in_the_error",
            Isolation::OwnNetns,
            || {
                let _tun = create_tun("wgt0")?;
                let sysctl = "/proc/sys/net/ipv6/conf/wgt0/disable_ipv6";
                fs::write(sysctl, "1")
                    .map_err(|error| Stop::Skip(format!("cannot write {sysctl}: {error}")))?;
                let mut netlink = Netlink::open()?;
                let index = netlink.link_index("wgt0")?;
                match netlink.add_address(index, net("fd00::2/64")) {
                    Err(error) => {
                        let text = error.to_string();
                        ensure(error.raw_os_error() == Some(libc::EACCES), || text.clone())?;
                        ensure(
                            text.starts_with("cannot add address fd00::2/64 to wgt0: ")
                                && text.contains("net.ipv6.conf.wgt0.disable_ipv6 = 1"),
                            || text,
                        )?;
                    }
                    Ok(()) => return Err(Stop::Fail("IPv6 address accepted".into())),
                }
                // IPv4 is unaffected.
                netlink.add_address(index, net("10.0.0.2/24"))?;
                Ok(())
            },
        );
    }

    #[test]
    fn ipv6_below_1280_says_so() {
        in_namespace("ipv6_below_1280_says_so", Isolation::OwnNetns, || {
            let _tun = create_tun("wgt0")?;
            let mut netlink = Netlink::open()?;
            let index = netlink.link_index("wgt0")?;
            netlink.set_mtu(index, 1200)?;
            match netlink.add_address(index, net("fd00::2/64")) {
                Err(error) => {
                    let text = error.to_string();
                    ensure(text.contains("at least 1280 and wgt0 has 1200"), || text)
                }
                Ok(()) => Err(Stop::Fail("IPv6 address accepted at MTU 1200".into())),
            }
        });
    }

    #[test]
    fn foreign_netns_gives_the_privilege_hint() {
        in_namespace(
            "foreign_netns_gives_the_privilege_hint",
            Isolation::ForeignNetns,
            || {
                let mut netlink = Netlink::open()?;
                let lo = netlink.link_index("lo")?;
                // Setting the MTU it already has: harmless even if it worked.
                let mtu = netlink.mtu(lo)?;
                match netlink.set_mtu(lo, mtu) {
                    Err(error) => {
                        let text = error.to_string();
                        ensure(error.raw_os_error() == Some(libc::EPERM), || text.clone())?;
                        ensure(
                            text.starts_with(&format!("cannot set MTU {mtu} on lo: "))
                                && text.contains("not privileged in that network namespace"),
                            || text,
                        )
                    }
                    Ok(()) => Err(Stop::Fail("a foreign netns accepted SETLINK".into())),
                }
            },
        );
    }

    #[test]
    fn configure_interface_routes_packets_into_the_tun() {
        in_namespace(
            "configure_interface_routes_packets_into_the_tun",
            Isolation::OwnNetns,
            || {
                let tun = create_tun("wg0")?;
                let addresses = [net("10.0.0.2/24"), net("fd00::2/64")];
                let routes = [net("10.0.0.0/24"), net("0.0.0.0/0"), net("::/0")];
                configure_interface("wg0", 1420, &addresses, &routes, true)?;
                configure_interface("wg0", 1420, &addresses, &routes, true)?;

                let mut netlink = Netlink::open()?;
                let index = netlink.link_index("wg0")?;
                let lo = netlink.link_index("lo")?;
                ensure(is_up(&mut netlink, lo)?, || "lo is down".into())?;
                ensure(is_up(&mut netlink, index)?, || "wg0 is down".into())?;
                ensure(netlink.mtu(index)? == 1420, || "MTU is not 1420".into())?;
                let listed = netlink.addresses(index)?;
                ensure(addresses.iter().all(|a| listed.contains(a)), || {
                    format!("{listed:?}")
                })?;
                let listed = netlink.routes(index)?;
                ensure(routes.iter().all(|r| listed.contains(r)), || {
                    format!("{listed:?}")
                })?;

                // The default routes lead into the TUN, from our addresses: the
                // IPv6 one is not tentative.
                for (from, to, version) in [
                    ("0.0.0.0:0", "192.0.2.1:9", 4u8),
                    ("[::]:0", "[2001:db8::1]:9", 6u8),
                ] {
                    let to: InetSocketAddr = to.parse().map_err(|e| format!("{to}: {e}"))?;
                    let socket = UdpSocket::bind(from).map_err(|e| format!("bind {from}: {e}"))?;
                    socket
                        .send_to(b"hello", to)
                        .map_err(|error| format!("send to {to}: {error}"))?;
                    let packet = capture(&tun, |packet| match (packet.first(), to) {
                        (Some(b), InetSocketAddr::V4(to)) if b >> 4 == 4 => {
                            packet.get(16..20) == Some(&to.ip().octets()[..])
                        }
                        (Some(b), InetSocketAddr::V6(to)) if b >> 4 == 6 => {
                            packet.get(24..40) == Some(&to.ip().octets()[..])
                        }
                        _ => false,
                    })?;
                    let source: Option<IpAddr> = match version {
                        4 => packet
                            .get(12..16)
                            .and_then(|b| <[u8; 4]>::try_from(b).ok())
                            .map(|b| Ipv4Addr::from(b).into()),
                        _ => packet
                            .get(8..24)
                            .and_then(|b| <[u8; 16]>::try_from(b).ok())
                            .map(|b| Ipv6Addr::from(b).into()),
                    };
                    let expected: IpAddr = match version {
                        4 => Ipv4Addr::new(10, 0, 0, 2).into(),
                        _ => "fd00::2".parse().map_err(|e| format!("{e}"))?,
                    };
                    ensure(source == Some(expected), || {
                        format!("packet to {to} came from {source:?}, expected {expected}")
                    })?;
                }
                Ok(())
            },
        );
    }

    #[test]
    fn configure_without_bring_up_only_sets_the_mtu() {
        in_namespace(
            "configure_without_bring_up_only_sets_the_mtu",
            Isolation::OwnNetns,
            || {
                let _tun = create_tun("wg0")?;
                configure_interface(
                    "wg0",
                    1380,
                    &[net("10.0.0.2/24")],
                    &[net("0.0.0.0/0")],
                    false,
                )?;
                let mut netlink = Netlink::open()?;
                let index = netlink.link_index("wg0")?;
                ensure(netlink.mtu(index)? == 1380, || "MTU is not 1380".into())?;
                ensure(!is_up(&mut netlink, index)?, || "wg0 is up".into())?;
                let listed = netlink.addresses(index)?;
                ensure(listed.is_empty(), || format!("addresses: {listed:?}"))?;
                match configure_interface("nosuch0", 1380, &[], &[], false) {
                    Err(NetlinkError::NoSuchLink(name)) if name == "nosuch0" => Ok(()),
                    other => Err(Stop::Fail(format!("nosuch0: {other:?}"))),
                }
            },
        );
    }
}

//! The text of the cross-platform UAPI, seen from the client side: the answer
//! to `get=1` parsed into a typed [`Device`], and a `set=1` request
//! ([`SetRequest`]) written out.
//!
//! The parser follows `userspace_get_device` in wireguard-tools'
//! `ipc-uapi.h`, so whatever `wg show` accepts we accept, and what it rejects
//! as a protocol error we reject too:
//!
//! * every line is `key=value`; the answer ends with an empty line;
//! * keys are 64 hex digits (either case); numbers are plain decimal (no
//!   sign, no spaces) within the field's range;
//! * `private_key`, `listen_port` and `fwmark` count only before the first
//!   `public_key`; peer keys only after one; anything else (such as
//!   `protocol_version`, or keys a newer server adds) is skipped;
//! * an all-zero `preshared_key` means "none" (wireguard-go always sends one);
//! * the answer must carry `errno=N`; without it, it is a protocol error.
//!   `N` may be negative (wireguard-go's and our servers' way); it is read
//!   as the positive errno.
//!
//! The writer follows `userspace_set_device`: the same keys in the same order.
//!
//! Addresses are printed the way `wg` prints them, which is glibc's
//! `inet_ntop`/`getnameinfo`, not Rust's `Display`: the two differ for
//! IPv4-compatible IPv6 addresses (`::1.2.3.4` against `::102:304`) and for
//! link-local scopes (`%eth0` against `%2`).
//!
//! This is a parser of untrusted input (whatever listens on the socket): it
//! may not panic.

#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]

use std::fmt::{self, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::str::FromStr;

use crate::keys::{KEY_LEN, Key};

/// A device as `get=1` describes it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Device {
    /// `None` when the device has no private key (the server sent none).
    pub private_key: Option<Key>,
    /// `None` when the server did not say; `wg` prints that as 0.
    pub listen_port: Option<u16>,
    /// `None` or `Some(0)` when there is none.
    pub fwmark: Option<u32>,
    /// In the order the server listed them.
    pub peers: Vec<Peer>,
    /// The server's `errno=N` as a positive errno (0 on success).
    pub errno: i32,
}

/// One peer of a [`Device`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub public_key: Key,
    /// `None` when unset (absent or all zero).
    pub preshared_key: Option<Key>,
    pub endpoint: Option<SocketAddr>,
    /// Unix time of the latest handshake; 0 = never.
    pub last_handshake_time_sec: u64,
    pub last_handshake_time_nsec: u64,
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    /// Seconds; 0 = off.
    pub persistent_keepalive_interval: u16,
    pub allowed_ips: Vec<AllowedIp>,
    /// `protocol_version=N`, which wireguard-go sends and gotatun does not.
    pub protocol_version: Option<u32>,
}

impl Peer {
    /// A peer with only its public key known.
    #[must_use]
    pub fn new(public_key: Key) -> Self {
        Self {
            public_key,
            preshared_key: None,
            endpoint: None,
            last_handshake_time_sec: 0,
            last_handshake_time_nsec: 0,
            tx_bytes: 0,
            rx_bytes: 0,
            persistent_keepalive_interval: 0,
            allowed_ips: Vec::new(),
            protocol_version: None,
        }
    }
}

impl Device {
    /// The public key belonging to the private key, if there is one.
    #[must_use]
    pub fn public_key(&self) -> Option<Key> {
        self.private_key
            .as_ref()
            .map(crate::keys::public_from_private)
    }
}

/// An allowed-IPs entry: an address and a prefix length that fits it. Host
/// bits are kept as given, as `wg` keeps them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllowedIp {
    pub addr: IpAddr,
    pub cidr: u8,
}

impl AllowedIp {
    /// Whether the bits after the prefix are all zero (`wg` warns otherwise).
    #[must_use]
    pub fn host_bits_are_zero(&self) -> bool {
        match self.addr {
            IpAddr::V4(a) => {
                let bits = u32::from(a);
                u32::MAX
                    .checked_shr(u32::from(self.cidr))
                    .is_none_or(|host| bits & host == 0)
            }
            IpAddr::V6(a) => {
                let bits = u128::from(a);
                u128::MAX
                    .checked_shr(u32::from(self.cidr))
                    .is_none_or(|host| bits & host == 0)
            }
        }
    }
}

/// `ADDR/CIDR`, the address as `inet_ntop` writes it.
impl fmt::Display for AllowedIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", IpText(self.addr), self.cidr)
    }
}

/// An IP address as glibc's `inet_ntop` writes it.
#[derive(Debug, Clone, Copy)]
pub struct IpText(pub IpAddr);

impl fmt::Display for IpText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(a) => write!(f, "{a}"),
            IpAddr::V6(a) => f.write_str(&ntop6(&a)),
        }
    }
}

/// glibc's `inet_ntop6` (from BIND): the first longest run of two or more zero
/// words becomes `::`, words are lowercase hex without leading zeros, and an
/// address whose first 96 bits are zero (6 words) or that is IPv4-mapped
/// (5 zero words and `ffff`) ends in dotted IPv4.
fn ntop6(addr: &Ipv6Addr) -> String {
    let words = addr.segments();
    // (start, len) of the first longest run of zeros, if at least 2 long.
    let mut best: Option<(usize, usize)> = None;
    let mut current: Option<(usize, usize)> = None;
    for (i, word) in words.iter().enumerate() {
        if *word == 0 {
            current = Some(current.map_or((i, 1), |(start, len)| (start, len + 1)));
        } else {
            current = None;
        }
        if let Some((start, len)) = current
            && len >= 2
            && best.is_none_or(|(_, best_len)| len > best_len)
        {
            best = Some((start, len));
        }
    }
    let mut out = String::with_capacity(40);
    let octets = addr.octets();
    for (i, word) in words.iter().enumerate() {
        if let Some((start, len)) = best
            && i >= start
            && i < start + len
        {
            if i == start {
                out.push(':');
            }
            continue;
        }
        if i != 0 {
            out.push(':');
        }
        let embeds_v4 = matches!(best, Some((0, 6)))
            || (matches!(best, Some((0, 5))) && words.get(5) == Some(&0xffff));
        if i == 6
            && embeds_v4
            && let [.., a, b, c, d] = octets
        {
            let _ = write!(out, "{}", Ipv4Addr::new(a, b, c, d));
            break;
        }
        let _ = write!(out, "{word:x}");
    }
    if best.is_some_and(|(start, len)| start + len == 8) {
        out.push(':');
    }
    out
}

/// An endpoint as `wg` prints it: `getnameinfo(NI_NUMERICHOST |
/// NI_NUMERICSERV)`, with brackets around IPv6. A link-local scope is the
/// interface name when it exists (as glibc does it), else the number.
#[derive(Debug, Clone, Copy)]
pub struct EndpointText(pub SocketAddr);

impl fmt::Display for EndpointText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            SocketAddr::V4(a) => write!(f, "{}:{}", a.ip(), a.port()),
            SocketAddr::V6(a) => {
                write!(f, "[{}{}]:{}", ntop6(a.ip()), scope_text(&a), a.port())
            }
        }
    }
}

fn scope_text(addr: &SocketAddrV6) -> String {
    let scope = addr.scope_id();
    if scope == 0 {
        return String::new();
    }
    let [first, ..] = addr.ip().segments();
    let link_local = first & 0xffc0 == 0xfe80 || first & 0xff0f == 0xff02;
    if link_local && let Ok(name) = nix::net::if_::if_indextoname(scope) {
        return format!("%{}", name.to_string_lossy());
    }
    format!("%{scope}")
}

/// Why a `get` answer could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    #[error("line {line}: not `key=value`")]
    NotKeyValue { line: usize },
    #[error("line {line}: invalid {key} value {value:?}")]
    BadValue {
        line: usize,
        key: String,
        value: String,
    },
    #[error("the answer ended before its closing empty line")]
    Truncated,
    #[error("the answer has no errno= line")]
    NoErrno,
}

/// Parses a complete answer to `get=1`, up to and including its empty line.
/// Text after the empty line is not looked at.
///
/// # Errors
/// [`ProtoError`] for a line that is not `key=value`, a value `wg` would not
/// accept, a missing `errno`, or a missing final empty line. A non-zero
/// `errno` is not an error here; it is in [`Device::errno`].
pub fn parse_get_response(text: &str) -> Result<Device, ProtoError> {
    let mut device = Device::default();
    let mut errno = None;
    for_each_pair(text, |number, key, value| {
        let bad = || bad_value(number, key, value);
        let peer = device.peers.last_mut();
        match (key, peer) {
            ("private_key", None) => device.private_key = Some(hex_key(value).ok_or_else(bad)?),
            ("listen_port", None) => device.listen_port = Some(number_in(value).ok_or_else(bad)?),
            ("fwmark", None) => device.fwmark = Some(number_in(value).ok_or_else(bad)?),
            ("public_key", _) => device
                .peers
                .push(Peer::new(hex_key(value).ok_or_else(bad)?)),
            ("preshared_key", Some(peer)) => {
                let key = hex_key(value).ok_or_else(bad)?;
                peer.preshared_key = (key.as_bytes() != &[0; KEY_LEN]).then_some(key);
            }
            ("endpoint", Some(peer)) => {
                peer.endpoint = Some(parse_endpoint(value).ok_or_else(bad)?)
            }
            ("persistent_keepalive_interval", Some(peer)) => {
                peer.persistent_keepalive_interval = number_in(value).ok_or_else(bad)?;
            }
            ("allowed_ip", Some(peer)) => {
                peer.allowed_ips
                    .push(parse_allowed_ip(value).ok_or_else(bad)?);
            }
            ("last_handshake_time_sec", Some(peer)) => {
                peer.last_handshake_time_sec =
                    number_up_to(value, i64::MAX as u64).ok_or_else(bad)?;
            }
            ("last_handshake_time_nsec", Some(peer)) => {
                peer.last_handshake_time_nsec =
                    number_up_to(value, i64::MAX as u64).ok_or_else(bad)?;
            }
            ("rx_bytes", Some(peer)) => peer.rx_bytes = number_in(value).ok_or_else(bad)?,
            ("tx_bytes", Some(peer)) => peer.tx_bytes = number_in(value).ok_or_else(bad)?,
            ("protocol_version", Some(peer)) => {
                peer.protocol_version = Some(number_in(value).ok_or_else(bad)?);
            }
            ("errno", _) => errno = Some(signed_errno(value).ok_or_else(bad)?),
            _ => {}
        }
        Ok(())
    })?;
    device.errno = errno.ok_or(ProtoError::NoErrno)?;
    Ok(device)
}

/// Parses the `errno=N` answer to a `set=1` request, up to its empty line;
/// other keys are skipped as `wg` skips them.
///
/// # Errors
/// As [`parse_get_response`].
pub fn parse_set_response(text: &str) -> Result<i32, ProtoError> {
    let mut errno = None;
    for_each_pair(text, |number, key, value| {
        if key == "errno" {
            errno = Some(signed_errno(value).ok_or_else(|| bad_value(number, key, value))?);
        }
        Ok(())
    })?;
    errno.ok_or(ProtoError::NoErrno)
}

/// An `errno=` value: decimal with an optional `-`, in `i32`. wireguard-go
/// (and now we) send the errno negated, as `wg set` reads it (`errno =
/// -ret`); a positive one is what older servers sent. Either way the result
/// is the positive errno, so `Errno::from_raw` names it. (`wg`'s own `get`
/// takes no sign; we are laxer there, since a server that fails a `get`
/// says why with the same negative number.)
fn signed_errno(value: &str) -> Option<i32> {
    let digits = value.strip_prefix('-').unwrap_or(value);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse::<i32>().ok().map(i32::saturating_abs)
}

/// Calls `each` with the line number, key and value of every `key=value` line
/// of an answer, up to its closing empty line; text after that is not looked
/// at.
///
/// # Errors
/// [`ProtoError::NotKeyValue`] for a line without `=`,
/// [`ProtoError::Truncated`] where the empty line is missing, and whatever
/// `each` returns.
fn for_each_pair(
    text: &str,
    mut each: impl FnMut(usize, &str, &str) -> Result<(), ProtoError>,
) -> Result<(), ProtoError> {
    let mut rest = text;
    let mut number = 0;
    loop {
        number += 1;
        let Some((line, after)) = rest.split_once('\n') else {
            return Err(ProtoError::Truncated);
        };
        rest = after;
        if line.is_empty() {
            return Ok(());
        }
        let (key, value) = line
            .split_once('=')
            .ok_or(ProtoError::NotKeyValue { line: number })?;
        each(number, key, value)?;
    }
}

/// The error for a `value` of `key` on line `line` that `wg` would not take;
/// the value is cut at 80 characters.
fn bad_value(line: usize, key: &str, value: &str) -> ProtoError {
    ProtoError::BadValue {
        line,
        key: key.to_owned(),
        value: value.chars().take(80).collect(),
    }
}

/// A decimal number as `wg`'s `NUM()` takes it: digits only, in range.
fn number_up_to(text: &str, max: u64) -> Option<u64> {
    if !text.bytes().all(|b| b.is_ascii_digit()) || text.is_empty() {
        return None;
    }
    text.parse::<u64>().ok().filter(|n| *n <= max)
}

fn number_in<T: TryFrom<u64>>(text: &str) -> Option<T> {
    number_up_to(text, u64::MAX).and_then(|n| T::try_from(n).ok())
}

/// 64 hex digits, either case.
fn hex_key(text: &str) -> Option<Key> {
    let bytes = text.as_bytes();
    if bytes.len() != 2 * KEY_LEN {
        return None;
    }
    let mut key = [0u8; KEY_LEN];
    for (out, pair) in key.iter_mut().zip(bytes.chunks_exact(2)) {
        let digit = |b: &u8| char::from(*b).to_digit(16);
        let [hi, lo] = pair else { return None };
        *out = u8::try_from(digit(hi)? * 16 + digit(lo)?).ok()?;
    }
    Some(Key::from_bytes(key))
}

/// A key as 64 lowercase hex digits, the protocol's form.
#[must_use]
pub fn key_hex(key: &Key) -> String {
    key.as_bytes()
        .iter()
        .fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// `IP:PORT` or `[IPv6]:PORT` (a scope `%N` or `%NAME` allowed), numeric.
fn parse_endpoint(text: &str) -> Option<SocketAddr> {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, port) = rest.split_once(']')?;
        (host, port.strip_prefix(':')?)
    } else {
        text.rsplit_once(':')?
    };
    let port: u16 = number_in(port)?;
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, port));
    }
    let (ip, scope) = host.split_once('%')?;
    let ip: Ipv6Addr = ip.parse().ok()?;
    let scope = match number_in::<u32>(scope) {
        Some(n) => n,
        None => nix::net::if_::if_nametoindex(scope).ok()?,
    };
    Some(SocketAddr::V6(SocketAddrV6::new(ip, port, 0, scope)))
}

/// `IP/CIDR` with the prefix in range for the family.
pub fn parse_allowed_ip(text: &str) -> Option<AllowedIp> {
    let (ip, cidr) = text.split_once('/')?;
    let addr: IpAddr = ip.parse().ok()?;
    let cidr: u8 = number_in(cidr)?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    (cidr <= max).then_some(AllowedIp { addr, cidr })
}

/// A `set=1` request: what `wg set` sends.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SetRequest {
    /// All zero removes the key (an empty key file, as in `wg set`).
    pub private_key: Option<Key>,
    /// 0 picks a random port.
    pub listen_port: Option<u16>,
    /// 0 removes the mark.
    pub fwmark: Option<u32>,
    pub replace_peers: bool,
    pub peers: Vec<SetPeer>,
}

/// One `peer` of a [`SetRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetPeer {
    pub public_key: Key,
    /// Removes the peer; nothing else of it is sent.
    pub remove: bool,
    /// All zero removes the preshared key.
    pub preshared_key: Option<Key>,
    pub endpoint: Option<SocketAddr>,
    /// 0 turns it off.
    pub persistent_keepalive_interval: Option<u16>,
    /// Replace the peer's list with `allowed_ips` instead of adding to it.
    pub replace_allowed_ips: bool,
    pub allowed_ips: Vec<AllowedIp>,
}

impl SetPeer {
    /// A peer entry that changes nothing yet.
    #[must_use]
    pub fn new(public_key: Key) -> Self {
        Self {
            public_key,
            remove: false,
            preshared_key: None,
            endpoint: None,
            persistent_keepalive_interval: None,
            replace_allowed_ips: false,
            allowed_ips: Vec::new(),
        }
    }
}

/// The request text, from `set=1` to the closing empty line, in the order
/// `userspace_set_device` writes it.
impl fmt::Display for SetRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "set=1")?;
        if let Some(key) = &self.private_key {
            writeln!(f, "private_key={}", key_hex(key))?;
        }
        if let Some(port) = self.listen_port {
            writeln!(f, "listen_port={port}")?;
        }
        if let Some(mark) = self.fwmark {
            writeln!(f, "fwmark={mark}")?;
        }
        if self.replace_peers {
            writeln!(f, "replace_peers=true")?;
        }
        for peer in &self.peers {
            writeln!(f, "public_key={}", key_hex(&peer.public_key))?;
            if peer.remove {
                writeln!(f, "remove=true")?;
                continue;
            }
            if let Some(key) = &peer.preshared_key {
                writeln!(f, "preshared_key={}", key_hex(key))?;
            }
            if let Some(endpoint) = peer.endpoint {
                // Rust's form: what the server (gotatun, wireguard-go) parses.
                writeln!(f, "endpoint={endpoint}")?;
            }
            if let Some(interval) = peer.persistent_keepalive_interval {
                writeln!(f, "persistent_keepalive_interval={interval}")?;
            }
            if peer.replace_allowed_ips {
                writeln!(f, "replace_allowed_ips=true")?;
            }
            for ip in &peer.allowed_ips {
                writeln!(f, "allowed_ip={}/{}", ip.addr, ip.cidr)?;
            }
        }
        writeln!(f)
    }
}

impl FromStr for AllowedIp {
    type Err = ProtoError;

    /// The protocol's `IP/CIDR` form.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        parse_allowed_ip(text).ok_or_else(|| ProtoError::BadValue {
            line: 0,
            key: "allowed_ip".to_owned(),
            value: text.chars().take(80).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRIVATE_HEX: &str = "e84b5a6d2717c1003a13b431570353dbaca9146cf150c5f8575680feba52027a";
    const PUBLIC_HEX: &str = "b85996fecc9c7f1fc6d2572a76eda11d59bcd20be8e543b15ce4bd85a8e75a33";
    const PSK_HEX: &str = "188515093e952f5f22e865cef3012e72f8b5f0b598ac0309d5dacce3b70fcf52";

    /// The example answer of https://www.wireguard.com/xplatform/, plus
    /// `fwmark`, a second peer that never shook hands, and the trailing
    /// empty line.
    fn example() -> String {
        format!(
            "private_key={PRIVATE_HEX}\n\
             listen_port=12912\n\
             fwmark=51820\n\
             public_key={PUBLIC_HEX}\n\
             preshared_key={PSK_HEX}\n\
             protocol_version=1\n\
             endpoint=[abcd:23::33%2]:51820\n\
             last_handshake_time_sec=1545083296\n\
             last_handshake_time_nsec=123456789\n\
             tx_bytes=38333\n\
             rx_bytes=2224\n\
             persistent_keepalive_interval=0\n\
             allowed_ip=192.168.4.4/32\n\
             public_key=58402e695ba1772b1cc9309755f043251ea77fdcf10fbe63989ceb7e19321376\n\
             preshared_key=0000000000000000000000000000000000000000000000000000000000000000\n\
             endpoint=182.122.22.19:3233\n\
             persistent_keepalive_interval=111\n\
             allowed_ip=192.168.4.6/32\n\
             allowed_ip=::/0\n\
             errno=0\n\n"
        )
    }

    #[test]
    fn parses_the_protocol_example() {
        let device = parse_get_response(&example()).unwrap();
        assert_eq!(
            device.private_key.as_ref().map(key_hex).unwrap(),
            PRIVATE_HEX
        );
        assert_eq!(device.listen_port, Some(12912));
        assert_eq!(device.fwmark, Some(51820));
        assert_eq!(device.errno, 0);
        let [first, second] = &device.peers[..] else {
            panic!("{device:?}")
        };
        assert_eq!(key_hex(&first.public_key), PUBLIC_HEX);
        assert_eq!(first.preshared_key.as_ref().map(key_hex).unwrap(), PSK_HEX);
        assert_eq!(first.protocol_version, Some(1));
        assert_eq!(
            first.endpoint,
            Some(SocketAddr::V6(SocketAddrV6::new(
                "abcd:23::33".parse().unwrap(),
                51820,
                0,
                2
            )))
        );
        assert_eq!(first.last_handshake_time_sec, 1_545_083_296);
        assert_eq!(first.last_handshake_time_nsec, 123_456_789);
        assert_eq!((first.tx_bytes, first.rx_bytes), (38333, 2224));
        assert_eq!(first.persistent_keepalive_interval, 0);
        assert_eq!(first.allowed_ips, ["192.168.4.4/32".parse().unwrap()]);

        assert_eq!(second.preshared_key, None, "all zero is no key");
        assert_eq!(second.endpoint, Some("182.122.22.19:3233".parse().unwrap()));
        assert_eq!(second.last_handshake_time_sec, 0);
        assert_eq!(second.persistent_keepalive_interval, 111);
        assert_eq!(second.protocol_version, None);
        assert_eq!(
            second.allowed_ips,
            [
                "192.168.4.6/32".parse::<AllowedIp>().unwrap(),
                "::/0".parse().unwrap()
            ]
        );
    }

    #[test]
    fn the_public_key_is_derived_from_the_private_key() {
        // wg(8)'s example pair.
        let private: Key = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk="
            .parse()
            .unwrap();
        let device = Device {
            private_key: Some(private),
            ..Device::default()
        };
        assert_eq!(
            device.public_key().unwrap().to_string(),
            "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw="
        );
        assert_eq!(Device::default().public_key(), None);
    }

    #[test]
    fn gotatun_style_answer_without_optional_lines() {
        // gotatun omits preshared_key, endpoint, keepalive and the handshake
        // time when they are unset, and protocol_version always.
        let text = format!(
            "private_key={PRIVATE_HEX}\nlisten_port=0\npublic_key={PUBLIC_HEX}\nrx_bytes=0\ntx_bytes=0\nerrno=0\n\n"
        );
        let device = parse_get_response(&text).unwrap();
        assert_eq!(device.listen_port, Some(0));
        assert_eq!(device.fwmark, None);
        let peer = &device.peers[0];
        assert_eq!(peer, &Peer::new(hex_key(PUBLIC_HEX).unwrap()));
    }

    #[test]
    fn an_empty_device() {
        let device = parse_get_response("errno=0\n\n").unwrap();
        assert_eq!(device, Device::default());
    }

    #[test]
    fn non_zero_errno_is_reported_not_failed() {
        assert_eq!(parse_get_response("errno=22\n\n").unwrap().errno, 22);
        assert_eq!(parse_get_response("errno=-22\n\n").unwrap().errno, 22);
    }

    #[test]
    fn misplaced_and_unknown_keys_are_skipped_like_wg() {
        let text = format!(
            "preshared_key=nonsense\nfuture_key=1\npublic_key={PUBLIC_HEX}\nprivate_key={PRIVATE_HEX}\nlisten_port=x\nerrno=0\n\n"
        );
        let device = parse_get_response(&text).unwrap();
        assert_eq!(device.private_key, None);
        assert_eq!(device.listen_port, None);
        assert_eq!(device.peers.len(), 1);
    }

    #[test]
    fn upper_case_hex_is_accepted() {
        let text = format!("private_key={}\nerrno=0\n\n", PRIVATE_HEX.to_uppercase());
        let device = parse_get_response(&text).unwrap();
        assert_eq!(key_hex(device.private_key.as_ref().unwrap()), PRIVATE_HEX);
    }

    #[test]
    fn protocol_errors() {
        let cases: &[(&str, ProtoError)] = &[
            ("errno=0\n", ProtoError::Truncated),
            ("errno=0", ProtoError::Truncated),
            ("", ProtoError::Truncated),
            ("\n", ProtoError::NoErrno),
            ("listen_port=1\n\n", ProtoError::NoErrno),
            ("garbage\nerrno=0\n\n", ProtoError::NotKeyValue { line: 1 }),
        ];
        for (text, expected) in cases {
            assert_eq!(&parse_get_response(text).unwrap_err(), expected, "{text:?}");
        }
        for bad in [
            "private_key=abc",
            "private_key=zz4b5a6d2717c1003a13b431570353dbaca9146cf150c5f8575680feba52027a",
            "listen_port=65536",
            "listen_port=+1",
            "listen_port= 1",
            "listen_port=",
            "fwmark=-1",
            "fwmark=4294967296",
            "errno=+1",
            "errno=-",
            "errno=2147483648",
        ] {
            let err = parse_get_response(&format!("{bad}\nerrno=0\n\n")).unwrap_err();
            assert!(
                matches!(err, ProtoError::BadValue { line: 1, .. }),
                "{bad}: {err:?}"
            );
        }
        for bad in [
            "endpoint=",
            "endpoint=1.2.3.4",
            "endpoint=1.2.3.4:",
            "endpoint=1.2.3.4:65536",
            "endpoint=[::1]51820",
            "endpoint=[::1:51820",
            "endpoint=host.example:51820",
            "allowed_ip=10.0.0.0",
            "allowed_ip=10.0.0.0/33",
            "allowed_ip=::/129",
            "allowed_ip=10.0.0.0/-1",
            "allowed_ip=10.0.0/8",
            "persistent_keepalive_interval=65536",
            "rx_bytes=18446744073709551616",
            "last_handshake_time_sec=9223372036854775808",
        ] {
            let text = format!("public_key={PUBLIC_HEX}\n{bad}\nerrno=0\n\n");
            let err = parse_get_response(&text).unwrap_err();
            assert!(
                matches!(err, ProtoError::BadValue { line: 2, .. }),
                "{bad}: {err:?}"
            );
        }
    }

    /// A poor man's fuzzer until there is a fuzz target: mutated and cut
    /// copies of a valid answer must give a result, never a panic.
    #[test]
    fn mutated_answers_never_panic() {
        let example = example().into_bytes();
        let alphabet = b"=\n0123456789abcdef:[]%/.-+x\xff\xc3";
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let mut text = example.clone();
            for _ in 0..next() % 4 + 1 {
                let at = (next() % text.len() as u64) as usize;
                text[at] = alphabet[(next() % alphabet.len() as u64) as usize];
            }
            text.truncate((next() % (text.len() as u64 + 1)) as usize);
            let text = String::from_utf8_lossy(&text);
            let _ = parse_get_response(&text);
            let _ = parse_set_response(&text);
        }
    }

    #[test]
    fn errors_do_not_repeat_long_values() {
        let long = "x".repeat(1000);
        let err = parse_get_response(&format!("listen_port={long}\nerrno=0\n\n")).unwrap_err();
        assert!(err.to_string().len() < 200, "{err}");
    }

    #[test]
    fn set_response() {
        assert_eq!(parse_set_response("errno=0\n\n"), Ok(0));
        assert_eq!(parse_set_response("errno=-22\n\n"), Ok(22));
        assert_eq!(parse_set_response("errno=22\n\n"), Ok(22));
        assert_eq!(parse_set_response("errno=0\n"), Err(ProtoError::Truncated));
        assert_eq!(parse_set_response("\n"), Err(ProtoError::NoErrno));
        assert!(matches!(
            parse_set_response("errno=x\n\n"),
            Err(ProtoError::BadValue { .. })
        ));
        assert!(matches!(
            parse_set_response("errno=+1\n\n"),
            Err(ProtoError::BadValue { .. })
        ));
    }

    #[test]
    fn set_request_text_in_wg_order() {
        let key = |hex: &str| hex_key(hex).unwrap();
        let mut peer = SetPeer::new(key(PUBLIC_HEX));
        peer.preshared_key = Some(key(PSK_HEX));
        peer.endpoint = Some("[fe80::1]:51820".parse().unwrap());
        peer.persistent_keepalive_interval = Some(25);
        peer.replace_allowed_ips = true;
        peer.allowed_ips = vec![
            "10.0.0.0/8".parse().unwrap(),
            "::ffff:1.2.3.4/128".parse().unwrap(),
        ];
        let mut gone = SetPeer::new(key(PRIVATE_HEX));
        gone.remove = true;
        gone.persistent_keepalive_interval = Some(1);
        let request = SetRequest {
            private_key: Some(key(PRIVATE_HEX)),
            listen_port: Some(51820),
            fwmark: Some(0),
            replace_peers: false,
            peers: vec![peer, gone],
        };
        assert_eq!(
            request.to_string(),
            format!(
                "set=1\n\
                 private_key={PRIVATE_HEX}\n\
                 listen_port=51820\n\
                 fwmark=0\n\
                 public_key={PUBLIC_HEX}\n\
                 preshared_key={PSK_HEX}\n\
                 endpoint=[fe80::1]:51820\n\
                 persistent_keepalive_interval=25\n\
                 replace_allowed_ips=true\n\
                 allowed_ip=10.0.0.0/8\n\
                 allowed_ip=::ffff:1.2.3.4/128\n\
                 public_key={PRIVATE_HEX}\n\
                 remove=true\n\
                 \n"
            )
        );
        assert_eq!(SetRequest::default().to_string(), "set=1\n\n");
    }

    #[test]
    fn the_set_request_parses_in_gotatun() {
        use gotatun::device::uapi::command::Request;
        let mut peer = SetPeer::new(hex_key(PUBLIC_HEX).unwrap());
        peer.endpoint = Some("[2001:db8::1]:1".parse().unwrap());
        peer.allowed_ips = vec!["::1.2.3.4/128".parse().unwrap()];
        let request = SetRequest {
            listen_port: Some(1),
            peers: vec![peer],
            ..SetRequest::default()
        };
        let text = request.to_string();
        let Ok(Request::Set(set)) = text.parse::<Request>() else {
            panic!("gotatun does not take {text:?}")
        };
        assert_eq!(set.peers.len(), 1);
    }

    /// Expected strings from glibc's `inet_ntop` (checked with
    /// `python3 -c 'import socket; print(socket.inet_ntop(socket.AF_INET6, …))'`,
    /// which calls it).
    #[test]
    fn ipv6_text_like_inet_ntop() {
        for (input, expected) in [
            ("::", "::"),
            ("::1", "::1"),
            ("1::", "1::"),
            ("fd77:4e34:1::2", "fd77:4e34:1::2"),
            ("2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"),
            ("2001:0:0:1:0:0:0:1", "2001:0:0:1::1"),
            ("2001:db8:0:1:1:1:1:1", "2001:db8:0:1:1:1:1:1"),
            ("::ffff:1.2.3.4", "::ffff:1.2.3.4"),
            ("::ffff:0:0", "::ffff:0.0.0.0"),
            ("::1.2.3.4", "::1.2.3.4"),
            ("::102:304", "::1.2.3.4"),
            ("::ffff:1:2:3", "::ffff:1:2:3"),
            ("64:ff9b::1.2.3.4", "64:ff9b::102:304"),
            ("1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7:8"),
            ("1:0:2:3:4:5:6:7", "1:0:2:3:4:5:6:7"),
            ("0:0:1:0:0:0:0:0", "0:0:1::"),
            ("ABCD::EF", "abcd::ef"),
        ] {
            let addr: Ipv6Addr = input.parse().unwrap();
            assert_eq!(ntop6(&addr), expected, "{input}");
        }
    }

    #[test]
    fn endpoints_like_getnameinfo() {
        let text = |s: &str| EndpointText(s.parse().unwrap()).to_string();
        assert_eq!(text("10.0.0.1:51820"), "10.0.0.1:51820");
        assert_eq!(text("[2001:db8::1]:51820"), "[2001:db8::1]:51820");
        assert_eq!(text("[::ffff:10.0.0.1]:1"), "[::ffff:10.0.0.1]:1");
        let global = SocketAddr::V6(SocketAddrV6::new("2001:db8::1".parse().unwrap(), 1, 0, 7));
        assert_eq!(EndpointText(global).to_string(), "[2001:db8::1%7]:1");
        let lo = nix::net::if_::if_nametoindex("lo").unwrap();
        let link_local = SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 1, 0, lo));
        assert_eq!(EndpointText(link_local).to_string(), "[fe80::1%lo]:1");
        // And back.
        assert_eq!(parse_endpoint("[fe80::1%lo]:1"), Some(link_local));
    }

    #[test]
    fn allowed_ip_host_bits() {
        let ip = |s: &str| s.parse::<AllowedIp>().unwrap();
        assert!(ip("10.0.0.0/8").host_bits_are_zero());
        assert!(!ip("10.0.0.1/8").host_bits_are_zero());
        assert!(ip("10.0.0.1/32").host_bits_are_zero());
        assert!(ip("0.0.0.0/0").host_bits_are_zero());
        assert!(!ip("1.0.0.0/0").host_bits_are_zero());
        assert!(ip("fd00::/8").host_bits_are_zero());
        assert!(!ip("fd00::1/64").host_bits_are_zero());
        assert!(ip("::1/128").host_bits_are_zero());
        assert_eq!(ip("::1.2.3.4/128").to_string(), "::1.2.3.4/128");
    }
}

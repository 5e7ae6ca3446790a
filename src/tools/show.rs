//! `wireguard4netns show`: `wg show` for our sockets.
//!
//! The output is byte for byte what `wg show` prints (wireguard-tools
//! `src/show.c`, v1.0.20210914 as in Debian bookworm), so scripts written
//! against `wg` work unchanged:
//!
//! * human form: `interface:`, the interface's lines, and per peer `peer:`
//!   with its lines, peers sorted by latest handshake (most recent first,
//!   never last); in colour when stdout is a terminal, unless
//!   `WG_COLOR_MODE=never` (or forced with `always`); private and preshared
//!   keys `(hidden)` unless `WG_HIDE_KEYS=never`;
//! * `dump` and the single-field forms: tab-separated, `(none)` for a missing
//!   key, endpoint or allowed-IPs list, `off` for no fwmark or keepalive, 0
//!   for no handshake; with `all` every line starts with the interface name.
//!   (wg 1.0.20210914 writes the name only once before all peers in `all
//!   endpoints`; later versions fixed that, and so do we.)
//! * `all` (or nothing) goes through every live socket in the directory,
//!   `interfaces` lists their names.

use std::cmp::Ordering;
use std::fmt::Write as _;
use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Args, ValueEnum};

use super::client::{self, ClientError};
use super::proto::{Device, EndpointText, Peer};

/// `wireguard4netns show`: print tunnels' state like `wg show`.
#[derive(Debug, Clone, Args)]
pub struct ShowArgs {
    /// Directory of the UAPI sockets [default: /var/run/wireguard as root,
    /// else $XDG_RUNTIME_DIR/wireguard4netns, else /tmp/wireguard4netns-UID]
    #[arg(long, visible_alias = "socket-dir", value_name = "DIR")]
    pub tmpdir: Option<PathBuf>,

    /// An interface name; `all` (the default) for every tunnel in DIR;
    /// `interfaces` to list their names
    #[arg(value_name = "IFNAME|all|interfaces")]
    pub interface: Option<String>,

    /// Print only this, in `wg show`'s tab-separated form [default: all of it,
    /// readable]
    #[arg(value_enum, value_name = "FIELD")]
    pub field: Option<Field>,
}

/// The single-field forms of `wg show IFNAME FIELD`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Field {
    /// Everything, one tab-separated line for the interface and one per peer
    Dump,
    /// The interface's public key
    PublicKey,
    /// The interface's private key
    PrivateKey,
    /// The UDP port
    ListenPort,
    /// The UDP socket's mark (hex), or off
    Fwmark,
    /// The peers' public keys
    Peers,
    /// Per peer: its preshared key, or (none)
    PresharedKeys,
    /// Per peer: its current endpoint, or (none)
    Endpoints,
    /// Per peer: its allowed IPs
    AllowedIps,
    /// Per peer: Unix time of its latest handshake (0: never)
    LatestHandshakes,
    /// Per peer: bytes received and sent
    Transfer,
    /// Per peer: keepalive interval in seconds, or off
    PersistentKeepalive,
}

/// Why `show` failed.
#[derive(Debug, thiserror::Error)]
pub enum ShowError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("`show interfaces` takes no field; use `show all {field}`")]
    InterfacesWithField { field: String },
    #[error("none of the tunnels in {} could be read (see the messages above)", dir.display())]
    NoneReadable { dir: PathBuf },
    #[error("cannot write to stdout: {0}")]
    Write(io::Error),
}

/// How the human form looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Style {
    /// ANSI colours and bold, as `wg` uses them on a terminal.
    pub color: bool,
    /// Print private and preshared keys instead of `(hidden)`.
    pub show_keys: bool,
}

impl Style {
    /// `wg`'s rules: colour if `WG_COLOR_MODE=always`, none if `never`, else
    /// if stdout is a terminal; keys shown only with `WG_HIDE_KEYS=never`.
    #[must_use]
    pub fn from_env(stdout_is_terminal: bool) -> Self {
        let color = match std::env::var("WG_COLOR_MODE").as_deref() {
            Ok("always") => true,
            Ok("never") => false,
            _ => stdout_is_terminal,
        };
        let show_keys = std::env::var("WG_HIDE_KEYS").as_deref() == Ok("never");
        Self { color, show_keys }
    }
}

const RESET: &str = "\x1b[0m";
const BOLD: &str = "\x1b[1m";
const RED: &str = "\x1b[31m";
const GREEN: &str = "\x1b[32m";
const YELLOW: &str = "\x1b[33m";
const CYAN: &str = "\x1b[36m";

impl Style {
    /// `code` in colour mode, nothing otherwise.
    fn c(self, code: &'static str) -> &'static str {
        if self.color { code } else { "" }
    }
}

/// Runs `show` against the real stdout and stderr.
///
/// # Errors
/// [`ShowError`]: a named tunnel that cannot be read, or none of `all`.
/// Tunnels of `all` that cannot be read are reported on stderr and skipped,
/// as `wg` does. A closed stdout (`show | head`) is not an error.
pub fn show(args: &ShowArgs) -> Result<(), ShowError> {
    let dir = args.tmpdir.clone().unwrap_or_else(crate::uapi::default_dir);
    let style = Style::from_env(io::stdout().is_terminal());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let result = run(
        &dir,
        args.interface.as_deref(),
        args.field,
        style,
        now,
        &mut io::stdout().lock(),
        &mut io::stderr().lock(),
    );
    match result {
        Err(ShowError::Write(e)) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// [`show`] with its inputs explicit: `now` is the Unix time the handshake
/// ages are measured against.
///
/// # Errors
/// As [`show`].
pub fn run(
    dir: &Path,
    interface: Option<&str>,
    field: Option<Field>,
    style: Style,
    now: u64,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<(), ShowError> {
    match interface {
        None | Some("all") => {
            let names = client::list_interfaces(dir)?;
            let mut readable = names.is_empty();
            for (i, name) in names.iter().enumerate() {
                let device = match client::get(dir, name) {
                    Ok(device) => device,
                    Err(e) => {
                        // Like wg's "Unable to access interface NAME: ...".
                        let _ = writeln!(err, "wireguard4netns: cannot read interface {name}: {e}");
                        continue;
                    }
                };
                readable = true;
                let mut text = match field {
                    Some(field) => print_field(name, &device, field, true),
                    None => pretty(name, &device, style, now),
                };
                if field.is_none() && i + 1 < names.len() {
                    text.push('\n');
                }
                out.write_all(text.as_bytes()).map_err(ShowError::Write)?;
            }
            if !readable {
                return Err(ShowError::NoneReadable {
                    dir: dir.to_owned(),
                });
            }
        }
        Some("interfaces") => {
            if let Some(field) = field {
                let field = field
                    .to_possible_value()
                    .map_or_else(String::new, |v| v.get_name().to_owned());
                return Err(ShowError::InterfacesWithField { field });
            }
            let names = client::list_interfaces(dir)?;
            if !names.is_empty() {
                writeln!(out, "{}", names.join(" ")).map_err(ShowError::Write)?;
            }
        }
        Some(name) => {
            let device = client::get(dir, name)?;
            let text = match field {
                Some(field) => print_field(name, &device, field, false),
                None => pretty(name, &device, style, now),
            };
            out.write_all(text.as_bytes()).map_err(ShowError::Write)?;
        }
    }
    out.flush().map_err(ShowError::Write)
}

/// `pretty_time()`: "1 year, 2 days, 3 hours, 4 minutes, 5 seconds", zero
/// parts left out; "" for 0.
#[must_use]
pub fn pretty_time(seconds: u64, style: Style) -> String {
    const MINUTE: u64 = 60;
    const HOUR: u64 = 60 * MINUTE;
    const DAY: u64 = 24 * HOUR;
    const YEAR: u64 = 365 * DAY;
    let parts = [
        (seconds / YEAR, "year"),
        (seconds % YEAR / DAY, "day"),
        (seconds % DAY / HOUR, "hour"),
        (seconds % HOUR / MINUTE, "minute"),
        (seconds % MINUTE, "second"),
    ];
    let mut out = String::new();
    for (n, unit) in parts {
        if n == 0 {
            continue;
        }
        if !out.is_empty() {
            out.push_str(", ");
        }
        let plural = if n == 1 { "" } else { "s" };
        let _ = write!(out, "{n} {}{unit}{plural}{}", style.c(CYAN), style.c(RESET));
    }
    out
}

/// `ago()`: how long ago Unix time `then` was, seen at `now`.
#[must_use]
pub fn ago(then: u64, now: u64, style: Style) -> String {
    match now.cmp(&then) {
        Ordering::Equal => "Now".to_owned(),
        Ordering::Less => format!(
            "({}System clock wound backward; connection problems may ensue.{})",
            style.c(RED),
            style.c(RESET)
        ),
        Ordering::Greater => format!("{} ago", pretty_time(now - then, style)),
    }
}

/// `bytes()`: "123 B", "1.23 KiB", … "1.23 TiB" (binary units, two decimals,
/// rounded as printf's `%.2f` rounds).
#[must_use]
pub fn bytes(b: u64, style: Style) -> String {
    const KIB: u64 = 1024;
    let (value, unit) = if b < KIB {
        return format!("{b} {}B{}", style.c(CYAN), style.c(RESET));
    } else if b < KIB.pow(2) {
        (b as f64 / 1024.0, "KiB")
    } else if b < KIB.pow(3) {
        (b as f64 / (1024.0 * 1024.0), "MiB")
    } else if b < KIB.pow(4) {
        (b as f64 / (1024.0 * 1024.0 * 1024.0), "GiB")
    } else {
        (b as f64 / (1024.0 * 1024.0 * 1024.0) / 1024.0, "TiB")
    };
    format!("{value:.2} {}{unit}{}", style.c(CYAN), style.c(RESET))
}

/// `peer_cmp()`: latest handshake first, peers that never had one last; a
/// stable sort, as glibc's `qsort` (a merge sort) is for this size.
fn by_latest_handshake(a: &&Peer, b: &&Peer) -> Ordering {
    let never = |p: &Peer| p.last_handshake_time_sec == 0 && p.last_handshake_time_nsec == 0;
    match (never(a), never(b)) {
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        _ => (b.last_handshake_time_sec, b.last_handshake_time_nsec)
            .cmp(&(a.last_handshake_time_sec, a.last_handshake_time_nsec)),
    }
}

/// The human form of `wg show NAME` (`pretty_print()`).
#[must_use]
pub fn pretty(name: &str, device: &Device, style: Style, now: u64) -> String {
    let c = |code| style.c(code);
    let (bold, reset) = (c(BOLD), c(RESET));
    let hidden = |key: &crate::keys::Key| {
        if style.show_keys {
            key.to_string()
        } else {
            "(hidden)".to_owned()
        }
    };
    let mut s = String::new();
    s.push_str(reset);
    let _ = writeln!(
        s,
        "{}{bold}interface{reset}: {}{name}{reset}",
        c(GREEN),
        c(GREEN)
    );
    if let (Some(private), Some(public)) = (&device.private_key, device.public_key()) {
        let _ = writeln!(s, "  {bold}public key{reset}: {public}");
        let _ = writeln!(s, "  {bold}private key{reset}: {}", hidden(private));
    }
    if let Some(port) = device.listen_port.filter(|p| *p != 0) {
        let _ = writeln!(s, "  {bold}listening port{reset}: {port}");
    }
    if let Some(mark) = device.fwmark.filter(|m| *m != 0) {
        let _ = writeln!(s, "  {bold}fwmark{reset}: 0x{mark:x}");
    }
    let mut peers: Vec<&Peer> = device.peers.iter().collect();
    peers.sort_by(by_latest_handshake);
    if !peers.is_empty() {
        s.push('\n');
    }
    for (i, peer) in peers.iter().enumerate() {
        let yellow = c(YELLOW);
        let _ = writeln!(
            s,
            "{yellow}{bold}peer{reset}: {yellow}{}{reset}",
            peer.public_key
        );
        if let Some(psk) = &peer.preshared_key {
            let _ = writeln!(s, "  {bold}preshared key{reset}: {}", hidden(psk));
        }
        if let Some(endpoint) = peer.endpoint {
            let _ = writeln!(s, "  {bold}endpoint{reset}: {}", EndpointText(endpoint));
        }
        let _ = write!(s, "  {bold}allowed ips{reset}: ");
        if peer.allowed_ips.is_empty() {
            s.push_str("(none)\n");
        } else {
            let ips: Vec<String> = peer
                .allowed_ips
                .iter()
                .map(|ip| {
                    format!(
                        "{}{}/{reset}{}",
                        super::proto::IpText(ip.addr),
                        c(CYAN),
                        ip.cidr
                    )
                })
                .collect();
            let _ = writeln!(s, "{}", ips.join(", "));
        }
        if peer.last_handshake_time_sec != 0 {
            let _ = writeln!(
                s,
                "  {bold}latest handshake{reset}: {}",
                ago(peer.last_handshake_time_sec, now, style)
            );
        }
        if peer.rx_bytes != 0 || peer.tx_bytes != 0 {
            let _ = writeln!(
                s,
                "  {bold}transfer{reset}: {} received, {} sent",
                bytes(peer.rx_bytes, style),
                bytes(peer.tx_bytes, style)
            );
        }
        if peer.persistent_keepalive_interval != 0 {
            let _ = writeln!(
                s,
                "  {bold}persistent keepalive{reset}: every {}",
                pretty_time(u64::from(peer.persistent_keepalive_interval), style)
            );
        }
        if i + 1 < peers.len() {
            s.push('\n');
        }
    }
    s
}

fn maybe_key(key: Option<&crate::keys::Key>) -> String {
    key.map_or_else(|| "(none)".to_owned(), ToString::to_string)
}

fn fwmark_text(mark: Option<u32>) -> String {
    match mark {
        Some(mark) if mark != 0 => format!("0x{mark:x}"),
        _ => "off".to_owned(),
    }
}

fn endpoint_text(peer: &Peer) -> String {
    peer.endpoint
        .map_or_else(|| "(none)".to_owned(), |e| EndpointText(e).to_string())
}

fn allowed_ips_text(peer: &Peer, separator: &str) -> String {
    if peer.allowed_ips.is_empty() {
        return "(none)".to_owned();
    }
    peer.allowed_ips
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(separator)
}

fn keepalive_text(peer: &Peer) -> String {
    match peer.persistent_keepalive_interval {
        0 => "off".to_owned(),
        n => n.to_string(),
    }
}

/// `wg show NAME FIELD` (`ugly_print()`); `with_interface` for `all`, which
/// starts every line with the interface name.
#[must_use]
pub fn print_field(name: &str, device: &Device, field: Field, with_interface: bool) -> String {
    let prefix = if with_interface {
        format!("{name}\t")
    } else {
        String::new()
    };
    let mut s = String::new();
    let mut line = |text: String| {
        let _ = writeln!(s, "{prefix}{text}");
    };
    let public = device.public_key();
    match field {
        Field::PublicKey => line(maybe_key(public.as_ref())),
        Field::PrivateKey => line(maybe_key(device.private_key.as_ref())),
        Field::ListenPort => line(device.listen_port.unwrap_or(0).to_string()),
        Field::Fwmark => line(fwmark_text(device.fwmark)),
        Field::Peers => device
            .peers
            .iter()
            .for_each(|p| line(p.public_key.to_string())),
        Field::PresharedKeys => device.peers.iter().for_each(|p| {
            line(format!(
                "{}\t{}",
                p.public_key,
                maybe_key(p.preshared_key.as_ref())
            ));
        }),
        Field::Endpoints => device
            .peers
            .iter()
            .for_each(|p| line(format!("{}\t{}", p.public_key, endpoint_text(p)))),
        Field::AllowedIps => device
            .peers
            .iter()
            .for_each(|p| line(format!("{}\t{}", p.public_key, allowed_ips_text(p, " ")))),
        Field::LatestHandshakes => device.peers.iter().for_each(|p| {
            line(format!("{}\t{}", p.public_key, p.last_handshake_time_sec));
        }),
        Field::Transfer => device.peers.iter().for_each(|p| {
            line(format!("{}\t{}\t{}", p.public_key, p.rx_bytes, p.tx_bytes));
        }),
        Field::PersistentKeepalive => device
            .peers
            .iter()
            .for_each(|p| line(format!("{}\t{}", p.public_key, keepalive_text(p)))),
        Field::Dump => {
            line(format!(
                "{}\t{}\t{}\t{}",
                maybe_key(device.private_key.as_ref()),
                maybe_key(public.as_ref()),
                device.listen_port.unwrap_or(0),
                fwmark_text(device.fwmark)
            ));
            for p in &device.peers {
                line(format!(
                    "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                    p.public_key,
                    maybe_key(p.preshared_key.as_ref()),
                    endpoint_text(p),
                    allowed_ips_text(p, ","),
                    p.last_handshake_time_sec,
                    p.rx_bytes,
                    p.tx_bytes,
                    keepalive_text(p)
                ));
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Key;
    use crate::tools::proto::AllowedIp;

    const PLAIN: Style = Style {
        color: false,
        show_keys: false,
    };
    const COLOR: Style = Style {
        color: true,
        show_keys: false,
    };
    // wg(8)'s example private key and its public key.
    const PRIVATE: &str = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";
    const PUBLIC: &str = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=";
    const PEER_A: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";
    const PEER_B: &str = "TrMvSoP4jYQlY6RIzBgbssQqY3vxI2Pi+y71lOWWXX0=";
    const PEER_C: &str = "gN65BkIKy1eCE9pP1wdc8ROUtkHLF2PfAqYdyYBz6EA=";
    const PSK: &str = "FpCyhws9cxwWoV4xELtfJvjJN+zQVRPISllRWgeopVE=";
    const NOW: u64 = 1_700_000_000;

    fn key(text: &str) -> Key {
        text.parse().unwrap()
    }

    fn ip(text: &str) -> AllowedIp {
        text.parse().unwrap()
    }

    fn example() -> Device {
        let mut a = Peer::new(key(PEER_A));
        a.endpoint = Some("192.95.5.67:1234".parse().unwrap());
        a.allowed_ips = vec![ip("10.192.122.3/32"), ip("10.192.124.1/24")];
        a.last_handshake_time_sec = NOW - 62;
        a.rx_bytes = 1260;
        a.tx_bytes = 4669;
        a.persistent_keepalive_interval = 25;
        let mut b = Peer::new(key(PEER_B));
        b.preshared_key = Some(key(PSK));
        b.endpoint = Some("[2607:5300:60:6b0::c05f:543]:2468".parse().unwrap());
        b.allowed_ips = vec![ip("10.192.122.4/32"), ip("192.168.0.0/16")];
        b.last_handshake_time_sec = NOW - 1;
        b.rx_bytes = 512;
        b.tx_bytes = 0;
        let mut c = Peer::new(key(PEER_C));
        c.allowed_ips = vec![];
        Device {
            private_key: Some(key(PRIVATE)),
            listen_port: Some(51820),
            fwmark: Some(0xca6c),
            // Not in handshake order: `pretty` sorts, `dump` does not.
            peers: vec![c, a, b],
            errno: 0,
        }
    }

    #[test]
    fn pretty_time_like_show_c() {
        assert_eq!(pretty_time(0, PLAIN), "");
        assert_eq!(pretty_time(1, PLAIN), "1 second");
        assert_eq!(pretty_time(25, PLAIN), "25 seconds");
        assert_eq!(pretty_time(62, PLAIN), "1 minute, 2 seconds");
        assert_eq!(pretty_time(120, PLAIN), "2 minutes");
        assert_eq!(pretty_time(3600, PLAIN), "1 hour");
        assert_eq!(pretty_time(86_400 + 1, PLAIN), "1 day, 1 second");
        assert_eq!(
            pretty_time(365 * 86_400 + 2 * 86_400 + 3 * 3600 + 4 * 60 + 5, PLAIN),
            "1 year, 2 days, 3 hours, 4 minutes, 5 seconds"
        );
        assert_eq!(
            pretty_time(65_535, PLAIN),
            "18 hours, 12 minutes, 15 seconds"
        );
        assert_eq!(
            pretty_time(62, COLOR),
            "1 \x1b[36mminute\x1b[0m, 2 \x1b[36mseconds\x1b[0m"
        );
    }

    #[test]
    fn ago_like_show_c() {
        assert_eq!(ago(NOW, NOW, PLAIN), "Now");
        assert_eq!(ago(NOW - 62, NOW, PLAIN), "1 minute, 2 seconds ago");
        assert_eq!(
            ago(NOW + 1, NOW, PLAIN),
            "(System clock wound backward; connection problems may ensue.)"
        );
        assert_eq!(
            ago(NOW + 1, NOW, COLOR),
            "(\x1b[31mSystem clock wound backward; connection problems may ensue.\x1b[0m)"
        );
    }

    #[test]
    fn bytes_like_show_c() {
        for (b, text) in [
            (0, "0 B"),
            (1023, "1023 B"),
            (1024, "1.00 KiB"),
            (1260, "1.23 KiB"),
            (4669, "4.56 KiB"),
            // 1.125 exactly: printf rounds the tie to even, and so do we.
            (1152, "1.12 KiB"),
            (1_048_575, "1024.00 KiB"),
            (1 << 20, "1.00 MiB"),
            (5 << 29, "2.50 GiB"),
            (1 << 40, "1.00 TiB"),
            (u64::MAX, "16777216.00 TiB"),
        ] {
            assert_eq!(bytes(b, PLAIN), text, "{b}");
        }
        assert_eq!(bytes(1260, COLOR), "1.23 \x1b[36mKiB\x1b[0m");
    }

    #[test]
    fn pretty_like_show_c() {
        let expected = format!(
            "interface: wg0
  public key: {PUBLIC}
  private key: (hidden)
  listening port: 51820
  fwmark: 0xca6c

peer: {PEER_B}
  preshared key: (hidden)
  endpoint: [2607:5300:60:6b0::c05f:543]:2468
  allowed ips: 10.192.122.4/32, 192.168.0.0/16
  latest handshake: 1 second ago
  transfer: 512 B received, 0 B sent

peer: {PEER_A}
  endpoint: 192.95.5.67:1234
  allowed ips: 10.192.122.3/32, 10.192.124.1/24
  latest handshake: 1 minute, 2 seconds ago
  transfer: 1.23 KiB received, 4.56 KiB sent
  persistent keepalive: every 25 seconds

peer: {PEER_C}
  allowed ips: (none)
"
        );
        assert_eq!(pretty("wg0", &example(), PLAIN, NOW), expected);
    }

    #[test]
    fn pretty_in_colour_like_show_c() {
        let mut device = example();
        device.peers.truncate(2);
        device.peers[1].allowed_ips.truncate(1);
        device.fwmark = None;
        let expected = format!(
            "\x1b[0m\x1b[32m\x1b[1minterface\x1b[0m: \x1b[32mwg0\x1b[0m
  \x1b[1mpublic key\x1b[0m: {PUBLIC}
  \x1b[1mprivate key\x1b[0m: (hidden)
  \x1b[1mlistening port\x1b[0m: 51820

\x1b[33m\x1b[1mpeer\x1b[0m: \x1b[33m{PEER_A}\x1b[0m
  \x1b[1mendpoint\x1b[0m: 192.95.5.67:1234
  \x1b[1mallowed ips\x1b[0m: 10.192.122.3\x1b[36m/\x1b[0m32
  \x1b[1mlatest handshake\x1b[0m: 1 \x1b[36mminute\x1b[0m, 2 \x1b[36mseconds\x1b[0m ago
  \x1b[1mtransfer\x1b[0m: 1.23 \x1b[36mKiB\x1b[0m received, 4.56 \x1b[36mKiB\x1b[0m sent
  \x1b[1mpersistent keepalive\x1b[0m: every 25 \x1b[36mseconds\x1b[0m

\x1b[33m\x1b[1mpeer\x1b[0m: \x1b[33m{PEER_C}\x1b[0m
  \x1b[1mallowed ips\x1b[0m: (none)
"
        );
        assert_eq!(pretty("wg0", &device, COLOR, NOW), expected);
    }

    #[test]
    fn pretty_shows_keys_when_asked() {
        let style = Style {
            color: false,
            show_keys: true,
        };
        let text = pretty("wg0", &example(), style, NOW);
        assert!(
            text.contains(&format!("  private key: {PRIVATE}\n")),
            "{text}"
        );
        assert!(
            text.contains(&format!("  preshared key: {PSK}\n")),
            "{text}"
        );
    }

    #[test]
    fn pretty_of_a_bare_device() {
        let device = Device {
            listen_port: Some(0),
            ..Device::default()
        };
        assert_eq!(pretty("x", &device, PLAIN, NOW), "interface: x\n");
    }

    #[test]
    fn sorting_keeps_the_order_of_ties() {
        let mut device = Device::default();
        for (k, sec, nsec) in [(PEER_A, 0, 0), (PEER_B, 5, 1), (PEER_C, 5, 2)] {
            let mut p = Peer::new(key(k));
            p.last_handshake_time_sec = sec;
            p.last_handshake_time_nsec = nsec;
            device.peers.push(p);
        }
        let mut d = Peer::new(key(PSK));
        d.last_handshake_time_nsec = 0;
        device.peers.push(d);
        let order: Vec<String> = pretty("x", &device, PLAIN, NOW)
            .lines()
            .filter_map(|l| l.strip_prefix("peer: ").map(str::to_owned))
            .collect();
        assert_eq!(order, [PEER_C, PEER_B, PEER_A, PSK]);
    }

    #[test]
    fn dump_like_show_c() {
        let expected = format!(
            "{PRIVATE}\t{PUBLIC}\t51820\t0xca6c
{PEER_C}\t(none)\t(none)\t(none)\t0\t0\t0\toff
{PEER_A}\t(none)\t192.95.5.67:1234\t10.192.122.3/32,10.192.124.1/24\t{}\t1260\t4669\t25
{PEER_B}\t{PSK}\t[2607:5300:60:6b0::c05f:543]:2468\t10.192.122.4/32,192.168.0.0/16\t{}\t512\t0\toff
",
            NOW - 62,
            NOW - 1
        );
        assert_eq!(print_field("wg0", &example(), Field::Dump, false), expected);
        let with_name = print_field("wg0", &example(), Field::Dump, true);
        assert_eq!(with_name.lines().count(), 4);
        assert!(
            with_name.lines().all(|l| l.starts_with("wg0\t")),
            "{with_name}"
        );
    }

    #[test]
    fn dump_of_a_device_without_key_or_port() {
        assert_eq!(
            print_field("wg0", &Device::default(), Field::Dump, false),
            "(none)\t(none)\t0\toff\n"
        );
    }

    #[test]
    fn single_fields_like_show_c() {
        let d = example();
        let f = |field| print_field("wg0", &d, field, false);
        assert_eq!(f(Field::PublicKey), format!("{PUBLIC}\n"));
        assert_eq!(f(Field::PrivateKey), format!("{PRIVATE}\n"));
        assert_eq!(f(Field::ListenPort), "51820\n");
        assert_eq!(f(Field::Fwmark), "0xca6c\n");
        assert_eq!(f(Field::Peers), format!("{PEER_C}\n{PEER_A}\n{PEER_B}\n"));
        assert_eq!(
            f(Field::PresharedKeys),
            format!("{PEER_C}\t(none)\n{PEER_A}\t(none)\n{PEER_B}\t{PSK}\n")
        );
        assert_eq!(
            f(Field::Endpoints),
            format!(
                "{PEER_C}\t(none)\n{PEER_A}\t192.95.5.67:1234\n{PEER_B}\t[2607:5300:60:6b0::c05f:543]:2468\n"
            )
        );
        assert_eq!(
            f(Field::AllowedIps),
            format!(
                "{PEER_C}\t(none)\n{PEER_A}\t10.192.122.3/32 10.192.124.1/24\n{PEER_B}\t10.192.122.4/32 192.168.0.0/16\n"
            )
        );
        assert_eq!(
            f(Field::LatestHandshakes),
            format!(
                "{PEER_C}\t0\n{PEER_A}\t{}\n{PEER_B}\t{}\n",
                NOW - 62,
                NOW - 1
            )
        );
        assert_eq!(
            f(Field::Transfer),
            format!("{PEER_C}\t0\t0\n{PEER_A}\t1260\t4669\n{PEER_B}\t512\t0\n")
        );
        assert_eq!(
            f(Field::PersistentKeepalive),
            format!("{PEER_C}\toff\n{PEER_A}\t25\n{PEER_B}\toff\n")
        );
        let all = print_field("wg0", &d, Field::Endpoints, true);
        assert!(all.lines().all(|l| l.starts_with("wg0\t")), "{all}");
        let no_key = Device::default();
        assert_eq!(
            print_field("wg0", &no_key, Field::PublicKey, true),
            "wg0\t(none)\n"
        );
        assert_eq!(print_field("wg0", &no_key, Field::Fwmark, false), "off\n");
        assert_eq!(print_field("wg0", &no_key, Field::Peers, false), "");
    }

    /// A fake tunnel answering `get` with a fixed text, on as many connections
    /// as come (the listing probes connect too).
    fn fake_tunnel(dir: &Path, name: &str, answer: &'static str) {
        use std::io::{BufRead, BufReader};
        let listener =
            std::os::unix::net::UnixListener::bind(dir.join(format!("{name}.sock"))).unwrap();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(&conn);
                    let mut line = String::new();
                    while reader.read_line(&mut line).unwrap_or(0) > 0 {
                        if line.ends_with("\n\n") || line == "\n" {
                            let _ = (&conn).write_all(answer.as_bytes());
                            line.clear();
                        }
                    }
                });
            }
        });
    }

    fn run_show(dir: &Path, iface: Option<&str>, field: Option<Field>) -> (String, String, bool) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let ok = run(dir, iface, field, PLAIN, NOW, &mut out, &mut err).is_ok();
        (
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
            ok,
        )
    }

    #[test]
    fn all_interfaces_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let (out, _, ok) = run_show(dir.path(), None, None);
        assert!(ok && out.is_empty(), "no tunnels: nothing, success");
        let (out, _, ok) = run_show(dir.path(), Some("interfaces"), None);
        assert!(ok && out.is_empty());

        fake_tunnel(dir.path(), "b", "listen_port=2\nerrno=0\n\n");
        fake_tunnel(dir.path(), "a", "listen_port=1\nerrno=0\n\n");
        let (out, _, ok) = run_show(dir.path(), Some("all"), None);
        assert!(ok);
        assert_eq!(
            out,
            "interface: a\n  listening port: 1\n\ninterface: b\n  listening port: 2\n"
        );
        let (out, _, _) = run_show(dir.path(), None, Some(Field::ListenPort));
        assert_eq!(out, "a\t1\nb\t2\n");
        let (out, _, _) = run_show(dir.path(), Some("interfaces"), None);
        assert_eq!(out, "a b\n");
        let (out, _, _) = run_show(dir.path(), Some("b"), Some(Field::Dump));
        assert_eq!(out, "(none)\t(none)\t2\toff\n");

        // One broken tunnel: reported, the others still shown, success.
        fake_tunnel(dir.path(), "c", "errno=5\n\n");
        let (out, err, ok) = run_show(dir.path(), None, Some(Field::ListenPort));
        assert!(ok);
        assert_eq!(out, "a\t1\nb\t2\n");
        assert!(err.contains("cannot read interface c"), "{err}");
        assert!(err.contains("I/O error (errno 5)"), "{err}");

        let mut out = Vec::new();
        let e = run(
            dir.path(),
            Some("interfaces"),
            Some(Field::Dump),
            PLAIN,
            NOW,
            &mut out,
            &mut Vec::new(),
        )
        .unwrap_err();
        assert!(matches!(e, ShowError::InterfacesWithField { .. }), "{e}");
        let (_, _, ok) = run_show(dir.path(), Some("missing"), None);
        assert!(!ok);
    }

    #[test]
    fn all_unreadable_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        fake_tunnel(dir.path(), "c", "errno=5\n\n");
        let (out, err, ok) = run_show(dir.path(), None, None);
        assert!(!ok && out.is_empty(), "{out}");
        assert!(err.contains("interface c"), "{err}");
    }
}

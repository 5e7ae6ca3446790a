//! `wireguard4netns set`: `wg set` for our sockets.
//!
//! The argument grammar and its meaning are `wg set`'s (wireguard-tools
//! `config.c`, `config_read_cmd`, v1.0.20210914 as in Debian bookworm):
//!
//! * `listen-port`, `fwmark` and `private-key` only before the first `peer`;
//! * `private-key FILE` and `preshared-key FILE` read a file holding one
//!   base64 key and nothing but whitespace after it; an empty file (or
//!   `/dev/null`) sends an all-zero key, which removes a preshared key;
//! * `fwmark` is decimal, `0x` hex, or `off`; `persistent-keepalive` is
//!   seconds or `off`;
//! * `endpoint HOST:PORT` (`[IPv6]:PORT`) is resolved here, the first address
//!   the resolver returns is sent;
//! * `allowed-ips` replaces the peer's list (spaces ignored, comma-separated,
//!   a bare address is /32 or /128, `""` empties it); host bits set after
//!   the prefix are sent as given, with a warning;
//! * `remove` removes the peer and ignores its other settings.
//!
//! `+IP`/`-IP` entries (incremental changes) arrived in wireguard-tools
//! 1.0.20250521; bookworm's `wg` rejects them, and so do we (gotatun cannot
//! remove a single allowed IP either).
//!
//! Differences, all stricter or clearer: a port is a number (no
//! `/etc/services` names), and an endpoint name that does not resolve fails at
//! once instead of being retried (`WG_ENDPOINT_RESOLUTION_RETRIES`).

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use clap::Args;

use super::client::{self, ClientError};
use super::proto::{AllowedIp, SetPeer, SetRequest};
use crate::keys::{KEY_LEN, Key, KeyError};

/// Key files longer than this are not key files.
const MAX_KEY_FILE: u64 = 64 * 1024;

/// The length of a key in base64.
const KEY_BASE64_LEN: usize = 44;

/// `wireguard4netns set`: change a running tunnel like `wg set`.
#[derive(Debug, Clone, Args)]
pub struct SetArgs {
    /// Directory of the UAPI sockets [default: /var/run/wireguard as root,
    /// else $XDG_RUNTIME_DIR/wireguard4netns, else /tmp/wireguard4netns-UID]
    #[arg(long, visible_alias = "socket-dir", value_name = "DIR")]
    pub tmpdir: Option<PathBuf>,

    /// The tunnel's interface name
    #[arg(value_name = "IFNAME")]
    pub interface: String,

    /// As `wg set` takes them: [listen-port PORT] [fwmark MARK]
    /// [private-key FILE] [peer PUBKEY [remove] [preshared-key FILE]
    /// [endpoint HOST:PORT] [persistent-keepalive SECONDS|off]
    /// [allowed-ips IP/CIDR[,IP/CIDR…]]]…
    #[arg(
        value_name = "SETTING",
        required = true,
        num_args = 1..,
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub settings: Vec<String>,
}

/// Why `set` failed. Key material is never repeated in a message.
#[derive(Debug, thiserror::Error)]
pub enum SetError {
    #[error("invalid argument {arg:?}: {hint}")]
    InvalidArgument { arg: String, hint: String },

    #[error("listen-port {value:?} is not a port number (0-65535; 0 picks a free port)")]
    Port { value: String },

    #[error("fwmark {value:?} is neither 0/off nor 0-0xffffffff")]
    Fwmark { value: String },

    #[error("persistent-keepalive {value:?} is neither 0/off nor 1-65535 seconds")]
    Keepalive { value: String },

    #[error("peer {value:?} is not a public key: {error}")]
    PublicKey { value: String, error: KeyError },

    #[error("{what} {}: {reason}", path.display())]
    KeyFile {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },

    #[error("endpoint {value:?}: {reason}")]
    Endpoint { value: String, reason: String },

    #[error("allowed-ips entry {entry:?}: {reason}")]
    AllowedIp { entry: String, reason: &'static str },

    #[error(transparent)]
    Client(#[from] ClientError),
}

/// Runs `set`: parses the settings, applies them, prints warnings to stderr.
///
/// # Errors
/// [`SetError`] for a bad setting (nothing is sent then), or when the tunnel
/// cannot be reached or refuses the change.
pub fn set(args: &SetArgs) -> Result<(), SetError> {
    let dir = args.tmpdir.clone().unwrap_or_else(crate::uapi::default_dir);
    client::validate_ifname(&args.interface)?;
    let (request, warnings) = parse_settings(&args.settings)?;
    let mut stderr = io::stderr().lock();
    for warning in warnings {
        let _ = writeln!(stderr, "wireguard4netns: warning: {warning}");
    }
    client::set(&dir, &args.interface, &request)?;
    Ok(())
}

/// Turns `wg set`'s arguments (after the interface name) into a request and
/// the warnings `wg` would print.
///
/// # Errors
/// The first argument that `wg set` would reject, or a key file that cannot
/// be read.
pub fn parse_settings(args: &[String]) -> Result<(SetRequest, Vec<String>), SetError> {
    let mut request = SetRequest::default();
    let mut warnings = Vec::new();
    let mut rest = args;
    while let Some((word, after)) = rest.split_first() {
        let in_peer = !request.peers.is_empty();
        let value = after.first().map(String::as_str);
        let peer = request.peers.last_mut();
        rest = match (word.as_str(), value, peer) {
            ("listen-port", Some(value), None) => {
                request.listen_port = Some(parse_port(value)?);
                &after[1..]
            }
            ("fwmark", Some(value), None) => {
                request.fwmark = Some(parse_fwmark(value)?);
                &after[1..]
            }
            ("private-key", Some(value), None) => {
                request.private_key = Some(read_key_file("private-key", Path::new(value))?);
                &after[1..]
            }
            ("peer", Some(value), _) => {
                let key = value.parse().map_err(|error| SetError::PublicKey {
                    value: value.to_owned(),
                    error,
                })?;
                request.peers.push(SetPeer::new(key));
                &after[1..]
            }
            ("remove", _, Some(peer)) => {
                peer.remove = true;
                after
            }
            ("endpoint", Some(value), Some(peer)) => {
                peer.endpoint = Some(resolve_endpoint(value)?);
                &after[1..]
            }
            ("allowed-ips", Some(value), Some(peer)) => {
                peer.replace_allowed_ips = true;
                for ip in parse_allowed_ips(value)? {
                    if !ip.host_bits_are_zero() {
                        warnings.push(format!("allowed IP {ip} has a nonzero host part"));
                    }
                    peer.allowed_ips.push(ip);
                }
                &after[1..]
            }
            ("persistent-keepalive", Some(value), Some(peer)) => {
                peer.persistent_keepalive_interval = Some(parse_keepalive(value)?);
                &after[1..]
            }
            ("preshared-key", Some(value), Some(peer)) => {
                peer.preshared_key = Some(read_key_file("preshared-key", Path::new(value))?);
                &after[1..]
            }
            (word, value, _) => {
                return Err(SetError::InvalidArgument {
                    arg: word.to_owned(),
                    hint: hint(word, value.is_some(), in_peer),
                });
            }
        };
    }
    Ok((request, warnings))
}

/// What is wrong with an argument `config_read_cmd` would call invalid.
fn hint(word: &str, has_value: bool, in_peer: bool) -> String {
    const DEVICE: [&str; 3] = ["listen-port", "fwmark", "private-key"];
    const PEER: [&str; 5] = [
        "endpoint",
        "allowed-ips",
        "persistent-keepalive",
        "preshared-key",
        "remove",
    ];
    let takes_value = DEVICE.contains(&word) || PEER.contains(&word) || word == "peer";
    if takes_value && word != "remove" && !has_value {
        return format!("`{word}` needs a value");
    }
    if DEVICE.contains(&word) && in_peer {
        return format!("`{word}` belongs to the interface: put it before the first `peer`");
    }
    if PEER.contains(&word) {
        return format!("`{word}` belongs to a peer: put it after `peer PUBKEY`");
    }
    if word.starts_with("--") {
        return "options such as --tmpdir go before IFNAME".to_owned();
    }
    "expected listen-port, fwmark, private-key or peer PUBKEY followed by remove, \
     preshared-key, endpoint, persistent-keepalive or allowed-ips"
        .to_owned()
}

fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

fn parse_port(value: &str) -> Result<u16, SetError> {
    let bad = || SetError::Port {
        value: value.to_owned(),
    };
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    value.parse().map_err(|_| bad())
}

/// `off`, decimal, or hex after `0x` (as `strtoul` reads it).
fn parse_fwmark(value: &str) -> Result<u32, SetError> {
    let bad = || SetError::Fwmark {
        value: value.to_owned(),
    };
    if value.eq_ignore_ascii_case("off") {
        return Ok(0);
    }
    let (digits, radix) = match value.strip_prefix("0x") {
        Some(hex) if !hex.is_empty() => (hex, 16),
        _ => (value, 10),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    u32::from_str_radix(digits, radix).map_err(|_| bad())
}

fn parse_keepalive(value: &str) -> Result<u16, SetError> {
    if value.eq_ignore_ascii_case("off") {
        return Ok(0);
    }
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SetError::Keepalive {
            value: value.to_owned(),
        });
    }
    value.parse().map_err(|_| SetError::Keepalive {
        value: value.to_owned(),
    })
}

/// `parse_keyfile()`: 44 base64 characters, then only whitespace; an empty
/// file is the all-zero key.
fn read_key_file(what: &'static str, path: &Path) -> Result<Key, SetError> {
    let error = |reason: String| SetError::KeyFile {
        what,
        path: path.to_owned(),
        reason,
    };
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|f| f.take(MAX_KEY_FILE + 1).read_to_end(&mut bytes))
        .map_err(|e| error(format!("cannot read it: {e}")))?;
    if bytes.is_empty() {
        return Ok(Key::from_bytes([0; KEY_LEN]));
    }
    let too_long = u64::try_from(bytes.len()).map_or(true, |n| n > MAX_KEY_FILE);
    if too_long {
        return Err(error(format!(
            "larger than {MAX_KEY_FILE} bytes, so no key file"
        )));
    }
    let Some((key, trailing)) = bytes.split_at_checked(KEY_BASE64_LEN) else {
        return Err(error(format!(
            "a key file holds one base64 key of {KEY_BASE64_LEN} characters (or nothing, to remove the key); this one is {} bytes",
            bytes.len()
        )));
    };
    if !trailing.iter().copied().all(is_c_space) {
        return Err(error(
            "something other than whitespace follows the key; a key file holds one key".to_owned(),
        ));
    }
    let key = std::str::from_utf8(key)
        .map_err(|_| KeyError::NotBase64)
        .and_then(str::parse::<Key>)
        .map_err(|e| error(format!("it does not hold a key: {e}")))?;
    Ok(key)
}

/// `parse_endpoint()`: `[HOST]:PORT` or `HOST:PORT` split at the last colon,
/// then resolved; the first address wins.
fn resolve_endpoint(value: &str) -> Result<SocketAddr, SetError> {
    let error = |reason: String| SetError::Endpoint {
        value: value.to_owned(),
        reason,
    };
    if value.is_empty() {
        return Err(error(
            "it is empty; write HOST:PORT or [IPv6]:PORT".to_owned(),
        ));
    }
    let (host, port) = if let Some(rest) = value.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| error("no matching ']'".to_owned()))?;
        let port = after
            .strip_prefix(':')
            .filter(|p| !p.is_empty())
            .ok_or_else(|| error("no port after ']'; write [IPv6]:PORT".to_owned()))?;
        (host, port)
    } else {
        value
            .rsplit_once(':')
            .filter(|(_, port)| !port.is_empty())
            .ok_or_else(|| error("no port; write HOST:PORT or [IPv6]:PORT".to_owned()))?
    };
    let port: u16 = port
        .bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| port.parse().ok())
        .flatten()
        .ok_or_else(|| error(format!("port {port:?} is not a number 0-65535")))?;
    (host, port)
        .to_socket_addrs()
        .map_err(|e| error(format!("cannot resolve {host:?}: {e}")))?
        .next()
        .ok_or_else(|| error(format!("{host:?} has no IPv4 or IPv6 address")))
}

/// `parse_allowedips()` after `strip_spaces()`: comma-separated `IP[/CIDR]`.
fn parse_allowed_ips(value: &str) -> Result<Vec<AllowedIp>, SetError> {
    let cleaned: String = value
        .chars()
        .filter(|c| !u8::try_from(*c).is_ok_and(is_c_space))
        .collect();
    if cleaned.is_empty() {
        return Ok(Vec::new());
    }
    cleaned
        .split(',')
        .map(|entry| {
            let error = |reason| SetError::AllowedIp {
                entry: entry.to_owned(),
                reason,
            };
            if entry.starts_with(['+', '-']) {
                return Err(error(
                    "+/- (add or remove one entry) needs wireguard-tools 1.0.20250521 and is not \
                     supported; give the whole list, which replaces the old one",
                ));
            }
            let (ip, cidr) = match entry.split_once('/') {
                Some((ip, cidr)) => (ip, Some(cidr)),
                None => (entry, None),
            };
            let addr: std::net::IpAddr = ip
                .parse()
                .map_err(|_| error("not an IPv4 or IPv6 address"))?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let cidr = match cidr {
                None => max,
                Some(c) if !c.is_empty() && c.bytes().all(|b| b.is_ascii_digit()) => {
                    c.parse::<u8>().ok().filter(|n| *n <= max).ok_or_else(|| {
                        error("the prefix length is out of range (0-32 for IPv4, 0-128 for IPv6)")
                    })?
                }
                Some(_) => return Err(error("not IP/CIDR: the prefix length is not a number")),
            };
            Ok(AllowedIp { addr, cidr })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::proto::key_hex;

    const PEER: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";
    const OTHER: &str = "TrMvSoP4jYQlY6RIzBgbssQqY3vxI2Pi+y71lOWWXX0=";
    const PRIVATE: &str = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";

    fn args(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| (*w).to_owned()).collect()
    }

    fn parse(words: &[&str]) -> SetRequest {
        parse_settings(&args(words)).unwrap().0
    }

    fn error(words: &[&str]) -> SetError {
        parse_settings(&args(words)).unwrap_err()
    }

    fn ip(text: &str) -> AllowedIp {
        text.parse().unwrap()
    }

    #[test]
    fn a_full_command_line() {
        let dir = tempfile::tempdir().unwrap();
        let private = dir.path().join("private");
        std::fs::write(&private, format!("{PRIVATE}\n")).unwrap();
        let psk = dir.path().join("psk");
        std::fs::write(&psk, "").unwrap();
        let request = parse(&[
            "listen-port",
            "51820",
            "fwmark",
            "0x10",
            "private-key",
            private.to_str().unwrap(),
            "peer",
            PEER,
            "preshared-key",
            psk.to_str().unwrap(),
            "endpoint",
            "[::1]:7",
            "persistent-keepalive",
            "off",
            "allowed-ips",
            "10.0.0.0/8, fd00::/8,192.168.1.1",
            "peer",
            OTHER,
            "remove",
        ]);
        assert_eq!(request.listen_port, Some(51820));
        assert_eq!(request.fwmark, Some(16));
        assert_eq!(request.private_key.as_ref().unwrap().to_string(), PRIVATE);
        assert!(!request.replace_peers);
        let [first, second] = &request.peers[..] else {
            panic!("{request:?}")
        };
        assert_eq!(first.public_key.to_string(), PEER);
        assert_eq!(first.preshared_key, Some(Key::from_bytes([0; 32])));
        assert_eq!(first.endpoint, Some("[::1]:7".parse().unwrap()));
        assert_eq!(first.persistent_keepalive_interval, Some(0));
        assert!(first.replace_allowed_ips);
        assert_eq!(
            first.allowed_ips,
            [ip("10.0.0.0/8"), ip("fd00::/8"), ip("192.168.1.1/32")]
        );
        assert!(second.remove);
        assert!(
            request.to_string().ends_with("remove=true\n\n"),
            "{request}"
        );
        assert!(request.to_string().contains(&format!(
            "public_key={}\nremove=true\n",
            key_hex(&second.public_key)
        )));
    }

    #[test]
    fn empty_allowed_ips_clears_the_list() {
        let request = parse(&["peer", PEER, "allowed-ips", ""]);
        assert!(request.peers[0].replace_allowed_ips);
        assert!(request.peers[0].allowed_ips.is_empty());
        let request = parse(&["peer", PEER, "allowed-ips", " \t"]);
        assert!(request.peers[0].allowed_ips.is_empty());
        assert!(
            request.to_string().contains("replace_allowed_ips=true\n\n"),
            "{request}"
        );
    }

    #[test]
    fn allowed_ips_add_up_over_two_arguments() {
        let request = parse(&[
            "peer",
            PEER,
            "allowed-ips",
            "10.0.0.1",
            "allowed-ips",
            "::1",
        ]);
        assert_eq!(
            request.peers[0].allowed_ips,
            [ip("10.0.0.1/32"), ip("::1/128")]
        );
    }

    #[test]
    fn host_bits_warn_but_are_sent() {
        let (request, warnings) =
            parse_settings(&args(&["peer", PEER, "allowed-ips", "10.1.2.3/8"])).unwrap();
        assert_eq!(request.peers[0].allowed_ips, [ip("10.1.2.3/8")]);
        assert_eq!(warnings, ["allowed IP 10.1.2.3/8 has a nonzero host part"]);
    }

    #[test]
    fn bad_allowed_ips() {
        for entry in [
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/",
            "10.0.0.0/x",
            "10.0.0.0/-1",
            "10.0.0",
            "host.example",
            "10.0.0.0/8,",
            "+10.0.0.0/8",
            "-10.0.0.0/8",
            "01.0.0.0/8",
        ] {
            let err = error(&["peer", PEER, "allowed-ips", entry]);
            assert!(
                matches!(err, SetError::AllowedIp { .. }),
                "{entry}: {err:?}"
            );
        }
        let err = error(&["peer", PEER, "allowed-ips", "-10.0.0.0/8"]);
        assert!(err.to_string().contains("1.0.20250521"), "{err}");
    }

    #[test]
    fn numbers_like_wg() {
        assert_eq!(parse(&["listen-port", "0"]).listen_port, Some(0));
        assert_eq!(parse(&["fwmark", "off"]).fwmark, Some(0));
        assert_eq!(parse(&["fwmark", "OFF"]).fwmark, Some(0));
        assert_eq!(parse(&["fwmark", "0"]).fwmark, Some(0));
        assert_eq!(parse(&["fwmark", "4294967295"]).fwmark, Some(u32::MAX));
        assert_eq!(parse(&["fwmark", "0xffffffff"]).fwmark, Some(u32::MAX));
        assert_eq!(parse(&["fwmark", "0xCA6C"]).fwmark, Some(0xca6c));
        assert_eq!(
            parse(&["peer", PEER, "persistent-keepalive", "25"]).peers[0]
                .persistent_keepalive_interval,
            Some(25)
        );
        assert_eq!(
            parse(&["peer", PEER, "persistent-keepalive", "Off"]).peers[0]
                .persistent_keepalive_interval,
            Some(0)
        );
        for bad in ["", "65536", "-1", "+1", " 1", "http"] {
            assert!(
                matches!(error(&["listen-port", bad]), SetError::Port { .. }),
                "{bad}"
            );
        }
        for bad in ["", "4294967296", "0x", "0x100000000", "-1", "ten", "0X10"] {
            assert!(
                matches!(error(&["fwmark", bad]), SetError::Fwmark { .. }),
                "{bad}"
            );
        }
        for bad in ["", "65536", "-1", "never"] {
            let err = error(&["peer", PEER, "persistent-keepalive", bad]);
            assert!(matches!(err, SetError::Keepalive { .. }), "{bad}");
        }
    }

    #[test]
    fn grammar_errors_say_where_things_go() {
        let cases: &[(&[&str], &str)] = &[
            (
                &["peer", PEER, "listen-port", "1"],
                "before the first `peer`",
            ),
            (&["endpoint", "1.2.3.4:5"], "after `peer PUBKEY`"),
            (&["remove"], "after `peer PUBKEY`"),
            (&["listen-port"], "needs a value"),
            (&["peer"], "needs a value"),
            (&["peer", PEER, "allowed-ips"], "needs a value"),
            (&["--tmpdir", "/x"], "before IFNAME"),
            (&["bogus"], "expected listen-port"),
        ];
        for (words, hint) in cases {
            let err = error(words);
            assert!(
                matches!(err, SetError::InvalidArgument { .. }) && err.to_string().contains(hint),
                "{words:?}: {err}"
            );
        }
    }

    #[test]
    fn public_key_errors() {
        let err = error(&["peer", "nonsense"]);
        assert!(matches!(err, SetError::PublicKey { .. }), "{err:?}");
    }

    #[test]
    fn key_files_like_wg() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, contents: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, contents).unwrap();
            path
        };
        let ok = |path: &Path| read_key_file("private-key", path).unwrap();
        assert_eq!(ok(&write("plain", PRIVATE)).to_string(), PRIVATE);
        assert_eq!(
            ok(&write("spaces", &format!("{PRIVATE} \n\t\r\n"))).to_string(),
            PRIVATE
        );
        assert_eq!(ok(&write("empty", "")), Key::from_bytes([0; 32]));
        assert_eq!(ok(Path::new("/dev/null")), Key::from_bytes([0; 32]));

        let secret_prefix = &PRIVATE[..20];
        for (name, contents, reason) in [
            ("short", &PRIVATE[..43], "this one is 43 bytes"),
            ("newline", "\n", "this one is 1 bytes"),
            ("trailing", &format!("{PRIVATE}x"), "other than whitespace"),
            // wg reads 44 bytes, so the key's last character is "trailing".
            ("leading", &format!(" {PRIVATE}"), "other than whitespace"),
            (
                "bad",
                &format!("{}!\n", &PRIVATE[..43]),
                "does not hold a key",
            ),
            (
                "twice",
                &format!("{PRIVATE}\n{PRIVATE}\n"),
                "other than whitespace",
            ),
        ] {
            let err = read_key_file("private-key", &write(name, contents)).unwrap_err();
            let text = err.to_string();
            assert!(text.contains(reason), "{name}: {text}");
            assert!(
                !text.contains(secret_prefix),
                "{name} leaks the key: {text}"
            );
        }
        let err = read_key_file("preshared-key", &dir.path().join("missing")).unwrap_err();
        assert!(err.to_string().starts_with("preshared-key "), "{err}");
        assert!(err.to_string().contains("No such file"), "{err}");
    }

    #[test]
    fn endpoints_like_wg() {
        let ep = |s: &str| resolve_endpoint(s).unwrap();
        assert_eq!(ep("1.2.3.4:51820"), "1.2.3.4:51820".parse().unwrap());
        assert_eq!(ep("[2001:db8::1]:1"), "[2001:db8::1]:1".parse().unwrap());
        // Split at the last colon, as wg does.
        assert_eq!(ep("2001:db8::1:1"), "[2001:db8::1]:1".parse().unwrap());
        assert!(ep("localhost:9").ip().is_loopback());
        for (bad, reason) in [
            ("", "empty"),
            ("1.2.3.4", "no port"),
            ("1.2.3.4:", "no port"),
            ("[::1", "no matching"),
            ("[::1]", "no port after"),
            ("[::1]:", "no port after"),
            ("1.2.3.4:65536", "not a number"),
            ("1.2.3.4:http", "not a number"),
            ("no-such-host.invalid:1", "cannot resolve"),
        ] {
            let err = resolve_endpoint(bad).unwrap_err();
            assert!(err.to_string().contains(reason), "{bad}: {err}");
        }
    }
}

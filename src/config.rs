//! The wg-quick configuration file, parsed into a typed [`Config`].
//!
//! The format is the one `wg-quick` reads (wg-quick(8) on top of wg(8)'s
//! "CONFIGURATION FILE FORMAT"): one `[Interface]` section and any number of
//! `[Peer]` sections of `Key = value` lines. As there, section names and keys
//! are case-insensitive, `#` starts a comment anywhere on a line, whitespace
//! around keys and values does not count, the value is everything after the
//! first `=` (base64 keys end in `=`), list values are comma-separated with or
//! without spaces, and repeated `Address`, `DNS` and `AllowedIPs` lines add up.
//! CRLF line endings and a leading UTF-8 byte-order mark are accepted because
//! editors on other systems produce them.
//!
//! We are stricter than `wg setconf` where leniency hides a mistake: a
//! single-valued key given twice, two peers with one public key, or a peer with
//! our own public key are errors instead of "the last one wins". All of it is
//! checked before anything touches a namespace, so a bad file fails fast with
//! the file name, the line, the key, and what a valid value looks like. The
//! value of a `PrivateKey` or `PresharedKey` is never repeated in a message,
//! and neither is any text that might be a pasted key.
//!
//! wg-quick's `PreUp`/`PostUp`/`PreDown`/`PostDown` hooks run as root in the
//! host's namespace; for an interface living in somebody else's namespace they
//! mean nothing, so they are accepted and reported in [`Config::warnings`]
//! instead of being run. So is `SaveConfig`: we never write the file back.
//!
//! The parser reads untrusted text (and is meant to be fuzzed): outside the
//! tests it may not unwrap, expect, index or panic.

#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{self, Read as _};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, ToSocketAddrs as _};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ipnetwork::IpNetwork;

use crate::keys::{self, Key};

/// The MTU when the config sets none: wg-quick's choice for the common case
/// of a 1500-byte path with IPv6 outer headers (1500 - 40 - 8 - 32).
pub const DEFAULT_MTU: u16 = 1420;

/// Files larger than this are refused. A config is a few hundred bytes; the
/// limit keeps a wrong path such as `/dev/zero` from hanging us.
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// A parsed and validated wg-quick configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub interface: Interface,
    pub peers: Vec<PeerConfig>,
    /// Settings that were accepted but have no effect here, one line each,
    /// for the caller to log.
    pub warnings: Vec<String>,
    /// How many PreUp/PostUp/PreDown/PostDown lines were ignored (each has its
    /// line in `warnings`); the form says once what does their work instead.
    pub ignored_hooks: usize,
}

/// The `[Interface]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct Interface {
    pub private_key: Key,
    /// `None` (or 0) lets the engine pick a free port.
    pub listen_port: Option<u16>,
    /// Mark for the UDP socket; `off` and 0 are `None`.
    pub fwmark: Option<u32>,
    /// Addresses for the TUN device, with their prefix length as written;
    /// a bare address gets /32 or /128.
    pub addresses: Vec<IpNetwork>,
    /// `DNS` entries that are IP addresses: nameservers.
    pub dns: Vec<IpAddr>,
    /// `DNS` entries that are domain names: search domains, as wg-quick
    /// treats them.
    pub dns_search: Vec<String>,
    /// See [`Config::mtu`] for the value in effect.
    pub mtu: Option<u16>,
    /// `off`, `auto`, a table number or name, as written. `off` means no
    /// routes, as with wg-quick ([`Interface::adds_routes`]); any other value
    /// adds them to the main table inside the namespace (no policy routing
    /// there).
    pub table: Option<String>,
}

impl Interface {
    /// Whether the peers' AllowedIPs become routes: not with `Table = off`
    /// (wg-quick's rule; we take `off` in any case).
    pub fn adds_routes(&self) -> bool {
        !self
            .table
            .as_deref()
            .is_some_and(|t| t.eq_ignore_ascii_case("off"))
    }
}

/// One `[Peer]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerConfig {
    pub public_key: Key,
    pub preshared_key: Option<Key>,
    /// As written, like `wg`: host bits are not required to be zero.
    pub allowed_ips: Vec<IpNetwork>,
    pub endpoint: Option<Endpoint>,
    /// Seconds; `off` and 0 are `None`.
    pub persistent_keepalive: Option<u16>,
}

/// Where a peer is reached: an address, or a DNS name resolved at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Addr(SocketAddr),
    Host { host: String, port: u16 },
}

/// Why a configuration could not be read or is not valid. Every message is
/// one line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be opened or read.
    #[error("cannot read {}: {}; {hint}", path.display(), describe_io_error(error))]
    Read {
        path: PathBuf,
        error: io::Error,
        hint: &'static str,
    },
    #[error(
        "cannot read {}: it is larger than {limit} bytes, so it is no WireGuard config; check the path",
        path.display()
    )]
    TooLarge { path: PathBuf, limit: u64 },
    #[error(
        "{}:{line}: the file is not UTF-8 text; save it as UTF-8 (a WireGuard config is plain ASCII)",
        path.display()
    )]
    NotUtf8 { path: PathBuf, line: usize },
    #[error(
        "{source_name}: the file has no settings; it needs an [Interface] section with a PrivateKey"
    )]
    Empty { source_name: String },
    #[error("{source_name}: there is no [Interface] section; add one with a PrivateKey")]
    NoInterface { source_name: String },
    /// A line that is not a setting or a section header where one belongs.
    #[error("{source_name}:{line}: {message}")]
    Syntax {
        source_name: String,
        line: usize,
        message: String,
    },
    /// A setting that is unknown, repeated or has a bad value. `key` is the
    /// key's canonical spelling, or as written when it is unknown.
    #[error("{source_name}:{line}: {key}: {message}")]
    Line {
        source_name: String,
        line: usize,
        key: String,
        message: String,
    },
    /// A section lacks a required key; `line` is the section header's.
    #[error("{source_name}:{line}: [{section}] has no {key}; {hint}")]
    Missing {
        source_name: String,
        line: usize,
        section: &'static str,
        key: &'static str,
        hint: &'static str,
    },
    #[error("cannot resolve endpoint host '{host}': {reason}; check the name or use an IP address")]
    Resolve {
        host: String,
        port: u16,
        reason: String,
    },
}

impl Config {
    /// Reads and parses a config file.
    ///
    /// # Errors
    /// [`ConfigError::Read`], [`ConfigError::TooLarge`] or
    /// [`ConfigError::NotUtf8`] if the file cannot be read as text; otherwise
    /// as [`Config::parse`].
    /// A regular file that group or others may read gets a warning in
    /// [`Config::warnings`], as with wg-quick: it holds a private key.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let (text, mode) = read_text(path)?;
        let mut config = Self::parse(&text, &path.display().to_string())?;
        config.warnings.extend(exposure_warning(mode, path));
        Ok(config)
    }

    /// Parses config text; `source` names it in error messages (the file name).
    ///
    /// # Errors
    /// The first problem found, with its line number where it has one.
    pub fn parse(text: &str, source: &str) -> Result<Self, ConfigError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut parser = Parser::new(source);
        for (index, line) in text.lines().enumerate() {
            parser.line(index + 1, line)?;
        }
        parser.finish()
    }

    /// The MTU used when the config sets none.
    #[must_use]
    pub const fn default_mtu() -> u16 {
        DEFAULT_MTU
    }

    /// The MTU in effect: the configured one or [`DEFAULT_MTU`].
    #[must_use]
    pub fn mtu(&self) -> u16 {
        self.interface.mtu.unwrap_or(DEFAULT_MTU)
    }
}

impl Endpoint {
    /// The address to send to: an address as it is, a host name looked up
    /// now (the first address the resolver returns).
    ///
    /// # Errors
    /// [`ConfigError::Resolve`] if the name does not resolve.
    pub fn resolve(&self) -> Result<SocketAddr, ConfigError> {
        match self {
            Self::Addr(addr) => Ok(*addr),
            Self::Host { host, port } => {
                let error = |reason: String| ConfigError::Resolve {
                    host: host.clone(),
                    port: *port,
                    reason,
                };
                (host.as_str(), *port)
                    .to_socket_addrs()
                    .map_err(|e| error(e.to_string()))?
                    .next()
                    .ok_or_else(|| error("the name has no addresses".to_owned()))
            }
        }
    }
}

/// `host:port`, with an IPv6 address in brackets, as `wg` writes endpoints.
impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Addr(addr) => write!(f, "{addr}"),
            Self::Host { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

// ---------------------------------------------------------------------------
// Reading the file

/// The warning for a config file that others can read (its private key
/// with it), given the permission bits of a regular file (`None` for a pipe,
/// a terminal, …: nothing stays behind there).
fn exposure_warning(mode: Option<u32>, path: &Path) -> Option<String> {
    let mode = mode? & 0o7777;
    (mode & 0o044 != 0).then(|| {
        format!(
            "it holds a PrivateKey and is readable by {} (mode {mode:04o}) (hint: chmod 600 {})",
            match (mode & 0o040 != 0, mode & 0o004 != 0) {
                (true, true) => "group and others",
                (true, false) => "its group",
                _ => "others",
            },
            path.display()
        )
    })
}

/// The file's text, and its permission bits if it is a regular file (read
/// from the descriptor we read, so they are those of the same file).
fn read_text(path: &Path) -> Result<(String, Option<u32>), ConfigError> {
    use std::os::unix::fs::PermissionsExt as _;
    let read_error = |error| read_error(path, error);
    let file = File::open(path).map_err(read_error)?;
    let mode = file
        .metadata()
        .ok()
        .filter(std::fs::Metadata::is_file)
        .map(|meta| meta.permissions().mode());
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if u64::try_from(bytes.len()).map_or(true, |len| len > MAX_CONFIG_BYTES) {
        return Err(ConfigError::TooLarge {
            path: path.to_owned(),
            limit: MAX_CONFIG_BYTES,
        });
    }
    let text = String::from_utf8(bytes).map_err(|e| ConfigError::NotUtf8 {
        path: path.to_owned(),
        line: line_at(e.as_bytes(), e.utf8_error().valid_up_to()),
    })?;
    Ok((text, mode))
}

fn read_error(path: &Path, error: io::Error) -> ConfigError {
    let hint = match error.kind() {
        io::ErrorKind::NotFound => "check the path, a relative one starts at the current directory",
        io::ErrorKind::PermissionDenied => {
            "make it readable by this user (it holds a private key: keep it mode 0600 and your own)"
        }
        io::ErrorKind::IsADirectory => "give the path of the .conf file, not of its directory",
        _ => "check that the path names a readable file",
    };
    ConfigError::Read {
        path: path.to_owned(),
        error,
        hint,
    }
}

fn describe_io_error(error: &io::Error) -> String {
    match error.kind() {
        io::ErrorKind::NotFound => "no such file".to_owned(),
        io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
        io::ErrorKind::IsADirectory => "it is a directory".to_owned(),
        _ => error.to_string(),
    }
}

/// The 1-based line number of byte `offset`.
fn line_at(bytes: &[u8], offset: usize) -> usize {
    let before = bytes.get(..offset).unwrap_or(bytes);
    before.iter().filter(|&&byte| byte == b'\n').count() + 1
}

// ---------------------------------------------------------------------------
// Keys of each section

/// The keys one kind of section accepts.
trait SectionKey: Copy + 'static {
    const SECTION: &'static str;
    const ALL: &'static [Self];

    fn name(self) -> &'static str;

    /// Whether values of this key must never appear in messages.
    fn is_secret(self) -> bool;

    fn lookup(key: &str) -> Option<Self> {
        Self::ALL
            .iter()
            .copied()
            .find(|candidate| candidate.name().eq_ignore_ascii_case(key))
    }

    fn list() -> String {
        let names: Vec<_> = Self::ALL.iter().map(|key| key.name()).collect();
        names.join(", ")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InterfaceKey {
    PrivateKey,
    ListenPort,
    FwMark,
    Address,
    Dns,
    Mtu,
    Table,
    /// wg-quick's `PreUp`, `PostUp`, `PreDown` and `PostDown`.
    Hook(&'static str),
    SaveConfig,
}

impl SectionKey for InterfaceKey {
    const SECTION: &'static str = "Interface";
    const ALL: &'static [Self] = &[
        Self::PrivateKey,
        Self::ListenPort,
        Self::FwMark,
        Self::Address,
        Self::Dns,
        Self::Mtu,
        Self::Table,
        Self::Hook("PreUp"),
        Self::Hook("PostUp"),
        Self::Hook("PreDown"),
        Self::Hook("PostDown"),
        Self::SaveConfig,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::PrivateKey => "PrivateKey",
            Self::ListenPort => "ListenPort",
            Self::FwMark => "FwMark",
            Self::Address => "Address",
            Self::Dns => "DNS",
            Self::Mtu => "MTU",
            Self::Table => "Table",
            Self::Hook(name) => name,
            Self::SaveConfig => "SaveConfig",
        }
    }

    fn is_secret(self) -> bool {
        self == Self::PrivateKey
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PeerKey {
    PublicKey,
    PresharedKey,
    AllowedIps,
    Endpoint,
    PersistentKeepalive,
}

impl SectionKey for PeerKey {
    const SECTION: &'static str = "Peer";
    const ALL: &'static [Self] = &[
        Self::PublicKey,
        Self::PresharedKey,
        Self::AllowedIps,
        Self::Endpoint,
        Self::PersistentKeepalive,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::PublicKey => "PublicKey",
            Self::PresharedKey => "PresharedKey",
            Self::AllowedIps => "AllowedIPs",
            Self::Endpoint => "Endpoint",
            Self::PersistentKeepalive => "PersistentKeepalive",
        }
    }

    fn is_secret(self) -> bool {
        self == Self::PresharedKey
    }
}

// ---------------------------------------------------------------------------
// The line-by-line parser

struct Parser<'s> {
    source: &'s str,
    open: Open,
    interface: Option<InterfaceDraft>,
    peers: Vec<PeerDraft>,
    warnings: Vec<String>,
    has_content: bool,
}

/// The section the next setting belongs to.
enum Open {
    Nothing,
    Interface(InterfaceDraft),
    Peer(PeerDraft),
}

/// One `Key = value` line, with what is needed to report an error about it.
struct Entry<'a> {
    source: &'a str,
    line: usize,
    key: &'static str,
    value: &'a str,
    secret: bool,
}

/// A value and the line that set it, for checks made after the section ends.
#[derive(Debug, Clone)]
struct At<T> {
    value: T,
    line: usize,
}

impl<'s> Parser<'s> {
    fn new(source: &'s str) -> Self {
        Self {
            source,
            open: Open::Nothing,
            interface: None,
            peers: Vec::new(),
            warnings: Vec::new(),
            has_content: false,
        }
    }

    fn line(&mut self, number: usize, raw: &str) -> Result<(), ConfigError> {
        let text = strip_comment(raw).trim();
        if text.is_empty() {
            return Ok(());
        }
        self.has_content = true;
        if let Some(header) = text.strip_prefix('[') {
            return self.open_section(number, header);
        }
        match text.split_once('=') {
            Some((key, value)) => self.setting(number, key.trim(), value.trim()),
            None => Err(self.syntax(
                number,
                "expected `Key = value` or a section header such as [Peer]".to_owned(),
            )),
        }
    }

    fn open_section(&mut self, line: usize, header: &str) -> Result<(), ConfigError> {
        let Some(name) = header.strip_suffix(']') else {
            return Err(self.syntax(
                line,
                "a section header must end with ']', e.g. [Peer]".to_owned(),
            ));
        };
        let name = name.trim();
        self.close_section();
        if name.eq_ignore_ascii_case(InterfaceKey::SECTION) {
            if let Some(first) = &self.interface {
                let message = format!(
                    "a second [Interface] section (the first is on line {}); a config has exactly one",
                    first.header
                );
                return Err(self.syntax(line, message));
            }
            self.open = Open::Interface(InterfaceDraft::new(line));
        } else if name.eq_ignore_ascii_case(PeerKey::SECTION) {
            self.open = Open::Peer(PeerDraft::new(line));
        } else {
            let shown = if is_plausible_name(name) {
                format!("[{name}]")
            } else {
                "header".to_owned()
            };
            let message = format!("unknown section {shown}; expected [Interface] or [Peer]");
            return Err(self.syntax(line, message));
        }
        Ok(())
    }

    fn close_section(&mut self) {
        match std::mem::replace(&mut self.open, Open::Nothing) {
            Open::Nothing => {}
            Open::Interface(draft) => self.interface = Some(draft),
            Open::Peer(draft) => self.peers.push(draft),
        }
    }

    fn setting(&mut self, line: usize, key: &str, value: &str) -> Result<(), ConfigError> {
        if key.is_empty() {
            return Err(self.syntax(line, "a setting without a key before '='".to_owned()));
        }
        let source = self.source;
        match &mut self.open {
            Open::Nothing => Err(self.syntax(
                line,
                "a setting before any section; the file starts with [Interface]".to_owned(),
            )),
            Open::Interface(draft) => {
                let (setting, entry) =
                    recognise::<InterfaceKey, PeerKey>(source, line, key, value)?;
                draft.set(setting, &entry, &mut self.warnings)
            }
            Open::Peer(draft) => {
                let (setting, entry) =
                    recognise::<PeerKey, InterfaceKey>(source, line, key, value)?;
                draft.set(setting, &entry)
            }
        }
    }

    fn finish(mut self) -> Result<Config, ConfigError> {
        self.close_section();
        let source = self.source;
        if !self.has_content {
            return Err(ConfigError::Empty {
                source_name: source.to_owned(),
            });
        }
        let Some(interface) = self.interface else {
            return Err(ConfigError::NoInterface {
                source_name: source.to_owned(),
            });
        };
        let ignored_hooks = interface.hooks;
        let interface = interface.finish(source)?;
        let peers = finish_peers(self.peers, &interface, source)?;
        Ok(Config {
            interface,
            peers,
            warnings: self.warnings,
            ignored_hooks,
        })
    }

    fn syntax(&self, line: usize, message: String) -> ConfigError {
        ConfigError::Syntax {
            source_name: self.source.to_owned(),
            line,
            message,
        }
    }
}

/// Everything before the first `#`; `wg` and wg-quick ignore the rest.
fn strip_comment(line: &str) -> &str {
    line.split_once('#').map_or(line, |(before, _)| before)
}

/// Looks up `key` among section `K`'s keys; names the right section when the
/// key belongs in the other one (`O`).
fn recognise<'a, K: SectionKey, O: SectionKey>(
    source: &'a str,
    line: usize,
    key: &str,
    value: &'a str,
) -> Result<(K, Entry<'a>), ConfigError> {
    if let Some(setting) = K::lookup(key) {
        let entry = Entry {
            source,
            line,
            key: setting.name(),
            value,
            secret: setting.is_secret(),
        };
        return Ok((setting, entry));
    }
    if !is_plausible_name(key) {
        // Possibly a pasted key: say nothing about the text.
        return Err(ConfigError::Syntax {
            source_name: source.to_owned(),
            line,
            message: format!(
                "not a setting of [{}] (text not shown: it may be a key); valid keys are {}",
                K::SECTION,
                K::list()
            ),
        });
    }
    let message = if O::lookup(key).is_some() {
        format!("belongs in [{}], not in [{}]", O::SECTION, K::SECTION)
    } else {
        format!(
            "unknown key in [{}]; valid keys are {}",
            K::SECTION,
            K::list()
        )
    };
    Err(ConfigError::Line {
        source_name: source.to_owned(),
        line,
        key: key.to_owned(),
        message,
    })
}

/// Short ASCII identifiers only: anything else (such as 43 characters of a
/// base64 key before its `=`) is not repeated in messages.
fn is_plausible_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 32
        && text
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-')
}

impl Entry<'_> {
    fn error(&self, message: String) -> ConfigError {
        ConfigError::Line {
            source_name: self.source.to_owned(),
            line: self.line,
            key: self.key.to_owned(),
            message,
        }
    }

    /// `item` (the value or one item of a list) is not valid, and `why`.
    fn invalid(&self, item: &str, why: &str) -> ConfigError {
        let shown = if self.secret && !item.is_empty() {
            "(value hidden)".to_owned()
        } else {
            quote(item)
        };
        self.error(format!("{shown} is not valid: {why}"))
    }

    /// Parses a single-valued setting into its slot; a second one is an error.
    fn put<T>(
        &self,
        slot: &mut Option<At<T>>,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<(), ConfigError> {
        if let Some(first) = slot {
            return Err(self.error(format!(
                "set twice in one section (first on line {}); keep one",
                first.line
            )));
        }
        let value = parse(self.value).map_err(|why| self.invalid(self.value, &why))?;
        *slot = Some(At {
            value,
            line: self.line,
        });
        Ok(())
    }

    /// Parses each item of a comma list onto `list`.
    fn push_all<T>(
        &self,
        list: &mut Vec<T>,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<(), ConfigError> {
        for item in list_items(self.value) {
            list.push(parse(item).map_err(|why| self.invalid(item, &why))?);
        }
        Ok(())
    }
}

/// The items of a comma list; an empty value is an empty list.
fn list_items(value: &str) -> impl Iterator<Item = &str> {
    let items = (!value.is_empty()).then(|| value.split(',').map(str::trim));
    items.into_iter().flatten()
}

/// `text` in double quotes with escapes, cut short if long, so a message stays
/// one readable line.
fn quote(text: &str) -> String {
    const MAX_CHARS: usize = 64;
    match text.char_indices().nth(MAX_CHARS) {
        Some((cut, _)) => format!("{:?}…", text.get(..cut).unwrap_or_default()),
        None => format!("{text:?}"),
    }
}

// ---------------------------------------------------------------------------
// Sections

struct InterfaceDraft {
    header: usize,
    private_key: Option<At<Key>>,
    listen_port: Option<At<u16>>,
    fwmark: Option<At<Option<u32>>>,
    addresses: Vec<IpNetwork>,
    dns: Vec<IpAddr>,
    dns_search: Vec<String>,
    mtu: Option<At<u16>>,
    table: Option<At<String>>,
    /// Hook lines seen (and ignored).
    hooks: usize,
}

impl InterfaceDraft {
    fn new(header: usize) -> Self {
        Self {
            header,
            private_key: None,
            listen_port: None,
            fwmark: None,
            addresses: Vec::new(),
            dns: Vec::new(),
            dns_search: Vec::new(),
            mtu: None,
            table: None,
            hooks: 0,
        }
    }

    fn set(
        &mut self,
        setting: InterfaceKey,
        entry: &Entry<'_>,
        warnings: &mut Vec<String>,
    ) -> Result<(), ConfigError> {
        match setting {
            InterfaceKey::PrivateKey => entry.put(&mut self.private_key, parse_key),
            InterfaceKey::ListenPort => entry.put(&mut self.listen_port, parse_listen_port),
            InterfaceKey::FwMark => entry.put(&mut self.fwmark, parse_fwmark),
            InterfaceKey::Address => entry.push_all(&mut self.addresses, parse_address),
            InterfaceKey::Dns => self.add_dns(entry),
            InterfaceKey::Mtu => entry.put(&mut self.mtu, parse_mtu),
            InterfaceKey::Table => entry.put(&mut self.table, parse_table),
            InterfaceKey::Hook(name) => {
                // What does their work instead depends on the form (attach,
                // run): it says so once, from `Config::ignored_hooks`.
                warnings.push(format!(
                    "line {}: {name} is ignored: wireguard4netns runs no hooks",
                    entry.line
                ));
                self.hooks += 1;
                Ok(())
            }
            InterfaceKey::SaveConfig => {
                warnings.push(format!(
                    "line {}: SaveConfig is ignored: wireguard4netns never writes the config file",
                    entry.line
                ));
                Ok(())
            }
        }
    }

    fn add_dns(&mut self, entry: &Entry<'_>) -> Result<(), ConfigError> {
        let mut entries = Vec::new();
        entry.push_all(&mut entries, parse_dns)?;
        for dns in entries {
            match dns {
                Dns::Server(addr) => self.dns.push(addr),
                Dns::Search(domain) => self.dns_search.push(domain),
            }
        }
        Ok(())
    }

    fn finish(self, source: &str) -> Result<Interface, ConfigError> {
        let Some(private_key) = self.private_key else {
            return Err(ConfigError::Missing {
                source_name: source.to_owned(),
                line: self.header,
                section: InterfaceKey::SECTION,
                key: "PrivateKey",
                hint: "add `PrivateKey = ` and a key from `wireguard4netns genkey` or `wg genkey`",
            });
        };
        let mtu = match self.mtu {
            Some(mtu) => Some(check_mtu(mtu, &self.addresses, source)?),
            None => None,
        };
        Ok(Interface {
            private_key: private_key.value,
            listen_port: self.listen_port.map(|port| port.value),
            fwmark: self.fwmark.and_then(|mark| mark.value),
            addresses: self.addresses,
            dns: self.dns,
            dns_search: self.dns_search,
            mtu,
            table: self.table.map(|table| table.value),
        })
    }
}

/// The MTU's lower bound depends on the addresses, which may come after it.
fn check_mtu(mtu: At<u16>, addresses: &[IpNetwork], source: &str) -> Result<u16, ConfigError> {
    let has_ipv6 = addresses.iter().any(IpNetwork::is_ipv6);
    let (minimum, why) = if has_ipv6 {
        (
            1280,
            "expected 1280 to 65535: IPv6 needs at least 1280 and Address has an IPv6 address",
        )
    } else {
        (
            576,
            "expected 576 to 65535 (IPv4 needs at least 576; 1280 with an IPv6 address)",
        )
    };
    if mtu.value >= minimum {
        return Ok(mtu.value);
    }
    Err(ConfigError::Line {
        source_name: source.to_owned(),
        line: mtu.line,
        key: InterfaceKey::Mtu.name().to_owned(),
        message: format!("\"{}\" is not valid: {why}", mtu.value),
    })
}

struct PeerDraft {
    header: usize,
    public_key: Option<At<Key>>,
    preshared_key: Option<At<Key>>,
    allowed_ips: Vec<IpNetwork>,
    endpoint: Option<At<Endpoint>>,
    persistent_keepalive: Option<At<Option<u16>>>,
}

impl PeerDraft {
    fn new(header: usize) -> Self {
        Self {
            header,
            public_key: None,
            preshared_key: None,
            allowed_ips: Vec::new(),
            endpoint: None,
            persistent_keepalive: None,
        }
    }

    fn set(&mut self, setting: PeerKey, entry: &Entry<'_>) -> Result<(), ConfigError> {
        match setting {
            PeerKey::PublicKey => entry.put(&mut self.public_key, parse_key),
            PeerKey::PresharedKey => entry.put(&mut self.preshared_key, parse_key),
            PeerKey::AllowedIps => entry.push_all(&mut self.allowed_ips, parse_allowed_ip),
            PeerKey::Endpoint => entry.put(&mut self.endpoint, parse_endpoint),
            PeerKey::PersistentKeepalive => {
                entry.put(&mut self.persistent_keepalive, parse_keepalive)
            }
        }
    }

    /// The peer and the line of its PublicKey, for the checks across peers.
    fn finish(self, source: &str) -> Result<(PeerConfig, usize), ConfigError> {
        let Some(public_key) = self.public_key else {
            return Err(ConfigError::Missing {
                source_name: source.to_owned(),
                line: self.header,
                section: PeerKey::SECTION,
                key: "PublicKey",
                hint: "add `PublicKey = ` and the peer's public key (`wg pubkey` of its private key)",
            });
        };
        let peer = PeerConfig {
            public_key: public_key.value,
            preshared_key: self.preshared_key.map(|key| key.value),
            allowed_ips: self.allowed_ips,
            endpoint: self.endpoint.map(|endpoint| endpoint.value),
            persistent_keepalive: self.persistent_keepalive.and_then(|secs| secs.value),
        };
        Ok((peer, public_key.line))
    }
}

/// Finishes every peer and rejects duplicates and our own key.
fn finish_peers(
    drafts: Vec<PeerDraft>,
    interface: &Interface,
    source: &str,
) -> Result<Vec<PeerConfig>, ConfigError> {
    let own_public = keys::public_from_private(&interface.private_key);
    let mut first_line: HashMap<[u8; keys::KEY_LEN], usize> = HashMap::new();
    let mut peers = Vec::with_capacity(drafts.len());
    for draft in drafts {
        let (peer, line) = draft.finish(source)?;
        let error = |message: String| ConfigError::Line {
            source_name: source.to_owned(),
            line,
            key: PeerKey::PublicKey.name().to_owned(),
            message,
        };
        if peer.public_key == own_public {
            return Err(error(
                "this is the interface's own public key (from its PrivateKey); \
                 a peer needs the public key of the other side"
                    .to_owned(),
            ));
        }
        if let Some(first) = first_line.insert(*peer.public_key.as_bytes(), line) {
            return Err(error(format!(
                "the same peer is already configured on line {first}; merge the two [Peer] sections"
            )));
        }
        peers.push(peer);
    }
    Ok(peers)
}

// ---------------------------------------------------------------------------
// Values. Each parser returns what a valid value looks like on error.

fn parse_key(text: &str) -> Result<Key, String> {
    text.parse().map_err(|e: keys::KeyError| e.to_string())
}

/// Digits only: `str::parse` alone would also take a leading `+`.
fn parse_decimal<T: FromStr>(text: &str) -> Option<T> {
    let digits = !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit());
    digits.then(|| text.parse().ok()).flatten()
}

fn parse_listen_port(text: &str) -> Result<u16, String> {
    parse_decimal(text)
        .ok_or_else(|| "expected a UDP port from 0 to 65535 (0 picks a free port)".to_owned())
}

fn parse_fwmark(text: &str) -> Result<Option<u32>, String> {
    if text.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let hex = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X"));
    let mark = match hex {
        Some(digits) if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_hexdigit()) => {
            u32::from_str_radix(digits, 16).ok()
        }
        Some(_) => None,
        None => parse_decimal(text),
    };
    let mark = mark.ok_or_else(|| {
        "expected \"off\", a number up to 4294967295, or a hex number such as 0xca6c".to_owned()
    })?;
    Ok((mark != 0).then_some(mark))
}

fn parse_mtu(text: &str) -> Result<u16, String> {
    parse_decimal(text).ok_or_else(|| {
        "expected a number from 576 to 65535 (1280 or more with an IPv6 address)".to_owned()
    })
}

fn parse_table(text: &str) -> Result<String, String> {
    if text.is_empty() || text.contains(char::is_whitespace) {
        return Err("expected \"off\", \"auto\", or a routing table number or name".to_owned());
    }
    Ok(text.to_owned())
}

fn parse_keepalive(text: &str) -> Result<Option<u16>, String> {
    if text.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let seconds = parse_decimal::<u16>(text)
        .ok_or_else(|| "expected \"off\" or a number of seconds from 1 to 65535".to_owned())?;
    Ok((seconds != 0).then_some(seconds))
}

fn parse_address(text: &str) -> Result<IpNetwork, String> {
    parse_network(
        text,
        "expected an address with an optional prefix length, such as 10.0.0.2/24 or fd00::2/64",
    )
}

fn parse_allowed_ip(text: &str) -> Result<IpNetwork, String> {
    parse_network(
        text,
        "expected an address with a prefix length, such as 10.0.0.0/24, 0.0.0.0/0 or ::/0",
    )
}

/// `addr/prefix` or a bare address (a host route). Parsed here rather than
/// by `ipnetwork`, which also takes shortened IPv4 forms `wg` refuses.
fn parse_network(text: &str, expected: &str) -> Result<IpNetwork, String> {
    let (addr, prefix) = match text.split_once('/') {
        Some((addr, prefix)) => (addr, Some(prefix)),
        None => (text, None),
    };
    let addr: IpAddr = addr.parse().map_err(|_| expected.to_owned())?;
    let (family, max) = if addr.is_ipv4() {
        ("IPv4", 32)
    } else {
        ("IPv6", 128)
    };
    let prefix = match prefix {
        None => max,
        Some(prefix) => parse_decimal::<u8>(prefix)
            .filter(|&prefix| prefix <= max)
            .ok_or_else(|| format!("an {family} prefix length is a number from 0 to {max}"))?,
    };
    IpNetwork::new(addr, prefix).map_err(|_| expected.to_owned())
}

enum Dns {
    Server(IpAddr),
    Search(String),
}

fn parse_dns(text: &str) -> Result<Dns, String> {
    if let Ok(addr) = text.parse() {
        return Ok(Dns::Server(addr));
    }
    if is_hostname(text) {
        return Ok(Dns::Search(text.to_owned()));
    }
    Err("expected a nameserver's IP address or a search domain such as example.com".to_owned())
}

/// A DNS name by RFC 1123: dot-separated labels of letters, digits and
/// inner hyphens, at most 63 characters each and 253 in all, a trailing dot
/// allowed. An all-numeric last label is refused, so that a mistyped IPv4
/// address such as 10.0.0.256 is not taken for a name.
fn is_hostname(text: &str) -> bool {
    let name = text.strip_suffix('.').unwrap_or(text);
    let label_ok = |label: &str| {
        (1..=63).contains(&label.len())
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-')
    };
    let numeric_top = name
        .rsplit('.')
        .next()
        .is_some_and(|top| top.bytes().all(|byte| byte.is_ascii_digit()));
    (1..=253).contains(&name.len()) && name.split('.').all(label_ok) && !numeric_top
}

const ENDPOINT_EXAMPLES: &str =
    "e.g. 192.0.2.1:51820, [2001:db8::1]:51820 or vpn.example.com:51820";

fn parse_endpoint(text: &str) -> Result<Endpoint, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        check_endpoint_port(addr.port())?;
        return Ok(Endpoint::Addr(addr));
    }
    if let Some(bracketed) = text.strip_prefix('[') {
        return parse_bracketed_endpoint(bracketed);
    }
    if text.parse::<Ipv6Addr>().is_ok() {
        return Err(format!(
            "an IPv6 endpoint needs brackets and a port: [{text}]:51820"
        ));
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!(
            "the port is missing; expected host:port, {ENDPOINT_EXAMPLES}"
        ));
    };
    if host.contains(':') {
        return Err(
            "an IPv6 endpoint needs brackets around the address, e.g. [2001:db8::1]:51820"
                .to_owned(),
        );
    }
    let port = parse_endpoint_port(port)?;
    if !is_hostname(host) {
        return Err(format!(
            "the host is neither an IP address nor a DNS name; expected host:port, {ENDPOINT_EXAMPLES}"
        ));
    }
    Ok(Endpoint::Host {
        host: host.to_owned(),
        port,
    })
}

/// The rest of `[addr]:port` after `[`, which did not parse as a whole.
fn parse_bracketed_endpoint(text: &str) -> Result<Endpoint, String> {
    let Some((addr, port)) = text.split_once("]:") else {
        return Err("expected [IPv6 address]:port, e.g. [2001:db8::1]:51820".to_owned());
    };
    let addr: Ipv6Addr = addr.parse().map_err(|_| {
        "the part in brackets is not an IPv6 address; expected e.g. [2001:db8::1]:51820".to_owned()
    })?;
    let port = parse_endpoint_port(port)?;
    Ok(Endpoint::Addr(SocketAddr::from((addr, port))))
}

fn parse_endpoint_port(text: &str) -> Result<u16, String> {
    let port = parse_decimal(text).ok_or_else(endpoint_port_error)?;
    check_endpoint_port(port)?;
    Ok(port)
}

fn check_endpoint_port(port: u16) -> Result<(), String> {
    if port == 0 {
        return Err(endpoint_port_error());
    }
    Ok(())
}

fn endpoint_port_error() -> String {
    format!("the port must be a number from 1 to 65535, {ENDPOINT_EXAMPLES}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The keys of wg(8)'s example; `OWN_PUBLIC` is `PRIVATE`'s public key.
    const PRIVATE: &str = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";
    const OWN_PUBLIC: &str = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=";
    const PEER_A: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";
    const PEER_B: &str = "TrMvSoP4jYQlY6RIzBgbssQqY3vxI2Pi+y71lOWWXX0=";
    const PSK: &str = "VFTk1pzxPbEWv3M+tiZXvizNXCoo3j0RUdcYK3ogxMo=";

    fn key(text: &str) -> Key {
        text.parse().unwrap()
    }

    fn net(text: &str) -> IpNetwork {
        text.parse().unwrap()
    }

    fn parse(text: &str) -> Config {
        Config::parse(text, "wg0.conf").unwrap()
    }

    fn error(text: &str) -> String {
        let message = Config::parse(text, "wg0.conf").unwrap_err().to_string();
        assert!(!message.contains('\n'), "not one line: {message}");
        assert!(
            !message.contains(PRIVATE),
            "leaks the private key: {message}"
        );
        assert!(!message.contains(PSK), "leaks the preshared key: {message}");
        message
    }

    /// Asserts the error starts with `prefix` (file, line, key) and contains `detail`.
    fn assert_error(text: &str, prefix: &str, detail: &str) {
        let message = error(text);
        assert!(
            message.starts_with(prefix),
            "{message:?} does not start with {prefix:?}"
        );
        assert!(
            message.contains(detail),
            "{message:?} does not contain {detail:?}"
        );
    }

    /// An [Interface] with a private key (lines 1-2) and then `rest`.
    fn with_interface(rest: &str) -> String {
        format!("[Interface]\nPrivateKey = {PRIVATE}\n{rest}")
    }

    /// A config whose only peer (section on line 3, PublicKey on line 4) has `rest`.
    fn with_peer(rest: &str) -> String {
        with_interface(&format!("[Peer]\nPublicKey = {PEER_A}\n{rest}"))
    }

    fn interface(rest: &str) -> Interface {
        parse(&with_interface(rest)).interface
    }

    fn peer(rest: &str) -> PeerConfig {
        let mut peers = parse(&with_peer(rest)).peers;
        assert_eq!(peers.len(), 1);
        peers.remove(0)
    }

    // --- whole files ------------------------------------------------------

    #[test]
    fn realistic_wg_quick_file() {
        let text = format!(
            "# wg0.conf, as a VPN provider ships it\r\n\
             [Interface]\r\n\
             PrivateKey = {PRIVATE}\r\n\
             Address = 10.64.12.7/32, fc00:bbbb:bbbb:bb01::1:c06/128\r\n\
             DNS = 10.64.0.1\r\n\
             PostUp = iptables -I OUTPUT ! -o %i -m mark ! --mark $(wg show %i fwmark) -j REJECT\r\n\
             PreDown = iptables -D OUTPUT ! -o %i -m mark ! --mark $(wg show %i fwmark) -j REJECT\r\n\
             \r\n\
             [Peer]\r\n\
             PublicKey = {PEER_A}\r\n\
             AllowedIPs = 0.0.0.0/0,::0/0\r\n\
             Endpoint = 185.213.154.68:51820\r\n"
        );
        let config = Config::parse(&text, "wg0.conf").unwrap();
        assert_eq!(config.interface.private_key, key(PRIVATE));
        assert_eq!(
            config.interface.addresses,
            [net("10.64.12.7/32"), net("fc00:bbbb:bbbb:bb01::1:c06/128")]
        );
        assert_eq!(
            config.interface.dns,
            ["10.64.0.1".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(config.mtu(), DEFAULT_MTU);
        assert_eq!(
            config.peers,
            [PeerConfig {
                public_key: key(PEER_A),
                preshared_key: None,
                allowed_ips: vec![net("0.0.0.0/0"), net("::/0")],
                endpoint: Some(Endpoint::Addr("185.213.154.68:51820".parse().unwrap())),
                persistent_keepalive: None,
            }]
        );
        assert_eq!(config.warnings.len(), 2);
        assert!(
            config.warnings[0]
                .starts_with("line 6: PostUp is ignored: wireguard4netns runs no hooks")
        );
        assert!(config.warnings[1].starts_with("line 7: PreDown is ignored"));
    }

    #[test]
    fn every_key_is_parsed() {
        let text = format!(
            "[Interface]\n\
             PrivateKey = {PRIVATE}\n\
             ListenPort = 51820\n\
             FwMark = 0x1234\n\
             Address = 10.0.0.2/24\n\
             DNS = 10.0.0.1, fd00::1, corp.example.com\n\
             MTU = 1380\n\
             Table = off\n\
             [Peer]\n\
             PublicKey = {PEER_A}\n\
             PresharedKey = {PSK}\n\
             AllowedIPs = 10.0.0.0/24\n\
             Endpoint = vpn.example.com:51820\n\
             PersistentKeepalive = 25\n"
        );
        let config = parse(&text);
        assert_eq!(
            config.interface,
            Interface {
                private_key: key(PRIVATE),
                listen_port: Some(51820),
                fwmark: Some(0x1234),
                addresses: vec![net("10.0.0.2/24")],
                dns: vec!["10.0.0.1".parse().unwrap(), "fd00::1".parse().unwrap()],
                dns_search: vec!["corp.example.com".to_owned()],
                mtu: Some(1380),
                table: Some("off".to_owned()),
            }
        );
        assert_eq!(
            config.peers,
            [PeerConfig {
                public_key: key(PEER_A),
                preshared_key: Some(key(PSK)),
                allowed_ips: vec![net("10.0.0.0/24")],
                endpoint: Some(Endpoint::Host {
                    host: "vpn.example.com".to_owned(),
                    port: 51820
                }),
                persistent_keepalive: Some(25),
            }]
        );
        assert_eq!(config.mtu(), 1380);
        assert!(config.warnings.is_empty());
    }

    #[test]
    fn minimal_config_has_defaults() {
        let config = parse(&with_interface(""));
        assert_eq!(
            config.interface,
            Interface {
                private_key: key(PRIVATE),
                listen_port: None,
                fwmark: None,
                addresses: vec![],
                dns: vec![],
                dns_search: vec![],
                mtu: None,
                table: None,
            }
        );
        assert!(config.peers.is_empty());
        assert_eq!(config.mtu(), 1420);
        assert_eq!(Config::default_mtu(), 1420);
    }

    #[test]
    fn multiple_peers_keep_their_order() {
        let text = with_interface(&format!(
            "[Peer]\nPublicKey = {PEER_A}\nAllowedIPs = 10.0.1.0/24\n\
             [Peer]\nPublicKey = {PEER_B}\nAllowedIPs = 10.0.2.0/24\n"
        ));
        let peers = parse(&text).peers;
        assert_eq!(peers.len(), 2);
        assert_eq!(peers[0].public_key, key(PEER_A));
        assert_eq!(peers[0].allowed_ips, [net("10.0.1.0/24")]);
        assert_eq!(peers[1].public_key, key(PEER_B));
        assert_eq!(peers[1].allowed_ips, [net("10.0.2.0/24")]);
    }

    #[test]
    fn peers_may_come_before_the_interface() {
        let text = format!("[Peer]\nPublicKey = {PEER_A}\n[Interface]\nPrivateKey = {PRIVATE}\n");
        let config = parse(&text);
        assert_eq!(config.peers.len(), 1);
        assert_eq!(config.interface.private_key, key(PRIVATE));
    }

    // --- lexical rules ----------------------------------------------------

    #[test]
    fn sections_and_keys_are_case_insensitive() {
        let text = format!(
            "[INTERFACE]\nprivatekey = {PRIVATE}\nlistenPORT = 1\nmtu = 1400\ndns = 10.0.0.1\n\
             [peer]\nPUBLICKEY = {PEER_A}\nallowedips = 10.0.0.0/8\npersistentkeepalive = OFF\n"
        );
        let config = parse(&text);
        assert_eq!(config.interface.listen_port, Some(1));
        assert_eq!(config.interface.mtu, Some(1400));
        assert_eq!(config.peers[0].allowed_ips, [net("10.0.0.0/8")]);
    }

    #[test]
    fn crlf_line_endings() {
        let text = format!("[Interface]\r\nPrivateKey = {PRIVATE}\r\nListenPort = 7\r\n");
        assert_eq!(parse(&text).interface.listen_port, Some(7));
    }

    #[test]
    fn comments_blank_lines_and_whitespace() {
        let text = format!(
            "# leading comment\n\n   \n\t[Interface]   # the interface\n\
             PrivateKey={PRIVATE}#no space before the comment\n\
             \tListenPort\t=\t51820   \n\
             # Address = 10.9.9.9/32\n\
             [ Peer ]\n  PublicKey   =   {PEER_A}  # spaces everywhere\n"
        );
        let config = parse(&text);
        assert_eq!(config.interface.private_key, key(PRIVATE));
        assert_eq!(config.interface.listen_port, Some(51820));
        assert!(config.interface.addresses.is_empty());
        assert_eq!(config.peers[0].public_key, key(PEER_A));
    }

    #[test]
    fn byte_order_mark_is_skipped() {
        let text = format!("\u{feff}{}", with_interface(""));
        assert_eq!(parse(&text).interface.private_key, key(PRIVATE));
    }

    #[test]
    fn value_keeps_its_equals_signs() {
        // Split on the first '=' only: base64 padding survives.
        let config = parse(&with_peer(&format!("PresharedKey ={PSK}")));
        assert_eq!(config.peers[0].preshared_key, Some(key(PSK)));
    }

    #[test]
    fn comma_lists_with_and_without_spaces() {
        let expected = [net("10.0.0.0/8"), net("fd00::/8"), net("192.168.1.1/32")];
        for list in [
            "10.0.0.0/8,fd00::/8,192.168.1.1/32",
            "10.0.0.0/8, fd00::/8, 192.168.1.1/32",
            "10.0.0.0/8 ,fd00::/8 ,  192.168.1.1",
        ] {
            let peer = peer(&format!("AllowedIPs = {list}"));
            assert_eq!(peer.allowed_ips, expected, "{list}");
        }
    }

    #[test]
    fn repeated_list_lines_accumulate() {
        let interface = interface(
            "Address = 10.0.0.2/24\nAddress = fd00::2/64\nDNS = 10.0.0.1\nDNS = example.com, 10.0.0.53\n",
        );
        assert_eq!(interface.addresses, [net("10.0.0.2/24"), net("fd00::2/64")]);
        assert_eq!(
            interface.dns,
            [
                "10.0.0.1".parse::<IpAddr>().unwrap(),
                "10.0.0.53".parse().unwrap()
            ]
        );
        assert_eq!(interface.dns_search, ["example.com"]);
        let peer = peer("AllowedIPs = 10.0.0.0/24\nAllowedIPs = 10.0.1.0/24, ::/0\n");
        assert_eq!(
            peer.allowed_ips,
            [net("10.0.0.0/24"), net("10.0.1.0/24"), net("::/0")]
        );
    }

    #[test]
    fn empty_lists_are_allowed() {
        assert!(peer("AllowedIPs =").allowed_ips.is_empty());
        assert!(peer("AllowedIPs =   # nothing").allowed_ips.is_empty());
        let interface = interface("Address =\nDNS =\n");
        assert!(interface.addresses.is_empty());
        assert!(interface.dns.is_empty());
    }

    // --- interface values -------------------------------------------------

    #[test]
    fn listen_port() {
        assert_eq!(interface("ListenPort = 0").listen_port, Some(0));
        assert_eq!(interface("ListenPort = 65535").listen_port, Some(65535));
    }

    #[test]
    fn fwmark_forms() {
        assert_eq!(interface("FwMark = off").fwmark, None);
        assert_eq!(interface("FwMark = OFF").fwmark, None);
        assert_eq!(interface("FwMark = 0").fwmark, None);
        assert_eq!(interface("FwMark = 0x0").fwmark, None);
        assert_eq!(interface("FwMark = 51820").fwmark, Some(51820));
        assert_eq!(interface("FwMark = 0xca6c").fwmark, Some(0xca6c));
        assert_eq!(interface("FwMark = 0XCA6C").fwmark, Some(0xca6c));
        assert_eq!(interface("FwMark = 0xffffffff").fwmark, Some(u32::MAX));
        assert_eq!(interface("FwMark = 4294967295").fwmark, Some(u32::MAX));
    }

    #[test]
    fn addresses_keep_their_prefix_and_bare_ones_are_hosts() {
        let interface = interface("Address = 10.0.0.2, fd00::2, 10.1.2.3/16, fd00::3/64");
        assert_eq!(
            interface.addresses,
            [
                net("10.0.0.2/32"),
                net("fd00::2/128"),
                net("10.1.2.3/16"),
                net("fd00::3/64")
            ]
        );
        assert_eq!(
            interface.addresses[2].ip(),
            "10.1.2.3".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn dns_servers_and_search_domains() {
        let interface = interface("DNS = 1.1.1.1, 2606:4700:4700::1111, lan, corp.example.com.");
        assert_eq!(
            interface.dns,
            [
                "1.1.1.1".parse::<IpAddr>().unwrap(),
                "2606:4700:4700::1111".parse().unwrap()
            ]
        );
        assert_eq!(interface.dns_search, ["lan", "corp.example.com."]);
    }

    #[test]
    fn mtu_bounds() {
        assert_eq!(interface("MTU = 576").mtu, Some(576));
        assert_eq!(interface("MTU = 65535").mtu, Some(65535));
        assert_eq!(
            interface("MTU = 1280\nAddress = fd00::2/64").mtu,
            Some(1280)
        );
        // An IPv6 address after the MTU line still raises the minimum.
        assert_error(
            &with_interface("MTU = 1279\nAddress = 10.0.0.2/24\nAddress = fd00::2/64"),
            "wg0.conf:3: MTU: \"1279\" is not valid: expected 1280 to 65535",
            "IPv6 needs at least 1280",
        );
        assert_error(
            &with_interface("MTU = 575"),
            "wg0.conf:3: MTU: \"575\" is not valid: expected 576 to 65535",
            "1280 with an IPv6 address",
        );
        assert_error(
            &with_interface("MTU = 65536"),
            "wg0.conf:3: MTU: \"65536\" is not valid: expected a number from 576 to 65535",
            "1280",
        );
        assert_error(
            &with_interface("MTU = auto"),
            "wg0.conf:3: MTU: \"auto\" is not valid",
            "expected a number",
        );
    }

    #[test]
    fn table_is_stored_as_written() {
        assert_eq!(interface("Table = off").table.as_deref(), Some("off"));
        assert_eq!(interface("Table = auto").table.as_deref(), Some("auto"));
        assert_eq!(interface("Table = 1234").table.as_deref(), Some("1234"));
        assert_eq!(interface("Table = vpn").table.as_deref(), Some("vpn"));
    }

    #[test]
    fn table_off_adds_no_routes() {
        assert!(!interface("Table = off").adds_routes());
        assert!(!interface("Table = Off").adds_routes());
        assert!(interface("Table = auto").adds_routes());
        assert!(interface("Table = 1234").adds_routes());
        assert!(interface("").adds_routes());
    }

    #[test]
    fn hooks_and_save_config_are_warnings() {
        let config = parse(&with_interface(
            "PreUp = echo 1\nPostUp = echo 2\nPostUp = echo 3 # again\nPreDown = x\nPostDown = y\nSaveConfig = true\n",
        ));
        assert_eq!(config.warnings.len(), 6);
        assert_eq!(
            config.warnings[1],
            "line 4: PostUp is ignored: wireguard4netns runs no hooks"
        );
        assert_eq!(config.ignored_hooks, 5);
        assert!(config.warnings[0].starts_with("line 3: PreUp is ignored"));
        assert!(config.warnings[2].starts_with("line 5: PostUp is ignored"));
        assert!(config.warnings[3].starts_with("line 6: PreDown is ignored"));
        assert!(config.warnings[4].starts_with("line 7: PostDown is ignored"));
        assert_eq!(
            config.warnings[5],
            "line 8: SaveConfig is ignored: wireguard4netns never writes the config file"
        );
        assert!(config.warnings.iter().all(|w| !w.contains("echo")));
    }

    // --- peer values ------------------------------------------------------

    #[test]
    fn allowed_ips_are_stored_as_given() {
        // Like wg, host bits need not be zero.
        let peer = peer("AllowedIPs = 10.1.2.3/8");
        assert_eq!(
            peer.allowed_ips[0].ip(),
            "10.1.2.3".parse::<IpAddr>().unwrap()
        );
        assert_eq!(peer.allowed_ips[0].prefix(), 8);
    }

    #[test]
    fn endpoint_forms() {
        let endpoint = |value: &str| peer(&format!("Endpoint = {value}")).endpoint.unwrap();
        assert_eq!(
            endpoint("192.0.2.1:51820"),
            Endpoint::Addr("192.0.2.1:51820".parse().unwrap())
        );
        assert_eq!(
            endpoint("[2001:db8::1]:51820"),
            Endpoint::Addr("[2001:db8::1]:51820".parse().unwrap())
        );
        assert_eq!(
            endpoint("[fe80::1%2]:1"),
            Endpoint::Addr("[fe80::1%2]:1".parse().unwrap())
        );
        assert_eq!(
            endpoint("vpn.example.com:65535"),
            Endpoint::Host {
                host: "vpn.example.com".to_owned(),
                port: 65535
            }
        );
        assert_eq!(
            endpoint("localhost:51820"),
            Endpoint::Host {
                host: "localhost".to_owned(),
                port: 51820
            }
        );
    }

    #[test]
    fn endpoint_display() {
        let shown = |value: &str| {
            peer(&format!("Endpoint = {value}"))
                .endpoint
                .unwrap()
                .to_string()
        };
        assert_eq!(shown("192.0.2.1:51820"), "192.0.2.1:51820");
        assert_eq!(shown("[2001:db8::1]:51820"), "[2001:db8::1]:51820");
        assert_eq!(shown("vpn.example.com:443"), "vpn.example.com:443");
    }

    #[test]
    fn persistent_keepalive_forms() {
        let keepalive =
            |value: &str| peer(&format!("PersistentKeepalive = {value}")).persistent_keepalive;
        assert_eq!(keepalive("off"), None);
        assert_eq!(keepalive("Off"), None);
        assert_eq!(keepalive("0"), None);
        assert_eq!(keepalive("25"), Some(25));
        assert_eq!(keepalive("65535"), Some(65535));
    }

    #[test]
    fn endpoint_resolves() {
        let addr: SocketAddr = "192.0.2.1:51820".parse().unwrap();
        assert_eq!(Endpoint::Addr(addr).resolve().unwrap(), addr);
        let localhost = Endpoint::Host {
            host: "localhost".to_owned(),
            port: 51820,
        };
        let resolved = localhost.resolve().unwrap();
        assert!(resolved.ip().is_loopback(), "{resolved}");
        assert_eq!(resolved.port(), 51820);
    }

    #[test]
    fn unresolvable_endpoint_fails_cleanly() {
        let endpoint = Endpoint::Host {
            host: "no-such-host.invalid".to_owned(),
            port: 51820,
        };
        let err = endpoint.resolve().unwrap_err();
        assert!(matches!(err, ConfigError::Resolve { port: 51820, .. }));
        let message = err.to_string();
        assert!(
            message.starts_with("cannot resolve endpoint host 'no-such-host.invalid': "),
            "{message}"
        );
        assert!(
            message.ends_with("; check the name or use an IP address"),
            "{message}"
        );
    }

    // --- errors: file structure -------------------------------------------

    #[test]
    fn empty_file_is_an_error() {
        for text in ["", "\n\n", "# only a comment\n   \n", "\u{feff}"] {
            let message = error(text);
            assert_eq!(
                message,
                "wg0.conf: the file has no settings; it needs an [Interface] section with a PrivateKey"
            );
        }
    }

    #[test]
    fn missing_interface_is_an_error() {
        let message = error(&format!("[Peer]\nPublicKey = {PEER_A}\n"));
        assert_eq!(
            message,
            "wg0.conf: there is no [Interface] section; add one with a PrivateKey"
        );
    }

    #[test]
    fn second_interface_is_an_error() {
        assert_error(
            &format!(
                "{}[Peer]\nPublicKey = {PEER_A}\n[interface]\n",
                with_interface("")
            ),
            "wg0.conf:5: a second [Interface] section (the first is on line 1)",
            "exactly one",
        );
    }

    #[test]
    fn missing_private_key_is_an_error() {
        assert_eq!(
            error("# comment\n[Interface]\nListenPort = 1\n"),
            "wg0.conf:2: [Interface] has no PrivateKey; add `PrivateKey = ` and a key from \
             `wireguard4netns genkey` or `wg genkey`"
        );
    }

    #[test]
    fn peer_without_public_key_is_an_error() {
        assert_error(
            &with_interface("[Peer]\nAllowedIPs = 10.0.0.0/8\n"),
            "wg0.conf:3: [Peer] has no PublicKey; ",
            "the peer's public key",
        );
    }

    #[test]
    fn duplicate_peers_are_an_error() {
        let text = with_interface(&format!(
            "[Peer]\nPublicKey = {PEER_A}\n\n[Peer]\nPublicKey = {PEER_B}\n[Peer]\n# again\nPublicKey = {PEER_A}\n"
        ));
        assert_error(
            &text,
            "wg0.conf:10: PublicKey: the same peer is already configured on line 4",
            "merge the two [Peer] sections",
        );
    }

    #[test]
    fn peer_with_our_own_public_key_is_an_error() {
        assert_error(
            &with_interface(&format!("[Peer]\nPublicKey = {OWN_PUBLIC}\n")),
            "wg0.conf:4: PublicKey: this is the interface's own public key",
            "the public key of the other side",
        );
    }

    #[test]
    fn unknown_section_is_an_error() {
        assert_error(
            &with_interface("[Peers]\n"),
            "wg0.conf:3: unknown section [Peers]",
            "expected [Interface] or [Peer]",
        );
        assert_error(
            &with_interface("[]\n"),
            "wg0.conf:3: unknown section header",
            "expected [Interface] or [Peer]",
        );
    }

    #[test]
    fn unterminated_section_header_is_an_error() {
        assert_error(
            &with_interface("[Peer\n"),
            "wg0.conf:3: a section header must end with ']'",
            "[Peer]",
        );
        assert_error(
            &with_interface("[Peer] x\n"),
            "wg0.conf:3: ",
            "must end with ']'",
        );
    }

    #[test]
    fn setting_before_any_section_is_an_error() {
        assert_error(
            &format!("# comment\nPrivateKey = {PRIVATE}\n[Interface]\n"),
            "wg0.conf:2: a setting before any section",
            "starts with [Interface]",
        );
    }

    #[test]
    fn line_without_equals_is_an_error() {
        assert_error(
            &with_interface("ListenPort 51820\n"),
            "wg0.conf:3: expected `Key = value`",
            "[Peer]",
        );
    }

    #[test]
    fn setting_without_key_is_an_error() {
        assert_error(
            &with_interface(" = 51820\n"),
            "wg0.conf:3: a setting without a key",
            "'='",
        );
    }

    #[test]
    fn unknown_key_is_an_error_that_lists_the_valid_ones() {
        assert_error(
            &with_interface("ListenPorts = 1\n"),
            "wg0.conf:3: ListenPorts: unknown key in [Interface]; valid keys are PrivateKey, ListenPort,",
            "SaveConfig",
        );
        assert_error(
            &with_peer("Keepalive = 25\n"),
            "wg0.conf:5: Keepalive: unknown key in [Peer]; valid keys are PublicKey,",
            "PersistentKeepalive",
        );
    }

    #[test]
    fn key_in_the_wrong_section_is_an_error_that_says_where_it_belongs() {
        assert_error(
            &with_interface("endpoint = 192.0.2.1:1\n"),
            "wg0.conf:3: endpoint: belongs in [Peer], not in [Interface]",
            "",
        );
        assert_error(
            &with_peer("Address = 10.0.0.2/24\n"),
            "wg0.conf:5: Address: belongs in [Interface], not in [Peer]",
            "",
        );
    }

    #[test]
    fn pasted_key_line_is_not_repeated() {
        // A bare key has an '=' of its own: it reads as a setting named like the key.
        let message = error(&with_interface(&format!("{PEER_A}\n")));
        assert!(
            message.starts_with("wg0.conf:3: not a setting of [Interface] (text not shown"),
            "{message}"
        );
        assert!(!message.contains(&PEER_A[..20]), "{message}");
        let message = error(&with_interface(&format!("{PRIVATE}\n")));
        assert!(!message.contains(&PRIVATE[..20]), "{message}");
    }

    #[test]
    fn single_valued_keys_given_twice_are_an_error() {
        for (key, value) in [
            ("PrivateKey", PRIVATE),
            ("ListenPort", "1"),
            ("FwMark", "1"),
            ("MTU", "1400"),
            ("Table", "off"),
        ] {
            assert_error(
                &with_interface(&format!("{key} = {value}\n{key} = {value}\n")),
                &format!(
                    "wg0.conf:{}: {key}: set twice in one section (first on line ",
                    if key == "PrivateKey" { 3 } else { 4 }
                ),
                "keep one",
            );
        }
        for (key, value) in [
            ("PublicKey", PEER_A),
            ("PresharedKey", PSK),
            ("Endpoint", "192.0.2.1:1"),
            ("PersistentKeepalive", "25"),
        ] {
            let rest = if key == "PublicKey" {
                format!("{key} = {value}\n")
            } else {
                format!("{key} = {value}\n{key} = {value}\n")
            };
            assert_error(
                &with_peer(&rest),
                &format!(
                    "wg0.conf:{}: {key}: set twice in one section",
                    if key == "PublicKey" { 5 } else { 6 }
                ),
                "keep one",
            );
        }
    }

    // --- errors: values ---------------------------------------------------

    #[test]
    fn bad_private_key_is_not_echoed() {
        let almost = &PRIVATE[..43];
        assert_error(
            &format!("[Interface]\nPrivateKey = {almost}\n"),
            "wg0.conf:2: PrivateKey: (value hidden) is not valid: the trailing '=' is missing",
            "44 base64 characters",
        );
        let message = error(&format!("[Interface]\nPrivateKey = {}x=\n", &PRIVATE[..42]));
        assert!(
            message.starts_with(
                "wg0.conf:2: PrivateKey: (value hidden) is not valid: not valid base64"
            ),
            "{message}"
        );
        assert!(!message.contains(&PRIVATE[..10]), "{message}");
        assert_error(
            "[Interface]\nPrivateKey = AAAA\n",
            "wg0.conf:2: PrivateKey: (value hidden) is not valid: decodes to 3 bytes, a WireGuard key is 32 bytes",
            "44 base64 characters ending in '='",
        );
        assert_error(
            "[Interface]\nPrivateKey =\n",
            "wg0.conf:2: PrivateKey: \"\" is not valid: a key cannot be empty",
            "",
        );
    }

    #[test]
    fn bad_preshared_key_is_not_echoed() {
        let message = error(&with_peer(&format!("PresharedKey = {}\n", &PSK[..40])));
        assert!(
            message.starts_with("wg0.conf:5: PresharedKey: (value hidden) is not valid: "),
            "{message}"
        );
        assert!(!message.contains(&PSK[..10]), "{message}");
    }

    #[test]
    fn bad_public_key_is_shown() {
        assert_error(
            &with_interface("[Peer]\nPublicKey = not-a-key\n"),
            "wg0.conf:4: PublicKey: \"not-a-key\" is not valid: not valid base64",
            "44 characters",
        );
    }

    #[test]
    fn bad_listen_port() {
        for value in ["abc", "65536", "-1", "+1", "1 2", ""] {
            assert_error(
                &with_interface(&format!("ListenPort = {value}\n")),
                &format!(
                    "wg0.conf:3: ListenPort: {value:?} is not valid: expected a UDP port from 0 to 65535"
                ),
                "",
            );
        }
    }

    #[test]
    fn bad_fwmark() {
        for value in [
            "on",
            "0x",
            "0xZZ",
            "0x100000000",
            "4294967296",
            "-1",
            "0b1",
            "",
        ] {
            assert_error(
                &with_interface(&format!("FwMark = {value}\n")),
                &format!(
                    "wg0.conf:3: FwMark: {value:?} is not valid: expected \"off\", a number up to 4294967295"
                ),
                "0xca6c",
            );
        }
    }

    #[test]
    fn bad_address() {
        for (value, item, why) in [
            (
                "10.0.0.300/24",
                "10.0.0.300/24",
                "expected an address with an optional prefix length",
            ),
            (
                "10.0.0.2/24, 10.1/16",
                "10.1/16",
                "such as 10.0.0.2/24 or fd00::2/64",
            ),
            (
                "10.0.0.2/33",
                "10.0.0.2/33",
                "an IPv4 prefix length is a number from 0 to 32",
            ),
            (
                "fd00::2/129",
                "fd00::2/129",
                "an IPv6 prefix length is a number from 0 to 128",
            ),
            ("10.0.0.2/", "10.0.0.2/", "from 0 to 32"),
            ("10.0.0.2/+8", "10.0.0.2/+8", "from 0 to 32"),
            ("10.0.0.2,,10.0.0.3", "", "expected an address"),
            ("example.com", "example.com", "expected an address"),
        ] {
            assert_error(
                &with_interface(&format!("Address = {value}\n")),
                &format!("wg0.conf:3: Address: {item:?} is not valid: "),
                why,
            );
        }
    }

    #[test]
    fn bad_dns() {
        for value in [
            "10.0.0.300",
            "fd00::zz",
            "bad_domain",
            "-lan",
            "a..b",
            "1.2.3",
            "x y",
        ] {
            assert_error(
                &with_interface(&format!("DNS = 10.0.0.1, {value}\n")),
                &format!("wg0.conf:3: DNS: {value:?} is not valid: "),
                "expected a nameserver's IP address or a search domain",
            );
        }
        let long_label = "a".repeat(64);
        assert_error(
            &with_interface(&format!("DNS = {long_label}.com\n")),
            "wg0.conf:3: DNS: ",
            "search domain",
        );
    }

    #[test]
    fn bad_table() {
        assert_error(
            &with_interface("Table =\n"),
            "wg0.conf:3: Table: \"\" is not valid: ",
            "expected \"off\", \"auto\", or a routing table number or name",
        );
        assert_error(
            &with_interface("Table = main table\n"),
            "wg0.conf:3: Table: ",
            "routing table",
        );
    }

    #[test]
    fn bad_allowed_ips() {
        for (value, item, why) in [
            (
                "10.0.0.0/8, 10.0.0.300/32",
                "10.0.0.300/32",
                "such as 10.0.0.0/24, 0.0.0.0/0 or ::/0",
            ),
            (
                "0.0.0.0/33",
                "0.0.0.0/33",
                "an IPv4 prefix length is a number from 0 to 32",
            ),
            (
                "10.0.0.0/8,",
                "",
                "expected an address with a prefix length",
            ),
            ("all", "all", "expected an address"),
        ] {
            assert_error(
                &with_peer(&format!("AllowedIPs = {value}\n")),
                &format!("wg0.conf:5: AllowedIPs: {item:?} is not valid: "),
                why,
            );
        }
    }

    #[test]
    fn bad_endpoint() {
        for (value, why) in [
            (
                "2001:db8::1",
                "an IPv6 endpoint needs brackets and a port: [2001:db8::1]:51820",
            ),
            (
                "2001:db8::1:5182",
                "an IPv6 endpoint needs brackets and a port",
            ),
            ("2001:db8::1:51820", "needs brackets around the address"),
            ("2001:db8::zz:51820", "needs brackets around the address"),
            ("[2001:db8::1]", "expected [IPv6 address]:port"),
            ("[2001:db8::1]51820", "expected [IPv6 address]:port"),
            (
                "[vpn.example.com]:51820",
                "the part in brackets is not an IPv6 address",
            ),
            (
                "[2001:db8::1]:0",
                "the port must be a number from 1 to 65535",
            ),
            (
                "[2001:db8::1]:65536",
                "the port must be a number from 1 to 65535",
            ),
            ("192.0.2.1", "the port is missing"),
            ("vpn.example.com", "the port is missing"),
            ("192.0.2.1:0", "the port must be a number from 1 to 65535"),
            (
                "192.0.2.1:65536",
                "the port must be a number from 1 to 65535",
            ),
            ("192.0.2.1:", "the port must be a number"),
            ("vpn.example.com:port", "the port must be a number"),
            (
                "192.0.2.256:51820",
                "the host is neither an IP address nor a DNS name",
            ),
            ("bad_host:51820", "neither an IP address nor a DNS name"),
            (":51820", "neither an IP address nor a DNS name"),
            ("", "the port is missing"),
        ] {
            assert_error(
                &with_peer(&format!("Endpoint = {value}\n")),
                &format!("wg0.conf:5: Endpoint: {value:?} is not valid: "),
                why,
            );
        }
    }

    #[test]
    fn bad_persistent_keepalive() {
        assert_eq!(
            error(&with_peer("PersistentKeepalive = abc\n")),
            "wg0.conf:5: PersistentKeepalive: \"abc\" is not valid: \
             expected \"off\" or a number of seconds from 1 to 65535"
        );
        for value in ["65536", "-1", "25s", ""] {
            assert_error(
                &with_peer(&format!("PersistentKeepalive = {value}\n")),
                &format!("wg0.conf:5: PersistentKeepalive: {value:?} is not valid: "),
                "from 1 to 65535",
            );
        }
    }

    #[test]
    fn long_and_odd_values_are_quoted_on_one_line() {
        let long = "x".repeat(500);
        let message = error(&with_peer(&format!("Endpoint = {long}\n")));
        assert!(
            message.contains(&format!("\"{}\"…", "x".repeat(64))),
            "{message}"
        );
        assert!(message.len() < 300, "{message}");
        let message = error(&with_peer("Endpoint = a\u{7}b\"c\n"));
        assert!(message.contains(r#""a\u{7}b\"c""#), "{message}");
    }

    #[test]
    fn source_name_is_used_in_messages() {
        let err = Config::parse("[Interface]\nMTU = x\n", "/etc/wg/tun9.conf").unwrap_err();
        assert!(err.to_string().starts_with("/etc/wg/tun9.conf:2: MTU: "));
        assert!(matches!(
            err,
            ConfigError::Line { line: 2, ref key, .. } if key == "MTU"
        ));
    }

    // --- reading files ----------------------------------------------------

    /// A path in the temp directory that this test alone uses.
    struct TempPath(PathBuf);

    impl TempPath {
        fn new(name: &str) -> Self {
            let path = std::env::temp_dir()
                .join(format!("wg4n-config-test-{}-{name}", std::process::id()));
            Self(path)
        }
    }

    impl Drop for TempPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
            let _ = std::fs::remove_dir(&self.0);
        }
    }

    #[test]
    fn from_file_reads_and_parses() {
        let file = TempPath::new("ok.conf");
        std::fs::write(&file.0, with_peer("AllowedIPs = 10.0.0.0/8\n")).unwrap();
        let config = Config::from_file(&file.0).unwrap();
        assert_eq!(config.peers[0].allowed_ips, [net("10.0.0.0/8")]);
        std::fs::write(&file.0, with_interface("MTU = 1\n")).unwrap();
        let message = Config::from_file(&file.0).unwrap_err().to_string();
        let prefix = format!("{}:3: MTU: ", file.0.display());
        assert!(message.starts_with(&prefix), "{message}");
    }

    #[test]
    fn a_file_others_can_read_gets_a_warning_naming_it() {
        use std::os::unix::fs::PermissionsExt as _;
        let file = TempPath::new("exposed.conf");
        std::fs::write(&file.0, with_peer("")).unwrap();
        let set_mode = |mode| {
            std::fs::set_permissions(&file.0, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        for (mode, who) in [
            (0o644, "group and others"),
            (0o640, "its group"),
            (0o604, "others"),
        ] {
            set_mode(mode);
            let warnings = Config::from_file(&file.0).unwrap().warnings;
            assert_eq!(
                warnings,
                [format!(
                    "it holds a PrivateKey and is readable by {who} (mode {mode:04o}) (hint: chmod 600 {})",
                    file.0.display()
                )]
            );
        }
        for mode in [0o600, 0o400, 0o620, 0o700] {
            set_mode(mode);
            let warnings = Config::from_file(&file.0).unwrap().warnings;
            assert!(warnings.is_empty(), "{mode:o}: {warnings:?}");
        }
        // Not a file that stays behind: no warning.
        assert_eq!(exposure_warning(None, &file.0), None);
    }

    #[test]
    fn missing_file_is_an_error() {
        let file = TempPath::new("missing.conf");
        let message = Config::from_file(&file.0).unwrap_err().to_string();
        assert_eq!(
            message,
            format!(
                "cannot read {}: no such file; check the path, a relative one starts at the current directory",
                file.0.display()
            )
        );
    }

    #[test]
    fn directory_is_an_error() {
        let dir = TempPath::new("dir.conf");
        std::fs::create_dir(&dir.0).unwrap();
        let message = Config::from_file(&dir.0).unwrap_err().to_string();
        assert_eq!(
            message,
            format!(
                "cannot read {}: it is a directory; give the path of the .conf file, not of its directory",
                dir.0.display()
            )
        );
    }

    #[test]
    fn unreadable_file_is_an_error() {
        let path = Path::new("/etc/wireguard/wg0.conf");
        let message = read_error(path, io::ErrorKind::PermissionDenied.into()).to_string();
        assert_eq!(
            message,
            "cannot read /etc/wireguard/wg0.conf: permission denied; make it readable by this \
             user (it holds a private key: keep it mode 0600 and your own)"
        );
    }

    #[test]
    fn non_utf8_file_is_an_error_with_the_line() {
        let file = TempPath::new("latin1.conf");
        std::fs::write(&file.0, b"[Interface]\n# caf\xe9\n").unwrap();
        let message = Config::from_file(&file.0).unwrap_err().to_string();
        assert_eq!(
            message,
            format!(
                "{}:2: the file is not UTF-8 text; save it as UTF-8 (a WireGuard config is plain ASCII)",
                file.0.display()
            )
        );
    }

    #[test]
    fn huge_file_is_an_error() {
        let file = TempPath::new("huge.conf");
        let size = usize::try_from(MAX_CONFIG_BYTES).unwrap() + 1;
        std::fs::write(&file.0, vec![b'#'; size]).unwrap();
        let message = Config::from_file(&file.0).unwrap_err().to_string();
        assert!(
            message.contains("it is larger than 1048576 bytes"),
            "{message}"
        );
        assert!(Config::from_file(Path::new("/dev/zero")).is_err());
    }

    // --- robustness -------------------------------------------------------

    /// xorshift64*: enough randomness to shake the parser, reproducible.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            usize::try_from(self.next() % n as u64).unwrap()
        }

        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[self.below(items.len())]
        }
    }

    #[test]
    fn random_bytes_do_not_panic() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..5_000 {
            let len = rng.below(200);
            let bytes: Vec<u8> = (0..len).map(|_| rng.next().to_le_bytes()[0]).collect();
            let _ = Config::parse(&String::from_utf8_lossy(&bytes), "fuzz");
        }
    }

    #[test]
    fn random_lines_do_not_panic() {
        #[rustfmt::skip]
        const PIECES: &[&str] = &[
            "[Interface]", "[Peer]", "[", "]", "[]", "#", "=", " = ", ",", ", ", ":", "[::1]",
            "/", "\r", "\t", " ", "\u{feff}", "é", "\u{0}",
            "PrivateKey", "privatekey", "PublicKey", "PresharedKey", "AllowedIPs", "Endpoint",
            "PersistentKeepalive", "ListenPort", "FwMark", "Address", "DNS", "MTU", "Table",
            "PostUp", "SaveConfig",
            PRIVATE, PEER_A, PEER_B, OWN_PUBLIC, PSK, "AAAA",
            "0", "1", "25", "off", "0x", "0xffffffff", "65535", "65536", "576", "1280",
            "99999999999999999999", "10.0.0.1", "10.0.0.0/8", "fd00::1", "::/0", "/33", "/129",
            "localhost", "a.b", "-", "..", "%", "[fe80::1%1]:1", "1.2.3.4:51820",
        ];
        let mut rng = Rng(42);
        for _ in 0..20_000 {
            let mut text = String::new();
            for _ in 0..rng.below(12) {
                for _ in 0..rng.below(6) {
                    text.push_str(rng.pick(PIECES));
                }
                text.push_str(rng.pick(&["\n", "\r\n", "\n\n"]));
            }
            match Config::parse(&text, "fuzz") {
                Ok(config) => assert!(config.mtu() >= 576),
                Err(err) => {
                    let message = err.to_string();
                    assert!(!message.contains('\n'), "{message}");
                    assert!(!message.contains(PRIVATE), "{message}");
                    assert!(!message.contains(PSK), "{message}");
                }
            }
        }
    }
}

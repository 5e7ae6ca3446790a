//! Configs by name, as `wg-quick up wg0` finds `/etc/wireguard/wg0.conf`: a
//! CONFIG argument that is a bare name (wg-quick's rule: 1 to 15 of
//! `[A-Za-z0-9_=+.-]`) is looked up as `NAME.conf` in the caller's
//! `$XDG_CONFIG_HOME/wireguard4netns/` (default `~/.config/wireguard4netns/`),
//! then in `/etc/wireguard/` when that can be read (it is root's 0700 on
//! Debian, so for most users it is skipped, and the error says so).
//!
//! One difference from wg-quick keeps existing command lines working: a word
//! ending in `.conf` stays a path (`run -c wg.conf` has always meant the file
//! in the current directory; wg-quick would look for `wg.conf.conf`). Anything
//! with a `/` is a path too, so `./vpn` names the file `vpn` here.

#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};

use super::NamedError;

/// The system-wide directory, searched second.
pub const SYSTEM_DIR: &str = "/etc/wireguard";

/// Whether `arg` names a config rather than giving its path.
pub fn is_name(arg: &str) -> bool {
    (1..=15).contains(&arg.len())
        && !arg.ends_with(".conf")
        && !arg.starts_with('-')
        && arg != "."
        && arg != ".."
        && arg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_=+.-".contains(&b))
}

/// The directories searched for `NAME.conf`, in order: the user's (from
/// `XDG_CONFIG_HOME`, else `HOME/.config`; none when neither is set to an
/// absolute path), then [`SYSTEM_DIR`].
pub fn search_dirs(xdg_config_home: Option<OsString>, home: Option<OsString>) -> Vec<PathBuf> {
    let user = match (xdg_config_home.map(PathBuf::from), home.map(PathBuf::from)) {
        (Some(xdg), _) if xdg.is_absolute() => Some(xdg),
        (_, Some(home)) if home.is_absolute() => Some(home.join(".config")),
        _ => None,
    };
    user.map(|dir| dir.join("wireguard4netns"))
        .into_iter()
        .chain([PathBuf::from(SYSTEM_DIR)])
        .collect()
}

/// CONFIG as a path: itself when it is one, else the first `NAME.conf` found
/// in [`search_dirs`] of this process's environment.
pub fn resolve(arg: &Path) -> Result<PathBuf, NamedError> {
    match arg.to_str() {
        Some(name) if is_name(name) => find(
            name,
            &search_dirs(
                std::env::var_os("XDG_CONFIG_HOME"),
                std::env::var_os("HOME"),
            ),
        ),
        _ => Ok(arg.to_owned()),
    }
}

/// The first `dir/NAME.conf` that exists, or an error that lists every place
/// looked at and why each did not do.
pub fn find(name: &str, dirs: &[PathBuf]) -> Result<PathBuf, NamedError> {
    let mut looked = Vec::new();
    for dir in dirs {
        let path = dir.join(format!("{name}.conf"));
        match path.try_exists() {
            Ok(true) => return Ok(path),
            Ok(false) => looked.push(format!("{} (no such file)", path.display())),
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                looked.push(format!(
                    "{} (cannot read {})",
                    path.display(),
                    dir.display()
                ));
            }
            Err(e) => looked.push(format!("{} ({e})", path.display())),
        }
    }
    Err(NamedError::ConfigNotFound {
        name: name.to_owned(),
        looked: looked.join(", "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_wg_quick_but_dot_conf_stays_a_path() {
        for name in ["wg0", "vpn", "home-vpn", "a.b", "x=y+z_1"] {
            assert!(is_name(name), "{name}");
        }
        for path in [
            "wg.conf",
            "./vpn",
            "/etc/wireguard/wg0.conf",
            "",
            ".",
            "..",
            "sixteen-chars-xx",
            "has space",
            "-",
        ] {
            assert!(!is_name(path), "{path}");
        }
    }

    #[test]
    fn the_user_s_directory_comes_first() {
        assert_eq!(
            search_dirs(Some("/x/cfg".into()), Some("/home/u".into())),
            [
                PathBuf::from("/x/cfg/wireguard4netns"),
                PathBuf::from(SYSTEM_DIR)
            ]
        );
        assert_eq!(
            search_dirs(Some("relative".into()), Some("/home/u".into())),
            [
                PathBuf::from("/home/u/.config/wireguard4netns"),
                PathBuf::from(SYSTEM_DIR)
            ]
        );
        assert_eq!(search_dirs(None, None), [PathBuf::from(SYSTEM_DIR)]);
    }

    #[test]
    fn found_in_order_and_the_error_lists_where_it_looked() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let dirs = [a.path().to_owned(), b.path().to_owned()];
        std::fs::write(b.path().join("vpn.conf"), "").unwrap();
        assert_eq!(find("vpn", &dirs).unwrap(), b.path().join("vpn.conf"));
        std::fs::write(a.path().join("vpn.conf"), "").unwrap();
        assert_eq!(find("vpn", &dirs).unwrap(), a.path().join("vpn.conf"));
        let err = find("nope", &dirs).unwrap_err().to_string();
        assert!(
            err.contains(&format!("{}/nope.conf (no such file)", a.path().display()))
                && err.contains(&format!("{}/nope.conf (no such file)", b.path().display())),
            "{err}"
        );
        assert!(!err.contains('\n'), "{err}");
    }
}

//! The man pages in `doc/man/` are generated from the clap definitions
//! (`clap_mangen`: one page per command, `wireguard4netns.1` and
//! `wireguard4netns-SUBCOMMAND.1`) and committed, so that packages can install
//! them without building anything. This test fails when they are out of date;
//!
//!     UPDATE_MAN=1 cargo test --test man
//!
//! rewrites them. It also renders each with `man -l` (man-db and groff, which
//! `.ci/run` installs; outside CI a missing `man` is a printed SKIP).
//!
//! The Python package installs them too (`share/man/man1` under the
//! environment's prefix): maturin's `data` directory, `doc/wheel-data`, holds
//! one relative symlink per page into `doc/man` (maturin follows a file
//! symlink but not a directory one), kept in step here as well.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::CommandFactory;
use wireguard4netns::cli::Cli;

const REGENERATE: &str = "UPDATE_MAN=1 cargo test --test man";

fn man_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("doc/man")
}

/// Where the wheel's man pages are: `pyproject.toml`'s `data`, then the
/// wheel's `data/share/man/man1`.
fn wheel_man_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("doc/wheel-data/data/share/man/man1")
}

/// The symlink in [`wheel_man_dir`] for page `name`.
fn wheel_link(name: &str) -> PathBuf {
    Path::new("../../../../../man").join(name)
}

/// The wheel's pages, by name, with where their symlinks point.
fn wheel_links() -> BTreeMap<String, Option<PathBuf>> {
    let Ok(entries) = fs::read_dir(wheel_man_dir()) else {
        return BTreeMap::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            Some((name, fs::read_link(entry.path()).ok()))
        })
        .collect()
}

/// The pages as clap_mangen makes them, by file name.
fn generated() -> BTreeMap<String, Vec<u8>> {
    let out = tempfile::tempdir().expect("tempdir");
    clap_mangen::generate_to(Cli::command(), out.path()).expect("generate the man pages");
    pages_in(out.path())
}

fn pages_in(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let Ok(entries) = fs::read_dir(dir) else {
        return BTreeMap::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            name.ends_with(".1")
                .then(|| (name, fs::read(entry.path()).expect("read a page")))
        })
        .collect()
}

#[test]
fn man_pages_are_up_to_date() {
    let want = generated();
    let dir = man_dir();
    if std::env::var_os("UPDATE_MAN").is_some() {
        fs::create_dir_all(&dir).expect("create doc/man");
        for name in pages_in(&dir).keys().filter(|n| !want.contains_key(*n)) {
            fs::remove_file(dir.join(name)).expect("remove a stale page");
        }
        for (name, page) in &want {
            fs::write(dir.join(name), page).expect("write a page");
        }
        let wheel = wheel_man_dir();
        let _ = fs::remove_dir_all(&wheel);
        fs::create_dir_all(&wheel).expect("create the wheel's man directory");
        for name in want.keys() {
            std::os::unix::fs::symlink(wheel_link(name), wheel.join(name))
                .expect("link a page for the wheel");
        }
        return;
    }
    let have = pages_in(&dir);
    let names = |pages: &BTreeMap<String, Vec<u8>>| pages.keys().cloned().collect::<Vec<_>>();
    assert_eq!(
        names(&have),
        names(&want),
        "doc/man does not hold one page per command; regenerate with: {REGENERATE}"
    );
    for (name, page) in &want {
        assert!(
            have.get(name) == Some(page),
            "doc/man/{name} is out of date with the clap definitions; regenerate with: {REGENERATE}"
        );
    }
    let links: BTreeMap<String, Option<PathBuf>> = want
        .keys()
        .map(|name| (name.clone(), Some(wheel_link(name))))
        .collect();
    assert_eq!(
        wheel_links(),
        links,
        "doc/wheel-data does not link each page for the wheel; regenerate with: {REGENERATE}"
    );
}

/// The page of every command renders with `man -l` without a warning, and
/// the main page shows the synopsis, the subcommands and the options.
#[test]
fn man_renders_the_pages() {
    if Command::new("man").arg("--version").output().is_err() {
        let reason = "`man` not found (apt-get install man-db groff-base)";
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{reason}");
        eprintln!("SKIP man_renders_the_pages: {reason}");
        return;
    }
    for name in generated().keys() {
        let page = man_dir().join(name);
        let out = Command::new("man")
            .args(["--warnings", "-l"])
            .arg(&page)
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "80")
            .env("LC_ALL", "C.UTF-8")
            .output()
            .expect("run man");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "man -l {name}: {}\n{stderr}",
            out.status
        );
        assert!(stderr.is_empty(), "man -l {name} warns:\n{stderr}");
        assert!(stdout.contains("SYNOPSIS"), "man -l {name}:\n{stdout}");
        if name == "wireguard4netns.1" {
            for word in [
                "wireguard4netns run -c CONFIG",
                "exec",
                "completions",
                "--log-file",
            ] {
                assert!(
                    stdout.contains(word),
                    "no {word:?} in man -l {name}:\n{stdout}"
                );
            }
        }
    }
}

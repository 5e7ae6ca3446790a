//! End-to-end tests of hostile input on the data path: root inside the
//! target's network namespace writes its own `virtio_net_hdr`s into the TUN
//! (`AF_PACKET` with `PACKET_VNET_HDR`, `tests/hostile/gso_frames.py`), with
//! GSO parameters no kernel TCP produces. The engine (uid 65534, as always)
//! must drop and count those frames instead of expanding one 64 KiB read into
//! tens of thousands of buffers, keep its memory, and keep serving. See
//! `common/mod.rs` for the harness.

#![forbid(unsafe_code)]

mod common;

use std::fs;
use std::path::Path;
use std::time::Duration;

use common::*;

/// Debian's python3 (whatever `python3` comes first in PATH may be another).
const PYTHON: &str = "/usr/bin/python3";

/// Frames of each kind sent: enough that expanding them would cost gigabytes
/// (each forged frame asks for up to 65,495 segments of a 4 KiB buffer).
const FRAMES: u32 = 50;

/// The engine's peak resident memory may grow by at most this much while the
/// frames arrive. Measured with the debug build on this test: VmHWM ~12 MiB
/// before and within 10 KiB of that after (the drop happens before any
/// buffer is taken); before frames were checked, the same frames took it
/// from 11.5 to 278 MiB. The slack covers the spill buffer and the pool
/// buffers of a legitimate burst.
const RSS_GROWTH_BOUND_KIB: u64 = 8 * 1024;

/// `VmRSS` and `VmHWM` of `pid`, in KiB.
fn memory(pid: u32) -> (u64, u64) {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("cannot read /proc/{pid}/status: {e}"));
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status:\n{status}"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The highest "N so far" of the engine's forged-frame warnings.
fn forged_count(log: &str) -> u64 {
    log.lines()
        .filter(|l| l.contains("that no kernel sends"))
        .filter_map(|l| l.split("; ").nth(1)?.split(' ').next()?.parse().ok())
        .max()
        .unwrap_or(0)
}

/// Forged TSO frames (`gso_size` 1; 650 segments of 100 bytes; segments
/// larger than the MTU) from root inside the target: the engine survives,
/// logs and counts them, its peak memory stays put, and `show` and traffic
/// through the tunnel still work afterwards.
#[test]
fn forged_gso_frames_are_dropped_and_counted() {
    let Some(id) = require_root_env("forged_gso_frames_are_dropped_and_counted") else {
        return;
    };
    if !Path::new(PYTHON).exists() {
        let reason = format!("{PYTHON} not found (apt-get install python3)");
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{reason}");
        eprintln!("SKIP forged_gso_frames_are_dropped_and_counted: {reason}");
        return;
    }
    let s = Scenario::new(id, ScenarioOpts::default());
    // Each dropped frame is logged at debug; the warnings come at the 1st,
    // 2nd, 4th, … one.
    let mut fg = s.spawn_foreground(
        s.target.pid(),
        &["--configure", "--log-level", "info,wireguard4netns=debug"],
    );
    fg.wait_socket(&s.socket(), Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}"));
    s.expect_ping(s.peer_v4(), 2);
    let (rss_before, hwm_before) = memory(fg.pid);

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hostile/gso_frames.py");
    let target = s.target.pid().to_string();
    let (src, dst) = (s.client_v4().to_string(), s.peer_v4().to_string());
    let frames = FRAMES.to_string();
    let mut sent_total = 0u64;
    // What the engine says about each kind (MTU 1420; 65,495 bytes of
    // payload after 40 bytes of headers).
    for (gso_size, why) in [
        ("1", "segment size of 1,"),
        ("100", "GSO packet of 655 segments"),
        (
            "1400",
            "GSO segments of 1440 bytes, above the interface's MTU of 1420",
        ),
    ] {
        let out = run_ok(&mut cmd(
            "nsenter",
            [
                "-t",
                &target,
                "-n",
                PYTHON,
                &script.to_string_lossy(),
                &s.ifname,
                &src,
                &dst,
                gso_size,
                &frames,
            ],
        ));
        let sent: u64 = text(&out.stdout).trim().parse().unwrap_or(0);
        assert!(
            sent > 0,
            "no frame with gso_size {gso_size} sent: {}",
            text(&out.stderr)
        );
        sent_total += sent;
        assert!(
            wait_for(Duration::from_secs(5), || fg.log().contains(why)),
            "no {why:?}: the frames did not reach the engine, or were not refused\n--- its output ---\n{}",
            fg.log()
        );
    }
    assert!(forged_count(&fg.log()) > 0, "not counted:\n{}", fg.log());
    assert!(fg.try_exit().is_none(), "the engine died:\n{}", fg.log());
    let (rss_after, hwm_after) = memory(fg.pid);
    eprintln!(
        "forged GSO: {sent_total} frames sent, at least {} counted; VmRSS {rss_before} -> {rss_after} KiB, VmHWM {hwm_before} -> {hwm_after} KiB",
        forged_count(&fg.log())
    );
    assert!(
        hwm_after <= hwm_before + RSS_GROWTH_BOUND_KIB,
        "peak memory grew from {hwm_before} to {hwm_after} KiB"
    );

    let show = run(&mut as_user(
        binary(),
        [
            "show".as_ref(),
            "--tmpdir".as_ref(),
            s.dir.path().as_os_str(),
            s.ifname.as_ref(),
        ],
    ));
    assert!(
        show.status.success() && text(&show.stdout).contains(&s.peer.keys.public),
        "show failed after the frames ({}):\n{}{}",
        show.status,
        text(&show.stdout),
        text(&show.stderr)
    );
    s.expect_ping(s.peer_v4(), 3);
    s.expect_ping(s.peer_v6(), 1);
}

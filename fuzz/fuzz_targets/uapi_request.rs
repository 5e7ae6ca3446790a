//! UAPI framing and parsing: arbitrary bytes through `uapi::read_request` with
//! the server's default limits, and every framed request into gotatun's
//! `Request::from_str` directly (no `catch_unwind`), so a panic in either is
//! a finding. The raw input goes to the parser as well, framing or not.
#![no_main]

use std::str::FromStr;
use std::sync::OnceLock;

use gotatun::device::uapi::command::Request;
use libfuzzer_sys::fuzz_target;
use wireguard4netns::uapi::{Limits, read_request};

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a current-thread runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    // The parser alone too, on any text: the framing's checks (ASCII only)
    // must not be all that keeps it from panicking.
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Request::from_str(text);
    }
    let limits = Limits::default();
    runtime().block_on(async {
        let mut reader = tokio::io::BufReader::new(data);
        // Each request consumes at least one byte, so this ends.
        for _ in 0..=data.len() {
            match read_request(&mut reader, &limits).await {
                Ok(Some(text)) => {
                    assert!(text.ends_with('\n'), "framed request {text:?}");
                    assert!(text.len() <= limits.max_request);
                    let _ = Request::from_str(&text);
                }
                Ok(None) => break,
                Err(e) if e.framing_intact() => {}
                Err(_) => break,
            }
        }
    });
});

//! The wg-quick config parser on arbitrary text: it must return `Ok` or a
//! one-line `Err`, never panic. A parsed config must also pass the checks the
//! engine makes before use (`mtu()`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use wireguard4netns::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text, "fuzz.conf") {
        Ok(config) => {
            let _ = config.mtu();
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.is_empty());
        }
    }
});

//! The client's parsing of a `get=1` answer (what `show` receives from a
//! socket), then every way `show` renders it: none may panic, whatever the
//! server sent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wireguard4netns::tools::proto::{parse_get_response, parse_set_response};
use wireguard4netns::tools::show::{Field, Style, pretty, print_field};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = parse_set_response(text);
    let Ok(device) = parse_get_response(text) else {
        return;
    };
    for (color, show_keys) in [(false, false), (true, true)] {
        let style = Style { color, show_keys };
        let _ = pretty("wg0", &device, style, 1_700_000_000);
        let _ = pretty("wg0", &device, style, 0);
    }
    for field in [
        Field::Dump,
        Field::Endpoints,
        Field::AllowedIps,
        Field::LatestHandshakes,
        Field::Transfer,
    ] {
        let _ = print_field("wg0", &device, field, true);
    }
});

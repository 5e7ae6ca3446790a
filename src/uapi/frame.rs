//! Framing: one request off a stream, bounded by [`Limits`], and the answer
//! to a request that cannot reach the device. See the parent module for the
//! rules and why.

#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::str::FromStr;
use std::time::Duration;

use gotatun::device::uapi::command::Request;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt};

/// Bounds on what one connection may cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest line, without its `\n`.
    pub max_line: usize,
    /// Largest request, counting every byte read for it.
    pub max_request: usize,
    /// Time allowed to read one request (or to write one response); an idle
    /// connection is closed after it.
    pub idle_timeout: Duration,
    /// Time allowed for a new connection to start its first request.
    pub first_request_timeout: Duration,
    /// Connections served at once; beyond it the one idle longest is closed.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_line: 64 * 1024,
            max_request: 1024 * 1024,
            idle_timeout: Duration::from_secs(30),
            first_request_timeout: Duration::from_secs(5),
            max_connections: 64,
        }
    }
}

/// Why a request could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// Reading from the connection failed.
    #[error("read failed: {0}")]
    Io(#[from] io::Error),
    /// A line exceeded [`Limits::max_line`].
    #[error("line longer than {0} bytes")]
    LineTooLong(usize),
    /// A request exceeded [`Limits::max_request`].
    #[error("request larger than {0} bytes")]
    RequestTooLarge(usize),
    /// The connection ended in the middle of a request.
    #[error("connection closed in the middle of a request")]
    Truncated,
    /// The request contains bytes other than printable ASCII.
    #[error("request contains bytes other than printable ASCII")]
    NotAscii,
}

impl FrameError {
    /// Whether the stream can still be read after this error: only when the
    /// whole request, up to its empty line, was consumed.
    pub fn framing_intact(&self) -> bool {
        matches!(self, FrameError::NotAscii)
    }
}

/// Reads one request: lines up to an empty line, returned with each line
/// ending in `\n` and without the empty line, the form gotatun's
/// `Request::from_str` expects (`"get=1\n"`, `"set=1\nkey=value\n…"`).
///
/// `Ok(None)` means the connection ended cleanly between requests.
///
/// # Errors
///
/// See [`FrameError`]; [`FrameError::framing_intact`] tells whether the next
/// request can still be read.
pub async fn read_request<R: AsyncBufRead + Unpin>(
    r: &mut R,
    limits: &Limits,
) -> Result<Option<String>, FrameError> {
    let mut request = Vec::new();
    let mut line = Vec::new();
    let mut consumed = 0usize;
    // Room for the longest line, an optional '\r', the '\n', and one byte
    // more to tell "too long" from "exactly at the limit".
    let line_budget = u64::try_from(limits.max_line.saturating_add(2)).unwrap_or(u64::MAX);
    loop {
        line.clear();
        let n = (&mut *r)
            .take(line_budget)
            .read_until(b'\n', &mut line)
            .await?;
        consumed = consumed.saturating_add(n);
        if line.last() != Some(&b'\n') {
            if n == 0 && request.is_empty() {
                return Ok(None);
            }
            if n as u64 == line_budget {
                return Err(FrameError::LineTooLong(limits.max_line));
            }
            return Err(FrameError::Truncated);
        }
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        if line.len() > limits.max_line {
            return Err(FrameError::LineTooLong(limits.max_line));
        }
        // Leading empty lines count too, so a stream of them cannot keep a
        // connection busy forever.
        if consumed > limits.max_request {
            return Err(FrameError::RequestTooLarge(limits.max_request));
        }
        if line.is_empty() {
            if request.is_empty() {
                continue;
            }
            break;
        }
        request.extend_from_slice(&line);
        request.push(b'\n');
    }
    if !request
        .iter()
        .all(|&b| b == b'\n' || b == b' ' || b.is_ascii_graphic())
    {
        return Err(FrameError::NotAscii);
    }
    String::from_utf8(request)
        .map(Some)
        .map_err(|_| FrameError::NotAscii)
}

/// The answer to a request that failed before reaching the device: the
/// negated `errno` (`errno=-22`), as wireguard-go writes it and `wg` reads it.
pub fn error_response(errno: i32) -> String {
    format!("errno=-{}\n\n", errno.unsigned_abs())
}

/// Parses a framed request with gotatun's parser, never unwinding: the
/// framing already rejects the input known to make it panic, and a panic on
/// anything else must cost one `errno=-22`, not the connection.
pub(super) fn parse_request(text: &str) -> Result<Request, String> {
    // gotatun's "unknown command" error quotes the whole request, which may
    // hold keys: don't let it reach the log.
    let op = text.split('\n').next().unwrap_or_default();
    if op != "get=1" && op != "set=1" {
        let shown: String = op.chars().take(32).collect();
        return Err(format!("unknown operation {shown:?}"));
    }
    match catch_unwind(AssertUnwindSafe(|| Request::from_str(text))) {
        Ok(Ok(request)) => Ok(request),
        Ok(Err(e)) => Err(format!("{e:#}")),
        Err(_) => Err(PARSER_PANICKED.to_owned()),
    }
}

/// What [`parse_request`] says when gotatun's parser panicked: a bug to fix
/// (the fuzz target `uapi_request` looks for them), never a normal answer.
const PARSER_PANICKED: &str = "the parser panicked";

#[cfg(test)]
mod tests {
    use super::*;

    // ---- framing -----------------------------------------------------------

    async fn frame(input: &[u8]) -> Result<Option<String>, FrameError> {
        let mut r = input;
        read_request(&mut r, &Limits::default()).await
    }

    #[tokio::test]
    async fn frames_get() {
        assert_eq!(frame(b"get=1\n\n").await.unwrap().unwrap(), "get=1\n");
    }

    #[tokio::test]
    async fn frames_set_with_many_lines() {
        let mut input = String::from("set=1\nprivate_key=");
        input.push_str(&"ab".repeat(32));
        input.push('\n');
        for i in 0..500 {
            input.push_str(&format!(
                "public_key={:064x}\nallowed_ip=10.{}.{}.0/24\n",
                i,
                i / 256,
                i % 256
            ));
        }
        let expected = input.clone();
        input.push('\n');
        assert_eq!(frame(input.as_bytes()).await.unwrap().unwrap(), expected);
    }

    #[tokio::test]
    async fn frames_consecutive_requests_and_skips_leading_blank_lines() {
        let mut r: &[u8] = b"get=1\n\n\n\nset=1\nlisten_port=1\n\nget=1\n\n";
        let limits = Limits::default();
        assert_eq!(
            read_request(&mut r, &limits).await.unwrap().unwrap(),
            "get=1\n"
        );
        assert_eq!(
            read_request(&mut r, &limits).await.unwrap().unwrap(),
            "set=1\nlisten_port=1\n"
        );
        assert_eq!(
            read_request(&mut r, &limits).await.unwrap().unwrap(),
            "get=1\n"
        );
        assert!(read_request(&mut r, &limits).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn clean_eof_is_none() {
        assert!(frame(b"").await.unwrap().is_none());
        assert!(frame(b"\n\n").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn eof_mid_request_is_truncated() {
        assert!(matches!(
            frame(b"get=1\n").await,
            Err(FrameError::Truncated)
        ));
        assert!(matches!(frame(b"get=1").await, Err(FrameError::Truncated)));
        assert!(matches!(
            frame(b"set=1\nreplace_peers=true\n").await,
            Err(FrameError::Truncated)
        ));
    }

    #[tokio::test]
    async fn strips_one_carriage_return_per_line() {
        assert_eq!(frame(b"get=1\r\n\r\n").await.unwrap().unwrap(), "get=1\n");
        assert_eq!(
            frame(b"set=1\r\nlisten_port=5\r\n\r\n")
                .await
                .unwrap()
                .unwrap(),
            "set=1\nlisten_port=5\n"
        );
        // A second '\r' is content, and not printable.
        assert!(matches!(
            frame(b"get=1\r\r\n\n").await,
            Err(FrameError::NotAscii)
        ));
    }

    #[tokio::test]
    async fn oversize_line_is_rejected() {
        let limits = Limits {
            max_line: 16,
            ..Limits::default()
        };
        let exact = format!("set=1\n{}\n\n", "k".repeat(16));
        let mut r = exact.as_bytes();
        assert!(read_request(&mut r, &limits).await.unwrap().is_some());
        let exact_crlf = format!("set=1\n{}\r\n\n", "k".repeat(16));
        let mut r = exact_crlf.as_bytes();
        assert!(read_request(&mut r, &limits).await.unwrap().is_some());

        let long = format!("set=1\n{}\n\n", "k".repeat(17));
        let mut r = long.as_bytes();
        let err = read_request(&mut r, &limits).await.unwrap_err();
        assert!(matches!(err, FrameError::LineTooLong(16)), "{err:?}");
        assert!(!err.framing_intact());
        let endless = vec![b'x'; 1 << 20];
        let mut r = endless.as_slice();
        assert!(matches!(
            read_request(&mut r, &limits).await,
            Err(FrameError::LineTooLong(16))
        ));
    }

    #[tokio::test]
    async fn oversize_request_is_rejected() {
        let limits = Limits {
            max_request: 100,
            ..Limits::default()
        };
        let big = format!("set=1\n{}\n", "listen_port=1\n".repeat(10));
        let mut r = big.as_bytes();
        let err = read_request(&mut r, &limits).await.unwrap_err();
        assert!(matches!(err, FrameError::RequestTooLarge(100)), "{err:?}");
        assert!(!err.framing_intact());
        let blanks = vec![b'\n'; 1000];
        let mut r = blanks.as_slice();
        assert!(matches!(
            read_request(&mut r, &limits).await,
            Err(FrameError::RequestTooLarge(100))
        ));
    }

    #[tokio::test]
    async fn non_ascii_is_rejected_with_framing_intact() {
        let mut r: &[u8] = b"set=1\nlisten_port=\xff\xfe\n\nget=1\n\n";
        let limits = Limits::default();
        let err = read_request(&mut r, &limits).await.unwrap_err();
        assert!(matches!(err, FrameError::NotAscii));
        assert!(err.framing_intact());
        assert_eq!(
            read_request(&mut r, &limits).await.unwrap().unwrap(),
            "get=1\n"
        );
        // Valid UTF-8 but not ASCII: the input that makes gotatun's key parser
        // panic.
        let key = format!("{}\u{e9}a", "a".repeat(61));
        assert_eq!(key.len(), 64);
        let req = format!("set=1\nprivate_key={key}\n\n");
        assert!(matches!(
            frame(req.as_bytes()).await,
            Err(FrameError::NotAscii)
        ));
        assert!(matches!(
            frame(b"get=1\0\n\n").await,
            Err(FrameError::NotAscii)
        ));
    }

    #[test]
    fn error_response_format() {
        assert_eq!(error_response(22), "errno=-22\n\n");
    }

    #[test]
    fn parse_request_never_panics_and_rejects_unknown_operations() {
        assert!(matches!(parse_request("get=1\n"), Ok(Request::Get(_))));
        assert!(matches!(
            parse_request("set=1\nlisten_port=7\n"),
            Ok(Request::Set(_))
        ));
        let err = parse_request(&format!("sett=1\nprivate_key={}\n", "ab".repeat(32))).unwrap_err();
        assert!(!err.contains("abab"), "{err}");
        for bad in [
            "",
            "\n",
            "get=1\nx\n",
            "set=1\nnokey\n",
            "set=1\nlisten_port=99999\n",
        ] {
            assert!(parse_request(bad).is_err(), "{bad:?}");
        }
        // Deterministic garbage through framing + parser: no panic, ever.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let alphabet = b"get=1set_publickyprivate_allowedip0123456789abcdef=:/.[]\n\r \xff";
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        for _ in 0..2000 {
            let mut input = b"set=1\n".to_vec();
            for _ in 0..(state % 200) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                input.push(alphabet[(state % alphabet.len() as u64) as usize]);
            }
            input.extend_from_slice(b"\n\n");
            let framed = rt.block_on(async {
                let mut r = input.as_slice();
                read_request(&mut r, &Limits::default()).await
            });
            if let Ok(Some(text)) = framed {
                // Straight into gotatun's parser first, so a panic fails
                // this test instead of being caught like in production.
                let _ = Request::from_str(&text);
                if let Err(e) = parse_request(&text) {
                    assert_ne!(e, PARSER_PANICKED, "{text:?}");
                }
            }
        }
    }
}

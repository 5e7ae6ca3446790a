//! WireGuard keys: 32-byte Curve25519 values, written as 44 characters of base64.
//!
//! `wg genkey`, `wg pubkey`, `wg genpsk`, the config file and the UAPI's `get`
//! output all use one text form: standard base64 (RFC 4648 §4) with its `=`
//! padding, so a key is 43 significant characters and one `=`. We accept
//! exactly what `wg` accepts (`key_from_base64` in wireguard-tools'
//! `encoding.c`), including its refusal of a missing `=` and of non-zero
//! trailing bits in the last character, so a key that works here works with the
//! stock tools and the other way round.
//!
//! Private keys are clamped as `wg genkey` prints them (RFC 7748 §5). X25519
//! clamps again when it multiplies, so clamping changes no public key; it only
//! makes our output byte-for-byte the kind `wg genkey` produces.
//!
//! A `Key` is often a private key and debug output ends up in logs, so its
//! `Debug` prints no key material.

#![forbid(unsafe_code)]

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use rand_core::{OsRng, RngCore};
use x25519_dalek::{PublicKey, StaticSecret};

/// What `wg genkey` and `wg genpsk` print on stderr when their output goes to
/// a file others may read (wireguard-tools' `genkey.c`), word for word.
pub const EXPOSED_OUTPUT_WARNING: &str = "Warning: writing to world accessible file.\nConsider setting the umask to 077 and trying again.";

/// Would a secret written to standard output land in a file that others can
/// read? True for a regular file with the group or other read bit (or any of
/// the other bits, as `wg` checks); a terminal or a pipe is not a file left
/// behind.
#[must_use]
pub fn stdout_exposed() -> bool {
    use std::os::fd::AsFd as _;
    use std::os::unix::fs::PermissionsExt as _;
    let Ok(fd) = std::io::stdout().as_fd().try_clone_to_owned() else {
        return false;
    };
    std::fs::File::from(fd)
        .metadata()
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o047 != 0)
}

/// The length of every WireGuard key in bytes: private, public and preshared.
pub const KEY_LEN: usize = 32;

/// A private, public or preshared WireGuard key.
#[derive(Clone, PartialEq, Eq)]
pub struct Key([u8; KEY_LEN]);

impl Key {
    /// Wraps raw key bytes.
    #[must_use]
    pub const fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// The raw key bytes.
    #[must_use]
    pub const fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(hidden)")
    }
}

/// The base64 form, as `wg` prints keys.
impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&STANDARD.encode(self.0))
    }
}

/// Why a string is not a WireGuard key. The messages never repeat the input:
/// it may be a private key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("a key cannot be empty; a WireGuard key is 44 base64 characters ending in '='")]
    Empty,
    #[error("the trailing '=' is missing; a WireGuard key is 44 base64 characters ending in '='")]
    MissingPadding,
    #[error(
        "not valid base64; a WireGuard key is 44 characters of standard base64 ending in '=', \
         as `wg genkey` prints it"
    )]
    NotBase64,
    #[error(
        "decodes to {bytes} bytes, a WireGuard key is 32 bytes (44 base64 characters ending in '=')"
    )]
    WrongLength { bytes: usize },
}

/// Parses the base64 form, exactly as `wg` does: no surrounding whitespace,
/// padding required, unused trailing bits zero.
impl FromStr for Key {
    type Err = KeyError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.is_empty() {
            return Err(KeyError::Empty);
        }
        let bytes = STANDARD
            .decode(text)
            .map_err(|_| diagnose_undecodable(text))?;
        let bytes: [u8; KEY_LEN] = bytes
            .try_into()
            .map_err(|bytes: Vec<u8>| KeyError::WrongLength { bytes: bytes.len() })?;
        Ok(Self(bytes))
    }
}

/// Tells a key that only lacks its `=` from text that is not base64 at all.
fn diagnose_undecodable(text: &str) -> KeyError {
    match STANDARD_NO_PAD.decode(text) {
        Ok(bytes) if bytes.len() == KEY_LEN => KeyError::MissingPadding,
        _ => KeyError::NotBase64,
    }
}

/// A new random private key, clamped like the output of `wg genkey`.
///
/// # Panics
/// If the operating system's random number generator fails (`getrandom`),
/// which it does not on a working Linux system.
#[must_use]
pub fn generate_private() -> Key {
    let mut bytes = StaticSecret::random_from_rng(OsRng).to_bytes();
    clamp(&mut bytes);
    Key(bytes)
}

/// A new random preshared key, like the output of `wg genpsk`.
///
/// # Panics
/// If the operating system's random number generator fails, as
/// [`generate_private`].
#[must_use]
pub fn generate_preshared() -> Key {
    let mut bytes = [0u8; KEY_LEN];
    OsRng.fill_bytes(&mut bytes);
    Key(bytes)
}

/// The public key that belongs to a private key, like `wg pubkey`.
#[must_use]
pub fn public_from_private(private: &Key) -> Key {
    let secret = StaticSecret::from(private.0);
    Key(PublicKey::from(&secret).to_bytes())
}

/// RFC 7748 §5 clamping, as `curve25519_clamp_secret` in wireguard-tools.
fn clamp(bytes: &mut [u8; KEY_LEN]) {
    bytes[0] &= 248;
    bytes[31] = (bytes[31] & 127) | 64;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// From the example in wg(8); the public key checked with `wg pubkey`.
    const MAN_PAGE_PRIVATE: &str = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";
    const MAN_PAGE_PUBLIC: &str = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=";

    fn key(text: &str) -> Key {
        text.parse().unwrap()
    }

    #[test]
    fn display_and_parse_round_trip() {
        for original in [generate_private(), generate_preshared()] {
            let text = original.to_string();
            assert_eq!(text.len(), 44);
            assert!(text.ends_with('='));
            assert_eq!(key(&text), original);
        }
        assert_eq!(key(MAN_PAGE_PRIVATE).to_string(), MAN_PAGE_PRIVATE);
    }

    #[test]
    fn bytes_round_trip() {
        let bytes = [7u8; KEY_LEN];
        assert_eq!(Key::from_bytes(bytes).as_bytes(), &bytes);
    }

    #[test]
    fn public_key_of_the_man_page_example() {
        let public = public_from_private(&key(MAN_PAGE_PRIVATE));
        assert_eq!(public.to_string(), MAN_PAGE_PUBLIC);
    }

    #[test]
    fn public_key_of_an_unclamped_private_key_matches_wg() {
        // `echo YAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk= | wg pubkey`
        let public = public_from_private(&key("YAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk="));
        assert_eq!(
            public.to_string(),
            "Y2FD6uTgrq+/bbBAXCNOtE+PGk8Papoh7qaWBpQUXn0="
        );
    }

    #[test]
    fn generated_private_keys_are_clamped_and_distinct() {
        let first = generate_private();
        let bytes = first.as_bytes();
        assert_eq!(bytes[0] & 7, 0);
        assert_eq!(bytes[31] & 128, 0);
        assert_eq!(bytes[31] & 64, 64);
        assert_ne!(first, generate_private());
    }

    #[test]
    fn generated_preshared_keys_are_distinct() {
        assert_ne!(generate_preshared(), generate_preshared());
    }

    #[test]
    fn debug_shows_no_key_material() {
        let private = key(MAN_PAGE_PRIVATE);
        let debug = format!("{private:?}");
        assert_eq!(debug, "Key(hidden)");
        assert!(!debug.contains("yAnz"));
    }

    fn error(text: &str) -> KeyError {
        text.parse::<Key>().unwrap_err()
    }

    #[test]
    fn empty_is_rejected() {
        assert_eq!(error(""), KeyError::Empty);
        assert!(KeyError::Empty.to_string().contains("cannot be empty"));
    }

    #[test]
    fn missing_padding_is_rejected_like_wg() {
        let err = error(MAN_PAGE_PRIVATE.trim_end_matches('='));
        assert_eq!(err, KeyError::MissingPadding);
        assert!(err.to_string().contains("trailing '=' is missing"));
    }

    #[test]
    fn non_base64_is_rejected() {
        for text in [
            "not a key at all!",
            // URL-safe alphabet: wg takes only the standard one.
            "yAnz5TF-lXXJte14tji3zlMNq-hd2rYUIgJBgB3fBmk=",
            // Surrounding or inner whitespace.
            " yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=",
            "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=\n",
            "yAnz5TF+lXXJte14tji3zlMN q+hd2rYUIgJBgB3fBmk=",
            // Non-zero trailing bits in the last character (`wg` refuses these too).
            "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBml=",
            // Too much padding.
            "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk==",
        ] {
            let err = error(text);
            assert_eq!(err, KeyError::NotBase64, "{text:?}");
            assert!(err.to_string().starts_with("not valid base64"));
        }
    }

    #[test]
    fn wrong_length_is_rejected_with_the_length() {
        let err = error(&STANDARD.encode([1u8; 16]));
        assert_eq!(err, KeyError::WrongLength { bytes: 16 });
        assert_eq!(
            err.to_string(),
            "decodes to 16 bytes, a WireGuard key is 32 bytes (44 base64 characters ending in '=')"
        );
        assert_eq!(
            error(&STANDARD.encode([1u8; 33])),
            KeyError::WrongLength { bytes: 33 }
        );
    }

    #[test]
    fn error_messages_do_not_repeat_the_input() {
        let secret = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBm";
        assert!(!error(secret).to_string().contains(secret));
    }
}

//! File names a peer may ask the node to write, and SHA-256 helpers.
//!
//! A received file is written only as `<recv dir>/<name>.part` and then renamed to
//! `<recv dir>/<name>`; [`check_file_name`] guarantees that both are plain names of one
//! directory entry whatever the peer sends (the receive directory itself opens them
//! without following links).

/// Longest file name (one path component) the file systems a node writes to accept, in
/// bytes: `NAME_MAX` of Linux's, the BSDs' and macOS's file systems.
pub const NAME_MAX: usize = 255;

/// Longest accepted name, in bytes: [`NAME_MAX`] less [`PART_SUFFIX`], so that the
/// partial file `<name>.part` fits as well.
pub const MAX_NAME_LEN: usize = NAME_MAX - PART_SUFFIX.len();

/// Suffix of a partially received file.
pub const PART_SUFFIX: &str = ".part";

/// Why a file name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// The name is empty.
    #[error("empty file name")]
    Empty,
    /// The name is longer than [`NAME_MAX`] bytes.
    #[error("file name of {0} bytes is longer than the {NAME_MAX}-byte file-name limit")]
    TooLong(usize),
    /// The name fits [`NAME_MAX`], but its partial form `<name>.part` would not: it is
    /// longer than [`MAX_NAME_LEN`] bytes.
    #[error(
        "file name of {0} bytes leaves no room for its partial form NAME{PART_SUFFIX} within the \
         {NAME_MAX}-byte file-name limit: at most {MAX_NAME_LEN} bytes are accepted"
    )]
    NoRoomForPart(usize),
    /// The name contains a path separator (or is absolute).
    #[error("file name {0:?} contains a path separator: only a plain file name is accepted")]
    Separator(String),
    /// The name is `.` or `..`.
    #[error("file name {0:?} refers to a directory")]
    DotName(String),
    /// The name contains a NUL or another control character.
    #[error("file name {0:?} contains a control character")]
    Control(String),
    /// The name ends in `.part`, reserved for partial files.
    #[error("file name {0:?} ends in {PART_SUFFIX}, which is reserved for partial files")]
    Reserved(String),
}

/// Checks that `name` is a plain file name: not empty, no `/` or `\`, not `.` or `..`, no
/// control characters, not ending in `.part`, at most [`MAX_NAME_LEN`] bytes.
pub fn check_file_name(name: &str) -> Result<&str, NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > NAME_MAX {
        return Err(NameError::TooLong(name.len()));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::NoRoomForPart(name.len()));
    }
    if name.contains(['/', '\\']) {
        return Err(NameError::Separator(name.into()));
    }
    if name == "." || name == ".." {
        return Err(NameError::DotName(name.into()));
    }
    if name.chars().any(char::is_control) {
        return Err(NameError::Control(name.into()));
    }
    if name.ends_with(PART_SUFFIX) {
        return Err(NameError::Reserved(name.into()));
    }
    Ok(name)
}

/// Whether `s` looks like a SHA-256 in lowercase hex.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests: a panic is the failure report.
mod tests {
    use super::*;

    #[test]
    fn plain_names_pass() {
        for n in ["a", "file.bin", "..hidden", "a..b", ".x", "日本語.txt", "with space", "x.partial"] {
            assert_eq!(check_file_name(n), Ok(n));
        }
        assert!(check_file_name(&"a".repeat(MAX_NAME_LEN)).is_ok());
    }

    #[test]
    fn traversal_and_oddities_are_refused() {
        type Check = fn(&NameError) -> bool;
        let cases: [(&str, Check); 12] = [
            ("", |e| matches!(e, NameError::Empty)),
            ("/etc/passwd", |e| matches!(e, NameError::Separator(_))),
            ("../x", |e| matches!(e, NameError::Separator(_))),
            ("a/../../x", |e| matches!(e, NameError::Separator(_))),
            ("dir/file", |e| matches!(e, NameError::Separator(_))),
            ("..\\x", |e| matches!(e, NameError::Separator(_))),
            ("/", |e| matches!(e, NameError::Separator(_))),
            (".", |e| matches!(e, NameError::DotName(_))),
            ("..", |e| matches!(e, NameError::DotName(_))),
            ("a\0b", |e| matches!(e, NameError::Control(_))),
            ("line\nbreak", |e| matches!(e, NameError::Control(_))),
            ("x.part", |e| matches!(e, NameError::Reserved(_))),
        ];
        for (name, ok) in cases {
            let e = check_file_name(name).unwrap_err();
            assert!(ok(&e), "{name:?} gave {e:?}");
        }
        for len in [MAX_NAME_LEN + 1, NAME_MAX] {
            assert_eq!(check_file_name(&"a".repeat(len)), Err(NameError::NoRoomForPart(len)));
        }
        assert_eq!(check_file_name(&"a".repeat(NAME_MAX + 1)), Err(NameError::TooLong(NAME_MAX + 1)));
        // The limits count bytes, not characters: 84 three-byte characters are 252 bytes.
        assert_eq!(check_file_name(&"語".repeat(84)), Err(NameError::NoRoomForPart(252)));
    }

    #[test]
    fn hex_helpers() {
        assert_eq!(hex(&[0, 0xab, 0x10]), "00ab10");
        assert!(is_sha256_hex(&"0f".repeat(32)));
        assert!(!is_sha256_hex(&"0F".repeat(32)));
        assert!(!is_sha256_hex("00"));
        assert!(!is_sha256_hex(&"zz".repeat(32)));
    }
}

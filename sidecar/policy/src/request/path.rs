//! Path normalization: the path a policy matches is the path the app will read.
//!
//! Apps and frameworks decode and clean paths before routing (`/%61pi`, `/./api`, `//api` and
//! `/x/../api` all reach an app's `/api` handler), so a rule on `/api` must see the same path, or
//! a client walks around it. As Envoy recommends for proxies that route or authorise by path,
//! the sidecar normalizes before matching and forwards the normalized path, so the app and the
//! policy agree (docs/security.md):
//!
//! 1. percent-encoded unreserved characters (RFC 3986 §2.3: letters, digits, `-._~`) are
//!    decoded, and other escapes are written with upper-case hex (§6.2.2.1);
//! 2. escaped slashes (`%2F`, `%5C`) are kept, refused, or decoded with a redirect to the
//!    decoded path ([`EscapedSlashes`]);
//! 3. runs of slashes are merged (`//api` → `/api`);
//! 4. dot segments are removed (§5.2.4: `/a/./b/../c` → `/a/c`; never above the root).
//!
//! A malformed escape (`%zz`, a trailing `%`) is refused. Each step can be turned off.

use std::borrow::Cow;

/// What to do with `%2F` and `%5C` in a path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EscapedSlashes {
    /// Forward them as they are (as `%2F`/`%5C`): for apps whose path segments contain them.
    Keep,
    /// Refuse the request (400): apps disagree on whether `%2F` is a separator.
    #[default]
    Reject,
    /// Answer with a redirect to the path with them decoded to `/` (Envoy's
    /// `UNESCAPE_AND_REDIRECT`): well-behaved clients follow it, and the policy then sees the
    /// path the app would.
    Redirect,
}

/// Which normalization steps apply. All on by default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathNormalization {
    /// RFC 3986 normalization: unreserved escapes decoded, dot segments removed.
    pub rfc3986: bool,
    /// `//` → `/`.
    pub merge_slashes: bool,
    pub escaped_slashes: EscapedSlashes,
}

impl Default for PathNormalization {
    fn default() -> Self {
        Self {
            rfc3986: true,
            merge_slashes: true,
            escaped_slashes: EscapedSlashes::default(),
        }
    }
}

/// The outcome for one path.
#[derive(Debug, PartialEq, Eq)]
pub enum Normalized<'a> {
    /// Match and forward this path (borrowed when nothing changed).
    Path(Cow<'a, str>),
    /// Redirect the client to this path (escaped slashes decoded).
    Redirect(String),
    /// Refuse the request: a malformed escape, or an escaped slash under `Reject`.
    Reject(&'static str),
}

impl PathNormalization {
    /// Nothing changed: the path as sent.
    pub const OFF: Self = Self {
        rfc3986: false,
        merge_slashes: false,
        escaped_slashes: EscapedSlashes::Keep,
    };

    /// Normalizes `path` (origin-form, without the query).
    pub fn apply<'a>(&self, path: &'a str) -> Normalized<'a> {
        if *self == Self::OFF || !path.starts_with('/') {
            // `*` (OPTIONS *) and anything not origin-form is left to the proxy's own checks.
            return Normalized::Path(Cow::Borrowed(path));
        }
        let untouched = !(path.contains(['%', '.']) || self.merge_slashes && path.contains("//"));
        if untouched {
            return Normalized::Path(Cow::Borrowed(path));
        }
        let mut decoded = String::with_capacity(path.len());
        let mut unescaped_slash = false;
        let bytes = path.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] != b'%' {
                // Up to the next escape, as is (any UTF-8 stays whole).
                let end = path[i..].find('%').map_or(path.len(), |n| i + n);
                decoded.push_str(&path[i..end]);
                i = end;
                continue;
            }
            let Some(byte) = bytes
                .get(i + 1..i + 3)
                .and_then(|hex| u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok())
            else {
                return Normalized::Reject("malformed percent-encoding in the path");
            };
            i += 3;
            match byte {
                b'/' | b'\\' => match self.escaped_slashes {
                    EscapedSlashes::Keep => {
                        decoded.push_str(if byte == b'/' { "%2F" } else { "%5C" })
                    }
                    EscapedSlashes::Reject => {
                        return Normalized::Reject("escaped slash (%2F or %5C) in the path");
                    }
                    EscapedSlashes::Redirect => {
                        decoded.push('/');
                        unescaped_slash = true;
                    }
                },
                b if self.rfc3986 && is_unreserved(b) => decoded.push(b as char),
                b => {
                    decoded.push('%');
                    decoded.push(hex_digit(b >> 4));
                    decoded.push(hex_digit(b & 0xf));
                }
            }
        }
        if self.merge_slashes {
            decoded = merge_slashes(&decoded);
        }
        if self.rfc3986 {
            decoded = remove_dot_segments(&decoded);
        }
        if unescaped_slash {
            return Normalized::Redirect(decoded);
        }
        if decoded == path {
            Normalized::Path(Cow::Borrowed(path))
        } else {
            Normalized::Path(Cow::Owned(decoded))
        }
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_digit(n: u8) -> char {
    char::from(b"0123456789ABCDEF"[usize::from(n)])
}

fn merge_slashes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if !(c == '/' && out.ends_with('/')) {
            out.push(c);
        }
    }
    out
}

/// RFC 3986 §5.2.4 on an absolute path: `.` segments dropped, `..` removes the segment before
/// it (never above the root); a trailing `.` or `..` leaves a trailing slash.
fn remove_dot_segments(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    let parts: Vec<&str> = path[1..].split('/').collect();
    let last = parts.len() - 1;
    for (i, segment) in parts.iter().enumerate() {
        match *segment {
            "." | ".." => {
                if *segment == ".." {
                    segments.pop();
                }
                if i == last {
                    segments.push("");
                }
            }
            s => segments.push(s),
        }
    }
    format!("/{}", segments.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normalized(options: PathNormalization, path: &str) -> Normalized<'_> {
        options.apply(path)
    }

    #[test]
    fn the_table_of_cases() {
        let on = PathNormalization::default();
        let path = |p: &str| Normalized::Path(Cow::Owned(p.to_owned()));
        for (sent, expected) in [
            ("/api/x", path("/api/x")),
            ("/%61pi/x", path("/api/x")),
            ("/%41%50%49/x", path("/API/x")),
            ("//api/x", path("/api/x")),
            ("/api//x///y", path("/api/x/y")),
            ("/./api/x", path("/api/x")),
            ("/foo/../api/x", path("/api/x")),
            ("/foo/%2e%2e/api/x", path("/api/x")),
            ("/foo/.%2E/api", path("/api")),
            ("/../../api", path("/api")),
            ("/api/x/.", path("/api/x/")),
            ("/api/x/..", path("/api/")),
            ("/api/.hidden/x", path("/api/.hidden/x")),
            ("/api/..x/y", path("/api/..x/y")),
            ("/a%20b", path("/a%20b")),
            ("/a%3fb", path("/a%3Fb")),
            ("/caf%c3%a9", path("/caf%C3%A9")),
            ("/café/./x", path("/café/x")),
            ("/", path("/")),
            ("*", path("*")),
            (
                "/api%2Fx",
                Normalized::Reject("escaped slash (%2F or %5C) in the path"),
            ),
            (
                "/api%5cx",
                Normalized::Reject("escaped slash (%2F or %5C) in the path"),
            ),
            (
                "/api%zz",
                Normalized::Reject("malformed percent-encoding in the path"),
            ),
            (
                "/api%4",
                Normalized::Reject("malformed percent-encoding in the path"),
            ),
            (
                "/api%",
                Normalized::Reject("malformed percent-encoding in the path"),
            ),
        ] {
            assert_eq!(normalized(on, sent), expected, "{sent}");
        }
    }

    #[test]
    fn unchanged_paths_are_borrowed() {
        let on = PathNormalization::default();
        for sent in ["/api/x", "/a%20b", "/api/.hidden"] {
            assert!(
                matches!(on.apply(sent), Normalized::Path(Cow::Borrowed(_))),
                "{sent}"
            );
        }
    }

    #[test]
    fn escaped_slashes_can_be_kept_or_redirected() {
        let keep = PathNormalization {
            escaped_slashes: EscapedSlashes::Keep,
            ..PathNormalization::default()
        };
        assert_eq!(
            keep.apply("/group%2fproject/../x"),
            Normalized::Path(Cow::Owned("/x".into())),
            "a kept %2F is part of a segment"
        );
        assert_eq!(
            keep.apply("/a%2Fb"),
            Normalized::Path(Cow::Borrowed("/a%2Fb"))
        );
        let redirect = PathNormalization {
            escaped_slashes: EscapedSlashes::Redirect,
            ..PathNormalization::default()
        };
        assert_eq!(
            redirect.apply("/api%2F..%2Fadmin"),
            Normalized::Redirect("/admin".into())
        );
    }

    #[test]
    fn each_step_can_be_turned_off() {
        let off = PathNormalization::OFF;
        for sent in ["//a/../%61%2F", "/a%zz"] {
            assert_eq!(off.apply(sent), Normalized::Path(Cow::Borrowed(sent)));
        }
        let no_merge = PathNormalization {
            merge_slashes: false,
            ..PathNormalization::default()
        };
        assert_eq!(
            no_merge.apply("//%61//b"),
            Normalized::Path(Cow::Owned("//a//b".into()))
        );
        let no_rfc = PathNormalization {
            rfc3986: false,
            ..PathNormalization::default()
        };
        assert_eq!(
            no_rfc.apply("//%61/./b"),
            Normalized::Path(Cow::Owned("/%61/./b".into()))
        );
    }

    proptest::proptest! {
        /// Normalizing twice changes nothing more, and the result never climbs above the root
        /// or keeps an empty segment that merging would remove.
        #[test]
        fn normalization_is_idempotent(path in "/[a-zA-Z0-9%./_~-]{0,40}") {
            let on = PathNormalization::default();
            if let Normalized::Path(once) = on.apply(&path) {
                let once = once.into_owned();
                proptest::prop_assert_eq!(on.apply(&once), Normalized::Path(Cow::Borrowed(once.as_str())));
                proptest::prop_assert!(once.starts_with('/'));
                proptest::prop_assert!(!once.contains("//"));
                proptest::prop_assert!(!once.split('/').any(|s| s == "." || s == ".."));
            }
        }
    }
}

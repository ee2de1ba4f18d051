//! Semantic versions exactly as flagd's `sem_ver` reads them: Go's `golang.org/x/mod/semver`
//! (`parse`, `Compare`, `Major`, `MajorMinor`), not the `semver` crate, whose rules differ
//! (it pads `1.2-beta`, which Go refuses). Versions carry their leading `v`; flagd adds it.

use std::cmp::Ordering;

/// A parsed version; the parts borrow the text.
#[derive(Debug, PartialEq, Eq)]
pub struct Version<'a> {
    major: &'a str,
    minor: &'a str,
    patch: &'a str,
    /// With its leading `-`, or empty.
    prerelease: &'a str,
}

impl<'a> Version<'a> {
    /// `v1`, `v1.2`, `v1.2.3`, `v1.2.3-pre.1+build`; `v1` and `v1.2` only with nothing after.
    pub fn parse(v: &'a str) -> Option<Self> {
        let rest = v.strip_prefix('v')?;
        let (major, rest) = number(rest)?;
        if rest.is_empty() {
            return Some(Self::short(major, "0", "0"));
        }
        let (minor, rest) = number(rest.strip_prefix('.')?)?;
        if rest.is_empty() {
            return Some(Self::short(major, minor, "0"));
        }
        let (patch, mut rest) = number(rest.strip_prefix('.')?)?;
        let mut prerelease = "";
        if rest.starts_with('-') {
            let end = rest.find('+').unwrap_or(rest.len());
            prerelease = &rest[..end];
            if !identifiers(&prerelease[1..], true) {
                return None;
            }
            rest = &rest[end..];
        }
        if let Some(build) = rest.strip_prefix('+') {
            if !identifiers(build, false) {
                return None;
            }
            rest = "";
        }
        rest.is_empty().then_some(Self {
            major,
            minor,
            patch,
            prerelease,
        })
    }

    fn short(major: &'a str, minor: &'a str, patch: &'a str) -> Self {
        Self {
            major,
            minor,
            patch,
            prerelease: "",
        }
    }

    /// Go's `semver.Compare` of two valid versions (build metadata ignored).
    pub fn compare(&self, other: &Self) -> Ordering {
        compare_int(self.major, other.major)
            .then_with(|| compare_int(self.minor, other.minor))
            .then_with(|| compare_int(self.patch, other.patch))
            .then_with(|| compare_prerelease(self.prerelease, other.prerelease))
    }

    /// `semver.Major(a) == semver.Major(b)`: flagd's `^`.
    pub fn same_major(&self, other: &Self) -> bool {
        self.major == other.major
    }

    /// `semver.MajorMinor(a) == semver.MajorMinor(b)`: flagd's `~`.
    pub fn same_minor(&self, other: &Self) -> bool {
        self.major == other.major && self.minor == other.minor
    }
}

/// Digits without a leading zero (`0` alone is fine), and what follows them.
fn number(v: &str) -> Option<(&str, &str)> {
    let end = v
        .bytes()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(v.len());
    if end == 0 || (end > 1 && v.starts_with('0')) {
        return None;
    }
    Some(v.split_at(end))
}

/// Dot-separated, non-empty identifiers of `[0-9A-Za-z-]`; in a pre-release, numeric ones
/// have no leading zero.
fn identifiers(v: &str, prerelease: bool) -> bool {
    v.split('.').all(|id| {
        !id.is_empty()
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !(prerelease && id.len() > 1 && id.starts_with('0') && is_numeric(id))
    })
}

fn is_numeric(id: &str) -> bool {
    id.bytes().all(|b| b.is_ascii_digit())
}

/// Numbers of any size, compared as Go does: by length, then by digits.
fn compare_int(x: &str, y: &str) -> Ordering {
    x.len().cmp(&y.len()).then_with(|| x.cmp(y))
}

fn compare_prerelease(x: &str, y: &str) -> Ordering {
    match (x.is_empty(), y.is_empty()) {
        (true, true) => return Ordering::Equal,
        (true, false) => return Ordering::Greater,
        (false, true) => return Ordering::Less,
        (false, false) => {}
    }
    let mut xs = x[1..].split('.');
    let mut ys = y[1..].split('.');
    loop {
        match (xs.next(), ys.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(dx), Some(dy)) if dx == dy => {}
            (Some(dx), Some(dy)) => {
                return match (is_numeric(dx), is_numeric(dy)) {
                    (true, false) => Ordering::Less,
                    (false, true) => Ordering::Greater,
                    (true, true) => compare_int(dx, dy),
                    (false, false) => dx.cmp(dy),
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid(v: &str) -> bool {
        Version::parse(v).is_some()
    }

    #[test]
    fn validity_follows_go() {
        // Cases from golang.org/x/mod/semver's semver_test.go.
        for v in [
            "v0.1.0",
            "v1.0.0",
            "v1.2",
            "v1",
            "v1.2.3-pre",
            "v1.2.3-pre+meta",
            "v1.2.3+meta",
            "v1.2.3+meta-pre",
            "v1.2.3+meta-pre.sha.256a",
            "v1.0.0-alpha.beta",
            "v1.0.0-beta.11",
            "v1.0.0-rc.1",
            "v1.0.0-x.7.z.92",
            "v1.2.3-0a",
        ] {
            assert!(valid(v), "{v} is valid");
        }
        for v in [
            "bad",
            "v1-alpha.beta.gamma",
            "v1-pre",
            "v1+meta",
            "v1-pre+meta",
            "v1.2-pre",
            "v1.2+meta",
            "v1.2-pre+meta",
            "v1.0.0-alpha..1",
            "v1.0.0-01",
            "v01.0.0",
            "v1.02.0",
            "v1.2.3+",
            "v1.2.3-",
            "v1.2.3-é",
            "1.2.3",
            "v",
            "v1.",
            "v1.2.",
        ] {
            assert!(!valid(v), "{v} is invalid");
        }
    }

    #[test]
    fn ordering_follows_semver_precedence() {
        // semver.org's example chain, and Go's shorthand and size rules.
        let chain = [
            "v1.0.0-alpha",
            "v1.0.0-alpha.1",
            "v1.0.0-alpha.beta",
            "v1.0.0-beta",
            "v1.0.0-beta.2",
            "v1.0.0-beta.11",
            "v1.0.0-rc.1",
            "v1.0.0",
            "v1.2",
            "v1.2.1",
            "v2",
            "v10.0.0",
            "v99999999999999999999.0.0",
        ];
        for pair in chain.windows(2) {
            let (a, b) = (
                Version::parse(pair[0]).unwrap(),
                Version::parse(pair[1]).unwrap(),
            );
            assert_eq!(a.compare(&b), Ordering::Less, "{} < {}", pair[0], pair[1]);
            assert_eq!(b.compare(&a), Ordering::Greater);
        }
        let eq = |a: &str, b: &str| {
            Version::parse(a)
                .unwrap()
                .compare(&Version::parse(b).unwrap())
        };
        assert_eq!(
            eq("v1.2.3+a", "v1.2.3+b"),
            Ordering::Equal,
            "build metadata is ignored"
        );
        assert_eq!(eq("v1", "v1.0.0"), Ordering::Equal);
    }

    #[test]
    fn caret_and_tilde_compare_major_and_minor() {
        let v = |s| Version::parse(s).unwrap();
        assert!(v("v1.2.3").same_major(&v("v1.9.0")));
        assert!(!v("v1.2.3").same_major(&v("v2.0.0")));
        assert!(v("v1.2.3").same_minor(&v("v1.2.9-rc.1")));
        assert!(!v("v1.2.3").same_minor(&v("v1.3.0")));
        assert!(v("v1").same_minor(&v("v1.0.5")), "v1 is v1.0");
    }
}

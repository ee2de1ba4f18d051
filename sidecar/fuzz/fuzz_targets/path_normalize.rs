//! Path normalization: never panics, and what it lets through is normalized for good (a second
//! pass changes nothing; no `//`, `.` or `..` segment survives).
#![no_main]

use std::borrow::Cow;

use bulwark_policy::request::path::{Normalized, PathNormalization};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    let on = PathNormalization::default();
    if let Normalized::Path(once) = on.apply(path)
        && path.starts_with('/')
    {
        let once = once.into_owned();
        assert_eq!(
            on.apply(&once),
            Normalized::Path(Cow::Borrowed(once.as_str()))
        );
        assert!(once.starts_with('/'));
        assert!(!once.contains("//"));
        assert!(!once.split('/').any(|s| s == "." || s == ".."));
    }
});

//! Headers a policy reads must say one thing.
//!
//! A header given twice (`X-API-Key: a`, `X-API-Key: b`) lets the policy count one value while
//! the app reads the other; a header spelled with `_` instead of `-` (`X_API_Key`) is merged
//! with the dashed one by CGI-style apps (PHP, Python WSGI) while the policy does not see it.
//! For the headers the installed policy reads, either is refused with 400, before any rule
//! counts anything. Other headers pass untouched (docs/security.md).

use http::{HeaderMap, HeaderName};

/// The headers the installed policy reads, lower case, without repeats.
#[derive(Clone, Debug, Default)]
pub struct ReadHeaders {
    names: Vec<HeaderName>,
}

impl ReadHeaders {
    pub fn new<'a>(names: impl IntoIterator<Item = &'a HeaderName>) -> Self {
        let mut all: Vec<HeaderName> = names.into_iter().cloned().collect();
        all.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        all.dedup();
        Self { names: all }
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Why `headers` are ambiguous for the policy, if they are.
    pub fn ambiguity(&self, headers: &HeaderMap) -> Option<String> {
        if self.names.is_empty() {
            return None;
        }
        for name in &self.names {
            let mut values = headers.get_all(name).iter();
            if values.next().is_some() && values.next().is_some() {
                return Some(format!("header {name} is given more than once"));
            }
        }
        headers
            .keys()
            .filter(|name| name.as_str().contains('_'))
            .find(|name| {
                let dashed = name.as_str().replace('_', "-");
                self.names.iter().any(|read| read.as_str() == dashed)
            })
            .map(|name| format!("header {name} differs from one the policy reads only by '_'"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(headers: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn repeated_or_underscored_read_headers_are_ambiguous_and_others_are_not() {
        let read = ReadHeaders::new(&[
            HeaderName::from_static("x-api-key"),
            HeaderName::from_static("x-api-key"),
        ]);
        assert_eq!(read.names.len(), 1);
        assert_eq!(read.ambiguity(&map(&[("x-api-key", "a")])), None);
        assert_eq!(
            read.ambiguity(&map(&[("x-api-key", "a"), ("x-api-key", "b")])),
            Some("header x-api-key is given more than once".into())
        );
        assert!(
            read.ambiguity(&map(&[("x-api-key", "a"), ("x_api_key", "b")]))
                .unwrap()
                .contains("x_api_key")
        );
        assert!(
            read.ambiguity(&map(&[("x_api_key", "b")])).is_some(),
            "alone too"
        );
        // Headers the policy does not read may repeat or use underscores.
        assert_eq!(
            read.ambiguity(&map(&[("accept", "a"), ("accept", "b"), ("x_trace", "1")])),
            None
        );
        assert_eq!(
            ReadHeaders::default().ambiguity(&map(&[("x_api_key", "b")])),
            None
        );
    }
}

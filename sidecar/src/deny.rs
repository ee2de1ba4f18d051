//! Responses the sidecar writes itself when a policy refuses a request (rate limits, quotas):
//! the policy's `response` (status, headers, body, content type), checked once at compile time.

use bulwark_api::crd::common::DenyResponse;

use crate::compile::CompileError;

/// A compiled `response`: what every refusal of one policy starts from.
#[derive(Clone, Debug)]
pub struct DenyTemplate {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub content_type: String,
}

/// A response produced by the sidecar.
#[derive(Debug, PartialEq, Eq)]
pub struct Rejection {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl DenyTemplate {
    /// Checks header names and values; errors name the field under `response`.
    pub fn compile(deny: Option<&DenyResponse>, default_status: u16) -> Result<Self, CompileError> {
        let mut headers = Vec::new();
        for (i, h) in deny
            .map(|d| d.headers.as_slice())
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            http::HeaderName::try_from(h.name.as_str()).map_err(|_| {
                CompileError::new(
                    format!("response.headers[{i}].name"),
                    "not a valid header name",
                )
            })?;
            http::HeaderValue::try_from(h.value.as_str()).map_err(|_| {
                CompileError::new(
                    format!("response.headers[{i}].value"),
                    "not a valid header value",
                )
            })?;
            headers.push((h.name.clone(), h.value.clone()));
        }
        Ok(Self {
            status: deny.and_then(|d| d.status_code).unwrap_or(default_status),
            headers,
            body: deny.and_then(|d| d.body.clone()).unwrap_or_default(),
            content_type: deny
                .and_then(|d| d.content_type.clone())
                .unwrap_or_else(|| "text/plain; charset=utf-8".into()),
        })
    }

    /// The refusal: `headers` (the policy's own, e.g. `Retry-After`), then `Content-Type` and
    /// the configured extra headers.
    pub fn reject(&self, mut headers: Vec<(String, String)>) -> Rejection {
        headers.push(("Content-Type".into(), self.content_type.clone()));
        headers.extend(self.headers.iter().cloned());
        Rejection {
            status: self.status,
            headers,
            body: self.body.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_bad_headers_name_the_field() {
        let t = DenyTemplate::compile(None, 429).unwrap();
        assert_eq!((t.status, t.body.as_str()), (429, ""));
        let deny: DenyResponse =
            serde_yaml::from_str("{statusCode: 403, headers: [{name: 'bad name', value: x}]}")
                .unwrap();
        let err = DenyTemplate::compile(Some(&deny), 429).unwrap_err();
        assert_eq!(err.field, "response.headers[0].name");
        let deny: DenyResponse =
            serde_yaml::from_str("{statusCode: 403, body: no, headers: [{name: X-A, value: b}]}")
                .unwrap();
        let r = DenyTemplate::compile(Some(&deny), 429)
            .unwrap()
            .reject(vec![("Retry-After".into(), "5".into())]);
        assert_eq!(r.status, 403);
        assert_eq!(r.body, "no");
        assert_eq!(
            r.headers,
            vec![
                ("Retry-After".to_owned(), "5".to_owned()),
                (
                    "Content-Type".to_owned(),
                    "text/plain; charset=utf-8".to_owned()
                ),
                ("X-A".to_owned(), "b".to_owned()),
            ]
        );
    }
}

//! What the simulator's handlers read and write over HTTP: the query
//! string as the providers read it, and a finished answer.

use std::borrow::Cow;

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

/// A finished answer: a status, a content type and the body.
pub(crate) struct Answer {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub body: Bytes,
}

impl Answer {
    /// A JSON answer with `status`.
    pub(crate) fn json(status: StatusCode, body: impl Into<Bytes>) -> Self {
        Self {
            status,
            content_type: "application/json",
            body: body.into(),
        }
    }

    /// A provider's JSON answer: both providers answer HTTP 200 and put
    /// the outcome in the body.
    pub(crate) fn ok(body: impl Into<Bytes>) -> Self {
        Self::json(StatusCode::OK, body)
    }

    /// A gateway-style HTML error page: not JSON, on purpose.
    pub(crate) fn html(status: StatusCode) -> Self {
        let code = status.as_u16();
        let reason = status.canonical_reason().unwrap_or("Server Error");
        Self {
            status,
            content_type: "text/html",
            body: Bytes::from(format!(
                "<html>\r\n<head><title>{code} {reason}</title></head>\r\n<body>\r\n\
                 <center><h1>{code} {reason}</h1></center>\r\n<hr><center>nginx</center>\r\n\
                 </body>\r\n</html>\r\n"
            )),
        }
    }
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        let mut res = Response::new(Body::from(self.body));
        *res.status_mut() = self.status;
        res.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(self.content_type));
        res
    }
}

/// A URL query, percent-decoded the way a form is (`+` is a space; a
/// malformed escape stays as it is).
pub(crate) struct Query<'a> {
    pairs: Vec<(Cow<'a, str>, Cow<'a, str>)>,
}

impl<'a> Query<'a> {
    /// Parses `q` (the part after `?`).
    pub(crate) fn parse(q: &'a str) -> Self {
        let pairs = q
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (percent_decode(k), percent_decode(v))
            })
            .collect();
        Self { pairs }
    }

    /// The first value of `name`.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_ref())
    }

    /// The same query, owning its text (for a task that outlives the request).
    pub(crate) fn into_owned(self) -> Query<'static> {
        let own = |c: Cow<'_, str>| Cow::Owned(c.into_owned());
        Query {
            pairs: self.pairs.into_iter().map(|(k, v)| (own(k), own(v))).collect(),
        }
    }
}

fn percent_decode(s: &str) -> Cow<'_, str> {
    if !s.bytes().any(|b| b == b'%' || b == b'+') {
        return Cow::Borrowed(s);
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_decodes_like_a_form() {
        let q = Query::parse("a=1&b=x%2By+z&usersig=eJ*-_&c&d=%zz&e=%4");
        assert_eq!(q.get("a"), Some("1"));
        assert_eq!(q.get("b"), Some("x+y z"));
        assert_eq!(q.get("usersig"), Some("eJ*-_"));
        assert_eq!(q.get("c"), Some(""));
        assert_eq!(q.get("d"), Some("%zz"));
        assert_eq!(q.get("e"), Some("%4"));
        assert_eq!(q.get("f"), None);
        let owned = q.into_owned();
        assert_eq!(owned.get("b"), Some("x+y z"));
    }

    #[test]
    fn html_answers_name_their_status() {
        let a = Answer::html(StatusCode::BAD_GATEWAY);
        assert_eq!(a.content_type, "text/html");
        let text = std::str::from_utf8(&a.body).unwrap();
        assert!(text.contains("<title>502 Bad Gateway</title>"), "{text}");
    }
}

//! Reading an OpenAPI request off the wire (contract §1.1, §2.2): RPC style, `GET` or `POST`
//! to `/`, parameters in the query string and, optionally, in an
//! `application/x-www-form-urlencoded` body; the action from the `x-acs-action` header or the
//! `Action` parameter, the API version from `x-acs-version` or `Version`.
//!
//! Everything is bounded before it is buffered: the query string and the body together, from
//! `Content-Length` before a byte of the body is read and then while reading; the number of
//! parameters before any is decoded; each name and value. What is kept is exactly what the
//! signature check canonicalises and what the handlers read.

use super::encoding::{form_pairs, DecodeError};
use super::error::{shown, OpenApiError};
use super::params::Params;
use axum::body::Body;
use axum::body::Bytes;
use http::request::Parts;
use http::{HeaderMap, Method, Uri};
use http_body_util::{BodyExt as _, LengthLimitError, Limited};

/// The KMS API version this front serves.
pub const API_VERSION: &str = "2016-01-20";
/// Most bytes of query string and body together.
pub const MAX_REQUEST_BYTES: usize = 128 * 1024;
/// Most parameters (query and body together). A signing call sends about 15.
pub const MAX_PARAMS: usize = 64;
/// Longest parameter name, in bytes.
pub const MAX_NAME_BYTES: usize = 128;
/// Longest parameter value, in bytes once decoded (`Policy` is documented up to 32,768).
pub const MAX_VALUE_BYTES: usize = 32 * 1024;
/// Longest action name.
const MAX_ACTION_LEN: usize = 64;

/// A request, read and bounded; not yet authenticated.
#[derive(Debug)]
pub struct OpenApiRequest {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    query: Vec<(String, String)>,
    form: Vec<(String, String)>,
    body: Bytes,
    params: Params,
    action: String,
}

impl OpenApiRequest {
    /// Reads the body within the limit, then as [`OpenApiRequest::from_parts`].
    ///
    /// # Errors
    /// `UnsupportedHTTPMethod`, `ParseRequestParameterException` (too large, undecodable, too
    /// many parameters, a body that is not a form), `MissingParameter` / `InvalidParameter`
    /// for the action and version.
    pub async fn read(parts: Parts, body: Body) -> Result<Self, OpenApiError> {
        check_method(&parts.method)?;
        let query_len = parts.uri.query().map_or(0, str::len);
        let budget = MAX_REQUEST_BYTES
            .checked_sub(query_len)
            .ok_or_else(|| too_large(query_len as u64))?;
        let declared = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if let Some(len) = declared.filter(|&n| n > budget as u64) {
            // Refused from the header, before a byte of the body is read.
            return Err(too_large(query_len as u64 + len));
        }
        let body = match Limited::new(body, budget).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
                return Err(too_large(MAX_REQUEST_BYTES as u64 + 1));
            }
            Err(e) => {
                return Err(OpenApiError::unparseable(format!(
                    "the request body could not be read: {e}"
                )))
            }
        };
        Self::from_parts(parts, body)
    }

    /// A request from its head and its whole body.
    ///
    /// # Errors
    /// As [`OpenApiRequest::read`].
    pub fn from_parts(parts: Parts, body: Bytes) -> Result<Self, OpenApiError> {
        check_method(&parts.method)?;
        let query_raw = parts.uri.query().unwrap_or_default();
        if query_raw.len() + body.len() > MAX_REQUEST_BYTES {
            return Err(too_large((query_raw.len() + body.len()) as u64));
        }
        let form_raw = form_body(&parts.headers, &body)?;
        let segments = |raw: &str| raw.split('&').filter(|s| !s.is_empty()).count();
        let count = segments(query_raw) + segments(form_raw);
        if count > MAX_PARAMS {
            return Err(OpenApiError::unparseable(format!(
                "the request has {count} parameters; at most {MAX_PARAMS} are accepted"
            )));
        }
        let query = decode("query string", query_raw)?;
        let form = decode("form body", form_raw)?;
        for (name, value) in query.iter().chain(&form) {
            if name.len() > MAX_NAME_BYTES {
                return Err(OpenApiError::unparseable(format!(
                    "a parameter name is over {MAX_NAME_BYTES} bytes ({:?})",
                    shown(name)
                )));
            }
            if value.len() > MAX_VALUE_BYTES {
                return Err(OpenApiError::invalid_parameter(
                    name,
                    format!(
                        "its value is {} bytes; at most {MAX_VALUE_BYTES} are accepted",
                        value.len()
                    ),
                ));
            }
        }
        let params = Params::from_pairs(query.iter().chain(&form))?;
        let action = resolve(&parts.headers, &params, "x-acs-action", "Action")?;
        let action_ok =
            action.len() <= MAX_ACTION_LEN && action.bytes().all(|b| b.is_ascii_alphanumeric());
        if !action_ok {
            return Err(OpenApiError::invalid_parameter(
                "Action",
                format!("{:?} is not an action name", shown(&action)),
            ));
        }
        let version = resolve(&parts.headers, &params, "x-acs-version", "Version")?;
        if version != API_VERSION {
            return Err(OpenApiError::invalid_parameter(
                "Version",
                format!(
                    "KMS API version {:?} is not served here; this gateway serves {API_VERSION}",
                    shown(&version)
                ),
            ));
        }
        Ok(Self {
            method: parts.method,
            uri: parts.uri,
            headers: parts.headers,
            query,
            form,
            body,
            params,
            action,
        })
    }

    /// The action, e.g. `AsymmetricSign`.
    pub fn action(&self) -> &str {
        &self.action
    }

    /// Every parameter, query and form body merged.
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// The HTTP method.
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The path as sent (the canonical URI of ACS3).
    pub fn path(&self) -> &str {
        self.uri.path()
    }

    /// The request headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The query parameters, decoded, in the order sent.
    pub fn query_pairs(&self) -> &[(String, String)] {
        &self.query
    }

    /// The form-body parameters, decoded, in the order sent.
    pub fn form_pairs(&self) -> &[(String, String)] {
        &self.form
    }

    /// The body bytes.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The host the client addressed: `Host`, or the HTTP/2 `:authority`.
    pub fn host(&self) -> Option<&str> {
        self.headers
            .get(http::header::HOST)
            .and_then(|v| v.to_str().ok())
            .or_else(|| self.uri.authority().map(http::uri::Authority::as_str))
    }
}

fn check_method(method: &Method) -> Result<(), OpenApiError> {
    if method == Method::GET || method == Method::POST {
        Ok(())
    } else {
        Err(OpenApiError::unsupported_method(method.as_str()))
    }
}

fn too_large(size: u64) -> OpenApiError {
    OpenApiError::unparseable(format!(
        "the query string and body are {size} bytes or more; at most {MAX_REQUEST_BYTES} are \
         accepted"
    ))
}

/// The body's parameters as form text: none for an empty body, the body for a form body; any
/// other body is refused (no KMS action sends one, and its parameters would go unread).
fn form_body<'a>(headers: &HeaderMap, body: &'a [u8]) -> Result<&'a str, OpenApiError> {
    if body.is_empty() {
        return Ok("");
    }
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).to_ascii_lowercase());
    let is_form = content_type.as_deref().is_some_and(|ct| {
        let mut parts = ct.split(';').map(str::trim);
        parts.next() == Some("application/x-www-form-urlencoded")
            && parts.all(|p| match p.split_once('=') {
                Some(("charset", v)) => matches!(v.trim_matches('"'), "utf-8" | "utf8"),
                _ => true,
            })
    });
    if !is_form {
        return Err(OpenApiError::unparseable(format!(
            "a request body must be application/x-www-form-urlencoded (UTF-8), not {:?}; or \
             send the parameters in the query string",
            shown(content_type.as_deref().unwrap_or("no Content-Type"))
        )));
    }
    std::str::from_utf8(body)
        .map_err(|_| OpenApiError::unparseable("the form body is not UTF-8 text"))
}

fn decode(what: &str, raw: &str) -> Result<Vec<(String, String)>, OpenApiError> {
    form_pairs(raw).map_err(|e: DecodeError| {
        OpenApiError::unparseable(format!(
            "the {what} is not valid form encoding: {e}; percent-encode reserved characters \
             as %XX"
        ))
    })
}

/// A value that may come as a header or as a parameter; when both come, they must agree.
fn resolve(
    headers: &HeaderMap,
    params: &Params,
    header: &str,
    param: &str,
) -> Result<String, OpenApiError> {
    let mut values = headers.get_all(header).iter();
    let from_header = match (values.next(), values.next()) {
        (None, _) => None,
        (Some(v), None) => Some(v.to_str().map_err(|_| {
            OpenApiError::invalid_parameter(param, format!("the {header} header is not text"))
        })?),
        (Some(_), Some(_)) => {
            return Err(OpenApiError::invalid_parameter(
                param,
                format!("the {header} header is given more than once"),
            ))
        }
    };
    let from_param = params.get(param).filter(|v| !v.is_empty());
    match (from_header.filter(|v| !v.is_empty()), from_param) {
        (None, None) => Err(OpenApiError::missing_parameter(param)),
        (Some(h), Some(p)) if h != p => Err(OpenApiError::invalid_parameter(
            param,
            format!(
                "{:?} differs from the {header} header ({:?})",
                shown(p),
                shown(h)
            ),
        )),
        (Some(v), _) | (None, Some(v)) => Ok(v.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(method: &str, uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::builder().method(method).uri(uri);
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    const ACS3: &[(&str, &str)] = &[
        ("x-acs-action", "AsymmetricSign"),
        ("x-acs-version", "2016-01-20"),
    ];

    fn code(r: Result<OpenApiRequest, OpenApiError>) -> (String, String) {
        let e = r.unwrap_err();
        (e.code().to_string(), e.message().to_string())
    }

    #[test]
    fn acs3_shape_query_only_action_from_header() {
        let r = OpenApiRequest::from_parts(
            parts("POST", "/?KeyId=k&Digest=ab%2B%3D&Description=a+b", ACS3),
            Bytes::new(),
        )
        .unwrap();
        assert_eq!(r.action(), "AsymmetricSign");
        assert_eq!(r.params().get("Digest"), Some("ab+="));
        assert_eq!(r.params().get("Description"), Some("a b"));
        assert_eq!(r.query_pairs().len(), 3);
        assert!(r.form_pairs().is_empty());
        assert_eq!(r.path(), "/");
    }

    #[test]
    fn v1_shape_and_form_body_merge() {
        let r = OpenApiRequest::from_parts(
            parts(
                "GET",
                "/?Action=DescribeKey&Version=2016-01-20",
                &[(
                    "content-type",
                    "application/x-www-form-urlencoded; charset=UTF-8",
                )],
            ),
            Bytes::from_static(b"KeyId=key%2F1"),
        )
        .unwrap();
        assert_eq!(r.action(), "DescribeKey");
        assert_eq!(r.params().get("KeyId"), Some("key/1"));
        assert_eq!(r.form_pairs(), [("KeyId".to_string(), "key/1".to_string())]);
    }

    #[test]
    fn action_and_version_are_required_consistent_and_checked() {
        let none = parts("POST", "/?KeyId=k", &[]);
        assert_eq!(
            code(OpenApiRequest::from_parts(none, Bytes::new())),
            (
                "MissingParameter".into(),
                "The parameter \"Action\" is needed but not provided.".into()
            )
        );
        let no_version = parts("POST", "/?Action=DescribeKey", &[]);
        assert!(code(OpenApiRequest::from_parts(no_version, Bytes::new()))
            .1
            .contains("\"Version\""));
        let differ = parts("POST", "/?Action=AsymmetricVerify", ACS3);
        let (c, m) = code(OpenApiRequest::from_parts(differ, Bytes::new()));
        assert_eq!(c, "InvalidParameter");
        assert!(m.contains("differs from the x-acs-action header"), "{m}");
        let old = parts(
            "POST",
            "/",
            &[
                ("x-acs-action", "DescribeKey"),
                ("x-acs-version", "2014-05-26"),
            ],
        );
        let (c, m) = code(OpenApiRequest::from_parts(old, Bytes::new()));
        assert_eq!(c, "InvalidParameter");
        assert!(m.contains("2014-05-26") && m.contains("2016-01-20"), "{m}");
        let weird = parts("POST", "/?Action=Describe%2FKey&Version=2016-01-20", &[]);
        assert!(code(OpenApiRequest::from_parts(weird, Bytes::new()))
            .1
            .contains("not an action name"));
    }

    #[test]
    fn methods_bodies_and_encodings_are_refused_precisely() {
        let (c, _) = code(OpenApiRequest::from_parts(
            parts("PUT", "/", ACS3),
            Bytes::new(),
        ));
        assert_eq!(c, "UnsupportedHTTPMethod");
        let json = parts(
            "POST",
            "/",
            &[ACS3[0], ACS3[1], ("content-type", "application/json")],
        );
        let (c, m) = code(OpenApiRequest::from_parts(json, Bytes::from_static(b"{}")));
        assert_eq!(c, "ParseRequestParameterException");
        assert!(m.contains("application/x-www-form-urlencoded"), "{m}");
        let bad = parts("POST", "/?KeyId=50%", ACS3);
        let (c, m) = code(OpenApiRequest::from_parts(bad, Bytes::new()));
        assert_eq!(c, "ParseRequestParameterException");
        assert!(m.contains("query string") && m.contains('%'), "{m}");
        let dup = parts(
            "POST",
            "/?KeyId=a",
            &[
                ACS3[0],
                ACS3[1],
                ("content-type", "application/x-www-form-urlencoded"),
            ],
        );
        let (c, m) = code(OpenApiRequest::from_parts(
            dup,
            Bytes::from_static(b"KeyId=b"),
        ));
        assert_eq!(c, "InvalidParameter");
        assert!(m.contains("more than once"), "{m}");
    }

    #[test]
    fn sizes_and_counts_are_bounded() {
        let many: String = (0..=MAX_PARAMS).map(|i| format!("p{i}=1&")).collect();
        let (c, m) = code(OpenApiRequest::from_parts(
            parts("POST", &format!("/?{many}"), ACS3),
            Bytes::new(),
        ));
        assert_eq!(c, "ParseRequestParameterException");
        assert!(m.contains("65 parameters"), "{m}");
        let long = "x".repeat(MAX_VALUE_BYTES + 1);
        let (c, m) = code(OpenApiRequest::from_parts(
            parts("POST", &format!("/?Description={long}"), ACS3),
            Bytes::new(),
        ));
        assert_eq!(c, "InvalidParameter");
        assert!(m.contains("\"Description\"") && m.contains("32768"), "{m}");
        let huge = Bytes::from(vec![b'a'; MAX_REQUEST_BYTES + 1]);
        let (c, m) = code(OpenApiRequest::from_parts(parts("POST", "/", ACS3), huge));
        assert_eq!(c, "ParseRequestParameterException");
        assert!(m.contains("at most 131072"), "{m}");
    }

    #[tokio::test]
    async fn oversized_bodies_are_refused_from_content_length_and_while_reading() {
        let declared = parts(
            "POST",
            "/",
            &[ACS3[0], ACS3[1], ("content-length", "10000000")],
        );
        // A body that would never end: refused from the header, so never polled.
        let endless = Body::from_stream(endless_chunks());
        let (c, _) = code(OpenApiRequest::read(declared, endless).await);
        assert_eq!(c, "ParseRequestParameterException");
        let chunked = Body::from_stream(endless_chunks());
        let (c, m) = code(OpenApiRequest::read(parts("POST", "/", ACS3), chunked).await);
        assert_eq!(c, "ParseRequestParameterException");
        assert!(m.contains("at most 131072"), "{m}");
    }

    /// 1 KiB chunks forever.
    fn endless_chunks() -> impl tokio_stream::Stream<Item = Result<Bytes, std::io::Error>> {
        tokio_stream::iter(std::iter::repeat_with(|| Ok(Bytes::from(vec![b'x'; 1024]))))
    }
}

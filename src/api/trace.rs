//! Trace ids: a W3C `traceparent` header's trace id is carried into the request's log span and
//! audit record, and answered in `x-server-trace-id` (as Yandex's API answers); a request
//! without one (or with a malformed one) gets a fresh trace id. No trace collector is needed:
//! the id ties a client's trace to p11kms's logs and audit trail.

use http::HeaderMap;

/// The W3C trace-context request header.
pub const TRACEPARENT: &str = "traceparent";
/// The response header with the request's trace id.
pub const SERVER_TRACE_ID: &str = "x-server-trace-id";

/// The trace id of a request: the `traceparent`'s (32 lower-case hex digits, not all zero), or
/// a fresh random one.
pub fn trace_id(headers: &HeaderMap) -> String {
    headers
        .get(TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(parse)
        .unwrap_or_else(|| hex::encode(rand::random::<[u8; 16]>()))
}

/// The trace id of a `traceparent` value (W3C Trace Context §3.2:
/// `version-traceid-parentid-flags`, hex, version `ff` invalid, all-zero ids invalid).
fn parse(value: &str) -> Option<String> {
    let mut parts = value.trim().split('-');
    let version = parts.next()?;
    let trace = parts.next()?;
    let parent = parts.next()?;
    let flags = parts.next()?;
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    // Version 00 has exactly four fields; later versions may append more.
    if !hex(version, 2) || version == "ff" || (version == "00" && parts.next().is_some()) {
        return None;
    }
    if !hex(trace, 32) || !hex(parent, 16) || !hex(flags, 2) {
        return None;
    }
    if trace.bytes().all(|b| b == b'0') || parent.bytes().all(|b| b == b'0') {
        return None;
    }
    Some(trace.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT, v.parse().unwrap());
        h
    }

    #[test]
    fn a_valid_traceparent_is_kept_and_anything_else_replaced() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(trace_id(&headers(good)), "4bf92f3577b34da6a3ce929d0e0e4736");
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "garbage",
        ] {
            let id = trace_id(&headers(bad));
            assert_eq!(id.len(), 32, "{bad}");
            assert_ne!(id, "4bf92f3577b34da6a3ce929d0e0e4736", "{bad}");
        }
        let fresh = trace_id(&HeaderMap::new());
        assert_eq!(fresh.len(), 32);
        assert_ne!(fresh, trace_id(&HeaderMap::new()));
        // A later version may carry more fields.
        assert_eq!(
            trace_id(&headers(
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more"
            )),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
    }
}

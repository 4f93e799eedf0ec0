//! Freshness: a signed request is good once, and only close to when it was signed.
//!
//! * **Time.** The signing time (`x-acs-date` for ACS3, `Timestamp` for v1; RFC 3339, UTC)
//!   may be at most [`MAX_SKEW`] (15 minutes, the usual Alibaba window) from ours, either way.
//! * **Nonce.** Each (AccessKeyId, nonce) is accepted once. It is remembered until its
//!   timestamp leaves the window, after which the time check alone refuses the request, so
//!   every replay is refused by one or the other.
//!
//! The memory is bounded ([`NonceCache::new`]'s capacity, `alibaba.max_remembered_nonces`).
//! When it is full, a new nonce is refused with a retryable throttling error until the oldest
//! entries expire; a full memory never lets a replay through, and a replay of a remembered
//! nonce gets its own precise answer even then. Only requests whose signature verified are
//! remembered, so an unauthenticated client cannot fill it; a credential holder can, which is
//! what the per-subject rate limit is for.
//!
//! Entries are 16-byte digests of (AccessKeyId, nonce), not the strings: about 64 bytes each
//! with the expiry queue, whatever the client sent.

use super::error::OpenApiError;
use sha2::{Digest as _, Sha256};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Largest distance between the request's signing time and ours.
pub const MAX_SKEW: Duration = Duration::from_secs(15 * 60);
/// Longest nonce accepted (the SDKs send 32 hex digits or a UUID).
pub const MAX_NONCE_LEN: usize = 128;

/// Parses a signing time: RFC 3339 in UTC, `YYYY-MM-DDTHH:MM:SS[.fraction]Z`, as the SDKs
/// send it.
///
/// # Errors
/// `IllegalTimestamp` naming `name` when it is not RFC 3339 or before 1970.
pub fn parse_timestamp(name: &str, value: &str) -> Result<SystemTime, OpenApiError> {
    let bad = || {
        OpenApiError::illegal_timestamp(
            name,
            format!(
                "{:?} is not a UTC time like 2024-01-01T00:00:00Z",
                super::error::shown(value)
            ),
        )
    };
    // prost's RFC 3339 parser also takes a bare date and offsets; signers send UTC, in full.
    let full_utc = value.len() >= 20 && value.as_bytes()[10] == b'T' && value.ends_with('Z');
    if !full_utc {
        return Err(bad());
    }
    let ts: prost_types::Timestamp = value.parse().map_err(|_| bad())?;
    let secs = u64::try_from(ts.seconds).map_err(|_| bad())?;
    let nanos = u32::try_from(ts.nanos).map_err(|_| bad())?;
    Ok(UNIX_EPOCH + Duration::new(secs, nanos))
}

/// Refuses a signing time more than [`MAX_SKEW`] from `now`.
///
/// # Errors
/// `InvalidTimeStamp.Expired`, with both times and the difference.
pub fn check_skew(signed_at: SystemTime, now: SystemTime) -> Result<(), OpenApiError> {
    let (skew, direction) = match now.duration_since(signed_at) {
        Ok(behind) => (behind, "before"),
        Err(ahead) => (ahead.duration(), "after"),
    };
    if skew <= MAX_SKEW {
        return Ok(());
    }
    Err(OpenApiError::timestamp_expired(format!(
        "it was signed at {}, {} s {direction} the server time {}",
        rfc3339(signed_at),
        skew.as_secs(),
        rfc3339(now)
    )))
}

fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    prost_types::Timestamp {
        seconds: i64::try_from(secs).unwrap_or(i64::MAX),
        nanos: 0,
    }
    .to_string()
}

/// Checks a nonce's form (before it costs memory or a signature check).
///
/// # Errors
/// `MissingParameter` when absent or empty, `InvalidParameter` when longer than
/// [`MAX_NONCE_LEN`] or not visible ASCII.
pub fn check_nonce<'a>(name: &str, nonce: Option<&'a str>) -> Result<&'a str, OpenApiError> {
    let nonce = nonce
        .filter(|n| !n.is_empty())
        .ok_or_else(|| OpenApiError::missing_parameter(name))?;
    if nonce.len() > MAX_NONCE_LEN || !nonce.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(OpenApiError::invalid_parameter(
            name,
            format!("a nonce is 1 to {MAX_NONCE_LEN} visible ASCII characters"),
        ));
    }
    Ok(nonce)
}

/// Why [`NonceCache::admit`] refused a nonce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NonceRefusal {
    /// Seen within its window: a replay.
    Replayed,
    /// The memory is full; the oldest entry expires after this long.
    Full {
        /// Until the oldest entry expires.
        retry_after: Duration,
    },
}

impl NonceRefusal {
    /// The answer for the client; `name` is the nonce's header or parameter.
    pub fn into_error(self, name: &str, capacity: usize) -> OpenApiError {
        match self {
            NonceRefusal::Replayed => OpenApiError::nonce_used(name),
            NonceRefusal::Full { retry_after } => OpenApiError::throttling(format!(
                "the gateway remembers {capacity} recent signature nonces and none has expired \
                 yet; retry in {} s (operators: raise alibaba.max_remembered_nonces)",
                retry_after.as_secs().max(1)
            )),
        }
    }
}

type Entry = [u8; 16];

/// The bounded memory of recently accepted nonces.
#[derive(Debug)]
pub struct NonceCache {
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    seen: HashSet<Entry>,
    /// (expiry since the epoch, entry), soonest first.
    expiries: BinaryHeap<Reverse<(Duration, Entry)>>,
}

impl NonceCache {
    /// A memory of at most `capacity` nonces (at least 1).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            inner: Mutex::default(),
        }
    }

    /// The bound.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Nonces remembered now (expired ones included until the next admission drops them).
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .seen
            .len()
    }

    /// Whether none is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Accepts `nonce` of `access_key_id` once: it is remembered until `signed_at` +
    /// [`MAX_SKEW`], when [`check_skew`] starts refusing the request anyway. Call it after
    /// the time check and after the signature verified.
    ///
    /// # Errors
    /// [`NonceRefusal::Replayed`] for a nonce already remembered, [`NonceRefusal::Full`]
    /// when there is no room for a new one.
    pub fn admit(
        &self,
        access_key_id: &str,
        nonce: &str,
        signed_at: SystemTime,
        now: SystemTime,
    ) -> Result<(), NonceRefusal> {
        let entry = digest(access_key_id, nonce);
        let now = since_epoch(now);
        let expiry = since_epoch(signed_at) + MAX_SKEW;
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        // An entry stays while its request could still pass the time check (expiry >= now).
        while let Some(Reverse((at, old))) = inner.expiries.peek().copied() {
            if at >= now {
                break;
            }
            inner.expiries.pop();
            inner.seen.remove(&old);
        }
        if inner.seen.contains(&entry) {
            return Err(NonceRefusal::Replayed);
        }
        if inner.seen.len() >= self.capacity {
            let oldest = inner.expiries.peek().map_or(now, |Reverse((at, _))| *at);
            return Err(NonceRefusal::Full {
                retry_after: oldest.saturating_sub(now),
            });
        }
        inner.seen.insert(entry);
        inner.expiries.push(Reverse((expiry, entry)));
        Ok(())
    }
}

fn since_epoch(t: SystemTime) -> Duration {
    t.duration_since(UNIX_EPOCH).unwrap_or_default()
}

/// Length-prefixed, so that ("ab", "c") and ("a", "bc") differ.
fn digest(access_key_id: &str, nonce: &str) -> Entry {
    let mut h = Sha256::new();
    h.update((access_key_id.len() as u64).to_be_bytes());
    h.update(access_key_id.as_bytes());
    h.update(nonce.as_bytes());
    let full = h.finalize();
    let mut entry = [0u8; 16];
    entry.copy_from_slice(&full[..16]);
    entry
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    const T0: u64 = 1_704_067_200; // 2024-01-01T00:00:00Z

    #[test]
    fn timestamps_parse_as_the_sdks_send_them() {
        assert_eq!(
            parse_timestamp("x-acs-date", "2024-01-01T00:00:00Z").unwrap(),
            at(T0)
        );
        assert_eq!(
            parse_timestamp("Timestamp", "2024-01-01T00:00:00.500Z").unwrap(),
            at(T0) + Duration::from_millis(500)
        );
        for bad in [
            "",
            "2024-01-01",
            "2024-01-01T00:00:00+01:00",
            "yesterday",
            "1969-12-31T23:59:59Z",
            "2024-01-01T00:00:00Z\n",
        ] {
            let e = parse_timestamp("Timestamp", bad).unwrap_err();
            assert_eq!(e.code(), "IllegalTimestamp", "{bad:?}");
            assert!(e.message().contains("\"Timestamp\""), "{}", e.message());
        }
    }

    #[test]
    fn skew_of_fifteen_minutes_either_way_is_accepted_and_no_more() {
        let now = at(T0);
        for ok in [T0, T0 - 900, T0 + 900] {
            check_skew(at(ok), now).unwrap();
        }
        for (bad, word) in [(T0 - 901, "before"), (T0 + 901, "after"), (0, "before")] {
            let e = check_skew(at(bad), now).unwrap_err();
            assert_eq!(
                (e.code(), e.status().as_u16()),
                ("InvalidTimeStamp.Expired", 400)
            );
            assert!(e.message().contains(word), "{}", e.message());
            assert!(
                e.message().contains("2024-01-01T00:00:00Z"),
                "{}",
                e.message()
            );
        }
    }

    #[test]
    fn nonces_are_checked_for_form() {
        assert_eq!(check_nonce("SignatureNonce", Some("abc")).unwrap(), "abc");
        for (value, code) in [
            (None, "MissingParameter"),
            (Some(""), "MissingParameter"),
            (Some("has space"), "InvalidParameter"),
            (Some(&*"x".repeat(129)), "InvalidParameter"),
        ] {
            let e = check_nonce("x-acs-signature-nonce", value).unwrap_err();
            assert_eq!(e.code(), code, "{value:?}");
            assert!(e.message().contains("x-acs-signature-nonce"));
        }
    }

    #[test]
    fn a_nonce_is_accepted_once_per_access_key_while_its_time_is_valid() {
        let c = NonceCache::new(100);
        let now = at(T0);
        c.admit("ak", "n1", now, now).unwrap();
        assert_eq!(c.admit("ak", "n1", now, now), Err(NonceRefusal::Replayed));
        // Another AccessKey's nonce is its own.
        c.admit("ak2", "n1", now, now).unwrap();
        // Until signed_at + 15 min the entry stays, even as other admissions purge.
        let last_valid = at(T0 + 900);
        c.admit("ak", "other", last_valid, last_valid).unwrap();
        assert_eq!(
            c.admit("ak", "n1", now, last_valid),
            Err(NonceRefusal::Replayed)
        );
        // After it, the entry is gone; the time check refuses that request instead.
        let later = at(T0 + 901);
        c.admit("ak", "purge", later, later).unwrap();
        assert_eq!(
            c.len(),
            2,
            "n1 of both keys expired; other and purge remain"
        );
        assert!(check_skew(now, later).is_err());
    }

    #[test]
    fn a_future_timestamp_is_remembered_until_it_leaves_the_window() {
        let c = NonceCache::new(10);
        let now = at(T0);
        let ahead = at(T0 + 900);
        c.admit("ak", "n", ahead, now).unwrap();
        let t = at(T0 + 1799);
        c.admit("ak", "x", t, t).unwrap();
        assert_eq!(c.admit("ak", "n", ahead, t), Err(NonceRefusal::Replayed));
    }

    #[test]
    fn full_memory_refuses_new_nonces_never_accepts_a_replay_and_recovers_on_expiry() {
        let c = NonceCache::new(3);
        let now = at(T0);
        for (i, n) in ["a", "b", "c"].into_iter().enumerate() {
            c.admit("ak", n, at(T0 + i as u64), now).unwrap();
        }
        assert_eq!(
            c.admit("ak", "d", now, now),
            Err(NonceRefusal::Full {
                retry_after: Duration::from_secs(900)
            })
        );
        // A replay while full is still a replay, with its own answer.
        assert_eq!(c.admit("ak", "b", now, now), Err(NonceRefusal::Replayed));
        assert_eq!(c.len(), 3);
        // Once "a" expires there is room for one more, and "b" and "c" are still remembered.
        let t = at(T0 + 901);
        c.admit("ak", "d", t, t).unwrap();
        assert_eq!(
            c.admit("ak", "b", at(T0 + 1), t),
            Err(NonceRefusal::Replayed)
        );
        assert!(matches!(
            c.admit("ak", "e", t, t),
            Err(NonceRefusal::Full { .. })
        ));
        let e = NonceRefusal::Full {
            retry_after: Duration::from_secs(5),
        }
        .into_error("x-acs-signature-nonce", 3);
        assert_eq!(
            (e.code(), e.status().as_u16()),
            ("Rejected.Throttling", 429)
        );
        assert!(
            e.message().contains("retry in 5 s") && e.message().contains("max_remembered_nonces")
        );
        let e = NonceRefusal::Replayed.into_error("SignatureNonce", 3);
        assert_eq!((e.code(), e.status().as_u16()), ("SignatureNonceUsed", 400));
    }

    #[test]
    fn entries_are_fixed_size_digests_that_keep_key_and_nonce_apart() {
        assert_ne!(digest("ab", "c"), digest("a", "bc"));
        let c = NonceCache::new(5);
        let huge = "n".repeat(MAX_NONCE_LEN);
        c.admit("ak", &huge, at(T0), at(T0)).unwrap();
        assert_eq!(
            c.admit("ak", &huge, at(T0), at(T0)),
            Err(NonceRefusal::Replayed)
        );
    }
}

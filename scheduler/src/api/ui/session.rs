//! Dashboard sessions: a signed-in browser holds a random session id in an
//! HttpOnly, SameSite=Strict cookie; the server keeps, under the id's
//! SHA-256, the actor, the hash of the API token it signed in with (checked
//! again on every request, so a revoked or expired token ends the session),
//! the session's CSRF token and its expiry. Sessions live in the API
//! process's memory: a restart signs everyone out.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::http::HeaderMap;
use axum::http::header::{COOKIE, SET_COOKIE};
use chrono::{DateTime, Duration, Utc};
use sha2::{Digest, Sha256};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "oprun_session";
/// The sign-in form's CSRF cookie (double submit: no session exists yet).
pub const SIGN_IN_COOKIE: &str = "oprun_sign_in";
/// How long a session lives after sign-in.
pub const SESSION_LIFETIME: Duration = Duration::hours(8);
/// The most sessions kept at once; beyond it the oldest goes.
pub const MAX_SESSIONS: usize = 10_000;

/// One signed-in browser.
#[derive(Debug, Clone)]
pub struct Session {
    /// The actor signed in.
    pub actor: String,
    /// The SHA-256 of the API token it signed in with.
    pub token_hash: String,
    /// The CSRF token every form of this session carries.
    pub csrf: String,
    /// When it ends.
    pub expires_at: DateTime<Utc>,
}

/// The sessions of this process.
#[derive(Debug, Default)]
pub struct Sessions {
    by_hash: Mutex<HashMap<String, Session>>,
}

/// A random secret: 244 bits from two v4 UUIDs (the API tokens' source).
pub fn secret() -> String {
    format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
}

fn digest(value: &str) -> String {
    format!("{:x}", Sha256::digest(value.as_bytes()))
}

impl Sessions {
    /// Open a session; the cookie value to hand the browser.
    pub fn open(&self, actor: String, token_hash: String, now: DateTime<Utc>) -> (String, Session) {
        let id = secret();
        let session = Session { actor, token_hash, csrf: secret(), expires_at: now + SESSION_LIFETIME };
        let mut map = self.by_hash.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.retain(|_, s| s.expires_at > now);
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map.iter().min_by_key(|(_, s)| s.expires_at).map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(digest(&id), session.clone());
        (id, session)
    }

    /// The live session a cookie value names.
    pub fn get(&self, id: &str, now: DateTime<Utc>) -> Option<Session> {
        let map = self.by_hash.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.get(&digest(id)).filter(|s| s.expires_at > now).cloned()
    }

    /// End a session.
    pub fn close(&self, id: &str) {
        self.by_hash.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&digest(id));
    }
}

/// The value of cookie `name` in a request.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty() && v.len() <= 128)
}

/// Whether the request came over TLS (a TLS-terminating proxy says so in
/// `X-Forwarded-Proto`): cookies are then `Secure`.
pub fn over_tls(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"))
}

/// A `Set-Cookie` header for `name` (`None`: expire it).
pub fn set_cookie(
    name: &str,
    value: Option<&str>,
    max_age: Duration,
    secure: bool,
) -> (axum::http::HeaderName, String) {
    let (value, age) = match value {
        Some(v) => (v, max_age.num_seconds()),
        None => ("", 0),
    };
    let secure = if secure { "; Secure" } else { "" };
    (SET_COOKIE, format!("{name}={value}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={age}{secure}"))
}

/// Whether a form's CSRF token is the expected one (compared as digests, so
/// the comparison's time says nothing about the secret).
pub fn csrf_matches(expected: &str, given: Option<&str>) -> bool {
    given.is_some_and(|g| !g.is_empty() && digest(g) == digest(expected))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at() -> DateTime<Utc> {
        DateTime::from_timestamp(1_750_000_000, 0).unwrap()
    }

    #[test]
    fn a_session_is_found_by_its_cookie_until_it_expires_or_closes() {
        let sessions = Sessions::default();
        let (id, s) = sessions.open("ops".into(), "h".into(), at());
        assert_eq!(sessions.get(&id, at()).map(|s| s.actor), Some("ops".into()));
        assert!(sessions.get("other", at()).is_none());
        assert!(sessions.get(&id, s.expires_at).is_none(), "expired at its expiry");
        sessions.close(&id);
        assert!(sessions.get(&id, at()).is_none());
        // Stored by digest: the cookie value itself is not a key.
        assert!(!sessions.by_hash.lock().unwrap().contains_key(&id));
    }

    #[test]
    fn cookies_are_read_by_name_and_bounded() {
        let mut h = HeaderMap::new();
        h.insert(COOKIE, "a=1; oprun_session=abc; b=2".parse().unwrap());
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&h, "missing"), None);
        h.insert(COOKIE, format!("oprun_session={}", "x".repeat(500)).parse().unwrap());
        assert_eq!(cookie(&h, SESSION_COOKIE), None);
    }

    #[test]
    fn cookies_are_http_only_strict_and_secure_over_tls() {
        let (_, plain) = set_cookie(SESSION_COOKIE, Some("v"), SESSION_LIFETIME, false);
        assert_eq!(plain, "oprun_session=v; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=28800");
        let (_, tls) = set_cookie(SESSION_COOKIE, None, SESSION_LIFETIME, true);
        assert!(tls.ends_with("Max-Age=0; Secure"), "{tls}");
        let mut h = HeaderMap::new();
        assert!(!over_tls(&h));
        h.insert("x-forwarded-proto", "https".parse().unwrap());
        assert!(over_tls(&h));
    }

    #[test]
    fn csrf_needs_the_exact_token() {
        assert!(csrf_matches("abc", Some("abc")));
        assert!(!csrf_matches("abc", Some("abd")));
        assert!(!csrf_matches("abc", None));
        assert!(!csrf_matches("", Some("")));
    }
}

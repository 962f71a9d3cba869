//! Redaction: secrets never reach a stored message, an audit detail, a log
//! line or an error text, and secret-named keys never reach a run's documents.
//!
//! [`redact`] replaces what looks like a secret with [`REDACTED`]:
//!
//! - the password in a URL's user info (`postgres://app:[REDACTED]@db/oprun`);
//! - JSON string fields (also JSON escaped inside a string) whose key is
//!   secret-named (see [`is_secret_key`]): `"client_secret": "[REDACTED]"`;
//! - `Authorization:`, `Proxy-Authorization:`, `Cookie:` and `Set-Cookie:`
//!   header values, up to the end of the line;
//! - `Bearer <token>` (any case);
//! - JWT-shaped strings (three base64url segments, the first starting `eyJ`);
//! - `key=value` and `key: value` pairs whose key is secret-named, in query
//!   strings, form bodies and prose (`password=…`, `access_token=…`,
//!   `api_key: …`);
//! - long high-entropy strings: 32 or more characters of `[A-Za-z0-9+/_-]`
//!   mixing letters and digits with a run of at least 20 characters between
//!   `-`, `_` and `/` (hex digests, API keys, opaque tokens). Canonical
//!   hyphenated UUIDs, paths such as `/v1.0/users?$top=100`, slugs such as
//!   `contoso-prod` and plain words survive.
//!
//! Redaction is a safety net, not a licence: handlers still never put a secret
//! into a message on purpose.

use std::sync::LazyLock;

use regex::{Captures, Regex};

/// The text that stands in for a redacted secret.
pub const REDACTED: &str = "[REDACTED]";

/// The longest stored message (failure summaries, audit details), in bytes.
pub const MAX_MESSAGE_LEN: usize = 1000;

/// Key words a secret-named key contains; the regexes pre-filter on these and
/// [`is_secret_key`] decides.
const KEY_WORDS: &str = r"token|secret|passw(?:or)?d|pwd|passphrase|api[_-]?key|authorization|private[_-]?key|access[_-]?key|credentials?|bearer|connection[_-]?string";

/// Names (after normalisation) that are secret on their own or as the last
/// `_` word(s) of a longer name (`client_secret`, `x_api_key`, `access_token`).
const SECRET_NAMES: &[&str] = &[
    "token",
    "secret",
    "secrets",
    "password",
    "passwords",
    "passwd",
    "pwd",
    "passphrase",
    "api_key",
    "apikey",
    "authorization",
    "private_key",
    "access_key",
    "secret_key",
    "credential",
    "credentials",
    "bearer",
    "connection_string",
];

/// Names (after normalisation) that end like a secret but are not one: paging
/// cursors that resumable operations keep in their checkpoints.
const NOT_SECRET_NAMES: &[&str] =
    &["page_token", "next_token", "skip_token", "skiptoken", "delta_token", "continuation_token", "sync_token"];

static URL_USERINFO: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b([a-z][a-z0-9+.-]*://[^:/?#@\s]*:)([^@/?#\s]+)@").expect("URL user info regex")
});

static JSON_FIELD: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(&format!(r#"(?i)"([A-Za-z0-9_-]*(?:{KEY_WORDS})[A-Za-z0-9_-]*)"(\s*:\s*)"((?:[^"\\]|\\.)*)""#))
        .expect("JSON field regex")
});

static ESCAPED_JSON_FIELD: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(&format!(
        r#"(?i)\\"([A-Za-z0-9_-]*(?:{KEY_WORDS})[A-Za-z0-9_-]*)\\"(\s*:\s*)\\"((?:[^"\\]|\\[^"])*)\\""#
    ))
    .expect("escaped JSON field regex")
});

static HEADER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"(?i)\b((?:proxy-)?authorization|set-cookie|cookie)([ \t]*:[ \t]*)[^\r\n"']+"#).expect("header regex")
});

static BEARER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)\b(bearer)([ \t]+)([A-Za-z0-9\-._~+/]+=*)").expect("bearer regex"));

static JWT: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*").expect("JWT regex"));

static KEY_VALUE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(&format!(
        r#"(?i)\b([A-Za-z0-9_-]*(?:{KEY_WORDS})[A-Za-z0-9_-]*)([ \t]*[:=][ \t]*)("[^"\r\n]*"|'[^'\r\n]*'|[^\s&,;"'<>]+)"#
    ))
    .expect("key=value regex")
});

static HIGH_ENTROPY: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"[A-Za-z0-9+/_-]{32,}={0,2}").expect("high-entropy regex"));

/// Replace every secret-looking part of `s` with [`REDACTED`] (see the module
/// docs for what counts). Ordinary text comes back unchanged.
pub fn redact(s: &str) -> String {
    let s = URL_USERINFO.replace_all(s, format!("${{1}}{REDACTED}@").as_str());
    let s = JSON_FIELD.replace_all(&s, |c: &Captures| secret_field(c, "\""));
    let s = ESCAPED_JSON_FIELD.replace_all(&s, |c: &Captures| secret_field(c, "\\\""));
    let s = HEADER.replace_all(&s, format!("${{1}}${{2}}{REDACTED}").as_str());
    let s = BEARER.replace_all(&s, |c: &Captures| {
        // "missing bearer token" is prose, not a credential.
        let word = c[3].to_ascii_lowercase();
        if matches!(word.as_str(), "token" | "tokens" | "auth" | "authentication" | "credentials" | "scheme") {
            c[0].to_string()
        } else {
            format!("{}{}{REDACTED}", &c[1], &c[2])
        }
    });
    let s = JWT.replace_all(&s, REDACTED);
    let s = KEY_VALUE.replace_all(&s, |c: &Captures| {
        if is_secret_key(&c[1]) { format!("{}{}{REDACTED}", &c[1], &c[2]) } else { c[0].to_string() }
    });
    let s = HIGH_ENTROPY
        .replace_all(&s, |c: &Captures| if looks_random(&c[0]) { REDACTED.to_string() } else { c[0].to_string() });
    s.into_owned()
}

/// Redact a connection URL (database, Redis) for an error message or a log
/// line: its password, secret query parameters and tokens.
pub fn redact_url(url: &str) -> String {
    redact(url)
}

/// Redact `s`, then bound it to [`MAX_MESSAGE_LEN`] bytes: a longer text is
/// cut on a character boundary and ends with `…` (the result, ellipsis
/// included, is never longer than [`MAX_MESSAGE_LEN`] bytes).
pub fn sanitize(s: &str) -> String {
    let s = redact(s);
    if s.len() <= MAX_MESSAGE_LEN {
        return s;
    }
    let mut end = MAX_MESSAGE_LEN - '…'.len_utf8();
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Redact `s`, then bound it to `max_chars` characters for an error message:
/// a longer text keeps its first `max_chars - 1` characters and ends with `…`.
pub fn excerpt(s: &str, max_chars: usize) -> String {
    let s = redact(s);
    if s.chars().count() <= max_chars {
        return s;
    }
    let mut out: String = s.chars().take(max_chars.saturating_sub(1)).collect();
    if max_chars > 0 {
        out.push('…');
    }
    out
}

/// Whether a key names a secret. Case, `-`, `.`, spaces and camelCase are
/// normalised to snake_case first (`clientSecret`, `X-Api-Key` and
/// `client_secret` are all secret). A name is secret when it is, or ends with
/// `_` followed by, one of: token, secret(s), password(s), passwd, pwd,
/// passphrase, api_key, apikey, authorization, private_key, access_key,
/// secret_key, credential(s), bearer, connection_string. So `access_token`,
/// `refresh_token` and `client_secret` are secret; `token_type`, `max_tokens`,
/// `dedup_key` and `sort_key` are not (a bare `_key` suffix is too common to
/// refuse). Paging cursors are exempt: page_token, next_token, skip_token,
/// skiptoken, delta_token, continuation_token and sync_token (and names ending
/// with them, such as `next_page_token`).
pub fn is_secret_key(name: &str) -> bool {
    let n = normalise_key(name);
    let is_or_ends_with = |word: &str| n == word || n.strip_suffix(word).is_some_and(|head| head.ends_with('_'));
    if NOT_SECRET_NAMES.iter().any(|w| is_or_ends_with(w)) {
        return false;
    }
    SECRET_NAMES.iter().any(|w| is_or_ends_with(w))
}

/// The path of the first secret-named key (see [`is_secret_key`]) anywhere in
/// `v`, depth first in key order: object keys joined with `.`, array items as
/// `[i]` (`auth.client_secret`, `targets[2].password`, `[0].token`). `None`
/// when there is none.
pub fn find_secret_key(v: &serde_json::Value) -> Option<String> {
    fn walk(v: &serde_json::Value, path: &mut String) -> Option<String> {
        match v {
            serde_json::Value::Object(map) => {
                for (k, child) in map {
                    let len = path.len();
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(k);
                    if is_secret_key(k) {
                        return Some(path.clone());
                    }
                    if let Some(found) = walk(child, path) {
                        return Some(found);
                    }
                    path.truncate(len);
                }
                None
            }
            serde_json::Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    let len = path.len();
                    path.push_str(&format!("[{i}]"));
                    if let Some(found) = walk(child, path) {
                        return Some(found);
                    }
                    path.truncate(len);
                }
                None
            }
            _ => None,
        }
    }
    walk(v, &mut String::new())
}

/// Rebuild a matched JSON field with its value redacted when its key is
/// secret-named; `quote` is `"` or, for JSON escaped in a string, `\"`.
fn secret_field(c: &Captures, quote: &str) -> String {
    if is_secret_key(&c[1]) {
        format!("{quote}{}{quote}{}{quote}{REDACTED}{quote}", &c[1], &c[2])
    } else {
        c[0].to_string()
    }
}

/// snake_case, lower case: `clientSecret` → `client_secret`,
/// `X-Api-Key` → `x_api_key`.
fn normalise_key(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    let mut prev_lower_or_digit = false;
    for ch in name.trim().chars() {
        if ch.is_ascii_uppercase() {
            if prev_lower_or_digit {
                out.push('_');
            }
            out.push(ch.to_ascii_lowercase());
            prev_lower_or_digit = false;
        } else if matches!(ch, '-' | '.' | ' ') {
            out.push('_');
            prev_lower_or_digit = false;
        } else {
            out.push(ch);
            prev_lower_or_digit = ch.is_ascii_lowercase() || ch.is_ascii_digit();
        }
    }
    out
}

/// Whether a long `[A-Za-z0-9+/_=-]` run looks like a random secret rather
/// than a UUID, a path or a slug.
fn looks_random(s: &str) -> bool {
    if is_canonical_uuid(s) {
        return false;
    }
    let has_letter = s.bytes().any(|b| b.is_ascii_alphabetic());
    let has_digit = s.bytes().any(|b| b.is_ascii_digit());
    let longest_segment = s.trim_end_matches('=').split(['-', '_', '/']).map(str::len).max().unwrap_or(0);
    has_letter && has_digit && longest_segment >= 20
}

/// `8-4-4-4-12` hex digits.
fn is_canonical_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups.iter().zip([8, 4, 4, 4, 12]).all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn assert_hidden(input: &str, secret: &str) {
        let out = redact(input);
        assert!(!out.contains(secret), "secret {secret:?} survived in {out:?}");
        assert!(out.contains(REDACTED), "no redaction marker in {out:?}");
    }

    #[test]
    fn bearer_tokens_are_redacted_in_any_case() {
        assert_hidden("calling graph with Bearer abc123def456ghi789", "abc123def456ghi789");
        assert_hidden("bearer xyz.987-654_321~opaque", "xyz.987-654_321~opaque");
        assert_hidden("BEARER SuperSecretValue==", "SuperSecretValue");
    }

    #[test]
    fn bearer_in_prose_is_left_alone() {
        assert_eq!(redact("request is missing a bearer token"), "request is missing a bearer token");
    }

    #[test]
    fn authorization_and_cookie_headers_are_redacted_to_the_end_of_the_line() {
        let out = redact("GET /v1.0/users\nAuthorization: Basic dXNlcjpodW50ZXIy\nAccept: application/json");
        assert!(!out.contains("dXNlcjpodW50ZXIy"), "{out}");
        assert!(out.contains("Authorization: [REDACTED]\nAccept: application/json"), "{out}");
        assert_hidden("proxy-authorization: Negotiate YIIabc", "YIIabc");
        assert_hidden("Set-Cookie: session=s3cr3tcookie; HttpOnly", "s3cr3tcookie");
    }

    #[test]
    fn jwt_shaped_strings_are_redacted() {
        let jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhYmMifQ.c2lnbmF0dXJl";
        assert_hidden(&format!("provider said: invalid token {jwt} (expired)"), jwt);
        assert_hidden(&format!("id={jwt}"), "eyJzdWIiOiJhYmMifQ");
    }

    #[test]
    fn secret_query_and_form_parameters_are_redacted() {
        let cases = [
            ("POST /token client_id=app&client_secret=Sh0rtS3cret&grant_type=client_credentials", "Sh0rtS3cret"),
            ("https://example.com/cb?code=1&access_token=tok123&state=x", "tok123"),
            ("refresh_token=rt-999 expired", "rt-999"),
            ("password=hunter2", "hunter2"),
            ("password: hunter2", "hunter2"),
            ("token=abc", "abc"),
            ("api_key=k-1234", "k-1234"),
            ("apikey=k-5678", "k-5678"),
            ("X-Api-Key: k-abcd", "k-abcd"),
            ("secret=letmein", "letmein"),
            ("clientSecret = \"quoted value\"", "quoted value"),
            ("error: password=hunter2", "hunter2"),
        ];
        for (input, secret) in cases {
            assert_hidden(input, secret);
        }
        let out = redact("https://example.com/cb?code=1&access_token=tok123&state=x");
        assert_eq!(out, "https://example.com/cb?code=1&access_token=[REDACTED]&state=x");
    }

    #[test]
    fn secret_json_fields_are_redacted_and_others_kept() {
        let body = r#"{"token_type": "Bearer", "access_token": "at-1", "refresh_token":"rt-2", "password": "p\"w", "client_secret": "cs-3", "token": "t-4", "api_key": "ak-5", "secret": "s-6", "authorization": "Basic xyz", "user": "ada"}"#;
        let out = redact(body);
        for secret in ["at-1", "rt-2", "p\\\"w", "cs-3", "t-4", "ak-5", "s-6", "Basic xyz"] {
            assert!(!out.contains(secret), "{secret} survived in {out}");
        }
        assert!(out.contains(r#""token_type": "Bearer""#), "{out}");
        assert!(out.contains(r#""user": "ada""#), "{out}");
        assert!(out.contains(r#""access_token": "[REDACTED]""#), "{out}");
    }

    #[test]
    fn json_escaped_inside_a_string_is_redacted() {
        let msg = r#"provider body: "{\"error\":\"invalid_client\",\"client_secret\":\"cs-77\"}""#;
        assert_hidden(msg, "cs-77");
        assert!(redact(msg).contains("invalid_client"));
    }

    #[test]
    fn url_passwords_are_redacted() {
        assert_eq!(redact_url("postgres://app:pa55w0rd@db:5432/oprun"), "postgres://app:[REDACTED]@db:5432/oprun");
        assert_hidden("redis://:redispw@cache:6379/0", "redispw");
        assert_eq!(redact_url("sqlite:///var/lib/oprun.db"), "sqlite:///var/lib/oprun.db");
    }

    #[test]
    fn long_high_entropy_strings_are_redacted() {
        assert_hidden("key AKIAIOSFODNN7EXAMPLEwJalrXUtnFEMIK7MDENG used", "AKIAIOSFODNN7EXAMPLE");
        assert_hidden("sha 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", "9f86d081884c7d659a2f");
        assert_hidden("sig=dGhpcyBpcyBhIHZlcnkgbG9uZyBzZWNyZXQgdmFsdWUxMjM0NQ==", "dGhpcyBpcyBhIHZlcnkg");
    }

    #[test]
    fn ordinary_text_survives_unchanged() {
        for text in [
            "synced 42 users in contoso-prod",
            "0190b2c4-7e1a-7c3d-9f2e-4b5a6c7d8e9f",
            "run 0190b2c4-7e1a-7c3d-9f2e-4b5a6c7d8e9f failed",
            "/v1.0/users?$top=100",
            "GET https://graph.example.com/v1.0/users?$top=100&$select=id,displayName",
            "/subscriptions/0190b2c4-7e1a-7c3d-9f2e-4b5a6c7d8e9f/resourceGroups/rg-prod-westeurope-01",
            "inventory-sync-contoso-prod-westeurope-2024-daily",
            "provider.throttled: retry after 30s",
            "token_type=bearer",
            "dedup_key=inventory.sync|ws-1|env-2",
            "Supercalifragilisticexpialidociousnessitude",
        ] {
            assert_eq!(redact(text), text);
        }
    }

    #[test]
    fn redaction_is_idempotent() {
        let once = redact("password=hunter2 Authorization: Bearer abcdefgh12345678");
        assert_eq!(redact(&once), once);
    }

    #[test]
    fn sanitize_cuts_on_a_char_boundary_within_the_limit() {
        let s = "é".repeat(MAX_MESSAGE_LEN);
        let out = sanitize(&s);
        assert!(out.len() <= MAX_MESSAGE_LEN, "{} bytes", out.len());
        assert!(out.ends_with('…'));
        assert!(out.trim_end_matches('…').chars().all(|c| c == 'é'));
        let short = "x".repeat(MAX_MESSAGE_LEN);
        assert_eq!(sanitize(&short), short);
    }

    #[test]
    fn sanitize_redacts_before_it_cuts() {
        let s = format!("{} password=hunter2", "a ".repeat(600));
        let out = sanitize(&s);
        assert!(!out.contains("hunter2"));
        let s = format!("{}password=hunter2", "b ".repeat(497));
        assert!(!sanitize(&s).contains("hunt"));
    }

    #[test]
    fn excerpt_counts_characters_and_redacts() {
        assert_eq!(excerpt("héllo wörld", 5), "héll…");
        assert_eq!(excerpt("short", 5), "short");
        assert_eq!(excerpt("anything", 0), "");
        assert_eq!(excerpt("password=hunter2", 80), "password=[REDACTED]");
    }

    #[test]
    fn secret_key_names_are_recognised() {
        for k in [
            "token",
            "Secret",
            "PASSWORD",
            "passwd",
            "api_key",
            "apiKey",
            "APIKey",
            "X-Api-Key",
            "authorization",
            "client_secret",
            "clientSecret",
            "access_token",
            "refresh_token",
            "private_key",
            "credential",
            "credentials",
            "bearer",
            "session_token",
            "db_password",
            "aws_secret_access_key",
            "secret_key",
        ] {
            assert!(is_secret_key(k), "{k} should be secret");
        }
        for k in [
            "dedup_key",
            "sort_key",
            "token_type",
            "max_tokens",
            "token_count",
            "user",
            "operation",
            "nextPageToken",
            "page_token",
            "skiptoken",
            "delta_token",
            "password_policy",
            "secretary",
        ] {
            assert!(!is_secret_key(k), "{k} should not be secret");
        }
    }

    #[test]
    fn find_secret_key_reports_the_path_of_the_first_secret_key() {
        assert_eq!(
            find_secret_key(&json!({"tenant": "t", "auth": {"mode": "app", "client_secret": "x"}})).as_deref(),
            Some("auth.client_secret")
        );
        assert_eq!(
            find_secret_key(&json!({"targets": [{"id": 1}, {"id": 2, "password": "p"}]})).as_deref(),
            Some("targets[1].password")
        );
        assert_eq!(find_secret_key(&json!([{"token": "t"}])).as_deref(), Some("[0].token"));
        assert_eq!(find_secret_key(&json!({"a": [[{"b": {"apiKey": 1}}]]})).as_deref(), Some("a[0][0].b.apiKey"));
        assert_eq!(find_secret_key(&json!({"page_token": "p", "top": 100, "dedup_key": "k"})), None);
        assert_eq!(find_secret_key(&json!("password")), None);
    }
}

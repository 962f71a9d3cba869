//! Redaction: secrets never reach a stored message, an audit detail, a log
//! line or an error text, and secret-named keys never reach a run's documents.
//!
//! [`redact`] replaces what looks like a secret with [`REDACTED`]:
//!
//! - the password in a URL's user info (`postgres://app:[REDACTED]@db/oprun`),
//!   up to the URL's last `@`, so a raw password holding `@`, `/`, `?` or `#`
//!   goes whole (see [`redact_url`] for a URL on its own);
//! - the values of JSON fields (also JSON escaped inside a string) whose key
//!   is secret-named (see [`is_secret_key`]), whatever their type:
//!   `"client_secret": "[REDACTED]"`, `"password": "[REDACTED]"` for a number,
//!   an array or an object;
//! - `Authorization:`, `Proxy-Authorization:`, `Cookie:` and `Set-Cookie:`
//!   header values, up to the end of the line;
//! - `Basic <base64 of user:password>` and `Bearer <token>` (any case);
//! - JWT-shaped strings (three base64url segments, the first starting `eyJ`);
//! - AWS access key ids (`AKIA…`, `ASIA…`) and 40-character AWS secret keys
//!   (which may hold `/`);
//! - `key=value` and `key: value` pairs whose key is secret-named, in query
//!   strings, form bodies and prose (`password=…`, `access_token=…`,
//!   `api_key: …`, `sig=…`, `authorization=Basic …`), also percent-encoded
//!   once or twice (`access%5Ftoken%3D…`: such a run is shown decoded);
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
const KEY_WORDS: &str = r"token|secret|passw(?:or)?d|pwd|passphrase|api[_-]?key|authorization|private[_-]?key|access[_-]?key|credentials?|bearer|connection[_-]?string|sig";

/// Names (after normalisation) that are secret on their own or as the end of
/// a longer name, with or without a separator (`client_secret`,
/// `clientsecret`, `x_api_key`, `accesstoken`).
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
    "authorization",
    "private_key",
    "access_key",
    "secret_key",
    "credential",
    "credentials",
    "bearer",
    "connection_string",
    "sig",
    "signature",
];

/// Names (after normalisation) that end like a secret but are not one: paging
/// cursors that resumable operations keep in their checkpoints.
const NOT_SECRET_NAMES: &[&str] =
    &["page_token", "next_token", "skip_token", "delta_token", "continuation_token", "sync_token"];

/// A URL's scheme and the rest of it up to white space, a quote or an angle
/// bracket (what a message can hold of a URL); [`password_span`] decides.
static URL_IN_TEXT: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r#"(?i)\b[a-z][a-z0-9+.-]*://([^\s"<>]+)"#).expect("URL regex"));

/// A run of URL characters holding at least one percent escape.
static PERCENT_ENCODED: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"[A-Za-z0-9._~!$'()*+,;=:@/?&\[\]-]*%[0-9A-Fa-f]{2}[A-Za-z0-9._~!$'()*+,;=:@/?&%\[\]-]*")
        .expect("percent-encoded regex")
});

static JSON_KEY: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(&format!(r#"(?i)"([A-Za-z0-9_-]*(?:{KEY_WORDS})[A-Za-z0-9_-]*)"\s*:\s*"#)).expect("JSON key regex")
});

static ESCAPED_JSON_KEY: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(&format!(r#"(?i)\\"([A-Za-z0-9_-]*(?:{KEY_WORDS})[A-Za-z0-9_-]*)\\"\s*:\s*"#))
        .expect("escaped JSON key regex")
});

static HEADER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"(?i)\b((?:proxy-)?authorization|set-cookie|cookie)([ \t]*:[ \t]*)[^\r\n"']+"#).expect("header regex")
});

static BASIC: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)\b(basic)([ \t]+)([A-Za-z0-9+/]{4,}={0,2})").expect("basic regex"));

static BEARER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)\b(bearer)([ \t]+)([A-Za-z0-9\-._~+/]+=*)").expect("bearer regex"));

static JWT: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*").expect("JWT regex"));

/// An AWS access key id: long-term (`AKIA`) or temporary (`ASIA`).
static AWS_KEY_ID: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b").expect("AWS key id regex"));

static KEY_VALUE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(&format!(
        r#"(?i)\b([A-Za-z0-9_-]*(?:{KEY_WORDS})[A-Za-z0-9_-]*)([ \t]*[:=][ \t]*)((?:basic|bearer|digest|negotiate|ntlm)[ \t]+[^\s&,;"'<>]+|"[^"\r\n]*"|'[^'\r\n]*'|[^\s&,;"'<>]+)"#
    ))
    .expect("key=value regex")
});

static HIGH_ENTROPY: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"[A-Za-z0-9+/_-]{32,}={0,2}").expect("high-entropy regex"));

/// Replace every secret-looking part of `s` with [`REDACTED`] (see the module
/// docs for what counts). Ordinary text comes back unchanged.
pub fn redact(s: &str) -> String {
    // Percent-encoded pairs (`access%5Ftoken%3D…`, also encoded twice): a run
    // whose decoded form holds a secret is shown decoded and redacted; any
    // other run is kept as it was.
    let s = PERCENT_ENCODED.replace_all(s, |c: &Captures| {
        let decoded = percent_decode(&c[0]);
        let cleaned = redact_plain(&decoded);
        if cleaned == decoded { c[0].to_string() } else { cleaned }
    });
    redact_plain(&s)
}

/// [`redact`] without the percent-decoding step.
fn redact_plain(s: &str) -> String {
    let s = URL_IN_TEXT.replace_all(s, |c: &Captures| {
        let whole = c.get(0).expect("match");
        let rest = c.get(1).expect("group").start() - whole.start();
        hide_password(whole.as_str(), rest)
    });
    let s = redact_json_values(&s, &JSON_KEY, "\"");
    let s = redact_json_values(&s, &ESCAPED_JSON_KEY, "\\\"");
    let s = HEADER.replace_all(&s, format!("${{1}}${{2}}{REDACTED}").as_str());
    let s = BASIC.replace_all(&s, |c: &Captures| {
        // "basic auth" is prose; `Basic dXNlcjpwdw==` is `user:pw`.
        if decodes_to_user_and_password(&c[3]) { format!("{}{}{REDACTED}", &c[1], &c[2]) } else { c[0].to_string() }
    });
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
    let s = AWS_KEY_ID.replace_all(&s, REDACTED);
    let s = KEY_VALUE.replace_all(&s, |c: &Captures| {
        if is_secret_key(&c[1]) { format!("{}{}{REDACTED}", &c[1], &c[2]) } else { c[0].to_string() }
    });
    let s = HIGH_ENTROPY.replace_all(&s, |c: &Captures| {
        if looks_random(&c[0]) || looks_like_aws_secret_key(&c[0]) { REDACTED.to_string() } else { c[0].to_string() }
    });
    s.into_owned()
}

/// Redact a connection URL (database, Redis, a provider's) for an error
/// message or a log line: its password, secret query parameters and tokens.
///
/// The password is everything between the first `:` of the user info and the
/// last `@` of the URL, whatever it holds (`@`, `/`, `?`, `#`, spaces,
/// quotes: a raw password in a config file is not percent-encoded). Text
/// without `://` that holds an `@` (a mistyped scheme, `user:pw@host`) loses
/// everything between its first `:` and its last `@`.
pub fn redact_url(url: &str) -> String {
    let hidden = match url.find("://") {
        Some(i) => hide_password(url, i + 3),
        None => match (url.find(':'), url.rfind('@')) {
            (Some(colon), Some(at)) if colon < at => format!("{}{REDACTED}{}", &url[..=colon], &url[at..]),
            _ => url.to_string(),
        },
    };
    redact(&hidden)
}

/// `url` with the password of the user info that starts at byte `rest`
/// (after `scheme://`) replaced by [`REDACTED`] (see [`password_span`]).
fn hide_password(url: &str, rest: usize) -> String {
    match password_span(&url[rest..]) {
        Some((from, to)) => format!("{}{REDACTED}{}", &url[..rest + from], &url[rest + to..]),
        None => url.to_string(),
    }
}

/// Where the password is in what follows a URL's `scheme://`: from after the
/// first `:` of the user info to its last `@`. `None` without a password.
/// Not a password: an `@` after a path (`host/a:b@c`), and a port followed by
/// a path holding an `@` on a host that is named as one (with a `.`, `[`, or
/// `localhost`: `127.0.0.1:8080/users/ada@contoso.com`).
fn password_span(rest: &str) -> Option<(usize, usize)> {
    let at = rest.rfind('@')?;
    let colon = rest[..at].find(':')?;
    let (user, password) = (&rest[..colon], &rest[colon + 1..at]);
    if user.contains(['/', '?', '#']) {
        return None;
    }
    let port_digits = password.bytes().take_while(u8::is_ascii_digit).count();
    let port_then_path = (1..=5).contains(&port_digits) && password[port_digits..].starts_with(['/', '?', '#']);
    let host_like = user.contains(['.', '[']) || user.eq_ignore_ascii_case("localhost");
    if port_then_path && host_like {
        return None;
    }
    Some((colon + 1, at))
}

/// Replace the value of every secret-named JSON field that `key` finds in `s`
/// (a string, number, literal, array or object; `null` is kept) with
/// `"[REDACTED]"`. `quote` is `"`, or `\"` for JSON escaped in a string. A
/// value cut short (an excerpt) is redacted to the end of `s`.
fn redact_json_values(s: &str, key: &Regex, quote: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut pos = 0;
    while let Some(c) = key.captures_at(s, pos) {
        let m = c.get(0).expect("match");
        if !is_secret_key(&c[1]) {
            out.push_str(&s[pos..m.end()]);
            pos = m.end();
            continue;
        }
        let end = json_value_end(s, m.end(), quote);
        out.push_str(&s[pos..m.end()]);
        let value = &s[m.end()..end];
        if value.is_empty() || value == "null" {
            out.push_str(value);
        } else {
            out.push_str(&format!("{quote}{REDACTED}{quote}"));
        }
        pos = end;
    }
    out.push_str(&s[pos..]);
    out
}

/// The byte after the JSON value that starts at `from` in `s` (strings
/// delimited by `quote`); the end of `s` when the value is not closed.
fn json_value_end(s: &str, from: usize, quote: &str) -> usize {
    let b = s.as_bytes();
    let escaped = quote.len() == 2;
    let at_quote = |i: usize| b[i..].starts_with(quote.as_bytes());
    // The byte after the string that starts (at its opening quote) at `i`.
    let string_end = |mut i: usize| {
        i += quote.len();
        while i < b.len() {
            if escaped {
                if b[i] == b'\\' {
                    if b.get(i + 1) == Some(&b'"') {
                        return i + 2;
                    }
                    i += 2;
                    continue;
                }
            } else if b[i] == b'\\' {
                i += 2;
                continue;
            } else if b[i] == b'"' {
                return i + 1;
            }
            i += 1;
        }
        b.len()
    };
    match b.get(from) {
        None => from,
        Some(_) if at_quote(from) => string_end(from),
        Some(b'[' | b'{') => {
            let mut depth = 0usize;
            let mut i = from;
            while i < b.len() {
                if at_quote(i) {
                    i = string_end(i);
                    continue;
                }
                match b[i] {
                    b'[' | b'{' => depth += 1,
                    b']' | b'}' => {
                        depth -= 1;
                        if depth == 0 {
                            return i + 1;
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            b.len()
        }
        Some(_) => {
            let mut i = from;
            while i < b.len() && !matches!(b[i], b',' | b']' | b'}' | b'"' | b'\\') && !b[i].is_ascii_whitespace() {
                i += 1;
            }
            i
        }
    }
}

/// Decode `%XX` escapes, again while some remain (up to three times, for a
/// URL encoded into a parameter of another); bytes that are not UTF-8 become
/// U+FFFD.
fn percent_decode(s: &str) -> String {
    let mut text = s.to_string();
    for _ in 0..3 {
        let next = percent_encoding::percent_decode_str(&text).decode_utf8_lossy().into_owned();
        if next == text {
            break;
        }
        text = next;
    }
    text
}

/// Whether `s` is standard base64 of `user:password` (a Basic credential).
fn decodes_to_user_and_password(s: &str) -> bool {
    use base64::Engine as _;
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new()
            .with_decode_padding_mode(DecodePaddingMode::Indifferent)
            .with_decode_allow_trailing_bits(true),
    );
    LENIENT
        .decode(s)
        .is_ok_and(|bytes| bytes.contains(&b':') && bytes.iter().all(|b| (0x20..0x7f).contains(b) || *b >= 0x80))
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

/// Whether a key names a secret. Case, `-`, `.`, spaces and camelCase
/// (acronyms too: `DBPassword`, `AWSSecretKey`) are normalised to snake_case
/// first, so `clientSecret`, `X-Api-Key` and `client_secret` are all secret. A
/// name is secret when it is, or ends with (with or without a `_` before it),
/// one of: token, secret(s), password(s), passwd, pwd, passphrase, api_key,
/// authorization, private_key, access_key, secret_key, credential(s), bearer,
/// connection_string, sig, signature; `_` inside these is optional too. So
/// `access_token`, `accesstoken`, `refresh_token`, `client_secret`,
/// `clientsecret`, `apikey` and `x_amz_signature` are secret; `token_type`,
/// `max_tokens`, `dedup_key`, `sort_key` and `monkey` are not (a bare `key`
/// suffix is too common to refuse). Paging cursors are exempt: page_token,
/// next_token, skip_token, delta_token, continuation_token and sync_token
/// (with or without the `_`, and names ending with them, such as
/// `next_page_token` and `nextpagetoken`).
pub fn is_secret_key(name: &str) -> bool {
    let n = normalise_key(name).replace('_', "");
    let ends_with = |word: &str| n.ends_with(&word.replace('_', ""));
    if NOT_SECRET_NAMES.iter().any(|w| ends_with(w)) {
        return false;
    }
    SECRET_NAMES.iter().any(|w| ends_with(w))
}

/// The path of the first secret-named key (see [`is_secret_key`]) anywhere in
/// `v`, whatever its value (a string, a number, an array, an object), depth
/// first in key order: object keys joined with `.`, array items as `[i]`
/// (`auth.client_secret`, `targets[2].password`, `[0].token`). `None` when
/// there is none.
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

/// snake_case, lower case: `clientSecret` → `client_secret`,
/// `X-Api-Key` → `x_api_key`, `DBPassword` → `db_password`.
fn normalise_key(name: &str) -> String {
    let chars: Vec<char> = name.trim().chars().collect();
    let mut out = String::with_capacity(name.len() + 4);
    let mut prev_lower_or_digit = false;
    for (i, &ch) in chars.iter().enumerate() {
        if ch.is_ascii_uppercase() {
            // A word starts at an upper-case letter after a lower-case one
            // (`clientSecret`) or at the last capital of an acronym
            // (`DBPassword`: `DB` + `Password`).
            let prev_upper = i > 0 && chars[i - 1].is_ascii_uppercase();
            let next_lower = chars.get(i + 1).is_some_and(char::is_ascii_lowercase);
            if prev_lower_or_digit || (prev_upper && next_lower) {
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

/// Whether `s` is shaped like an AWS secret access key: 40 characters of
/// base64 (`/` and `+` included), mixed case with a digit, not a path (it
/// neither starts nor ends with `/`, has no empty segment and no segment of
/// only lower-case letters such as `users`).
fn looks_like_aws_secret_key(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 40
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'/' | b'+'))
        && b.iter().filter(|c| c.is_ascii_uppercase()).count() >= 3
        && b.iter().filter(|c| c.is_ascii_lowercase()).count() >= 3
        && b.iter().any(u8::is_ascii_digit)
        && s.split('/').all(|seg| !seg.is_empty() && !seg.bytes().all(|c| c.is_ascii_lowercase()))
}

/// `8-4-4-4-12` hex digits.
fn is_canonical_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups.iter().zip([8, 4, 4, 4, 12]).all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests;

//! Where a request goes and what of it is kept: request paths filled from
//! the run's scope (each value percent-encoded, dot segments refused), next
//! links found in a page and resolved against it, and the form of a next
//! link a checkpoint may store.

use oprun_shared::redact;
use reqwest::Url;
use reqwest::header::HeaderMap;
use serde_json::Value;

use crate::operation::{OperationError, RunContext};

/// Query parameters that sign or authorize a link (compared without case),
/// left out of a stored next link besides the secret-named ones
/// ([`redact::is_secret_key`]): Azure SAS, AWS SigV4, Google signed URLs.
const SIGNATURE_PARAMS: &[&str] = &[
    "sig",
    "signature",
    "x-amz-signature",
    "x-amz-credential",
    "x-amz-security-token",
    "x-goog-signature",
    "x-goog-credential",
];

/// Fill `{workspace}`, `{environment}`, `{target_type}`, `{target_id}` with
/// the run's scope (see [`fill_with`]).
pub(super) fn fill(template: &str, ctx: &RunContext) -> Result<String, OperationError> {
    let run = ctx.run();
    fill_with(
        template,
        &[
            ("{workspace}", Some(run.workspace_id.as_str())),
            ("{environment}", run.environment_id.as_deref()),
            ("{target_type}", run.target_type.as_deref()),
            ("{target_id}", run.target_id.as_deref()),
        ],
    )
    .map_err(OperationError::payload_invalid)
}

/// Fill placeholders, each value percent-encoded (so `/`, `?`, `#` and `%`
/// stay inside their segment), and refuse what would still change the path:
/// an empty value, or a path segment the values make `.` or `..` (URL
/// parsing resolves those, also as `%2e`, so `/devices/{target_id}/wipe`
/// with `..` would become `/wipe`).
pub(super) fn fill_with(template: &str, values: &[(&str, Option<&str>)]) -> Result<String, String> {
    let substitute = |part: &str| -> Result<String, String> {
        let mut out = part.to_string();
        for (key, value) in values {
            if out.contains(key) {
                let v = value.ok_or_else(|| format!("{key} is used but the run has none"))?;
                if v.is_empty() {
                    return Err(format!("{key} is empty, which would change the request path"));
                }
                out = out.replace(key, &url_escape(v));
            }
        }
        Ok(out)
    };
    let split = template.find(['?', '#']).unwrap_or(template.len());
    let (path, rest) = template.split_at(split);
    let mut segments = vec![];
    for segment in path.split('/') {
        let filled = substitute(segment)?;
        if filled != segment && is_dot_segment(&filled) {
            let used: Vec<String> = values
                .iter()
                .filter(|(key, _)| segment.contains(key))
                .map(|(key, v)| format!("{key} = '{}'", v.unwrap_or_default().escape_debug()))
                .collect();
            return Err(format!(
                "{} makes the path segment '{filled}', which would change the request path; refused",
                used.join(", ")
            ));
        }
        segments.push(filled);
    }
    Ok(segments.join("/") + &substitute(rest)?)
}

/// `.` or `..`, also percent-encoded (`%2e`, `.%2E`, …): what URL parsing
/// resolves as a dot segment.
fn is_dot_segment(segment: &str) -> bool {
    matches!(segment.to_ascii_lowercase().as_str(), "." | "%2e" | ".." | ".%2e" | "%2e." | "%2e%2e")
}

fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A request path from an operation's settings, under the base URL's path
/// (`/devices` under `https://h/v1.0` is `https://h/v1.0/devices`); an
/// absolute URL is taken as is (the caller checks its origin).
pub(super) fn path_url(base: &Url, path: &str) -> Result<Url, String> {
    if let Ok(url) = Url::parse(path) {
        return Ok(url);
    }
    let joined = format!("{}/{}", base.as_str().trim_end_matches('/'), path.trim_start_matches('/'));
    Url::parse(&joined).map_err(|e| format!("bad request path: {e}"))
}

/// A next link resolved as a URL reference (RFC 3986 section 5) against the
/// page that carried it: an absolute URL as is, `/v1.0/devices?page=2`
/// against the page's origin (never under the base path a second time),
/// `?page=2` or `devices?page=2` against the page itself.
pub(super) fn link_url(page: &Url, link: &str) -> Result<Url, String> {
    page.join(link).map_err(|e| format!("the next link is not a URL reference: {e}"))
}

/// A next link as a checkpoint keeps it (stored, and shown to admins): no
/// user info or fragment, no query parameter that is secret-named
/// ([`redact::is_secret_key`]: `access_token`, `client_secret`, …) or
/// signature-named ([`SIGNATURE_PARAMS`]: `sig`, `X-Amz-Signature`, …) or
/// whose value holds the provider token, and the token nowhere else.
/// Every other parameter (page numbers, `$skiptoken` cursors) is kept as
/// sent. Also returns the names of the parameters left out.
///
/// A resumed attempt requests the cleaned link with the bearer token: that
/// works where the token is what authorizes (a redundant `access_token`), not
/// where only the signature does; such a provider refuses the resumed
/// request, and the failure says which parameters were left out.
pub(super) fn storable_link(url: &Url, token: &str) -> (String, Vec<String>) {
    let mut clean = url.clone();
    let _ = clean.set_username("");
    let _ = clean.set_password(None);
    clean.set_fragment(None);
    let mut removed = vec![];
    if let Some(query) = url.query() {
        let kept: Vec<&str> = query
            .split('&')
            .filter(|pair| {
                let (name, value) = form_urlencoded::parse(pair.as_bytes()).next().unwrap_or_default();
                let bare = name.trim_start_matches('$');
                let secret = SIGNATURE_PARAMS.iter().any(|s| s.eq_ignore_ascii_case(bare))
                    || redact::is_secret_key(bare)
                    || (!token.is_empty() && value.contains(token));
                if secret {
                    removed.push(name.into_owned());
                }
                !secret
            })
            .collect();
        clean.set_query((!kept.is_empty()).then(|| kept.join("&")).as_deref());
    }
    let mut stored = clean.to_string();
    if !token.is_empty() && stored.contains(token) {
        stored = stored.replace(token, redact::REDACTED);
        removed.push("(the provider token in the path)".into());
    }
    (stored, removed)
}

/// The next link of a page: `@odata.nextLink` or `next` in the body, else a
/// `Link: <…>; rel="next"` header.
pub(super) fn next_link(body: &Value, headers: &HeaderMap) -> Option<String> {
    for key in ["@odata.nextLink", "next"] {
        if let Some(s) = body.get(key).and_then(Value::as_str).filter(|s| !s.is_empty()) {
            return Some(s.to_string());
        }
    }
    for v in headers.get_all(reqwest::header::LINK) {
        for part in v.to_str().ok()?.split(',') {
            let mut pieces = part.split(';');
            let target = pieces.next()?.trim();
            if pieces.any(|p| p.trim().replace(' ', "") == "rel=\"next\"" || p.trim() == "rel=next") {
                return Some(target.trim_start_matches('<').trim_end_matches('>').to_string());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn next_links_come_from_the_body_or_the_link_header() {
        let h = HeaderMap::new();
        assert_eq!(next_link(&json!({"@odata.nextLink": "https://x/a?p=2"}), &h).as_deref(), Some("https://x/a?p=2"));
        assert_eq!(next_link(&json!({"next": "/a?p=3"}), &h).as_deref(), Some("/a?p=3"));
        assert_eq!(next_link(&json!({"next": null}), &h), None);
        let mut h = HeaderMap::new();
        h.insert(reqwest::header::LINK, "</a?p=1>; rel=\"prev\", </a?p=4>; rel=\"next\"".parse().unwrap());
        assert_eq!(next_link(&json!({}), &h).as_deref(), Some("/a?p=4"));
    }

    #[test]
    fn placeholders_are_url_encoded() {
        assert_eq!(url_escape("a b/c"), "a%20b%2Fc");
    }

    const WIPE: &str = "/tenants/{environment}/devices/{target_id}/wipe";

    fn scope<'a>(env: &'a str, target: &'a str) -> [(&'static str, Option<&'a str>); 4] {
        [
            ("{workspace}", Some("contoso")),
            ("{environment}", Some(env)),
            ("{target_type}", None),
            ("{target_id}", Some(target)),
        ]
    }

    #[test]
    fn a_placeholder_value_cannot_change_the_request_path() {
        let base = Url::parse("https://graph.test/v1.0").unwrap();
        let path = |env: &str, target: &str| -> Result<String, String> {
            let filled = fill_with(WIPE, &scope(env, target))?;
            Ok(path_url(&base, &filled)?.path().to_string())
        };
        assert_eq!(path("contoso-prod", "dev-1").unwrap(), "/v1.0/tenants/contoso-prod/devices/dev-1/wipe");
        // `/`, `?`, `#`, `%` stay inside their segment.
        assert_eq!(path("contoso-prod", "a/../b").unwrap(), "/v1.0/tenants/contoso-prod/devices/a%2F..%2Fb/wipe");
        assert_eq!(path("contoso-prod", "x?y#z").unwrap(), "/v1.0/tenants/contoso-prod/devices/x%3Fy%23z/wipe");
        assert_eq!(path("contoso-prod", "%2e%2e").unwrap(), "/v1.0/tenants/contoso-prod/devices/%252e%252e/wipe");
        assert_eq!(path("contoso-prod", "a..").unwrap(), "/v1.0/tenants/contoso-prod/devices/a../wipe");
        // Dot segments and empty values, in every placeholder, are refused naming it.
        for (env, target, key) in [
            ("contoso-prod", "..", "{target_id} = '..'"),
            ("contoso-prod", ".", "{target_id} = '.'"),
            ("..", "dev-1", "{environment} = '..'"),
            (".", "dev-1", "{environment} = '.'"),
            ("contoso-prod", "", "{target_id} is empty"),
        ] {
            let e = path(env, target).unwrap_err();
            assert!(e.contains(key) && e.contains("request path"), "{env} {target}: {e}");
        }
        let ws = fill_with("/w/{workspace}/x", &[("{workspace}", Some(".."))]).unwrap_err();
        assert!(ws.contains("{workspace} = '..'"), "{ws}");
        let kind = fill_with("/k/{target_type}", &[("{target_type}", Some("."))]).unwrap_err();
        assert!(kind.contains("{target_type} = '.'"), "{kind}");
        // A value completing a dot segment the template starts is refused too.
        assert!(fill_with("/devices/.{target_id}", &[("{target_id}", Some("."))]).is_err());
        // The query part is filled, not checked for dot segments.
        assert_eq!(fill_with("/d?id={target_id}", &[("{target_id}", Some(".."))]).unwrap(), "/d?id=..");
        assert!(fill_with("/d/{target_id}", &[("{target_id}", None)]).unwrap_err().contains("the run has none"));
    }

    #[test]
    fn next_links_resolve_as_url_references_against_the_page() {
        let page = Url::parse("https://h.test/v1.0/devices?page=1").unwrap();
        let at = |link: &str| link_url(&page, link).unwrap().to_string();
        assert_eq!(at("/v1.0/devices?page=2"), "https://h.test/v1.0/devices?page=2", "not /v1.0/v1.0");
        assert_eq!(at("https://h.test/v1.0/devices?page=3"), "https://h.test/v1.0/devices?page=3");
        assert_eq!(at("?page=4"), "https://h.test/v1.0/devices?page=4");
        assert_eq!(at("devices?page=5"), "https://h.test/v1.0/devices?page=5");
        // Another origin is resolved (and then refused by the origin check).
        assert_eq!(
            link_url(&page, "//evil.test/x").unwrap().origin(),
            Url::parse("https://evil.test").unwrap().origin()
        );
        // A settings path stays under the base path.
        let base = Url::parse("https://h.test/v1.0").unwrap();
        assert_eq!(path_url(&base, "/devices").unwrap().as_str(), "https://h.test/v1.0/devices");
        assert_eq!(path_url(&base, "devices").unwrap().as_str(), "https://h.test/v1.0/devices");
    }

    #[test]
    fn a_stored_next_link_keeps_its_cursor_without_the_token_or_signatures() {
        let token = "tok-canary-1234567890";
        let link = Url::parse(&format!(
            "https://user:pw@h.test/v1.0/devices?page=2&access_token={token}&sig=abc%2Bdef&X-Amz-Signature=f00d\
             &X-Amz-Credential=AKIA%2F2026&client_secret=s3&code_challenge=x&$skiptoken=Z2V0&$top=100\
             &other=has-{token}-inside&%73ig=encoded#frag"
        ))
        .unwrap();
        let (stored, removed) = storable_link(&link, token);
        assert_eq!(stored, "https://h.test/v1.0/devices?page=2&code_challenge=x&$skiptoken=Z2V0&$top=100");
        assert_eq!(
            removed,
            ["access_token", "sig", "X-Amz-Signature", "X-Amz-Credential", "client_secret", "other", "sig"]
        );
        // A link without secrets is kept as sent.
        let plain = Url::parse("https://h.test/v1.0/devices?page=2&$skiptoken=abc").unwrap();
        assert_eq!(storable_link(&plain, token), (plain.to_string(), vec![]));
        // The token in the path is replaced.
        let in_path = Url::parse(&format!("https://h.test/t/{token}/devices")).unwrap();
        let (stored, removed) = storable_link(&in_path, token);
        assert_eq!(stored, "https://h.test/t/[REDACTED]/devices");
        assert_eq!(removed.len(), 1);
    }
}

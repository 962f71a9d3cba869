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
        "design: blue-green, signal=3, assignee: ada",
        "signature verified",
        "basic auth is not supported; use Basic scheme",
        "GET http://127.0.0.1:43210/v1.0/users?%24top=100&%24skiptoken=abc failed: 404",
        "progress 100% done, 50%ff",
        r#"{"token_type": "Bearer", "expires_in": 3599, "scope": ["a", "b"], "page_token": {"n": 2}}"#,
        "next_page_token=p-2 nextpagetoken=p-3 skiptoken=p-4",
    ] {
        assert_eq!(redact(text), text);
    }
}

#[test]
fn redaction_is_idempotent() {
    for text in [
        "password=hunter2 Authorization: Bearer abcdefgh12345678",
        "postgres://app:p@s/s?w#d@db:5432/oprun",
        r#"{"password": 12345678, "client_secret": ["x", {"y": 1}], "a": 1}"#,
        "state=access%5Ftoken%3Dabc123&next=%252Fcb%253Fpassword%253Dhunter2",
        "authorization=Basic dXNlcjpodW50ZXIy AKIAIOSFODNN7EXAMPLE wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "https://acct.blob.core.windows.net/c?sv=2022-11-02&sig=N8jn%2BvP6Nj%3D",
    ] {
        let once = redact(text);
        assert_eq!(redact(&once), once, "{text}");
        assert_eq!(redact_url(&redact_url(text)), redact_url(text), "{text}");
    }
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

// ---- Shapes that used to survive (issue 20) ----

/// `redact_url` must hide every character of `password` in `url`, and
/// keep the scheme and the host.
fn assert_url_password_hidden(url: &str, password: &str, host: &str) {
    for out in [redact_url(url), redact(&format!("cannot open the store {url}: invalid port number"))] {
        for piece in password.split(['@', '/', '?', '#']).filter(|p| p.len() >= 3) {
            assert!(!out.contains(piece), "password piece {piece:?} survived in {out:?}");
        }
        assert!(out.contains(REDACTED), "no redaction marker in {out:?}");
        assert!(out.contains(host), "host {host:?} lost in {out:?}");
    }
}

#[test]
fn a_url_password_containing_an_at_sign_is_hidden_whole() {
    assert_url_password_hidden("postgres://app:hun@ter2tail@db:5432/oprun", "hun@ter2tail", "db:5432/oprun");
    assert_eq!(redact_url("postgres://app:p@ss@db:5432/oprun"), "postgres://app:[REDACTED]@db:5432/oprun");
    assert_url_password_hidden("redis://:r3dis@pw9x@cache:6379/0", "r3dis@pw9x", "cache:6379/0");
}

#[test]
fn a_url_password_containing_a_slash_is_hidden_whole() {
    assert_url_password_hidden("postgres://app:hun/ter2tail@db:5432/oprun", "hun/ter2tail", "db:5432/oprun");
    assert_url_password_hidden("postgres://app:1234/tail99@db/oprun", "1234/tail99", "db/oprun");
}

#[test]
fn a_url_password_containing_a_question_mark_is_hidden_whole() {
    assert_url_password_hidden("postgres://app:hun?ter2tail@db:5432/oprun", "hun?ter2tail", "db:5432/oprun");
}

#[test]
fn a_url_password_containing_a_hash_is_hidden_whole() {
    assert_url_password_hidden("postgres://app:hun#ter2tail@db:5432/oprun", "hun#ter2tail", "db:5432/oprun");
}

#[test]
fn a_url_that_does_not_parse_at_all_keeps_no_password() {
    for (url, secret) in [
        ("app:s3cr3tpw@db:5432/oprun", "s3cr3tpw"),
        ("postgress//app:s3cr3tpw@db/oprun", "s3cr3tpw"),
        ("postgres://app:s3cr3t pw@db/oprun", "cr3t pw"),
        ("postgres://app:s3c\"r3tpw@db/oprun", "r3tpw"),
    ] {
        let out = redact_url(url);
        assert!(!out.contains(secret), "{secret:?} survived in {out:?}");
        assert!(out.contains("db"), "host lost in {out:?}");
    }
    assert_eq!(redact_url("not a url at all"), "not a url at all");
    assert_eq!(redact_url("postgres://app@db/oprun"), "postgres://app@db/oprun");
}

#[test]
fn url_ports_and_addresses_in_paths_are_not_taken_for_passwords() {
    for text in [
        "GET http://127.0.0.1:43210/v1.0/users/ada@contoso.com failed",
        "https://graph.example.com/v1.0/users/ada@contoso.com",
        "mailto:ada@contoso.com",
    ] {
        assert_eq!(redact(text), text);
    }
}

#[test]
fn secret_json_fields_with_number_values_are_redacted() {
    let out = redact(r#"{"password": 12345678, "user_id": 42, "pin":1}"#);
    assert!(!out.contains("12345678"), "{out}");
    assert!(out.contains(r#""user_id": 42"#), "{out}");
    let out = redact(r#"{"api_key":-9.5e3,"otp_secret": true}"#);
    assert!(!out.contains("9.5e3") && !out.contains("true"), "{out}");
}

#[test]
fn secret_json_fields_with_array_values_are_redacted() {
    let out = redact(r#"{"client_secret": ["cs-one", "cs-two"], "scopes": ["a"]}"#);
    assert!(!out.contains("cs-one") && !out.contains("cs-two"), "{out}");
    assert!(out.contains(r#""scopes": ["a"]"#), "{out}");
    assert!(serde_json::from_str::<serde_json::Value>(&out).is_ok(), "not JSON any more: {out}");
}

#[test]
fn secret_json_fields_with_object_values_are_redacted() {
    let out = redact(r#"{"credentials": {"user": "u", "pass": "nested-pw", "list": [{"k": "]}"}]}, "after": 1}"#);
    assert!(!out.contains("nested-pw") && !out.contains(r#""k""#), "{out}");
    assert!(out.contains(r#""after": 1"#), "{out}");
    assert!(serde_json::from_str::<serde_json::Value>(&out).is_ok(), "not JSON any more: {out}");
    // Cut short (an excerpt): everything after the key goes.
    let out = redact(r#"body: {"private_key": {"d": "cut-off-secret"#);
    assert!(!out.contains("cut-off-secret"), "{out}");
}

#[test]
fn secret_fields_with_non_string_values_in_json_escaped_inside_a_string_are_redacted() {
    let msg = r#"provider body: "{\"error\":\"x\",\"password\":87654321,\"client_secret\":[\"cs-88\"]}""#;
    let out = redact(msg);
    assert!(!out.contains("87654321") && !out.contains("cs-88"), "{out}");
    assert!(out.contains(r#"\"error\":\"x\""#), "{out}");
}

#[test]
fn secret_json_values_holding_multibyte_text_are_redacted_without_a_panic() {
    for (text, secret) in [
        (r#"{"password": ["é-sécret", {"ü": "ß\"]"}], "x": "é"}"#, "sécret"),
        (r#"body "{\"password\":[\"é-sécret\",{\"ü\":1}]}""#, "sécret"),
        (r#"{"token": {"é": "sécret""#, "sécret"),
        (r#"{"token": ["sécret\"#, "sécret"),
        ("{\"password\": é-sécret}", "sécret"),
        (r#"{"token": [é, "sécret"]} and [ü]"#, "sécret"),
    ] {
        let out = redact(text);
        assert!(!out.contains(secret), "{secret:?} survived in {out:?}");
    }
}

#[test]
fn any_mix_of_secret_shaped_fragments_is_redacted_without_a_panic_within_the_bounds() {
    // A fixed-seed generator (xorshift): the same 5,000 texts every run.
    const FRAGMENTS: &[&str] = &[
        "\"password\"",
        "\\\"token\\\"",
        ": ",
        ":",
        "=",
        "\"",
        "\\\"",
        "\\",
        "[",
        "]",
        "{",
        "}",
        ",",
        " ",
        "\n",
        "é",
        "ß",
        "ü",
        "12345678",
        "true",
        "null",
        "%3D",
        "%5F",
        "%25",
        "%",
        "access",
        "_token",
        "api",
        "key",
        "@",
        "://",
        "postgres",
        "app:",
        "pw",
        "/",
        "?",
        "#",
        "Basic ",
        "YWRhOnMzY3IzdA==",
        "Bearer ",
        "AKIA",
        "IOSFODNN7EXAMPLE",
        "sig=",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "eyJhbGciOi.eyJzdWIi.c2ln",
        "x",
    ];
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..5_000 {
        let len = 1 + next() % 24;
        let text: String = (0..len).map(|_| FRAGMENTS[(next() % FRAGMENTS.len() as u64) as usize]).collect();
        // A second pass may take more (a redacted value glued to what
        // follows), never less: it only ever replaces.
        let _ = redact(&redact(&text));
        let _ = redact_url(&text);
        assert!(sanitize(&text).len() <= MAX_MESSAGE_LEN);
        assert!(excerpt(&text, 7).chars().count() <= 7);
    }
}

#[test]
fn find_secret_key_finds_secret_keys_whatever_their_value() {
    assert_eq!(find_secret_key(&json!({"password": 12345678})).as_deref(), Some("password"));
    assert_eq!(find_secret_key(&json!({"a": {"client_secret": ["x"]}})).as_deref(), Some("a.client_secret"));
    assert_eq!(find_secret_key(&json!({"credentials": {"user": "u"}})).as_deref(), Some("credentials"));
    assert_eq!(find_secret_key(&json!({"token": null})).as_deref(), Some("token"));
}

#[test]
fn secret_key_names_without_a_separator_are_recognised() {
    for k in [
        "apitoken",
        "accesstoken",
        "clientsecret",
        "privatekey",
        "DBPassword",
        "AWSSecretKey",
        "awssecretaccesskey",
        "APIToken",
        "IDToken",
        "refreshtoken",
        "dbpasswd",
    ] {
        assert!(is_secret_key(k), "{k} should be secret");
    }
    for k in ["nextpagetoken", "skiptoken", "deltatoken", "monkey", "hotkey", "secretary", "passwordpolicy"] {
        assert!(!is_secret_key(k), "{k} should not be secret");
    }
}

#[test]
fn find_secret_key_refuses_secret_names_without_a_separator() {
    for k in ["apitoken", "accesstoken", "clientsecret", "privatekey", "DBPassword", "AWSSecretKey"] {
        let v = json!({"device": {"id": "d-1", k: "x"}});
        assert_eq!(find_secret_key(&v), Some(format!("device.{k}")), "{k}");
    }
}

#[test]
fn key_value_pairs_with_secret_names_without_a_separator_are_redacted() {
    for k in ["apitoken", "accesstoken", "clientsecret", "privatekey", "DBPassword", "AWSSecretKey"] {
        assert_hidden(&format!("config: {k}=hunter2value"), "hunter2value");
        assert_hidden(&format!("{k}: hunter2value"), "hunter2value");
        assert_hidden(&format!(r#"{{"{k}": "hunter2value"}}"#), "hunter2value");
    }
}

#[test]
fn aws_access_key_ids_are_redacted() {
    assert_hidden("key AKIAIOSFODNN7EXAMPLE was refused", "AKIAIOSFODNN7EXAMPLE");
    assert_hidden("temporary ASIAY34FZKBOKMUTVV7A expired", "ASIAY34FZKBOKMUTVV7A");
    assert_hidden("id=AKIAIOSFODNN7EXAMPLE,", "AKIAIOSFODNN7EXAMPLE");
}

#[test]
fn aws_secret_access_keys_containing_a_slash_are_redacted() {
    let key = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    assert_hidden(&format!("signing with {key} failed"), "bPxRfiCYEXAMPLEKEY");
    assert_hidden("secret 8fJ2k/LmN0pQ+rStUvWx/Yz1AbCdEfGhIjKl/Mno", "8fJ2k/LmN0pQ");
}

#[test]
fn authorization_basic_in_a_key_value_pair_is_redacted() {
    assert_hidden("request authorization=Basic dXNlcjpodW50ZXIy refused", "dXNlcjpodW50ZXIy");
    assert_hidden("authorization: basic dXNlcjpodW50ZXIy", "dXNlcjpodW50ZXIy");
    assert_hidden("proxy_authorization=Basic YWRhOnMzY3IzdA== sent", "YWRhOnMzY3IzdA");
    assert_hidden("sent Basic YWRhOnMzY3IzdA== to the proxy", "YWRhOnMzY3IzdA");
    assert_eq!(redact("basic auth is not supported"), "basic auth is not supported");
}

#[test]
fn percent_encoded_secret_key_value_pairs_are_redacted() {
    assert_hidden("state=access%5Ftoken%3Dabc123&x=1", "abc123");
    assert_hidden("next=%2Fcb%3Fpassword%3Dhunter2%26page%3D2", "hunter2");
    assert_hidden("redirect=https%253A%252F%252Fx%252Fcb%253Fclient_secret%253Dcs-double", "cs-double");
    assert_hidden("q=api%5Fkey%3Ak-5555", "k-5555");
    let plain = "GET /v1.0/users?%24filter=startswith(displayName%2C%27ada%27)&%24top=100";
    assert_eq!(redact(plain), plain);
}

#[test]
fn azure_sas_signatures_are_redacted() {
    let url = "https://acct.blob.core.windows.net/c/b?sv=2022-11-02&ss=b&srt=o&sp=r&se=2026-01-01T00:00:00Z&sig=N8jn%2BvP6Nj%3D";
    let out = redact(url);
    assert!(!out.contains("N8jn"), "{out}");
    assert!(out.contains("sv=2022-11-02&ss=b&srt=o&sp=r"), "{out}");
    assert_hidden("sig=abcDEF123short&se=x", "abcDEF123short");
    assert_hidden("X-Amz-Signature=3f1a9b2c", "3f1a9b2c");
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

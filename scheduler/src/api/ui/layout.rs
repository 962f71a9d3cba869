//! The page shell and the pieces every page shows: a status that is a word
//! and a colour, a time (UTC in the page, the viewer's zone once the script
//! runs, UTC on hover), a form's CSRF field.

use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, html};
use oprun_shared::{RunOutcome, RunStatus};

/// The stylesheet, embedded.
pub const CSS: &str = include_str!("assets/app.css");
/// The progressive script (local times, live refresh, confirmations).
pub const JS: &str = include_str!("assets/app.js");

/// Who is looking, for the shell.
pub struct Chrome<'a> {
    /// The actor signed in (`None` on the sign-in page).
    pub actor: Option<&'a str>,
    /// The session's CSRF token (for the sign-out form).
    pub csrf: &'a str,
    /// Which nav entry is current.
    pub current: &'a str,
}

/// A whole page.
pub fn page(title: &str, chrome: &Chrome<'_>, live: bool, body: Markup) -> Markup {
    let nav = [
        ("overview", "/ui", "Overview"),
        ("runs", "/ui/runs", "Runs"),
        ("schedules", "/ui/schedules", "Schedules"),
        ("reconcile", "/ui/reconcile", "Reconcile"),
        ("bulk", "/ui/bulk", "Bulk actions"),
    ];
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · oprun" }
                link rel="stylesheet" href="/ui/assets/app.css";
                script src="/ui/assets/app.js" defer {}
            }
            body {
                header.top {
                    a.brand href="/ui" { "oprun" }
                    @if let Some(actor) = chrome.actor {
                        nav {
                            @for (key, href, label) in nav {
                                @if key == chrome.current { a.current href=(href) aria-current="page" { (label) } }
                                @else { a href=(href) { (label) } }
                            }
                        }
                        form.signout method="post" action="/ui/sign-out" {
                            (csrf_field(chrome.csrf))
                            span.actor { "Signed in as " strong #actor { (actor) } }
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main data-live=[live.then_some("5")] {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// The hidden CSRF field of a form.
pub fn csrf_field(csrf: &str) -> Markup {
    html! { input type="hidden" name="csrf" value=(csrf); }
}

/// A time: UTC in the page and on hover, the viewer's zone once the script runs.
pub fn time(at: DateTime<Utc>) -> Markup {
    let utc = at.format("%Y-%m-%d %H:%M:%S UTC").to_string();
    html! { time datetime=(at.to_rfc3339()) title=(utc) { (utc) } }
}

/// An optional time, or a dash.
pub fn opt_time(at: Option<DateTime<Utc>>) -> Markup {
    match at {
        Some(at) => time(at),
        None => html! { "–" },
    }
}

/// A run's state as a badge: the word carries it, the colour repeats it.
pub fn state(status: RunStatus, outcome: RunOutcome) -> Markup {
    let (word, tone) = match (status, outcome) {
        (RunStatus::Queued, _) => ("queued", "info"),
        (RunStatus::Running, _) => ("running", "info"),
        (_, RunOutcome::Succeeded) => ("succeeded", "ok"),
        (_, RunOutcome::PartiallySucceeded) => ("partially succeeded", "warn"),
        (_, RunOutcome::Blocked) => ("blocked", "bad"),
        (_, RunOutcome::Failed) => ("failed", "bad"),
        (_, RunOutcome::Cancelled) => ("cancelled", "muted"),
        (_, RunOutcome::Pending) => ("no outcome", "warn"),
    };
    badge(word, tone)
}

/// A word in a coloured badge.
pub fn badge(word: &str, tone: &str) -> Markup {
    html! { span class={ "badge " (tone) } { (word) } }
}

/// A severity as a badge.
pub fn severity(s: oprun_shared::Severity) -> Markup {
    let (word, tone) = match s {
        oprun_shared::Severity::Critical => ("critical", "bad"),
        oprun_shared::Severity::Warning => ("warning", "warn"),
        oprun_shared::Severity::Info => ("info", "info"),
        oprun_shared::Severity::Success => ("success", "ok"),
    };
    badge(word, tone)
}

/// A short form of a run id that links to the run.
pub fn run_link(id: uuid::Uuid) -> Markup {
    let s = id.to_string();
    html! { a.mono href={ "/ui/runs/" (s) } title=(s) { (s[..8]) "…" (s[s.len() - 4..]) } }
}

/// A notice (for errors and results).
pub fn notice(tone: &str, text: &str) -> Markup {
    html! { p class={ "notice " (tone) } role="status" { (text) } }
}

/// Preformatted JSON.
pub fn json(v: &serde_json::Value) -> Markup {
    let text = serde_json::to_string_pretty(v).unwrap_or_default();
    html! { pre.json { (text) } }
}

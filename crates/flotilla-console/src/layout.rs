//! The page shell, navigation, pager and small formatting helpers.

use chrono::{DateTime, Utc};
use maud::{html, Markup, DOCTYPE};

use flotilla_store::{Page, Paged};

use crate::auth::{csrf_field, Session};
use crate::BASE;

/// The sections in the navigation bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Nav {
    Overview,
    Agents,
    Policies,
    Integrations,
    Tokens,
    Data,
    Tasks,
    Connectors,
    Settings,
}

const SECTIONS: [(Nav, &str, &str); 9] = [
    (Nav::Overview, "", "Overview"),
    (Nav::Agents, "/agents", "Agents"),
    (Nav::Policies, "/policies", "Policies"),
    (Nav::Integrations, "/integrations", "Integrations"),
    (Nav::Tokens, "/tokens", "Enrollment tokens"),
    (Nav::Data, "/data", "Data"),
    (Nav::Tasks, "/tasks", "Tasks"),
    (Nav::Connectors, "/connectors", "Cloud connectors"),
    (Nav::Settings, "/settings", "Settings"),
];

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            meta name="referrer" content="no-referrer";
            title { (title) " · Flotilla" }
            link rel="stylesheet" href={(BASE) "/assets/console.css"};
            script src={(BASE) "/assets/console.js"} defer {}
        }
    }
}

/// A page for a signed-out browser (sign-in, errors): no navigation.
pub(crate) fn bare(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body { (body) }
        }
    }
}

/// A signed-in page: skip link, navigation, sign-out, the content.
pub(crate) fn page(session: &Session, current: Nav, title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                a .skip href="#main" { "Skip to content" }
                header .top {
                    a .brand href=(BASE) { "Flotilla" }
                    nav aria-label="Sections" {
                        ul {
                            @for (nav, path, label) in SECTIONS {
                                li {
                                    a href={(BASE) (path)} aria-current=[(nav == current).then_some("page")] { (label) }
                                }
                            }
                        }
                    }
                    form .sign-out method="post" action={(BASE) "/sign-out"} {
                        (csrf_field(session))
                        span .who { "Signed in as " strong { (session.operator_name()) } }
                        button type="submit" .secondary { "Sign out" }
                    }
                }
                main #main tabindex="-1" {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// A query string from pairs, empty values left out.
pub(crate) fn query(pairs: &[(&str, &str)]) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        if !v.is_empty() {
            q.append_pair(k, v);
        }
    }
    let q = q.finish();
    if q.is_empty() {
        q
    } else {
        format!("?{q}")
    }
}

/// Page links under a table: previous, where we are, next.
pub(crate) fn pager<T>(
    path: &str,
    filters: &[(&str, &str)],
    page: Page,
    paged: &Paged<T>,
) -> Markup {
    pager_with(path, filters, "page", page, paged)
}

/// [`pager`] with its own page parameter, for one of several tables on a
/// page.
pub(crate) fn pager_with<T>(
    path: &str,
    filters: &[(&str, &str)],
    param: &str,
    page: Page,
    paged: &Paged<T>,
) -> Markup {
    let pages = paged.total.div_ceil(u64::from(page.per_page.max(1))).max(1);
    let at = u64::from(page.page);
    let link = |n: u64| {
        let n = n.to_string();
        let mut pairs = filters.to_vec();
        pairs.push((param, &n));
        format!("{BASE}{path}{}", query(&pairs))
    };
    html! {
        nav .pager aria-label="Pages" {
            @if at > 1 {
                a href=(link(at - 1)) rel="prev" { "← Previous" }
            }
            span { "Page " (at) " of " (pages) " · " (paged.total) " in all" }
            @if at < pages {
                a href=(link(at + 1)) rel="next" { "Next →" }
            }
        }
    }
}

/// A page number from a query parameter: at least 1, junk counts as 1.
pub(crate) fn page_number(raw: Option<&str>, per_page: u32) -> Page {
    let page = raw
        .and_then(|p| p.parse::<u32>().ok())
        .filter(|p| *p >= 1)
        .unwrap_or(1)
        .min(1_000_000);
    Page { page, per_page }
}

pub(crate) fn when(t: DateTime<Utc>) -> Markup {
    html! { time datetime=(t.to_rfc3339()) { (t.format("%Y-%m-%d %H:%M:%S UTC")) } }
}

pub(crate) fn when_opt(t: Option<DateTime<Utc>>) -> Markup {
    match t {
        Some(t) => when(t),
        None => html! { span .muted { "never" } },
    }
}

/// A status as a labelled badge (text, not colour alone, carries it).
pub(crate) fn status_badge(status: &str) -> Markup {
    html! { span class={"badge status-" (status)} { (status) } }
}

/// A non-empty trimmed query value.
pub(crate) fn nonempty(v: &Option<String>) -> Option<String> {
    v.as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_leave_out_empty_values_and_escape() {
        assert_eq!(query(&[("a", ""), ("b", "")]), "");
        assert_eq!(query(&[("tag", "a&b c"), ("x", "")]), "?tag=a%26b+c");
    }

    #[test]
    fn page_numbers_are_lenient() {
        assert_eq!(page_number(Some("3"), 20).page, 3);
        assert_eq!(page_number(Some("0"), 20).page, 1);
        assert_eq!(page_number(Some("x"), 20).page, 1);
        assert_eq!(page_number(None, 20).page, 1);
    }
}

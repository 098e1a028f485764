//! The console over HTTP, in process: sign-in and its cookie, refusals
//! when signed out, cross-site and CSRF-less posts, expiry on a manual
//! clock, sign-out and key revocation, a token's secret shown once.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::response::Response;
use axum::Router;
use chrono::{TimeZone, Utc};
use http_body_util::BodyExt;
use secrecy::SecretString;
use tower::ServiceExt;

use flotilla_api::management::CreateOperatorKey;
use flotilla_console::{ConsoleSettings, ConsoleState, SESSION_COOKIE};
use flotilla_service::crypto::Sealer;
use flotilla_service::tasks::{Clock, ManualClock};
use flotilla_service::{FleetSettings, Services};

const ADMIN_KEY: &str = "console-test-admin-key-0123456789abcdef";
const HOST: &str = "console.test:8220";
const ORIGIN: &str = "http://console.test:8220";

struct Fixture {
    app: Router,
    services: Services,
    /// Only to put documents in, as `_bulk` would.
    store: Arc<dyn flotilla_store::Store>,
    clock: Arc<ManualClock>,
    _dir: tempfile::TempDir,
}

async fn fixture_with(settings: ConsoleSettings) -> Fixture {
    fixture_full(settings, false).await
}

/// With a task manager on the console (its registry the built-in types;
/// nothing runs it: tests write task outcomes through the store).
async fn fixture_with_tasks() -> Fixture {
    fixture_full(ConsoleSettings::default(), true).await
}

async fn fixture_full(settings: ConsoleSettings, tasks: bool) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = flotilla_store_sql::open(flotilla_store_sql::Location::DataDir(dir.path()))
        .await
        .unwrap();
    let services = Services::new(
        store.clone(),
        FleetSettings::default(),
        Sealer::from_secret(b"test key for the console tests"),
    );
    services
        .management()
        .bootstrap(
            Some(&SecretString::from(ADMIN_KEY)),
            "http://127.0.0.1:8220",
        )
        .await
        .unwrap();
    let clock = Arc::new(ManualClock::new(
        Utc.with_ymd_and_hms(2026, 12, 3, 12, 0, 0).unwrap(),
    ));
    let mut state = ConsoleState::new(services.clone(), settings).with_clock(clock.clone());
    if tasks {
        let strategy = Arc::new(flotilla_service::tasks::keys::KeyStrategy {
            grant_secondary: false,
            use_key: flotilla_store::KeyProvider::Primary,
            secondary: None,
        });
        let registry =
            flotilla_service::tasks::builtin::registry(&Default::default(), strategy.clone());
        state = state.with_tasks(Some(flotilla_service::tasks::TaskManager::new(
            services.clone(),
            registry,
            clock.clone(),
            Default::default(),
            strategy,
        )));
    }
    let app = Router::new().nest(flotilla_console::BASE, flotilla_console::router(state));
    Fixture {
        app,
        services,
        store,
        clock,
        _dir: dir,
    }
}

async fn fixture() -> Fixture {
    fixture_with(ConsoleSettings::default()).await
}

async fn send(app: &Router, req: Request<Body>) -> Response {
    app.clone().oneshot(req).await.unwrap()
}

async fn text(res: Response) -> String {
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

fn get(path: &str, cookie: Option<&str>) -> Request<Body> {
    let mut b = Request::get(path).header(header::HOST, HOST);
    if let Some(c) = cookie {
        b = b.header(header::COOKIE, format!("{SESSION_COOKIE}={c}"));
    }
    b.body(Body::empty()).unwrap()
}

/// A form post as a browser on this origin sends it.
fn post(path: &str, cookie: Option<&str>, form: &[(&str, &str)]) -> Request<Body> {
    post_from(
        path,
        cookie,
        form,
        &[("origin", ORIGIN), ("sec-fetch-site", "same-origin")],
    )
}

fn post_from(
    path: &str,
    cookie: Option<&str>,
    form: &[(&str, &str)],
    headers: &[(&str, &str)],
) -> Request<Body> {
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    let mut b = Request::post(path)
        .header(header::HOST, HOST)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    if let Some(c) = cookie {
        b = b.header(header::COOKIE, format!("{SESSION_COOKIE}={c}"));
    }
    b.body(Body::from(body)).unwrap()
}

/// Sign in; the session id and the cookie header as sent.
async fn sign_in(f: &Fixture, key: &str) -> (String, String) {
    let res = send(&f.app, post("/app/sign-in", None, &[("api_key", key)])).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(res.headers()[header::LOCATION], "/app");
    let cookie = res.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_owned();
    let id = cookie
        .strip_prefix(&format!("{SESSION_COOKIE}="))
        .and_then(|rest| rest.split(';').next())
        .unwrap()
        .to_owned();
    (id, cookie)
}

/// The CSRF token a page's forms carry.
fn csrf_of(page: &str) -> String {
    let at = page.find(r#"name="csrf" value=""#).expect("a CSRF field") + 19;
    page[at..at + page[at..].find('"').unwrap()].to_owned()
}

async fn csrf(f: &Fixture, session: &str) -> String {
    let res = send(&f.app, get("/app", Some(session))).await;
    assert_eq!(res.status(), StatusCode::OK);
    csrf_of(&text(res).await)
}

const PAGES: &[&str] = &[
    "/app",
    "/app/agents",
    "/app/agents/some-agent",
    "/app/policies",
    "/app/policies/new",
    "/app/policies/some-policy",
    "/app/policies/some-policy/edit",
    "/app/tokens",
    "/app/integrations",
    "/app/integrations/nginx",
    "/app/integrations/nginx/add",
    "/app/data",
    "/app/data/logs-x-default",
    "/app/data/logs-x-default/tail",
    "/app/settings",
    "/app/settings/outputs/some-output",
    "/app/actions",
    "/app/actions/some-action",
    "/app/tasks",
    "/app/connectors",
];

const POSTS: &[&str] = &[
    "/app/sign-out",
    "/app/policies",
    "/app/policies/some-policy",
    "/app/tokens",
    "/app/tokens/some-token/revoke",
    "/app/agents/bulk",
    "/app/integrations/upload",
    "/app/integrations/nginx/add",
    "/app/tasks/some-task/run",
    "/app/tasks/some-task/disable",
    "/app/connectors/some-connector/verify",
    "/app/settings/outputs",
    "/app/settings/outputs/some-output",
    "/app/settings/outputs/some-output/delete",
    "/app/settings/keys",
    "/app/settings/keys/some-key/revoke",
];

#[tokio::test]
async fn a_signed_out_browser_sees_only_the_sign_in_page() {
    let f = fixture().await;
    for cookie in [None, Some("not0a0live0session")] {
        for path in PAGES {
            let res = send(&f.app, get(path, cookie)).await;
            assert_eq!(res.status(), StatusCode::SEE_OTHER, "{path}");
            assert_eq!(res.headers()[header::LOCATION], "/app/sign-in", "{path}");
            assert_eq!(res.headers()[header::CACHE_CONTROL], "no-store");
            assert!(text(res).await.is_empty(), "{path}: no content");
        }
        for path in POSTS {
            let res = send(&f.app, post(path, cookie, &[("csrf", "x"), ("name", "p")])).await;
            assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{path}");
            let body = text(res).await;
            assert!(!body.contains("Sign out"), "{path}: no signed-in page");
        }
    }
    // The sign-in page and the assets are all there is.
    let res = send(&f.app, get("/app/sign-in", None)).await;
    assert_eq!(res.status(), StatusCode::OK);
    let page = text(res).await;
    assert!(page.contains(r#"type="password" name="api_key""#));
    assert!(!page.contains("csrf"));
    for asset in ["/app/assets/console.css", "/app/assets/console.js"] {
        assert_eq!(
            send(&f.app, get(asset, None)).await.status(),
            StatusCode::OK
        );
    }
    assert_eq!(
        send(&f.app, get("/app/assets/other", None)).await.status(),
        StatusCode::NOT_FOUND
    );
    // Nothing was created by the refused posts.
    let policies = f
        .services
        .management()
        .list_policies(&Default::default(), Default::default())
        .await
        .unwrap();
    assert_eq!(policies.total, 0);
}

#[tokio::test]
async fn sign_in_sets_a_strict_http_only_expiring_cookie() {
    let f = fixture().await;
    let res = send(&f.app, post("/app/sign-in", None, &[("api_key", "wrong")])).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert!(res.headers().get(header::SET_COOKIE).is_none());
    assert!(text(res).await.contains("unknown or revoked"));

    let (id, cookie) = sign_in(&f, ADMIN_KEY).await;
    assert_eq!(id.len(), 43);
    let attrs: Vec<&str> = cookie.split("; ").skip(1).collect();
    for want in ["Path=/app", "Max-Age=28800", "HttpOnly", "SameSite=Strict"] {
        assert!(attrs.contains(&want), "{cookie}");
    }
    assert!(!attrs.contains(&"Secure"), "plain HTTP: {cookie}");

    let res = send(&f.app, get("/app", Some(&id))).await;
    assert_eq!(res.status(), StatusCode::OK);
    let h = res.headers();
    let csp = h[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"));
    assert_eq!(h[header::X_FRAME_OPTIONS], "DENY");
    assert_eq!(h[header::REFERRER_POLICY], "no-referrer");
    assert_eq!(h[header::CACHE_CONTROL], "no-store");
    let page = text(res).await;
    assert!(page.contains("Signed in as"));
    assert!(!page.contains(ADMIN_KEY), "the key is never echoed");
    assert!(!page.contains(&id), "nor the session id");
    assert!(!page.contains("<script>"), "no inline script");

    // Over TLS (an https public URL) the cookie is Secure too.
    let tls = fixture_with(ConsoleSettings {
        secure_cookies: true,
        ..Default::default()
    })
    .await;
    let (_, cookie) = sign_in(&tls, ADMIN_KEY).await;
    assert!(cookie.ends_with("; Secure"), "{cookie}");
}

#[tokio::test]
async fn cross_site_and_csrf_less_posts_are_refused() {
    let f = fixture().await;
    let (id, _) = sign_in(&f, ADMIN_KEY).await;
    let token = csrf(&f, &id).await;
    let form = [("csrf", token.as_str()), ("name", "from-elsewhere")];
    let refused: [&[(&str, &str)]; 4] = [
        &[
            ("origin", "http://evil.example"),
            ("sec-fetch-site", "cross-site"),
        ],
        &[("origin", "http://evil.example")],
        &[("sec-fetch-site", "same-site")],
        &[],
    ];
    for headers in refused {
        let res = send(
            &f.app,
            post_from("/app/policies", Some(&id), &form, headers),
        )
        .await;
        assert_eq!(res.status(), StatusCode::FORBIDDEN, "{headers:?}");
    }
    // A cross-site sign-in is refused too (no login CSRF).
    let res = send(
        &f.app,
        post_from(
            "/app/sign-in",
            None,
            &[("api_key", ADMIN_KEY)],
            &[("origin", "http://evil.example")],
        ),
    )
    .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert!(res.headers().get(header::SET_COOKIE).is_none());

    // Same origin, but no or another session's token.
    for bad in [vec![("name", "p")], vec![("csrf", "guess"), ("name", "p")]] {
        let res = send(&f.app, post("/app/policies", Some(&id), &bad)).await;
        assert_eq!(res.status(), StatusCode::FORBIDDEN);
    }
    let (other, _) = sign_in(&f, ADMIN_KEY).await;
    let other_token = csrf(&f, &other).await;
    assert_ne!(other_token, token);
    let res = send(
        &f.app,
        post(
            "/app/policies",
            Some(&id),
            &[("csrf", &other_token), ("name", "p")],
        ),
    )
    .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        f.services
            .management()
            .list_policies(&Default::default(), Default::default())
            .await
            .unwrap()
            .total,
        0
    );

    // With both, the policy is made.
    let res = send(&f.app, post("/app/policies", Some(&id), &form)).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert!(res.headers()[header::LOCATION]
        .to_str()
        .unwrap()
        .starts_with("/app/policies/"));
}

#[tokio::test]
async fn sessions_end_at_expiry_on_sign_out_and_when_the_key_is_revoked() {
    let f = fixture().await;
    let ttl = ConsoleSettings::default().session_ttl;

    // Expiry, on the console's clock.
    let (id, _) = sign_in(&f, ADMIN_KEY).await;
    f.clock.advance(ttl - Duration::from_secs(1));
    assert_eq!(
        send(&f.app, get("/app", Some(&id))).await.status(),
        StatusCode::OK
    );
    f.clock.advance(Duration::from_secs(1));
    let res = send(&f.app, get("/app/agents", Some(&id))).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(res.headers()[header::LOCATION], "/app/sign-in");

    // Sign-out deletes the session and clears the cookie.
    let (id, _) = sign_in(&f, ADMIN_KEY).await;
    let token = csrf(&f, &id).await;
    let res = send(&f.app, post("/app/sign-out", Some(&id), &[])).await;
    assert_eq!(
        res.status(),
        StatusCode::FORBIDDEN,
        "sign-out needs the token too"
    );
    let res = send(
        &f.app,
        post("/app/sign-out", Some(&id), &[("csrf", &token)]),
    )
    .await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(res.headers()[header::LOCATION], "/app/sign-in");
    let cleared = res.headers()[header::SET_COOKIE].to_str().unwrap();
    assert!(cleared.starts_with(&format!("{SESSION_COOKIE}=;")) && cleared.contains("Max-Age=0"));
    assert_eq!(
        send(&f.app, get("/app", Some(&id))).await.status(),
        StatusCode::SEE_OTHER
    );

    // Revoking the operator key ends its sessions.
    let m = f.services.management();
    let admin = m.authenticate(ADMIN_KEY).await.unwrap();
    let (key, secret) = m
        .create_operator_key(CreateOperatorKey {
            name: "second".into(),
        })
        .await
        .unwrap();
    let (id, _) = sign_in(&f, secrecy::ExposeSecret::expose_secret(&secret)).await;
    assert_eq!(
        send(&f.app, get("/app", Some(&id))).await.status(),
        StatusCode::OK
    );
    m.revoke_operator_key(&admin.id, &key.id).await.unwrap();
    assert_eq!(
        send(&f.app, get("/app", Some(&id))).await.status(),
        StatusCode::SEE_OTHER
    );
    let res = send(
        &f.app,
        post(
            "/app/sign-in",
            None,
            &[("api_key", secrecy::ExposeSecret::expose_secret(&secret))],
        ),
    )
    .await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_token_is_shown_once_with_its_enrol_command_and_text_is_escaped() {
    let f = fixture().await;
    let (id, _) = sign_in(&f, ADMIN_KEY).await;
    let token = csrf(&f, &id).await;
    let res = send(
        &f.app,
        post(
            "/app/policies",
            Some(&id),
            &[
                ("csrf", &token),
                ("name", "web <script>alert(1)</script>"),
                ("namespace", ""),
            ],
        ),
    )
    .await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let location = res.headers()[header::LOCATION].to_str().unwrap().to_owned();
    let policy_id = location.rsplit('/').next().unwrap().to_owned();
    let page = text(send(&f.app, get(&location, Some(&id))).await).await;
    assert!(page.contains("web &lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(!page.contains("<script>alert"));
    assert!(page.contains("output_permissions") || page.contains("Permissions"));

    // An invalid form comes back with its message and values.
    let res = send(
        &f.app,
        post(
            "/app/policies",
            Some(&id),
            &[
                ("csrf", &token),
                ("name", "bad ns"),
                ("namespace", "Not Valid"),
            ],
        ),
    )
    .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let page = text(res).await;
    assert!(
        page.contains("namespace") && page.contains(r#"value="bad ns""#),
        "{page}"
    );

    let res = send(
        &f.app,
        post(
            "/app/tokens",
            Some(&id),
            &[
                ("csrf", &token),
                ("policy_id", &policy_id),
                ("name", "first"),
            ],
        ),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let page = text(res).await;
    let at = page.find(r#"<code id="token-secret">"#).unwrap() + 24;
    let secret = &page[at..at + page[at..].find('<').unwrap()];
    assert!(secret.len() > 20);
    assert!(page.contains(&format!(
        "flotilla agent enroll --url http://{HOST} --enrollment-token {secret}"
    )));
    // The secret works, and is never shown again.
    let listed = text(send(&f.app, get("/app/tokens", Some(&id))).await).await;
    assert!(listed.contains("first") && !listed.contains(secret));

    // Revoke it through its form.
    let keys = f
        .services
        .management()
        .list_enrollment_keys(&Default::default(), Default::default())
        .await
        .unwrap();
    let key = &keys.items[0];
    assert!(listed.contains(&format!("/app/tokens/{}/revoke", key.id)));
    let res = send(
        &f.app,
        post(
            &format!("/app/tokens/{}/revoke", key.id),
            Some(&id),
            &[("csrf", &token)],
        ),
    )
    .await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let key = f
        .services
        .management()
        .get_enrollment_key(&key.id)
        .await
        .unwrap();
    assert!(!key.active);
}

#[tokio::test]
async fn editing_a_policy_makes_a_revision_only_when_something_changed() {
    let f = fixture().await;
    let (id, _) = sign_in(&f, ADMIN_KEY).await;
    let token = csrf(&f, &id).await;
    let res = send(
        &f.app,
        post(
            "/app/policies",
            Some(&id),
            &[("csrf", &token), ("name", "edited")],
        ),
    )
    .await;
    let location = res.headers()[header::LOCATION].to_str().unwrap().to_owned();
    let before = f
        .services
        .management()
        .get_policy(location.rsplit('/').next().unwrap())
        .await
        .unwrap();
    let page = text(send(&f.app, get(&format!("{location}/edit"), Some(&id))).await).await;
    assert!(page.contains(r#"value="edited""#) && page.contains("Save changes"));
    let form = |description: &'static str| {
        vec![
            ("csrf", token.clone()),
            ("name", "edited".to_owned()),
            ("namespace", before.namespace.clone()),
            ("description", description.to_owned()),
            ("inactivity_timeout", before.inactivity_timeout.to_string()),
        ]
    };
    let as_refs = |v: &Vec<(&'static str, String)>| -> Vec<(&'static str, String)> { v.clone() };
    for (description, revision) in [
        ("", before.revision),
        ("now described", before.revision + 1),
    ] {
        let pairs = as_refs(&form(description));
        let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let res = send(&f.app, post(&location, Some(&id), &pairs)).await;
        assert_eq!(res.status(), StatusCode::SEE_OTHER);
        let p = f
            .services
            .management()
            .get_policy(&before.id)
            .await
            .unwrap();
        assert_eq!(p.revision, revision, "{description:?}");
    }
    let page = text(send(&f.app, get(&location, Some(&id))).await).await;
    assert!(page.contains("now described") && page.contains("Rollout of revision"));
    assert!(page.contains("no agents"));
}

async fn seed_agents(f: &Fixture) {
    let now = Utc::now();
    for p in ["web", "db"] {
        f.services
            .store
            .create_policy(
                &flotilla_domain::policy::NewAgentPolicy {
                    id: p.into(),
                    name: p.into(),
                    namespace: "default".into(),
                    description: None,
                    output_id: None,
                    inactivity_timeout: 3600,
                },
                now,
            )
            .await
            .unwrap();
    }
    for (id, tags) in [("a1", vec!["prod"]), ("a2", vec!["prod"]), ("a3", vec![])] {
        f.services
            .store
            .insert_agent(&flotilla_store::NewAgent {
                id: id.into(),
                policy_id: "web".into(),
                tags: tags.into_iter().map(str::to_owned).collect(),
                local_metadata: serde_json::json!({"host": {"hostname": format!("host-{id}")}}),
                enrolled_at: now,
                ..Default::default()
            })
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn bulk_actions_from_the_agents_page_need_csrf_and_show_their_progress() {
    let f = fixture().await;
    seed_agents(&f).await;
    let (id, _) = sign_in(&f, ADMIN_KEY).await;
    let res = send(&f.app, get("/app/agents", Some(&id))).await;
    assert_eq!(res.status(), StatusCode::OK);
    let agents = text(res).await;
    assert!(
        agents.contains(r#"type="checkbox" name="ids" value="a1" aria-label="Select host-a1""#),
        "{agents}"
    );
    assert!(agents.contains(r#"action="/app/agents/bulk""#));
    assert!(agents.contains(r#"<label for="b-op">"#));
    let token = csrf_of(&agents);

    // Without the token, or from elsewhere: refused, nothing done.
    let form = [
        ("ids", "a1"),
        ("ids", "a2"),
        ("op", "add_tags"),
        ("tags", "blue"),
    ];
    let res = send(&f.app, post("/app/agents/bulk", Some(&id), &form)).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let mut with = form.to_vec();
    with.push(("csrf", &token));
    let res = send(
        &f.app,
        post_from(
            "/app/agents/bulk",
            Some(&id),
            &with,
            &[("origin", "http://evil.example")],
        ),
    )
    .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert!(f
        .services
        .management()
        .action_status(Default::default())
        .await
        .unwrap()
        .items
        .is_empty());

    // With it: the action runs and the progress page shows each agent.
    let res = send(&f.app, post("/app/agents/bulk", Some(&id), &with)).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let location = res.headers()[header::LOCATION].to_str().unwrap().to_owned();
    assert!(location.starts_with("/app/actions/"), "{location}");
    let tags = f.services.management().get_agent("a2").await.unwrap().tags;
    assert!(tags.contains(&"blue".to_owned()), "{tags:?}");
    let page = text(send(&f.app, get(&location, Some(&id))).await).await;
    assert!(page.contains("2 of 2 agents answered"), "{page}");
    assert!(page.contains(r#"href="/app/agents/a1""#) && page.contains("acknowledged"));
    let list = text(send(&f.app, get("/app/actions", Some(&id))).await).await;
    assert!(
        list.contains("UPDATE_TAGS") && list.contains(&location),
        "{list}"
    );

    // Reassign every agent the filter matches (a kuery from the filter),
    // and a refused agent shows why.
    let filtered = text(send(&f.app, get("/app/agents?tag=prod", Some(&id))).await).await;
    assert!(filtered.contains(r#"value="filter""#), "{filtered}");
    let res = send(
        &f.app,
        post(
            "/app/agents/bulk",
            Some(&id),
            &[
                ("csrf", &token),
                ("scope", "filter"),
                ("kuery", r#"tags:"prod""#),
                ("op", "reassign"),
                ("policy_id", "db"),
            ],
        ),
    )
    .await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        f.services
            .management()
            .get_agent("a1")
            .await
            .unwrap()
            .policy_id,
        "db"
    );
    assert_eq!(
        f.services
            .management()
            .get_agent("a3")
            .await
            .unwrap()
            .policy_id,
        "web"
    );
    let location = res.headers()[header::LOCATION].to_str().unwrap().to_owned();
    let page = text(send(&f.app, get(&location, Some(&id))).await).await;
    assert!(page.contains("0 of 2 agents answered"), "{page}");
    assert!(page.contains("pending"));

    // Bad input: a 400 page, not an action.
    for bad in [
        vec![("csrf", token.as_str()), ("op", "add_tags"), ("tags", "x")],
        vec![
            ("csrf", token.as_str()),
            ("ids", "a1"),
            ("op", "reassign"),
            ("policy_id", "nope"),
        ],
        vec![("csrf", token.as_str()), ("ids", "a1"), ("op", "")],
        vec![
            ("csrf", token.as_str()),
            ("scope", "filter"),
            ("kuery", ""),
            ("op", "unenroll"),
        ],
    ] {
        let res = send(&f.app, post("/app/agents/bulk", Some(&id), &bad)).await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{bad:?}");
    }
    let res = send(&f.app, get("/app/actions/nope", Some(&id))).await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
}

/// A multipart upload as the package form sends it.
fn upload(cookie: &str, csrf: Option<&str>, file: &[u8]) -> Request<Body> {
    let mut body = Vec::new();
    if let Some(t) = csrf {
        body.extend_from_slice(
            format!("--BOUNDARY\r\nContent-Disposition: form-data; name=\"csrf\"\r\n\r\n{t}\r\n")
                .as_bytes(),
        );
    }
    body.extend_from_slice(
        b"--BOUNDARY\r\nContent-Disposition: form-data; name=\"package\"; filename=\"p.zip\"\r\n\
Content-Type: application/zip\r\n\r\n",
    );
    body.extend_from_slice(file);
    body.extend_from_slice(b"\r\n--BOUNDARY--\r\n");
    Request::post("/app/integrations/upload")
        .header(header::HOST, HOST)
        .header("origin", ORIGIN)
        .header("sec-fetch-site", "same-origin")
        .header(
            header::CONTENT_TYPE,
            "multipart/form-data; boundary=BOUNDARY",
        )
        .header(header::COOKIE, format!("{SESSION_COOKIE}={cookie}"))
        .body(Body::from(body))
        .unwrap()
}

/// The built-in nginx package as another version, zipped.
fn nginx_zip(version: &str) -> Vec<u8> {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../flotilla-packages/builtin/nginx-1.20.0");
    let dir = tempfile::tempdir().unwrap();
    let dst = dir.path().join(format!("nginx-{version}"));
    fn copy(from: &std::path::Path, to: &std::path::Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            let target = to.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                copy(&e.path(), &target);
            } else {
                std::fs::copy(e.path(), target).unwrap();
            }
        }
    }
    copy(&src, &dst);
    let manifest = dst.join("manifest.yml");
    let text = std::fs::read_to_string(&manifest)
        .unwrap()
        .replace("version: 1.20.0", &format!("version: {version}"));
    std::fs::write(&manifest, text).unwrap();
    flotilla_packages::archive::zip_dir(&dst).unwrap()
}

#[tokio::test]
async fn packages_are_installed_by_upload_and_bad_archives_are_refused() {
    let f = fixture().await;
    let (id, _) = sign_in(&f, ADMIN_KEY).await;
    let token = csrf(&f, &id).await;
    let page = text(send(&f.app, get("/app/integrations", Some(&id))).await).await;
    assert!(page.contains(r#"enctype="multipart/form-data""#) && page.contains(r#"type="file""#));

    // Without the token nothing is read into the store.
    let res = send(&f.app, upload(&id, None, &nginx_zip("1.20.1"))).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let res = send(&f.app, upload(&id, Some("guess"), &nginx_zip("1.20.1"))).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);

    // Not a package: a clear message on the page.
    let res = send(&f.app, upload(&id, Some(&token), b"this is not a zip")).await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let page = text(res).await;
    assert!(
        page.contains("That is not an installable package"),
        "{page}"
    );
    assert!(page.contains(r#"role="alert""#));
    // No file chosen.
    let res = send(&f.app, upload(&id, Some(&token), b"")).await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert!(text(res).await.contains("Choose a package archive"));
    // Not a form at all.
    let mut req = upload(&id, Some(&token), b"x");
    req.headers_mut()
        .insert(header::CONTENT_TYPE, "application/zip".parse().unwrap());
    assert_eq!(send(&f.app, req).await.status(), StatusCode::BAD_REQUEST);

    // A good one is installed and linked.
    let res = send(&f.app, upload(&id, Some(&token), &nginx_zip("1.20.1"))).await;
    assert_eq!(res.status(), StatusCode::OK);
    let page = text(res).await;
    assert!(
        page.contains("Installed") && page.contains("/app/integrations/nginx?version=1.20.1"),
        "{page}"
    );
    let listed = f.services.management().list_packages().await.unwrap();
    assert!(listed
        .iter()
        .any(|p| p.name == "nginx" && p.version == "1.20.1"));
    // The same version with other content is a conflict, said so.
    let mut other = nginx_zip("1.20.1");
    other.truncate(10);
    let res = send(&f.app, upload(&id, Some(&token), &other)).await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);

    // Its page shows the templates and inputs.
    let res = send(
        &f.app,
        get("/app/integrations/nginx?version=1.20.1", Some(&id)),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let page = text(res).await;
    assert!(
        page.contains("logfile")
            && page.contains("nginx.access")
            && page.contains("Add to a policy")
    );
    let res = send(&f.app, get("/app/integrations/no-such-package", Some(&id))).await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_overview_charts_agents_by_status_over_time() {
    let f = fixture().await;
    let (id, _) = sign_in(&f, ADMIN_KEY).await;
    let empty = text(send(&f.app, get("/app", Some(&id))).await).await;
    assert!(empty.contains("No samples yet"), "{empty}");
    let now = Utc::now();
    for i in 0..30i64 {
        let at = flotilla_domain::status_history::sample_bucket(
            now - chrono::Duration::minutes(30 - i),
            Duration::from_secs(60),
        );
        f.services
            .store
            .record_status_sample(&flotilla_domain::status_history::StatusSample {
                at,
                online: 10 + i as u64,
                offline: 2,
                unhealthy: 1,
                updating: 0,
                inactive: 0,
            })
            .await
            .unwrap();
    }
    let page = text(send(&f.app, get("/app", Some(&id))).await).await;
    assert!(
        page.contains(r#"aria-labelledby="history-title""#),
        "{page}"
    );
    assert!(page.contains("<polyline"), "{page}");
    assert!(page.contains("group-unhealthy"));
    // The text alternative: a table with a row per (shown) sample.
    assert!(page.contains("As a table"));
    assert!(
        page.contains("<td>39</td>"),
        "the newest sample is in the table"
    );
    assert!(!page.contains("<script>"), "no inline script");
}

#[tokio::test]
async fn an_integration_is_added_through_the_form_generated_from_its_variables() {
    let f = fixture().await;
    let (id, _) = sign_in(&f, ADMIN_KEY).await;
    let token = csrf(&f, &id).await;
    let res = send(
        &f.app,
        post(
            "/app/policies",
            Some(&id),
            &[("csrf", &token), ("name", "web")],
        ),
    )
    .await;
    let policy = res.headers()[header::LOCATION]
        .to_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned();

    let res = send(
        &f.app,
        get(
            &format!("/app/integrations/nginx/add?policy={policy}"),
            Some(&id),
        ),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let page = text(res).await;
    // The access stream's paths: a multi var, so a textarea with its
    // defaults one a line, marked required; tags under advanced options.
    assert!(page.contains(r#"name="s:0:0:paths""#), "{page}");
    assert!(page.contains("/var/log/nginx/access.log"));
    assert!(page.contains("(required)") && page.contains("Advanced options"));
    assert!(page.contains(r#"name="se:0:0""#) && page.contains(r#"name="ie:0""#));
    let action = "/app/integrations/nginx/add?version=1.20.0";

    // Without the token: refused, nothing made.
    let res = send(
        &f.app,
        post(action, Some(&id), &[("name", "x"), ("policy_id", &policy)]),
    )
    .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);

    // A required field left empty: refused, the error beside the field.
    let base = vec![
        ("csrf", token.as_str()),
        ("name", "nginx-web"),
        ("policy_id", policy.as_str()),
        ("ie:0", "on"),
        ("se:0:0", "on"),
        ("se:0:1", "on"),
        ("s:0:1:paths", "/var/log/nginx/error.log"),
    ];
    let mut empty = base.clone();
    empty.push(("s:0:0:paths", "  "));
    let res = send(&f.app, post(action, Some(&id), &empty)).await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let page = text(res).await;
    assert!(page.contains("1 field needs attention"), "{page}");
    assert!(page.contains(r#"class="field-error""#) && page.contains("is required"));
    assert!(page.contains(r#"aria-invalid="true""#));
    // The submitted values are kept.
    assert!(page.contains("/var/log/nginx/error.log"));

    // With the stream off, its required field is not asked for.
    let mut off = base.clone();
    off.retain(|(k, _)| *k != "se:0:0");
    off.push(("s:0:0:paths", ""));
    let res = send(&f.app, post(action, Some(&id), &off)).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER, "{}", text(res).await);

    // Filled in: made through the service, then the policy is shown.
    let mut good = base.clone();
    good[1] = ("name", "nginx-web-2");
    good.push(("s:0:0:paths", "/srv/a.log\n/srv/b.log\n"));
    let res = send(&f.app, post(action, Some(&id), &good)).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        res.headers()[header::LOCATION],
        format!("/app/policies/{policy}")
    );
    let made = f
        .services
        .management()
        .list_package_policies(
            &flotilla_store::PackagePolicyFilter {
                policy_id: Some(policy.clone()),
                package_name: None,
            },
            Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(made.total, 2);
    let pp = made.items.iter().find(|p| p.name == "nginx-web-2").unwrap();
    let access = &pp.inputs[0].streams[0];
    assert!(access.enabled);
    assert_eq!(
        access.vars["paths"].value,
        Some(serde_json::json!(["/srv/a.log", "/srv/b.log"]))
    );
    let off = made.items.iter().find(|p| p.name == "nginx-web").unwrap();
    assert!(!off.inputs[0].streams[0].enabled);
    let page = text(send(&f.app, get(&format!("/app/policies/{policy}"), Some(&id))).await).await;
    assert!(page.contains("nginx-web-2"));

    // A name taken is said so on the form, not as a bare error page.
    let res = send(&f.app, post(action, Some(&id), &good)).await;
    assert!(res.status().is_client_error());
    assert!(text(res).await.contains("Not added"));
}

#[tokio::test]
async fn a_token_may_expire_and_run_out_and_the_list_shows_its_uses() {
    let f = fixture().await;
    let (id, _) = sign_in(&f, ADMIN_KEY).await;
    let token = csrf(&f, &id).await;
    let res = send(
        &f.app,
        post(
            "/app/policies",
            Some(&id),
            &[("csrf", &token), ("name", "limited")],
        ),
    )
    .await;
    let policy = res.headers()[header::LOCATION]
        .to_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned();
    for (expires, uses, message) in [("7w", "", "Expires in"), ("", "0", "Agents it may enrol")] {
        let res = send(
            &f.app,
            post(
                "/app/tokens",
                Some(&id),
                &[
                    ("csrf", &token),
                    ("policy_id", &policy),
                    ("expires_in", expires),
                    ("max_uses", uses),
                ],
            ),
        )
        .await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
        assert!(text(res).await.contains(message));
    }
    let res = send(
        &f.app,
        post(
            "/app/tokens",
            Some(&id),
            &[
                ("csrf", &token),
                ("policy_id", &policy),
                ("name", "ten"),
                ("expires_in", "2d"),
                ("max_uses", "10"),
            ],
        ),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let page = text(res).await;
    assert!(page.contains("0 of 10"), "{page}");
    let keys = f
        .services
        .management()
        .list_enrollment_keys(&Default::default(), Default::default())
        .await
        .unwrap();
    let key = keys.items.iter().find(|k| k.name == "ten").unwrap();
    assert_eq!(key.max_uses, Some(10));
    let left = key.expiration.unwrap() - Utc::now();
    assert!(left > chrono::Duration::hours(47) && left <= chrono::Duration::hours(48));
}

#[tokio::test]
async fn the_event_browser_pages_searches_and_tails_a_data_stream() {
    let f = fixture().await;
    let (id, _) = sign_in(&f, ADMIN_KEY).await;
    let now = f.clock.now();
    let stream = "logs-web.access-default";
    let docs: Vec<flotilla_store::NewDocument> = (0..30)
        .map(|i| {
            let t = now - chrono::Duration::minutes(i64::from(i) * 10);
            flotilla_store::NewDocument {
                id: format!("d{i}"),
                data_stream: stream.into(),
                timestamp: t,
                source: serde_json::json!({
                    "@timestamp": t.to_rfc3339(),
                    "message": format!("GET /page/{i} <b>bold</b>"),
                })
                .to_string(),
            }
        })
        .collect();
    f.store.insert_documents(&docs, now).await.unwrap();

    let data = text(send(&f.app, get("/app/data", Some(&id))).await).await;
    assert!(data.contains(&format!("/app/data/{stream}")));

    // The last hour: 7 events (0..60 minutes ago, the start inclusive), newest first, escaped.
    let res = send(
        &f.app,
        get(&format!("/app/data/{stream}?range=1h"), Some(&id)),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let page = text(res).await;
    assert!(page.contains("7 in all"), "{page}");
    assert!(page.find("/page/0 ").unwrap() < page.find("/page/5 ").unwrap());
    assert!(!page.contains("/page/7 "));
    assert!(page.contains("&lt;b&gt;bold") && !page.contains("<b>bold"));
    assert!(page.contains(r#"data-tail="/app/data/logs-web.access-default/tail?after="#));
    assert!(page.contains(r#"id="e-refresh""#));
    // All time, paged 25 a page on the server.
    let page = text(
        send(
            &f.app,
            get(&format!("/app/data/{stream}?range=all&page=2"), Some(&id)),
        )
        .await,
    )
    .await;
    assert!(
        page.contains("Page 2 of 2") && page.contains("/page/29 ") && !page.contains("/page/4 ")
    );
    // Text search.
    let page = text(
        send(
            &f.app,
            get(
                &format!("/app/data/{stream}?range=all&q=%2Fpage%2F17+"),
                Some(&id),
            ),
        )
        .await,
    )
    .await;
    assert!(page.contains("1 in all"), "{page}");
    // Bad input: a clear page, no panic.
    let long = "x".repeat(300);
    let res = send(
        &f.app,
        get(&format!("/app/data/{stream}?q={long}"), Some(&id)),
    )
    .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let res = send(&f.app, get("/app/data/logs-none-default", Some(&id))).await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);

    // The tail: what came after the cursor, oldest first, and the next cursor.
    let after = (now - chrono::Duration::minutes(25)).timestamp_millis();
    let res = send(
        &f.app,
        get(&format!("/app/data/{stream}/tail?after={after}"), Some(&id)),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()[header::CONTENT_TYPE], "application/json");
    let body: serde_json::Value = serde_json::from_str(&text(res).await).unwrap();
    let events = body["events"].as_array().unwrap();
    assert_eq!(events.len(), 3);
    assert!(events[0]["summary"].as_str().unwrap().contains("/page/2 "));
    assert_eq!(body["after"], now.timestamp_millis().to_string());
    let res = send(
        &f.app,
        get(
            &format!(
                "/app/data/{stream}/tail?after={}",
                body["after"].as_str().unwrap()
            ),
            Some(&id),
        ),
    )
    .await;
    let body: serde_json::Value = serde_json::from_str(&text(res).await).unwrap();
    assert!(body["events"].as_array().unwrap().is_empty());
    let res = send(
        &f.app,
        get(&format!("/app/data/{stream}/tail?after=soon"), Some(&id)),
    )
    .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn the_tasks_page_says_when_no_task_manager_runs_here() {
    let f = fixture().await;
    let (id, _) = sign_in(&f, ADMIN_KEY).await;
    let token = csrf(&f, &id).await;
    let res = send(&f.app, get("/app/tasks", Some(&id))).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(text(res).await.contains("does not run on this instance"));
    let res = send(
        &f.app,
        post("/app/tasks/t/run", Some(&id), &[("back", "/app/tasks")]),
    )
    .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN, "no CSRF token");
    let res = send(
        &f.app,
        post("/app/tasks/t/run", Some(&id), &[("csrf", &token)]),
    )
    .await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn the_connectors_page_shows_verification_and_never_a_secret() {
    let f = fixture().await;
    let (id, _) = sign_in(&f, ADMIN_KEY).await;
    let token = csrf(&f, &id).await;
    let vars: serde_json::Map<String, serde_json::Value> =
        serde_json::from_value(serde_json::json!({
            "role_arn": "arn:aws:iam::123456789012:role/flotilla",
            "external_id": "very-secret-external-id",
        }))
        .unwrap();
    let c = f
        .services
        .management()
        .create_connector(flotilla_api::connectors::CreateCloudConnector {
            id: None,
            name: "prod account".into(),
            cloud_provider: flotilla_domain::connector::CloudProvider::Aws,
            account_type: None,
            vars,
        })
        .await
        .unwrap();
    let res = send(&f.app, get("/app/connectors", Some(&id))).await;
    assert_eq!(res.status(), StatusCode::OK);
    let page = text(res).await;
    assert!(
        page.contains("prod account") && page.contains("not verified"),
        "{page}"
    );
    assert!(!page.contains("very-secret-external-id"));
    let verify = format!("/app/connectors/{}/verify", c.id);
    assert!(page.contains(&verify));
    // Without the token: refused. With it: unused, so nothing to verify,
    // said so.
    let res = send(&f.app, post(&verify, Some(&id), &[])).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let res = send(&f.app, post(&verify, Some(&id), &[("csrf", &token)])).await;
    assert_eq!(res.status(), StatusCode::CONFLICT);
    assert!(text(res).await.contains("not used by any integration"));
}

#[tokio::test]
async fn outputs_are_added_edited_and_removed_and_operator_keys_made_and_revoked() {
    let f = fixture().await;
    let (id, _) = sign_in(&f, ADMIN_KEY).await;
    let token = csrf(&f, &id).await;
    let m = f.services.management();

    // An output through the form; a bad host is refused on the page,
    // keeping what was typed but never the credential.
    let res = send(
        &f.app,
        post(
            "/app/settings/outputs",
            Some(&id),
            &[
                ("csrf", &token),
                ("name", "Archive"),
                ("type", "elasticsearch"),
                ("hosts", "not a url"),
                ("api_key", "aWQ6c2VjcmV0LWNyZWRlbnRpYWw="),
            ],
        ),
    )
    .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let page = text(res).await;
    assert!(page.contains("hosts"), "{page}");
    assert!(page.contains(">not a url</textarea>"), "{page}");
    assert!(!page.contains("aWQ6c2VjcmV0LWNyZWRlbnRpYWw="));
    let res = send(
        &f.app,
        post(
            "/app/settings/outputs",
            Some(&id),
            &[
                ("csrf", &token),
                ("name", "Archive"),
                ("type", "telnet"),
                ("hosts", "x:1"),
            ],
        ),
    )
    .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert!(text(res).await.contains("“telnet” is not an output type"));
    let res = send(
        &f.app,
        post(
            "/app/settings/outputs",
            Some(&id),
            &[
                ("csrf", &token),
                ("name", "Archive"),
                ("type", "elasticsearch"),
                (
                    "hosts",
                    "https://archive-1:9200\r\n\r\nhttps://archive-2:9200\r\n",
                ),
                ("api_key", "aWQ6c2VjcmV0LWNyZWRlbnRpYWw="),
            ],
        ),
    )
    .await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let outputs = m
        .list_outputs(flotilla_store::Page {
            page: 1,
            per_page: 50,
        })
        .await
        .unwrap();
    let archive = outputs
        .items
        .iter()
        .find(|o| o.name == "Archive")
        .unwrap()
        .clone();
    assert_eq!(
        archive.hosts,
        ["https://archive-1:9200", "https://archive-2:9200"]
    );
    assert!(archive.remote_key_management && !archive.is_default);
    let settings = text(send(&f.app, get("/app/settings", Some(&id))).await).await;
    assert!(settings.contains("Archive") && settings.contains("made in the cluster"));
    assert!(!settings.contains("aWQ6c2VjcmV0LWNyZWRlbnRpYWw="));

    // Its page: the form filled in but for the credential; an edit
    // changes only what changed, and can drop the credential.
    let path = format!("/app/settings/outputs/{}", archive.id);
    let page = text(send(&f.app, get(&path, Some(&id))).await).await;
    assert!(page.contains("https://archive-1:9200\nhttps://archive-2:9200"));
    assert!(!page.contains("aWQ6c2VjcmV0LWNyZWRlbnRpYWw="));
    assert!(page.contains("clear_credential"));
    let res = send(
        &f.app,
        post(
            &path,
            Some(&id),
            &[
                ("csrf", &token),
                ("name", "Archive"),
                ("type", "elasticsearch"),
                ("hosts", "https://archive-3:9200"),
                ("clear_credential", "on"),
            ],
        ),
    )
    .await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let edited = m.get_output(&archive.id).await.unwrap();
    assert_eq!(edited.hosts, ["https://archive-3:9200"]);
    assert!(!edited.remote_key_management);
    let res = send(
        &f.app,
        post(
            &path,
            Some(&id),
            &[
                ("csrf", &token),
                ("name", ""),
                ("type", "elasticsearch"),
                ("hosts", "https://archive-3:9200"),
            ],
        ),
    )
    .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert!(text(res).await.contains("name"));
    assert_eq!(
        send(
            &f.app,
            get("/app/settings/outputs/no-such-output", Some(&id))
        )
        .await
        .status(),
        StatusCode::NOT_FOUND
    );

    // The default output cannot be removed; this one can, with the token.
    let default = outputs.items.iter().find(|o| o.is_default).unwrap();
    let res = send(
        &f.app,
        post(
            &format!("/app/settings/outputs/{}/delete", default.id),
            Some(&id),
            &[("csrf", &token)],
        ),
    )
    .await;
    assert!(res.status().is_client_error(), "{}", res.status());
    assert!(m.get_output(&default.id).await.is_ok());
    let delete = format!("{path}/delete");
    assert_eq!(
        send(&f.app, post(&delete, Some(&id), &[])).await.status(),
        StatusCode::FORBIDDEN
    );
    let res = send(&f.app, post(&delete, Some(&id), &[("csrf", &token)])).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert!(m.get_output(&archive.id).await.is_err());

    // An operator key: shown once, usable at once; revoked from the list,
    // which ends its sessions. The key signed in cannot revoke itself.
    let res = send(
        &f.app,
        post(
            "/app/settings/keys",
            Some(&id),
            &[("csrf", &token), ("name", "ci <robot>")],
        ),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()[header::CACHE_CONTROL], "no-store");
    let page = text(res).await;
    assert!(page.contains("ci &lt;robot&gt;"), "escaped");
    let at = page.find(r#"<code id="key-secret">"#).unwrap() + 22;
    let secret = page[at..at + page[at..].find('<').unwrap()].to_owned();
    let key = m.authenticate(&secret).await.unwrap();
    assert_eq!(key.name, "ci <robot>");
    let listed = text(send(&f.app, get("/app/settings", Some(&id))).await).await;
    assert!(!listed.contains(&secret), "shown only once");
    let (other, _) = sign_in(&f, &secret).await;
    let res = send(
        &f.app,
        post(
            &format!("/app/settings/keys/{}/revoke", key.id),
            Some(&id),
            &[("csrf", &token)],
        ),
    )
    .await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert!(m.authenticate(&secret).await.is_err());
    assert_eq!(
        send(&f.app, get("/app", Some(&other))).await.status(),
        StatusCode::SEE_OTHER
    );
    let me = m.authenticate(ADMIN_KEY).await.unwrap();
    let res = send(
        &f.app,
        post(
            &format!("/app/settings/keys/{}/revoke", me.id),
            Some(&id),
            &[("csrf", &token)],
        ),
    )
    .await;
    assert_eq!(res.status(), StatusCode::CONFLICT);
    assert!(text(res).await.contains("cannot revoke itself"));
    let res = send(
        &f.app,
        post(
            "/app/settings/keys",
            Some(&id),
            &[("csrf", &token), ("name", " ")],
        ),
    )
    .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn agents_are_searched_filtered_and_sorted_and_an_agent_shows_its_events() {
    let f = fixture().await;
    seed_agents(&f).await;
    let now = Utc::now();
    let checkin =
        |id: &str, at: chrono::DateTime<Utc>, version: &str| flotilla_store::CheckinRecord {
            agent_id: id.into(),
            at,
            status: "online".into(),
            message: String::new(),
            local_metadata: None,
            components: None,
            agent_version: Some(version.into()),
            reported_policy: None,
        };
    f.store
        .record_checkins(&[
            checkin("a1", now, "9.1.0"),
            checkin("a2", now - chrono::Duration::hours(2), "8.15.0"),
        ])
        .await
        .unwrap();
    let (id, _) = sign_in(&f, ADMIN_KEY).await;
    let rows = |page: &str| -> Vec<String> {
        page.match_indices(r#"name="ids" value=""#)
            .map(|(at, m)| {
                let rest = &page[at + m.len()..];
                rest[..rest.find('"').unwrap()].to_owned()
            })
            .collect()
    };
    let list = |q: &str| {
        let f = &f;
        let id = id.clone();
        let q = q.to_owned();
        async move {
            let res = send(&f.app, get(&format!("/app/agents?{q}"), Some(&id))).await;
            (res.status(), text(res).await)
        }
    };

    // The query box, alone and with the other filters.
    let (st, page) = list("q=tags%3Aprod+and+version%3A9.*").await;
    assert_eq!(st, StatusCode::OK, "{page}");
    assert_eq!(rows(&page), ["a1"]);
    assert!(
        page.contains(r#"value="tags:prod and version:9.*""#),
        "the query stays in its box"
    );
    let (_, page) = list("q=not+tags%3A*&policy=web").await;
    assert_eq!(rows(&page), ["a3"]);
    // Version, host name and last check-in filters.
    let (_, page) = list("version=8.*").await;
    assert_eq!(rows(&page), ["a2"]);
    let (_, page) = list("hostname=host-a3").await;
    assert_eq!(rows(&page), ["a3"]);
    let (_, page) = list("hostname=host-*&checkin=over1h").await;
    assert_eq!(rows(&page), ["a2"]);
    let (_, page) = list("checkin=never").await;
    assert_eq!(rows(&page), ["a3"]);
    // The bulk action over every agent matching: the whole filter.
    assert!(
        page.contains(r#"name="kuery" value="not last_checkin:*""#),
        "{page}"
    );
    let (_, page) = list("tag=prod&q=version%3A9.*").await;
    assert!(
        page.contains(r#"name="kuery" value="tags:&quot;prod&quot; and (version:9.*)""#),
        "{page}"
    );

    // A query that does not parse: 400, the reason, the query kept.
    let (st, page) = list("q=tags%3Aprod+or").await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(
        page.contains(r#"id="query-error""#) && page.contains("at position 12: "),
        "{page}"
    );
    assert!(page.contains(r#"aria-invalid="true""#));
    assert!(rows(&page).is_empty());
    let (st, _) = list(&format!("q={}", "x".repeat(5000))).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);

    // Sorting: the header links and aria-sort, both directions, paging
    // keeps the order.
    let (_, page) = list("sort=hostname&order=desc").await;
    assert_eq!(rows(&page), ["a3", "a2", "a1"]);
    assert!(page.contains(r#"aria-sort="descending""#), "{page}");
    assert!(page.contains("/app/agents?sort=hostname&amp;order=asc"));
    let (_, page) = list("sort=last_checkin&order=asc").await;
    assert_eq!(rows(&page), ["a2", "a1", "a3"], "never checked in: last");
    assert!(page.contains(r#"aria-sort="ascending""#));
    let (st, page) = list("sort=secret").await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{page}");
    assert!(page.contains("not a field agents can be sorted by"));

    // An agent's page: its latest events, newest first, from any stream.
    let docs: Vec<flotilla_store::NewDocument> =
        [("e1", "a1", 3), ("e2", "a2", 2), ("e3", "a1", 1)]
            .iter()
            .map(|(doc, agent, mins)| {
                let t = f.clock.now() - chrono::Duration::minutes(*mins);
                flotilla_store::NewDocument {
                    id: (*doc).into(),
                    data_stream: if *doc == "e3" {
                        "logs-b-default"
                    } else {
                        "logs-a-default"
                    }
                    .into(),
                    timestamp: t,
                    source: serde_json::json!({
                        "@timestamp": t.to_rfc3339(),
                        "agent": {"id": agent},
                        "message": format!("event {doc}"),
                    })
                    .to_string(),
                }
            })
            .collect();
    f.store
        .insert_documents(&docs, f.clock.now())
        .await
        .unwrap();
    let page = text(send(&f.app, get("/app/agents/a1", Some(&id))).await).await;
    assert!(page.contains(r#"id="agent-events""#), "{page}");
    let (e3, e1) = (
        page.find("event e3").unwrap(),
        page.find("event e1").unwrap(),
    );
    assert!(e3 < e1, "newest first");
    assert!(!page.contains("event e2"), "another agent's event");
    assert!(page.contains(r#"href="/app/data/logs-b-default""#));
    let page = text(send(&f.app, get("/app/agents/a3", Some(&id))).await).await;
    assert!(page.contains("No event in the last 7 days names this agent."));
}

#[tokio::test]
async fn a_policy_page_shows_its_rollout_over_time_and_agents_by_revision() {
    let f = fixture().await;
    seed_agents(&f).await;
    let (id, _) = sign_in(&f, ADMIN_KEY).await;
    let page = text(send(&f.app, get("/app/policies/web", Some(&id))).await).await;
    assert!(page.contains("No agent runs revision 1 yet."), "{page}");
    assert!(page.contains(r#"id="rollout-by-revision""#));
    assert!(
        page.contains("none yet") && page.contains("3 (100 %)"),
        "{page}"
    );
    // Two agents take the revision, a second apart.
    let p = f.services.management().get_policy("web").await.unwrap();
    f.store
        .agent_runs_policy(
            "a1",
            "web",
            p.revision,
            p.updated_at + chrono::Duration::seconds(1),
        )
        .await
        .unwrap();
    f.store
        .agent_runs_policy(
            "a2",
            "web",
            p.revision,
            p.updated_at + chrono::Duration::seconds(2),
        )
        .await
        .unwrap();
    let page = text(send(&f.app, get("/app/policies/web", Some(&id))).await).await;
    assert!(page.contains(r#"id="rollout-chart""#), "{page}");
    assert!(
        page.contains(
            "Agents on revision 1 since it was made: 2 of 3, the last 2.0 s after the change"
        ),
        "{page}"
    );
    assert!(
        page.contains("1 (current)") && page.contains("2 (66 %)"),
        "{page}"
    );
    assert!(page.contains(r#"id="rollout-table""#));
    assert!(page.contains("1 (33 %)"), "the one with none yet: {page}");
}

#[tokio::test]
async fn the_overview_lists_failed_policy_changes_inputs_tasks_and_connectors() {
    use flotilla_store::{ClaimRequest, NewTask, RunOutcome};
    let f = fixture_with_tasks().await;
    seed_agents(&f).await;
    let (id, _) = sign_in(&f, ADMIN_KEY).await;
    let page = text(send(&f.app, get("/app", Some(&id))).await).await;
    for empty in [
        "No agent reports an error.",
        "No agent failed to apply its policy.",
        "No input reports a problem.",
        "No task failed recently.",
        "No connector fails verification.",
    ] {
        assert!(page.contains(empty), "{empty}: {page}");
    }

    // An agent in error with a failing input, another whose policy change
    // failed.
    let now = Utc::now();
    f.store
        .record_checkins(&[flotilla_store::CheckinRecord {
            agent_id: "a1".into(),
            at: now,
            status: "error".into(),
            message: "1 input failing".into(),
            local_metadata: None,
            components: Some(serde_json::json!([{
                "id": "log-default", "type": "log", "status": "HEALTHY", "message": "ok",
                "units": [
                    {"id": "log-default-nginx", "type": "input", "status": "FAILED", "message": "open /var/log/nginx/access.log: <denied>"},
                    {"id": "log-default", "type": "output", "status": "HEALTHY", "message": ""}
                ]
            }])),
            agent_version: Some("9.1.0".into()),
            reported_policy: None,
        }])
        .await
        .unwrap();
    f.store
        .record_policy_change_failure(
            "a2",
            &serde_json::json!({"message": "unknown input type 'x'"}),
        )
        .await
        .unwrap();
    // A task that failed for good.
    let t = f.clock.now();
    f.store
        .schedule_task(
            &NewTask {
                id: "t-broken".into(),
                task_type: "fleet:expire_actions".into(),
                params: serde_json::json!({}),
                state: serde_json::json!({}),
                interval_ms: None,
                run_at: t,
                enabled: true,
                cost: 2,
                user: None,
            },
            t,
        )
        .await
        .unwrap();
    let claimed = f
        .store
        .claim_tasks(&ClaimRequest {
            owner: "test".into(),
            types: vec!["fleet:expire_actions".into()],
            per_type: vec![],
            limit: 10,
            capacity: 10,
            now: t,
            lease_until: t + chrono::Duration::minutes(5),
        })
        .await
        .unwrap();
    let task = claimed.iter().find(|x| x.id == "t-broken").unwrap();
    f.store
        .finish_task_run(
            "t-broken",
            task.claim_token.as_deref().unwrap(),
            &RunOutcome::Fail {
                error: "the store said no".into(),
            },
            t,
            5,
        )
        .await
        .unwrap();
    // A connector whose verification failed.
    let vars: serde_json::Map<String, serde_json::Value> = serde_json::from_value(
        serde_json::json!({"role_arn": "arn:aws:iam::123456789012:role/x", "external_id": "ext-id-1"}),
    )
    .unwrap();
    let c = f
        .services
        .management()
        .create_connector(flotilla_api::connectors::CreateCloudConnector {
            id: None,
            name: "audit account".into(),
            cloud_provider: flotilla_domain::connector::CloudProvider::Aws,
            account_type: None,
            vars,
        })
        .await
        .unwrap();
    f.store
        .write_verification(
            &c.id,
            &flotilla_store::VerificationWrite {
                status: Some(Some(flotilla_domain::connector::VerificationStatus::Failed)),
                failed_at: Some(Some(now)),
                message: Some(Some("AccessDenied: sts:AssumeRole".into())),
                ..Default::default()
            },
        )
        .await
        .unwrap();

    let page = text(send(&f.app, get("/app", Some(&id))).await).await;
    let section = |id: &str| {
        let at = page
            .find(&format!(r#"id="{id}""#))
            .unwrap_or_else(|| panic!("{id}: {page}"));
        let end = page[at..].find("</section>").unwrap();
        page[at..at + end].to_owned()
    };
    let agents = section("failing-agents");
    assert!(
        agents.contains("host-a1") && agents.contains("1 input failing"),
        "{agents}"
    );
    let changes = section("failed-policy-changes");
    assert!(
        changes.contains("host-a2") && changes.contains("unknown input type"),
        "{changes}"
    );
    assert!(!changes.contains("host-a1"), "{changes}");
    let inputs = section("unhealthy-inputs");
    assert!(
        inputs.contains("log-default / log-default-nginx"),
        "{inputs}"
    );
    assert!(inputs.contains("&lt;denied&gt;"), "escaped: {inputs}");
    assert!(
        !inputs.contains("log-default / log-default<"),
        "healthy units are not listed"
    );
    let tasks = section("failed-tasks");
    assert!(
        tasks.contains("t-broken") && tasks.contains("the store said no"),
        "{tasks}"
    );
    let connectors = section("failing-connectors");
    assert!(
        connectors.contains("audit account") && connectors.contains("AccessDenied: sts:AssumeRole"),
        "{connectors}"
    );
    assert!(connectors.contains(&format!("/app/connectors#c-{}", c.id)));
}

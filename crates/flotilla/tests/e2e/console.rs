//! The operator console in a real browser: headless Chromium (Debian's
//! `chromium`, driven over WebDriver by `chromedriver`) against the real
//! server binary. One browser session walks through sign-in, a policy and
//! a token made through the forms, the real agent enrolled with the
//! command line the token page gives (and three more over the fleet API)
//! and seen online, searching and sorting agents, a policy change followed
//! to 100 % on its rollout view, every page, a narrow window and sign-out;
//! a screenshot of each page is saved for review (the path is printed).

use std::path::{Path, PathBuf};

use fantoccini::{Client, ClientBuilder, Locator};
use reqwest::Method;
use serde_json::json;

use crate::support::{Server, ADMIN_KEY};

const TAB: &str = "\u{e004}";

struct Shots {
    dir: PathBuf,
    n: u32,
}

impl Shots {
    fn new() -> Shots {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        eprintln!("console screenshots: {}", dir.display());
        Shots { dir, n: 0 }
    }

    async fn take(&mut self, c: &Client, name: &str) {
        self.n += 1;
        let png = c.screenshot().await.expect("screenshot");
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        std::fs::write(self.dir.join(format!("{:02}-{name}.png", self.n)), png).unwrap();
    }
}

async fn browser(driver: &str, profile: &Path) -> Client {
    let b = flotilla_testkit::browser::browser().unwrap();
    let mut args: Vec<String> = flotilla_testkit::browser::CHROMIUM_FLAGS
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.push(format!("--user-data-dir={}", profile.display()));
    args.push("--window-size=1280,1000".into());
    let caps = json!({
        "browserName": "chrome",
        "goog:chromeOptions": {"binary": b.chromium, "args": args},
    });
    let serde_json::Value::Object(caps) = caps else {
        unreachable!()
    };
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(driver)
        .await
        .expect("a WebDriver session with headless Chromium")
}

/// An element's rendered text, white space squashed (layout may break
/// lines between inline pieces).
async fn text_of(c: &Client, css: &str) -> String {
    // An element found just as a page is replaced goes stale: find it again.
    for _ in 0..20 {
        let found = c
            .wait()
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"));
        match found.text().await {
            Ok(text) => return text.split_whitespace().collect::<Vec<_>>().join(" "),
            Err(e) if e.is_stale_element_reference() => continue,
            Err(e) => panic!("{css}: {e}"),
        }
    }
    panic!("{css}: stale each time it was found")
}

/// Wait for the page whose heading is `title` (the one a click leads to,
/// not the page the click was on).
async fn heading(c: &Client, title: &str) {
    c.wait()
        .for_element(Locator::XPath(&format!(
            "//main/h1[normalize-space()='{title}']"
        )))
        .await
        .unwrap_or_else(|e| panic!("no page titled {title}: {e}"));
}

async fn path_of(c: &Client) -> String {
    c.current_url().await.unwrap().path().to_owned()
}

/// Type into the element with `id`.
async fn type_in(c: &Client, id: &str, text: &str) {
    c.find(Locator::Id(id))
        .await
        .unwrap_or_else(|e| panic!("#{id}: {e}"))
        .send_keys(text)
        .await
        .unwrap();
}

/// Replace the text of the field found by `css`.
async fn replace(c: &Client, css: &str, text: &str) {
    let field = c
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"));
    field.clear().await.unwrap();
    field.send_keys(text).await.unwrap();
}

/// Choose `value` in the select with `id`.
async fn choose(c: &Client, id: &str, value: &str) {
    c.find(Locator::Id(id))
        .await
        .unwrap_or_else(|e| panic!("#{id}: {e}"))
        .select_by_value(value)
        .await
        .unwrap();
}

/// Click the element found by `css`.
async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap();
}

/// Click the submit button found by `css` and wait until the page it
/// leads to has loaded: what is read next comes from the new page, not
/// from the one the form was on (both may show the same element).
async fn submit(c: &Client, css: &str) {
    c.execute("window.flotillaOldPage = true", vec![])
        .await
        .unwrap();
    click(c, css).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        // While the browser unloads the old page a script may fail: not yet.
        let loaded = c
            .execute(
                "return window.flotillaOldPage === undefined && document.readyState === 'complete'",
                vec![],
            )
            .await
            .map(|v| v == json!(true))
            .unwrap_or(false);
        if loaded {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{css}: no new page after 30 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Follow the link with this text.
async fn follow(c: &Client, text: &str) {
    c.find(Locator::LinkText(text))
        .await
        .unwrap_or_else(|e| panic!("link {text}: {e}"))
        .click()
        .await
        .unwrap();
}

/// Wait (bounded) until the browser is at `path` of the current origin:
/// a click on a submit button may return before the navigation it starts.
async fn wait_for_path(c: &Client, path: &str) {
    let mut url = c.current_url().await.unwrap();
    url.set_path(path);
    url.set_query(None);
    c.wait()
        .at_most(std::time::Duration::from_secs(20))
        .for_url(&url)
        .await
        .unwrap_or_else(|e| panic!("never reached {path}: {e}"));
}

/// An enrolled agent: its id and key, and the ack token of its last
/// check-in.
struct Agent {
    creds: (String, String),
    ack_token: String,
    /// The output key of the policy it runs (for `_bulk`).
    output_key: String,
}

/// Check in as online (answered at once when a new revision is owed) and
/// acknowledge the POLICY_CHANGE, as an agent that applied it does.
async fn apply_policy(s: &Server, agent: &mut Agent) {
    let mut body = json!({"status": "online"});
    if !agent.ack_token.is_empty() {
        body["ack_token"] = json!(agent.ack_token);
    }
    let r = s.checkin(&agent.creds, body).await;
    assert_eq!(r.status, 200, "check-in: {}", r.body);
    let action = &r.body["actions"][0];
    assert_eq!(action["type"], "POLICY_CHANGE", "{}", r.body);
    agent.ack_token = r.body["ack_token"].as_str().unwrap_or("").to_owned();
    if let Some(outputs) = action["data"]["policy"]["outputs"].as_object() {
        if let Some(key) = outputs.values().find_map(|o| o["api_key"].as_str()) {
            agent.output_key = key.to_owned();
        }
    }
    let id = action["id"].as_str().unwrap().to_owned();
    assert_eq!(s.ack(&agent.creds, &[&id]).await.status, 200);
}

/// Wait (bounded) until the agent has acknowledged `revision` of its
/// policy: the real agent does so on its own.
async fn runs_revision(s: &Server, id: &str, revision: i64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (_, a) = s.get(&format!("/api/fleet/agents/{id}")).await;
        if a["item"]["policy_revision"] == revision && a["item"]["status"] == "online" {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the real agent never ran revision {revision}: {a}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Enrol one agent with `token` as host `name`, then check in once and
/// apply its policy.
async fn enrol_online(s: &Server, token: &str, name: &str) -> Agent {
    let r = s
        .fleet(
            Method::POST,
            "/api/fleet/agents/enroll",
            Some(token),
            Some(json!({"type": "PERMANENT", "metadata": {
                "local": {"elastic": {"agent": {"version": "9.6.0"}},
                          "host": {"hostname": name}, "os": {"name": "Debian GNU/Linux", "version": "12"}},
                "user_provided": {}, "tags": ["console", "e2e"]}})),
        )
        .await;
    assert_eq!(r.status, 200, "enrol: {}", r.body);
    let mut agent = Agent {
        creds: (
            r.body["item"]["id"].as_str().unwrap().to_owned(),
            r.body["item"]["access_api_key"]
                .as_str()
                .unwrap()
                .to_owned(),
        ),
        ack_token: String::new(),
        output_key: String::new(),
    };
    apply_policy(s, &mut agent).await;
    agent
}

/// `n` events `<message> <i>` into `logs-nginx.access-prod` with the
/// agent's output key, as its shipper would.
async fn ship(s: &Server, agent: &Agent, message: &str, n: usize) {
    use base64::Engine as _;
    let mut body = String::new();
    for i in 0..n {
        body.push_str(&format!(
            "{{\"create\":{{}}}}\n{}\n",
            json!({"message": format!("{message} {i}"), "agent": {"id": agent.creds.0}})
        ));
    }
    let key = base64::engine::general_purpose::STANDARD.encode(&agent.output_key);
    let r = reqwest::Client::new()
        .post(format!("{}/logs-nginx.access-prod/_bulk", s.url))
        .header("authorization", format!("ApiKey {key}"))
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r: serde_json::Value = r.json().await.unwrap();
    assert_eq!(r["errors"], false, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_works_through_the_console_in_chromium() {
    let Some(b) = flotilla_testkit::browser::browser() else {
        return;
    };
    let s = Server::sqlite();
    let driver = b.driver();
    let profile = tempfile::tempdir().unwrap();
    let c = browser(&driver.url, profile.path()).await;
    let mut shots = Shots::new();
    let app = format!("{}/app", s.url);

    // Signed out, every page leads to the sign-in page.
    for page in [
        "",
        "/agents",
        "/policies",
        "/tokens",
        "/integrations",
        "/integrations/nginx",
        "/integrations/nginx/add",
        "/data",
        "/data/logs-nginx.access-prod",
        "/settings",
        "/tasks",
        "/connectors",
    ] {
        c.goto(&format!("{app}{page}")).await.unwrap();
        assert_eq!(path_of(&c).await, "/app/sign-in", "{page}");
    }
    shots.take(&c, "sign-in").await;

    // A wrong key is refused on the page; the right one signs in.
    type_in(&c, "api_key", "not-a-key").await;
    click(&c, "form button[type=submit]").await;
    assert!(text_of(&c, "p.error").await.contains("unknown or revoked"));
    type_in(&c, "api_key", ADMIN_KEY).await;
    click(&c, "form button[type=submit]").await;
    wait_for_path(&c, "/app").await;
    heading(&c, "Overview").await;
    assert!(!c.current_url().await.unwrap().as_str().contains(ADMIN_KEY));
    // The cookie is out of scripts' reach, and nothing is kept in storage.
    let seen = c
        .execute(
            "return [document.cookie, window.localStorage.length, window.sessionStorage.length]",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(seen, json!(["", 0, 0]));
    // Keyboard: the first Tab reaches the skip link.
    c.find(Locator::Css("body"))
        .await
        .unwrap()
        .send_keys(TAB)
        .await
        .unwrap();
    let focused = c.active_element().await.unwrap();
    assert_eq!(focused.text().await.unwrap(), "Skip to content");
    shots.take(&c, "overview-empty").await;

    // A policy through the form.
    follow(&c, "Policies").await;
    follow(&c, "Create policy").await;
    heading(&c, "Create a policy").await;
    shots.take(&c, "policy-form").await;
    type_in(&c, "p-name", "Web servers").await;
    type_in(&c, "p-namespace", "prod").await;
    type_in(&c, "p-description", "The nginx hosts").await;
    click(&c, "main form button[type=submit]").await;
    heading(&c, "Web servers").await;
    let policy_path = path_of(&c).await;
    let policy_id = policy_path.rsplit('/').next().unwrap().to_owned();
    assert!(text_of(&c, "#h-permissions + p + pre")
        .await
        .contains("_elastic_agent_checks"));
    shots.take(&c, "policy").await;

    // nginx through the form generated from its variables: a required
    // field left empty is refused beside the field, then filled in.
    c.goto(&format!("{app}/integrations/nginx")).await.unwrap();
    heading(&c, "Nginx").await;
    shots.take(&c, "package").await;
    follow(&c, "Add to a policy").await;
    heading(&c, "Add Nginx to a policy").await;
    choose(&c, "a-policy", &policy_id).await;
    replace(&c, "#a-name", "nginx-web").await;
    let paths = "textarea[name='s:0:0:paths']";
    c.find(Locator::Css(paths))
        .await
        .unwrap()
        .clear()
        .await
        .unwrap();
    shots.take(&c, "integration-form").await;
    click(&c, "#a-submit").await;
    assert!(text_of(&c, ".field-error").await.contains("is required"));
    assert!(text_of(&c, "#form-error").await.contains("needs attention"));
    shots.take(&c, "integration-form-refused").await;
    replace(&c, paths, "/var/log/nginx/web-access.log").await;
    click(&c, "#a-submit").await;
    heading(&c, "Web servers").await;
    assert!(text_of(&c, "main").await.contains("nginx-web"));
    assert!(text_of(&c, "#h-permissions + p + pre")
        .await
        .contains("logs-nginx.access-prod"));

    // A token through the form: the secret once, with the command line.
    c.goto(&format!("{app}/tokens")).await.unwrap();
    choose(&c, "t-policy", &policy_id).await;
    type_in(&c, "t-name", "web rollout").await;
    type_in(&c, "t-expires", "7d").await;
    type_in(&c, "t-uses", "10").await;
    submit(&c, "form[action='/app/tokens'] button[type=submit]").await;
    let secret = text_of(&c, "#token-secret").await;
    assert!(secret.len() > 20, "{secret}");
    assert_eq!(
        text_of(&c, "#enroll-command").await,
        format!(
            "flotilla agent enroll --url {} --enrollment-token {secret}",
            s.url
        )
    );
    assert!(!c.current_url().await.unwrap().as_str().contains(&secret));
    shots.take(&c, "token-created").await;

    // The real agent enrols with the command line the page gave, and
    // runs; three more enrol over the fleet API (the test acks for them,
    // one at a time, to watch the rollout move).
    let command = text_of(&c, "#enroll-command").await;
    let agent_home = tempfile::tempdir().unwrap();
    let state = agent_home.path().join("state");
    let mut args: Vec<&str> = command.split_whitespace().skip(2).collect();
    assert_eq!(args[0], "enroll", "{command}");
    args.extend(["--tag", "console"]);
    let out = crate::agent::agent(&state, &args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let real_id = String::from_utf8_lossy(&out.stdout)
        .trim()
        .rsplit(' ')
        .next()
        .unwrap()
        .to_owned();
    let _real = crate::agent::spawn(crate::agent::agent(&state, &["run"]));
    let mut agents = Vec::new();
    for host in ["web-01", "web-02", "web-03"] {
        agents.push(enrol_online(&s, &secret, host).await);
    }
    runs_revision(&s, &real_id, 2).await;
    c.goto(&format!("{app}/agents?status=online"))
        .await
        .unwrap();
    let rows = c.find_all(Locator::Css("tbody tr")).await.unwrap();
    assert_eq!(rows.len(), 4);
    let table = text_of(&c, "table").await;
    for host in ["web-01", "web-02", "web-03"] {
        assert!(table.contains(host), "{table}");
    }
    assert!(table.contains("online") && table.contains("9.6.0"));
    shots.take(&c, "agents-online").await;

    // The filter form: by policy and tag, then a status with no agents.
    c.goto(&format!("{app}/agents")).await.unwrap();
    choose(&c, "f-policy", &policy_id).await;
    type_in(&c, "f-tag", "console").await;
    submit(&c, "form.filters button[type=submit]").await;
    c.wait()
        .for_element(Locator::XPath("//input[@id='f-tag' and @value='console']"))
        .await
        .unwrap();
    assert_eq!(c.find_all(Locator::Css("tbody tr")).await.unwrap().len(), 4);
    choose(&c, "f-status", "error").await;
    submit(&c, "form.filters button[type=submit]").await;
    assert_eq!(text_of(&c, "p.empty").await, "No agents match.");

    // The search box: a query joined to the filters; one that does not
    // parse says why, the query kept in its box.
    c.goto(&format!("{app}/agents")).await.unwrap();
    type_in(&c, "f-q", "hostname:web-0* and not hostname:web-02").await;
    submit(&c, "form.filters button[type=submit]").await;
    assert_eq!(c.find_all(Locator::Css("tbody tr")).await.unwrap().len(), 2);
    let table = text_of(&c, "#agents").await;
    assert!(
        !table.contains("web-02") && table.contains("web-03"),
        "{table}"
    );
    replace(&c, "#f-q", "tags:console or").await;
    submit(&c, "form.filters button[type=submit]").await;
    assert!(
        text_of(&c, "#query-error").await.contains("does not parse"),
        "the reason is on the page"
    );
    // Sorting by a column header, then the other way (the web hosts: the
    // real agent's host name is the machine's).
    c.goto(&format!("{app}/agents?q=hostname%3Aweb-*"))
        .await
        .unwrap();
    submit(&c, "th a.sort[href*='sort=hostname']").await;
    c.wait()
        .for_element(Locator::Css(
            "th[aria-sort='ascending'] a[href*='sort=hostname']",
        ))
        .await
        .unwrap();
    assert!(text_of(&c, "#agents tbody tr").await.contains("web-01"));
    submit(&c, "th a.sort[href*='sort=hostname']").await;
    c.wait()
        .for_element(Locator::Css("th[aria-sort='descending']"))
        .await
        .unwrap();
    assert!(text_of(&c, "#agents tbody tr").await.contains("web-03"));
    shots.take(&c, "agents-sorted").await;

    // An agent's page.
    c.goto(&format!("{app}/agents")).await.unwrap();
    follow(&c, "web-02").await;
    heading(&c, "web-02").await;
    let facts = text_of(&c, "dl.facts").await;
    assert!(
        facts.contains("Debian GNU/Linux 12") && facts.contains("Web servers"),
        "{facts}"
    );
    assert!(facts.contains("2 (current)"), "{facts}");
    shots.take(&c, "agent").await;

    // Change the policy and watch its rollout reach every agent.
    c.goto(&format!("{}{policy_path}", s.url)).await.unwrap();
    let rollout = text_of(&c, "#rollout").await;
    assert!(rollout.contains("100 % · 4 of 4"), "{rollout}");
    follow(&c, "Edit policy").await;
    heading(&c, "Edit Web servers").await;
    replace(
        &c,
        "#p-description",
        "The nginx hosts, now with a longer timeout",
    )
    .await;
    replace(&c, "#p-inactivity", "86400").await;
    click(&c, "main form button[type=submit]").await;
    heading(&c, "Web servers").await;
    assert!(text_of(&c, "#h-rollout").await.contains("revision 3"));
    assert!(text_of(&c, "#rollout").await.contains(" of 4"));
    shots.take(&c, "rollout-started").await;
    // The real agent takes the change on its own; each of the others when
    // the test acks for it. The page follows, to 100 %.
    for (n, agent) in agents.iter_mut().enumerate() {
        apply_policy(&s, agent).await;
        c.refresh().await.unwrap();
        let shown = text_of(&c, "#rollout").await;
        let (with_real, without) = (format!("{} of 4", n + 2), format!("{} of 4", n + 1));
        assert!(
            shown.contains(&with_real) || shown.contains(&without),
            "{shown}"
        );
    }
    runs_revision(&s, &real_id, 3).await;
    c.refresh().await.unwrap();
    assert!(text_of(&c, "#rollout").await.contains("100 % · 4 of 4"));
    // Over time: the chart and its table reach all three; by revision,
    // every agent on the current one.
    c.find(Locator::Css("#rollout-chart"))
        .await
        .expect("the rollout chart");
    let by_revision = text_of(&c, "#rollout-by-revision").await;
    assert!(
        by_revision.contains("3 (current) 4 (100 %)"),
        "{by_revision}"
    );
    click(&c, "#h-rollout ~ details summary").await;
    let over_time = text_of(&c, "#rollout-table").await;
    assert!(over_time.contains("4 100 %"), "{over_time}");
    shots.take(&c, "rollout-done").await;

    // The overview counts them; the other pages render.
    c.goto(&app).await.unwrap();
    assert!(text_of(&c, "svg.chart title").await.contains("4 in all"));
    assert!(text_of(&c, "#failed-policy-changes")
        .await
        .contains("No agent failed to apply its policy."));
    shots.take(&c, "overview").await;
    c.goto(&format!("{app}/policies")).await.unwrap();
    assert!(text_of(&c, "table").await.contains("Web servers"));
    shots.take(&c, "policies").await;
    c.goto(&format!("{app}/integrations")).await.unwrap();
    assert!(text_of(&c, "table").await.contains("nginx"));
    shots.take(&c, "integrations").await;
    // Events shipped by an agent, in the event browser; the live tail
    // shows one written while it polls.
    ship(&s, &agents[0], "GET /index.html 200", 3).await;
    c.goto(&format!("{app}/data")).await.unwrap();
    heading(&c, "Data").await;
    shots.take(&c, "data").await;
    follow(&c, "logs-nginx.access-prod").await;
    heading(&c, "Events · logs-nginx.access-prod").await;
    assert!(text_of(&c, ".pager").await.contains("3 in all"));
    assert_eq!(
        c.find_all(Locator::Css("#e-events tbody tr"))
            .await
            .unwrap()
            .len(),
        3
    );
    type_in(&c, "e-q", "200 2").await;
    choose(&c, "e-range", "1h").await;
    submit(&c, "form.filters button[type=submit]").await;
    c.wait()
        .for_element(Locator::XPath("//input[@id='e-q' and @value='200 2']"))
        .await
        .unwrap();
    assert_eq!(
        c.find_all(Locator::Css("#e-events tbody tr"))
            .await
            .unwrap()
            .len(),
        1
    );
    c.goto(&format!("{app}/data/logs-nginx.access-prod"))
        .await
        .unwrap();
    click(&c, "#e-tail").await;
    c.wait()
        .for_element(Locator::XPath(
            "//*[@id='e-tail-status' and starts-with(normalize-space(), 'Live')]",
        ))
        .await
        .unwrap();
    ship(&s, &agents[0], "POST /tail-me 201", 1).await;
    c.wait()
        .at_most(std::time::Duration::from_secs(20))
        .for_element(Locator::XPath(
            "//tr[contains(@class,'new')]//summary[contains(., 'POST /tail-me 201')]",
        ))
        .await
        .expect("the live tail shows the new event");
    shots.take(&c, "events-live").await;
    click(&c, "#e-tail").await;
    // The agent's page lists the events it sent, newest first.
    c.goto(&format!("{app}/agents/{}", agents[0].creds.0))
        .await
        .unwrap();
    let events = text_of(&c, "#agent-events").await;
    assert!(
        events.contains("POST /tail-me 201") && events.contains("logs-nginx.access-prod"),
        "{events}"
    );
    shots.take(&c, "agent-events").await;
    c.goto(&format!("{app}/settings")).await.unwrap();
    let settings = text_of(&c, "main").await;
    assert!(settings.contains("elasticsearch"), "{settings}");
    assert!(settings.contains("this session"), "{settings}");
    shots.take(&c, "settings").await;
    // An output and an operator key through the settings forms; the key
    // is shown once and revoked from the list.
    click(&c, "details summary").await;
    type_in(&c, "o-name", "Archive").await;
    type_in(&c, "o-hosts", "https://archive:9200").await;
    submit(&c, "#add-output button[type=submit]").await;
    assert!(text_of(&c, "#outputs").await.contains("Archive"));
    type_in(&c, "k-name", "console robot").await;
    submit(&c, "form[action='/app/settings/keys'] button[type=submit]").await;
    let key = text_of(&c, "#key-secret").await;
    assert!(key.len() > 20, "{key}");
    shots.take(&c, "settings-key-created").await;
    submit(&c, "button[aria-label='Revoke key console robot']").await;
    let keys = text_of(&c, "#keys").await;
    assert!(
        keys.contains("console robot") && keys.contains("revoked"),
        "{keys}"
    );
    assert!(!text_of(&c, "main").await.contains(&key));
    // The task manager: health and the server's own tasks, run now,
    // disabled and enabled again through the forms.
    c.goto(&format!("{app}/tasks")).await.unwrap();
    heading(&c, "Tasks").await;
    assert!(text_of(&c, "#task-health").await.contains("Drift"));
    assert!(!c
        .find_all(Locator::Css("#tasks tbody tr"))
        .await
        .unwrap()
        .is_empty());
    shots.take(&c, "tasks").await;
    submit(
        &c,
        "#tasks tbody tr:first-child form[action$='/run'] button",
    )
    .await;
    assert!(text_of(&c, "#task-done")
        .await
        .contains("run as soon as possible"));
    submit(
        &c,
        "#tasks tbody tr:first-child form[action$='/disable'] button",
    )
    .await;
    assert_eq!(text_of(&c, "#task-done").await, "Disabled.");
    assert!(text_of(&c, "#tasks tbody tr:first-child")
        .await
        .contains("disabled"));
    submit(
        &c,
        "#tasks tbody tr:first-child form[action$='/enable'] button",
    )
    .await;
    assert_eq!(text_of(&c, "#task-done").await, "Enabled.");
    c.goto(&format!("{app}/connectors")).await.unwrap();
    heading(&c, "Cloud connectors").await;
    shots.take(&c, "connectors").await;
    c.goto(&format!("{app}/tokens")).await.unwrap();
    let listed = text_of(&c, "main").await;
    assert!(listed.contains("web rollout") && !listed.contains(&secret));
    assert!(listed.contains("4 of 10"), "{listed}");
    shots.take(&c, "tokens").await;

    // A narrow window: one column, nothing cut off.
    c.set_window_size(400, 900).await.unwrap();
    c.goto(&format!("{app}/agents")).await.unwrap();
    let width = c
        .execute("return document.documentElement.scrollWidth", vec![])
        .await
        .unwrap();
    assert!(
        width.as_u64().unwrap() <= 400,
        "no page-wide horizontal scroll: {width}"
    );
    shots.take(&c, "agents-narrow").await;
    c.set_window_size(1280, 1000).await.unwrap();

    // Sign out: the session is gone, pages lead to sign-in again.
    click(&c, "form.sign-out button").await;
    wait_for_path(&c, "/app/sign-in").await;
    for page in ["", "/agents", policy_path.trim_start_matches("/app")] {
        c.goto(&format!("{app}{page}")).await.unwrap();
        assert_eq!(path_of(&c).await, "/app/sign-in", "{page}");
    }
    c.close().await.unwrap();
    drop(driver);
}

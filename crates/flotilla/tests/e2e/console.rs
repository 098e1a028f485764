//! The operator console in a real browser: headless Chromium (Debian's
//! `chromium`, driven over WebDriver by `chromedriver`) against the real
//! server binary. One browser session walks through sign-in, a policy and
//! a token made through the forms, agents enrolled over the fleet API and
//! seen online, every page, a narrow window and sign-out; a screenshot of
//! each page is saved for review (the path is printed).

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
    let text = c
        .wait()
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .text()
        .await
        .unwrap();
    text.split_whitespace().collect::<Vec<_>>().join(" ")
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
    let id = action["id"].as_str().unwrap().to_owned();
    assert_eq!(s.ack(&agent.creds, &[&id]).await.status, 200);
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
    };
    apply_policy(s, &mut agent).await;
    agent
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
        "/data",
        "/settings",
    ] {
        c.goto(&format!("{app}{page}")).await.unwrap();
        assert_eq!(path_of(&c).await, "/app/sign-in", "{page}");
    }
    shots.take(&c, "sign-in").await;

    // A wrong key is refused on the page; the right one signs in.
    let key = c.find(Locator::Id("api_key")).await.unwrap();
    key.send_keys("not-a-key").await.unwrap();
    c.find(Locator::Css("form button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert!(text_of(&c, "p.error").await.contains("unknown or revoked"));
    let key = c.find(Locator::Id("api_key")).await.unwrap();
    key.send_keys(ADMIN_KEY).await.unwrap();
    c.find(Locator::Css("form button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
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
    c.find(Locator::LinkText("Policies"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    c.find(Locator::LinkText("Create policy"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    heading(&c, "Create a policy").await;
    shots.take(&c, "policy-form").await;
    c.find(Locator::Id("p-name"))
        .await
        .unwrap()
        .send_keys("Web servers")
        .await
        .unwrap();
    c.find(Locator::Id("p-namespace"))
        .await
        .unwrap()
        .send_keys("prod")
        .await
        .unwrap();
    c.find(Locator::Id("p-description"))
        .await
        .unwrap()
        .send_keys("The nginx hosts")
        .await
        .unwrap();
    c.find(Locator::Css("main form button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    heading(&c, "Web servers").await;
    let policy_path = path_of(&c).await;
    let policy_id = policy_path.rsplit('/').next().unwrap().to_owned();
    assert!(text_of(&c, "#h-permissions + p + pre")
        .await
        .contains("_elastic_agent_checks"));
    shots.take(&c, "policy").await;

    // A token through the form: the secret once, with the command line.
    c.goto(&format!("{app}/tokens")).await.unwrap();
    c.find(Locator::Id("t-policy"))
        .await
        .unwrap()
        .select_by_value(&policy_id)
        .await
        .unwrap();
    c.find(Locator::Id("t-name"))
        .await
        .unwrap()
        .send_keys("web rollout")
        .await
        .unwrap();
    c.find(Locator::Css(
        "form[action='/app/tokens'] button[type=submit]",
    ))
    .await
    .unwrap()
    .click()
    .await
    .unwrap();
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

    // Agents enrol with it over the fleet API and check in.
    let mut agents = Vec::new();
    for host in ["web-01", "web-02", "web-03"] {
        agents.push(enrol_online(&s, &secret, host).await);
    }
    c.goto(&format!("{app}/agents?status=online"))
        .await
        .unwrap();
    let rows = c.find_all(Locator::Css("tbody tr")).await.unwrap();
    assert_eq!(rows.len(), 3);
    let table = text_of(&c, "table").await;
    for host in ["web-01", "web-02", "web-03"] {
        assert!(table.contains(host), "{table}");
    }
    assert!(table.contains("online") && table.contains("9.6.0"));
    shots.take(&c, "agents-online").await;

    // The filter form: by policy and tag, then a status with no agents.
    c.goto(&format!("{app}/agents")).await.unwrap();
    c.find(Locator::Id("f-policy"))
        .await
        .unwrap()
        .select_by_value(&policy_id)
        .await
        .unwrap();
    c.find(Locator::Id("f-tag"))
        .await
        .unwrap()
        .send_keys("console")
        .await
        .unwrap();
    c.find(Locator::Css("form.filters button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    c.wait()
        .for_element(Locator::XPath("//input[@id='f-tag' and @value='console']"))
        .await
        .unwrap();
    assert_eq!(c.find_all(Locator::Css("tbody tr")).await.unwrap().len(), 3);
    c.find(Locator::Id("f-status"))
        .await
        .unwrap()
        .select_by_value("error")
        .await
        .unwrap();
    c.find(Locator::Css("form.filters button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert_eq!(text_of(&c, "p.empty").await, "No agents match.");

    // An agent's page.
    c.goto(&format!("{app}/agents")).await.unwrap();
    c.find(Locator::LinkText("web-02"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    heading(&c, "web-02").await;
    let facts = text_of(&c, "dl.facts").await;
    assert!(
        facts.contains("Debian GNU/Linux 12") && facts.contains("Web servers"),
        "{facts}"
    );
    assert!(facts.contains("1 (current)"), "{facts}");
    shots.take(&c, "agent").await;

    // Change the policy and watch its rollout reach every agent.
    c.goto(&format!("{}{policy_path}", s.url)).await.unwrap();
    let rollout = text_of(&c, "#rollout").await;
    assert!(rollout.contains("100 % · 3 of 3"), "{rollout}");
    c.find(Locator::LinkText("Edit policy"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    heading(&c, "Edit Web servers").await;
    let description = c.find(Locator::Id("p-description")).await.unwrap();
    description.clear().await.unwrap();
    description
        .send_keys("The nginx hosts, now with a longer timeout")
        .await
        .unwrap();
    let timeout = c.find(Locator::Id("p-inactivity")).await.unwrap();
    timeout.clear().await.unwrap();
    timeout.send_keys("86400").await.unwrap();
    c.find(Locator::Css("main form button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    heading(&c, "Web servers").await;
    assert!(text_of(&c, "#h-rollout").await.contains("revision 2"));
    assert!(text_of(&c, "#rollout").await.contains("0 % · 0 of 3"));
    shots.take(&c, "rollout-started").await;
    for (n, agent) in agents.iter_mut().enumerate() {
        apply_policy(&s, agent).await;
        c.refresh().await.unwrap();
        let want = format!("{} % · {} of 3", (n + 1) * 100 / 3, n + 1);
        assert!(text_of(&c, "#rollout").await.contains(&want), "{want}");
    }
    assert!(text_of(&c, "#rollout").await.contains("100 % · 3 of 3"));
    shots.take(&c, "rollout-done").await;

    // The overview counts them; the other pages render.
    c.goto(&app).await.unwrap();
    assert!(text_of(&c, "svg.chart title").await.contains("3 in all"));
    shots.take(&c, "overview").await;
    c.goto(&format!("{app}/policies")).await.unwrap();
    assert!(text_of(&c, "table").await.contains("Web servers"));
    shots.take(&c, "policies").await;
    c.goto(&format!("{app}/integrations")).await.unwrap();
    assert!(text_of(&c, "table").await.contains("nginx"));
    shots.take(&c, "integrations").await;
    c.goto(&format!("{app}/data")).await.unwrap();
    heading(&c, "Data").await;
    shots.take(&c, "data").await;
    c.goto(&format!("{app}/settings")).await.unwrap();
    let settings = text_of(&c, "main").await;
    assert!(settings.contains("elasticsearch"), "{settings}");
    assert!(settings.contains("this session"), "{settings}");
    shots.take(&c, "settings").await;
    c.goto(&format!("{app}/tokens")).await.unwrap();
    let listed = text_of(&c, "main").await;
    assert!(listed.contains("web rollout") && !listed.contains(&secret));
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
    c.find(Locator::Css("form.sign-out button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for_path(&c, "/app/sign-in").await;
    for page in ["", "/agents", policy_path.trim_start_matches("/app")] {
        c.goto(&format!("{app}{page}")).await.unwrap();
        assert_eq!(path_of(&c).await, "/app/sign-in", "{page}");
    }
    c.close().await.unwrap();
    drop(driver);
}

//! Overload protection on the fleet routes: over a route's rate or cap the
//! server sheds with 429, the contract's JSON body and `Retry-After`; agents
//! already admitted keep being served; it recovers on its own.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::fleet::{assert_fleet_error, policy_change, quick_polls};
use crate::support::{FleetResponse, Server};

fn retry_after(r: &FleetResponse) -> u64 {
    r.headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no Retry-After in seconds: {:?}", r.headers))
}

async fn refused_metric(s: &Server, route: &str, reason: &str) -> f64 {
    let text = reqwest::get(format!("{}/metrics", s.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let prefix = "flotilla_fleet_refused_total{";
    text.lines()
        .filter(|l| {
            l.starts_with(prefix)
                && l.contains(&format!("route=\"{route}\""))
                && l.contains(&format!("reason=\"{reason}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn enroll_body() -> Value {
    json!({"type": "PERMANENT", "metadata": {"local": {"elastic": {"agent": {"version": "9.6.0"}}}, "user_provided": {}}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrolment_over_its_rate_is_refused_with_retry_after_and_recovers() {
    let s = Server::builder()
        .env("FLOTILLA_FLEET__LIMITS__ENROLL__RATE", "0.5")
        .env("FLOTILLA_FLEET__LIMITS__ENROLL__BURST", "2")
        .start()
        .unwrap();
    let token = s.policy_with_token("web").await;
    let attempt = || {
        s.fleet(
            reqwest::Method::POST,
            "/api/fleet/agents/enroll",
            Some(&token),
            Some(enroll_body()),
        )
    };
    let (r1, r2, r3, r4, r5, r6) = tokio::join!(
        attempt(),
        attempt(),
        attempt(),
        attempt(),
        attempt(),
        attempt()
    );
    let results = [r1, r2, r3, r4, r5, r6];
    let admitted = results.iter().filter(|r| r.status == 200).count();
    let refused: Vec<_> = results.iter().filter(|r| r.status == 429).collect();
    assert!(admitted >= 2, "the burst is admitted");
    assert!(refused.len() >= 3, "the rest is shed, not queued");
    assert_eq!(admitted + refused.len(), 6);
    for r in &refused {
        assert_fleet_error(r, 429, "RateLimit");
        assert!((1..=10).contains(&retry_after(r)));
    }
    assert!(refused_metric(&s, "enroll", "rate").await >= refused.len() as f64);
    // Honouring Retry-After, an enrolment gets through.
    let started = Instant::now();
    loop {
        let r = s
            .fleet(
                reqwest::Method::POST,
                "/api/fleet/agents/enroll",
                Some(&token),
                Some(enroll_body()),
            )
            .await;
        if r.status == 200 {
            break;
        }
        assert_fleet_error(&r, 429, "RateLimit");
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "never recovered"
        );
        tokio::time::sleep(Duration::from_secs(retry_after(&r))).await;
    }
}

/// Enrolled, first policy acked: the agent's check-in holds a slot.
async fn admitted(s: &Server, token: &str) -> (String, String) {
    let agent = s.enroll(token).await;
    let first = s.checkin(&agent, json!({"status": "online"})).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let change = policy_change(&first).clone();
    s.ack(&agent, &[change["id"].as_str().unwrap()]).await;
    agent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admitted_agents_keep_being_served_while_newcomers_are_refused() {
    let s = quick_polls(Server::builder())
        .env("FLOTILLA_FLEET__LIMITS__CHECKIN__MAX", "2")
        .env("FLOTILLA_FLEET__LONG_POLL_RESERVE", "5s")
        .start()
        .unwrap();
    let token = s.policy_with_token("web").await;
    let a = admitted(&s, &token).await;
    let b = admitted(&s, &token).await;
    let c = s.enroll(&token).await;
    let waiting = json!({"status": "online", "agent_policy_id": "web", "policy_revision_idx": 2});

    // Both slots are a's and b's: the newcomer is refused at once.
    let r = s.checkin(&c, json!({"status": "online"})).await;
    assert_fleet_error(&r, 429, "MaxLimit");
    assert!(retry_after(&r) >= 1);

    // a and b keep polling (1 s polls), each time served, while c keeps
    // being refused.
    let poll = |agent: (String, String)| {
        let s = &s;
        let waiting = waiting.clone();
        async move {
            for _ in 0..3 {
                let r = s.checkin(&agent, waiting.clone()).await;
                assert_eq!(r.status, 200, "an admitted agent refused: {}", r.body);
            }
        }
    };
    let newcomer = async {
        let mut refused = 0;
        for _ in 0..5 {
            let r = s.checkin(&c, json!({"status": "online"})).await;
            assert_fleet_error(&r, 429, "MaxLimit");
            refused += 1;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        refused
    };
    let ((), (), refused) = tokio::join!(poll(a), poll(b), newcomer);
    assert_eq!(refused, 5);
    assert!(refused_metric(&s, "checkin", "concurrency").await >= 6.0);

    // a and b gone: their reservations lapse and c is admitted, with no
    // operator action.
    let started = Instant::now();
    loop {
        let r = s.checkin(&c, json!({"status": "online"})).await;
        if r.status == 200 {
            assert_eq!(policy_change(&r)["id"], "policy:web:2");
            break;
        }
        assert_fleet_error(&r, 429, "MaxLimit");
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "never recovered"
        );
        tokio::time::sleep(Duration::from_secs(retry_after(&r))).await;
    }
    // Probes were never refused.
    assert_eq!(s.get("/healthz").await.0, 200);
}

#[tokio::test]
async fn bad_limits_stop_the_start_with_one_line() {
    for (key, value) in [
        ("FLOTILLA_FLEET__LIMITS__CHECKIN__MAX", "0"),
        ("FLOTILLA_FLEET__LIMITS__ACK__RATE", "-1"),
        ("FLOTILLA_FLEET__EXPECTED_AGENTS", "0"),
        ("FLOTILLA_FLEET__LIMITS__ENROLL__BURST", "many"),
    ] {
        let out = crate::support::command()
            .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(std::env::temp_dir().join(format!("flotilla-bad-limits-{}", std::process::id())))
            .env(key, value)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{key}={value} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let name = key
            .trim_start_matches("FLOTILLA_")
            .to_ascii_lowercase()
            .replace("__", ".");
        assert!(stderr.contains(&name), "{key}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

//! End to end, in a real browser: headless Chromium, driven over WebDriver
//! (`chromedriver`), opens the collector's dashboard of a running cluster.
//! Both app servers appear, a job's progress advances on the page while
//! `client worker`s work it, the page fits a phone's width, and a SIGKILLed
//! app server shows as gone within the collector's eviction time. The test takes the screenshot in
//! `docs/` when `DSF_DASHBOARD_SCREENSHOT` names where to write it.
//!
//! Chromium and chromedriver come from Debian (`chromium`,
//! `chromium-driver`; `scripts/need chromium`). Without them the test
//! says so and passes, unless `DSF_NEED_CHROMIUM` is set (`scripts/test`
//! sets it, and installs them).

mod e2e;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use e2e::{free_port, wait_for, Cluster, Proc, Spec, DEAD_AFTER, WAIT};
use serde_json::{json, Value};

const CHROMIUM: &str = "/usr/bin/chromium";
const DRIVER: &str = "/usr/bin/chromedriver";

/// A headless Chromium session, ended (and chromedriver stopped) on drop.
struct Browser {
    driver: Child,
    base: String,
    session: String,
}

impl Browser {
    /// Starts chromedriver on a free loopback port and a headless session.
    fn start() -> Browser {
        let port = free_port();
        let driver = Command::new(DRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let base = format!("http://127.0.0.1:{port}");
        wait_for("chromedriver to listen", WAIT, || {
            ureq::get(&format!("{base}/status")).call().ok()
        });
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,900"],
            },
        }}});
        let reply: Value = ureq::post(&format!("{base}/session"))
            .send_json(caps)
            .expect("a browser session")
            .into_json()
            .unwrap();
        let session = reply["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session id in {reply}"))
            .to_string();
        Browser {
            driver,
            base,
            session,
        }
    }

    fn post(&self, what: &str, body: Value) -> Value {
        let url = format!("{}/session/{}/{what}", self.base, self.session);
        let reply: Value = ureq::post(&url)
            .send_json(body)
            .unwrap_or_else(|e| panic!("WebDriver {what}: {e}"))
            .into_json()
            .unwrap();
        reply["value"].clone()
    }

    fn open(&self, url: &str) {
        self.post("url", json!({ "url": url }));
    }

    /// Runs `script` (a function body) in the page; returns its value.
    fn eval(&self, script: &str) -> Value {
        self.post("execute/sync", json!({ "script": script, "args": [] }))
    }

    /// What the page shows of each node: id → state.
    fn node_states(&self) -> Vec<(String, String)> {
        let v = self.eval(
            "return [...document.querySelectorAll('tr[data-node]')].map(r => [r.dataset.node, r.dataset.state]);",
        );
        v.as_array()
            .unwrap()
            .iter()
            .map(|p| (p[0].as_str().unwrap().into(), p[1].as_str().unwrap().into()))
            .collect()
    }

    /// The job's row: (done, total, width of its progress bar in %).
    fn job_row(&self, job: u64) -> Option<(u64, u64, f64)> {
        let v = self.eval(&format!(
            "const r = document.querySelector('tr[data-job=\"{job}\"]'); if (!r) return null;
             const bar = r.querySelector('.bar > span');
             return [Number(r.dataset.done), Number(r.dataset.total), parseFloat(bar.style.width)];"
        ));
        let a = v.as_array()?;
        Some((a[0].as_u64()?, a[1].as_u64()?, a[2].as_f64()?))
    }

    fn screenshot(&self) -> Vec<u8> {
        let url = format!("{}/session/{}/screenshot", self.base, self.session);
        let reply: Value = ureq::get(&url).call().unwrap().into_json().unwrap();
        base64::engine::general_purpose::STANDARD
            .decode(reply["value"].as_str().expect("a base64 PNG"))
            .unwrap()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let url = format!("{}/session/{}", self.base, self.session);
        let _ = ureq::delete(&url).call();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Whether the browser is here; if not, whether that fails the test.
fn browser_present() -> bool {
    let present = [CHROMIUM, DRIVER]
        .iter()
        .all(|p| std::path::Path::new(p).exists());
    if !present {
        assert!(
            std::env::var_os("DSF_NEED_CHROMIUM").is_none(),
            "DSF_NEED_CHROMIUM is set but {CHROMIUM} or {DRIVER} is missing: run scripts/need chromium (Debian: chromium, chromium-driver)"
        );
        eprintln!(
            "skipping the dashboard test: {CHROMIUM} or {DRIVER} is missing (Debian: apt-get install chromium chromium-driver, or scripts/need chromium)"
        );
    }
    present
}

fn worker(cluster: &Cluster) -> Proc {
    // A tenth of a second a task, two at a time: the job takes seconds, so
    // the page sees it move.
    let args = [
        "worker",
        "--exec",
        "read p; sleep 0.1; printf '{}'",
        "--concurrency",
        "2",
        "--id",
        "dash",
    ];
    cluster.spawn_client("worker", &args)
}

#[test]
fn the_dashboard_shows_nodes_a_job_moving_and_a_killed_node_gone() {
    if !browser_present() {
        return;
    }
    let mut cluster = Cluster::start(Spec {
        apps: 2,
        balancers: 1,
        ..Spec::default()
    });
    let browser = Browser::start();
    browser.open(&cluster.dashboard_url());
    let both: Vec<(String, String)> = ["app-0", "app-1"]
        .iter()
        .map(|id| (id.to_string(), "up".to_string()))
        .collect();
    wait_for("both app servers up on the page", WAIT, || {
        let mut states = browser.node_states();
        states.sort();
        (states == both).then_some(())
    });

    // A job of 120 tasks, worked at about 20 a second.
    let job = cluster.submit_job("dash", 120);
    let mut w = worker(&cluster);
    let (first, total, width) = wait_for("the job under way on the page", WAIT, || {
        browser.job_row(job).filter(|r| r.0 > 0 && r.0 < r.1)
    });
    assert_eq!(total, 120);
    assert!(
        (width - first as f64 * 100.0 / 120.0).abs() < 0.01,
        "the bar is {width} % for {first} of 120"
    );
    wait_for("the job's progress advancing on the page", WAIT, || {
        browser.job_row(job).filter(|r| r.0 > first)
    });
    let png = browser.screenshot();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "a PNG screenshot");
    if let Some(path) = std::env::var_os("DSF_DASHBOARD_SCREENSHOT") {
        std::fs::write(&path, &png).unwrap();
    }
    // On a phone-sized screen the page does not scroll sideways (wide
    // tables scroll inside their card).
    browser.post("window/rect", json!({"width": 390, "height": 844}));
    let fits = browser.eval("return [document.documentElement.scrollWidth, window.innerWidth];");
    let (page, screen) = (fits[0].as_u64().unwrap(), fits[1].as_u64().unwrap());
    assert!(screen <= 400, "the window became phone-sized: {screen}");
    assert!(
        page <= screen,
        "the page is {page} px wide on a {screen} px screen"
    );

    // A node SIGKILLed shows as gone once the collector evicts it.
    cluster.app(1).kill();
    let killed = Instant::now();
    let dead_after = Duration::from_secs(DEAD_AFTER.trim_end_matches('s').parse().unwrap());
    // Eviction comes within dead_after of its last heartbeat (a second
    // before the kill at most); the page polls every second.
    wait_for(
        "app-1 gone on the page",
        dead_after + Duration::from_secs(3),
        || {
            browser
                .node_states()
                .contains(&("app-1".into(), "gone".into()))
                .then_some(())
        },
    );
    eprintln!("app-1 shown gone {:?} after its SIGKILL", killed.elapsed());
    assert!(browser
        .node_states()
        .contains(&("app-0".into(), "up".into())));
    let changes = browser.eval(
        "return [...document.querySelectorAll('#history li[data-event]')].map(l => l.dataset.event + ' ' + l.textContent);",
    );
    assert!(
        changes
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c.as_str().unwrap().starts_with("evicted")
                && c.as_str().unwrap().contains("app-1")),
        "{changes}"
    );
    w.kill();
}

//! The dashboard in a real browser: headless Chromium (Debian's `chromium`) driven by npm's
//! playwright-core, both installed by `scripts/ops-tools.sh`. Against the real binary: the page
//! loads without a script error, its history charts are full on the first load (server-side
//! history, not points gathered by the tab), an alert the test provokes appears, the redrive
//! button moves messages, the page fits 420 px, and with security on a monitor-only user gets
//! the actions disabled. Saves a screenshot to `target/dashboard.png` (`docs/dashboard.png` is a
//! copy of one).

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::{Server, http_json, http_publish as publish, ops_tool, wait_until};
use serde_json::{Value, json};

fn target_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../target")),
        std::path::PathBuf::from,
    )
}

/// The browser side: one scenario, its findings printed as one JSON line.
const SCRIPT: &str = r##"
const { chromium } = require("playwright-core");
const [url, shot, mode] = process.argv.slice(2);
(async () => {
  const browser = await chromium.launch({ executablePath: process.env.CHROMIUM,
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"] });
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 1000 },
    httpCredentials: process.env.LEVEE_USER ? { username: process.env.LEVEE_USER, password: process.env.LEVEE_PASSWORD } : undefined });
  const page = await ctx.newPage();
  const errors = [];
  page.on("pageerror", e => errors.push(String(e)));
  page.on("console", m => { if (m.type() === "error" && !m.text().startsWith("Failed to load resource")) errors.push(m.text()); });
  // Every answer the page asked for must succeed (the browser's own favicon probe aside).
  page.on("response", r => { if (r.status() >= 400 && !r.url().endsWith("/favicon.ico")) errors.push(r.status() + " " + r.url()); });
  await page.goto(url);
  const card = page.locator('section.card[data-queue="orders-dlq"]');
  await card.locator("canvas.depth[data-first-points]").waitFor({ timeout: 20000 });
  const out = { errors };
  out.firstPoints = Number(await card.locator("canvas.depth").getAttribute("data-first-points"));
  out.ratePoints = Number(await card.locator("canvas.rates").getAttribute("data-points"));
  out.refreshes = Number(await page.evaluate(() => document.body.dataset.refreshes || 0));
  if (mode === "viewer") {
    await page.waitForFunction(() => document.querySelector('section.card[data-queue="orders-dlq"] button[data-act=move]').disabled, null, { timeout: 10000 });
    out.disabled = await card.locator("button[data-act]").evaluateAll(bs => bs.filter(b => b.disabled).map(b => b.dataset.act));
  } else {
    await page.locator('.alert[data-rule="dlq"][data-queue="orders"]').waitFor({ timeout: 20000 });
    out.alertText = await page.locator('.alert[data-rule="dlq"]').innerText();
    out.tile = await page.locator("#o-alerts").innerText();
    out.connections = await page.locator("#conn-table").innerText();
    out.replaced = await page.locator('section.card[data-queue="sensors"] .figs').innerText();
    await page.waitForFunction(() => {
      const s = document.querySelector('section.card[data-queue="orders-dlq"] select[data-role=target]');
      return s && s.value === "orders";
    }, null, { timeout: 10000 });
    await page.screenshot({ path: shot, fullPage: true });
    await card.locator("button[data-act=move]").click();
    await card.locator(".out", { hasText: "moved" }).waitFor({ timeout: 10000 });
    out.moved = await card.locator(".out").innerText();
    await page.setViewportSize({ width: 420, height: 900 });
    await page.waitForTimeout(50);
    out.narrowScrollWidth = await page.evaluate(() => document.documentElement.scrollWidth);
  }
  console.log(JSON.stringify(out));
  await browser.close();
})().catch(e => { console.error(String(e && e.stack || e)); process.exit(1); });
"##;

fn run_browser(server: &Server, mode: &str, login: Option<(&str, &str)>) -> Value {
    let chromium = ops_tool("chromium");
    let modules = ops_tool("playwright");
    let dir = target_dir().join("dashboard-test");
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("run.js");
    std::fs::write(&script, SCRIPT).unwrap();
    let shot = target_dir().join("dashboard.png");
    let mut cmd = Command::new("node");
    cmd.arg(&script)
        .arg(format!("http://{}/", server.http))
        .arg(&shot)
        .arg(mode)
        .env("NODE_PATH", &modules)
        .env("CHROMIUM", &chromium)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some((u, p)) = login {
        cmd.env("LEVEE_USER", u).env("LEVEE_PASSWORD", p);
    }
    let out = cmd.output().expect("running node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "browser script failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(stdout.trim().lines().last().unwrap()).unwrap();
    assert_eq!(v["errors"], json!([]), "script errors in the page: {v}");
    v
}

fn put(server: &Server, path: &str, body: Value) {
    let (st, v) = http_json(server, "PUT", path, Some(&body));
    assert!(st == 201 || st == 200, "{path}: {st} {v}");
}

fn history_len(server: &Server, queue: &str) -> usize {
    let (_, h) = http_json(server, "GET", &format!("/api/queues/{queue}/history"), None);
    h["points"].as_array().map_or(0, Vec::len)
}

/// Queues with some traffic, a dead-letter queue holding 3 messages and a rule watching it.
fn populate(server: &Server) {
    put(
        server,
        "/api/queues/orders-dlq",
        json!({"durability": "memory"}),
    );
    put(
        server,
        "/api/queues/orders",
        json!({"dead_letter": "orders-dlq", "fsync": {"interval_ms": 50}}),
    );
    put(
        server,
        "/api/queues/sensors",
        json!({"overflow": "conflate-by-key", "max_messages": 16, "durability": "memory"}),
    );
    for i in 0..3 {
        publish(
            server,
            "orders-dlq",
            json!({"payload": format!("failed order {i}")}),
        );
    }
    for i in 0..20 {
        publish(server, "orders", json!({"payload": format!("order {i}")}));
        let id = ["TEMP_01", "TEMP_02", "TEMP_03"][i % 3];
        let reading = json!({"sensorId": id, "temperature": 20 + i % 9, "humidity": 60});
        publish(
            server,
            "sensors",
            json!({"key": id, "payload": reading.to_string()}),
        );
    }
}

#[test]
fn dashboard_in_headless_chromium() {
    let server = Server::start();
    populate(&server);
    put(
        &server,
        "/api/alerts/dlq",
        json!({"queue": "orders", "dead_letter_not_empty": true}),
    );
    // Wire consumers: one holding a message, one working through orders slowly, so connections
    // show addresses and credit and the charts show traffic out.
    let mut worker = common::stuck_worker(&server, "orders");
    let mut slow = Command::new(env!("CARGO_BIN_EXE_levee"))
        .args([
            "consume",
            "orders",
            "--credit",
            "4",
            "--work-ms",
            "150",
            "--quiet",
            "--addr",
        ])
        .arg(server.wire.to_string())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Traffic in while the history fills (its pace only shapes the charts; nothing waits on it).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (http, flag) = (server.http, stop.clone());
    let traffic = std::thread::spawn(move || {
        let mut i = 0u64;
        while !flag.load(std::sync::atomic::Ordering::Relaxed) {
            let send = |q: &str, b: Value| {
                common::http_request(
                    http,
                    "POST",
                    &format!("/api/queues/{q}/messages"),
                    "",
                    &b.to_string(),
                )
            };
            send("orders", json!({"payload": format!("order {i}")}));
            let id = ["TEMP_01", "TEMP_02", "TEMP_03"][(i % 3) as usize];
            let reading = json!({"sensorId": id, "temperature": 20 + i % 9, "humidity": 60});
            send(
                "sensors",
                json!({"key": id, "payload": reading.to_string()}),
            );
            i += 1;
            std::thread::sleep(std::time::Duration::from_millis(40 + (i % 20) * 5));
        }
    });
    // Enough server-side history that a chart drawn on the first load is visibly full.
    wait_until("7 s of history", || history_len(&server, "orders-dlq") >= 7);
    let v = run_browser(&server, "admin", None);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    traffic.join().unwrap();
    for c in [&mut worker, &mut slow] {
        let _ = c.kill();
        let _ = c.wait();
    }
    assert!(
        v["firstPoints"].as_u64().unwrap() >= 7,
        "the first draw has the server's history: {v}"
    );
    assert!(v["ratePoints"].as_u64().unwrap() >= 6, "{v}");
    assert!(
        v["alertText"].as_str().unwrap().contains("dead-letter"),
        "{v}"
    );
    assert_eq!(v["tile"], "1", "{v}");
    assert!(
        v["connections"].as_str().unwrap().contains("127.0.0.1"),
        "{v}"
    );
    assert!(v["replaced"].as_str().unwrap().contains("replaced"), "{v}");
    assert_eq!(v["moved"], "moved 3 to orders", "{v}");
    assert!(
        v["narrowScrollWidth"].as_u64().unwrap() <= 420,
        "usable at 420 px: {v}"
    );
    // The button really moved them.
    let (_, q) = http_json(&server, "GET", "/api/queues/orders-dlq", None);
    assert_eq!(q["stats"]["ready"], 0, "{q}");
}

fn passwd(secret: &str) -> String {
    let mut c = Command::new(env!("CARGO_BIN_EXE_levee"))
        .arg("passwd")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin
        .take()
        .unwrap()
        .write_all(secret.as_bytes())
        .unwrap();
    let out = c.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn dashboard_actions_need_the_manage_permission() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("levee.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[users]]
name = "ops"
password_hash = "{}"
permissions = [ {{ actions = ["admin"] }} ]

[[users]]
name = "viewer"
password_hash = "{}"
permissions = [ {{ queues = "*", actions = ["monitor"] }} ]
"#,
            passwd("ops-secret"),
            passwd("viewer-secret")
        ),
    )
    .unwrap();
    let server = Server::start_with(&["--config", config.to_str().unwrap()]);
    let auth = format!(
        "Authorization: Basic {}\r\n",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "ops:ops-secret")
    );
    for (path, body) in [
        ("/api/queues/orders-dlq", json!({"durability": "memory"})),
        ("/api/queues/orders", json!({"dead_letter": "orders-dlq"})),
    ] {
        let (st, resp) = common::http_request(server.http, "PUT", path, &auth, &body.to_string());
        assert_eq!(st, 201, "{resp}");
    }
    let history = |q: &str| {
        let (_, resp) = common::http_request(
            server.http,
            "GET",
            &format!("/api/queues/{q}/history"),
            &auth,
            "",
        );
        let v: Value = serde_json::from_str(common::http_body(&resp).trim()).unwrap();
        v["points"].as_array().map_or(0, Vec::len)
    };
    wait_until("history", || history("orders-dlq") >= 2);
    let v = run_browser(&server, "viewer", Some(("viewer", "viewer-secret")));
    assert_eq!(
        v["disabled"],
        json!(["peek", "purge", "delete", "move", "publish"]),
        "{v}"
    );
    // And the server refuses what the page does not offer.
    let viewer = format!(
        "Authorization: Basic {}\r\n",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            "viewer:viewer-secret"
        )
    );
    let (st, _) = common::http_request(
        server.http,
        "POST",
        "/api/queues/orders-dlq/purge",
        &viewer,
        "",
    );
    assert_eq!(st, 403);
}

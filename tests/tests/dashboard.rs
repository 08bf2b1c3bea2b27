//! The web dashboard in a real headless browser: Debian's `chromium`, driven
//! over WebDriver (`chromedriver`, from `chromium-driver`) with fantoccini,
//! against the real `cairn-server` on loopback and the real agent converging
//! a booted machine (systemd-nspawn, the test image).
//!
//! - Without a session every page goes to the page that says how to sign in;
//!   a link from `cairn ui login` signs in once; used again, or after its two
//!   minutes, it is refused; signing out ends the session; each is audited.
//! - A node the agent converged is on the overview and the nodes list; its
//!   report shows the diff of the file that changed.
//! - A file whose path and content hold HTML and `<script>` shows as text,
//!   and no script of it runs.
//! - A promote while the overview is open moves its rollout counts without
//!   a reload.
//! - An auditor's session shows no control that changes anything, and a
//!   forged write is refused with or without the CSRF token; an admin's
//!   write needs the token.
//!
//! - Every answer carries the CSP and the other security headers, over TLS
//!   with the server's certificate (checked by `curl` against its CA), and
//!   the session cookie is `__Host-`, `Secure`, `HttpOnly`, `SameSite=Strict`;
//!   revoking the operator ends the session.
//!
//! With `CAIRN_SCREENSHOTS=DIR`, a screenshot of each page is written there
//! (what `docs/dashboard/` holds). Needs the debug binaries (`cargo build
//! --bins`), the test image, and the `chromium` and `chromium-driver`
//! packages.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cairn_e2e::{Machine, Operator, Server, succeeded};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

const ROLE: &str = "site";
const CHANNEL: &str = "stable";
/// How long the browser gets to show what a test waits for.
const WAIT: Duration = Duration::from_secs(20);
/// A sign-in link's lifetime (the server's `LINK_LIFETIME`).
const LINK_LIFETIME: Duration = Duration::from_secs(120);
/// A file name and content a hostile role (or node) could report: markup
/// and script that would set `window.cairnPwned` if the page ran it.
const HOSTILE_NAME: &str = "<img src=x onerror=window.cairnPwned=1>";
const HOSTILE_CONTENT: &str = "<script>window.cairnPwned=2</script><b>bold</b>";

/// chromedriver on a loopback port, and a headless chromium session through it.
struct Browser {
    client: Client,
    driver: Child,
    shots: Option<PathBuf>,
}

impl Browser {
    async fn start(dir: &Path) -> Browser {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::fs::File::create(dir.join("chromedriver.log")).unwrap();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("could not start chromedriver ({e}): install chromium and chromium-driver")
            });
        let deadline = Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        let profile = dir.join("chromium-profile");
        let mut caps = serde_json::Map::new();
        // Chromium does not know the server's CA, which exists only for this
        // test; the test accepts its certificate rather than installing the CA
        // into a browser profile. What the test checks is the page, not TLS
        // (the CLI and agents pin the CA).
        caps.insert("acceptInsecureCerts".into(), json!(true));
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "args": [
                    "--headless=new",
                    // The test runs as root, where chromium's sandbox cannot start.
                    "--no-sandbox",
                    "--disable-dev-shm-usage",
                    "--window-size=1280,760",
                    format!("--user-data-dir={}", profile.display()),
                ]
            }),
        );
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("could not start a chromium session");
        Browser {
            client,
            driver,
            shots: std::env::var_os("CAIRN_SCREENSHOTS").map(PathBuf::from),
        }
    }

    async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap();
    }

    async fn current_path(&self) -> String {
        self.client.current_url().await.unwrap().path().to_string()
    }

    /// The text of the first element matching `css`.
    async fn text(&self, css: &str) -> String {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css} on the page: {e}"))
            .text()
            .await
            .unwrap()
    }

    async fn count(&self, css: &str) -> usize {
        self.client.find_all(Locator::Css(css)).await.unwrap().len()
    }

    async fn eval(&self, script: &str) -> Value {
        self.client.execute(script, vec![]).await.unwrap()
    }

    /// Waits until the element matching `css` says `want`.
    async fn wait_text(&self, css: &str, want: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let got = match self.client.find(Locator::Css(css)).await {
                Ok(e) => e.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            if got == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{css} says {got:?}, not {want:?}, after {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Clicks the element matching `css`, then waits for the page it leads
    /// to: one with an element matching `then`.
    async fn click(&self, css: &str, then: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css} on the page: {e}"))
            .click()
            .await
            .unwrap();
        self.client
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Css(then))
            .await
            .unwrap_or_else(|e| panic!("no {then} after clicking {css}: {e}"));
    }

    /// A POST from the page (as a forged form would send it): its status.
    async fn post(&self, path: &str, body: &str) -> u64 {
        let answer = self
            .client
            .execute_async(
                "const [path, body, done] = arguments;
                 fetch(path, {method: 'POST', body,
                              headers: {'Content-Type': 'application/x-www-form-urlencoded'}})
                   .then(r => done(r.status), e => done(String(e)));",
                vec![json!(path), json!(body)],
            )
            .await
            .unwrap();
        answer
            .as_u64()
            .unwrap_or_else(|| panic!("POST {path} failed: {answer}"))
    }

    /// Writes a screenshot of the page to `$CAIRN_SCREENSHOTS/NAME.png`.
    async fn shot(&self, name: &str) {
        if let Some(dir) = &self.shots {
            std::fs::create_dir_all(dir).unwrap();
            let png = self.client.screenshot().await.unwrap();
            std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
        }
    }

    /// Ends the browser session; chromedriver goes with [`Drop`].
    async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}

/// chromedriver ends with the test, also one that failed.
impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// `cairn ui login` as `ops`: the link.
fn sign_in_link(ops: &Operator) -> String {
    let out = ops.cairn(&["ui", "login"]);
    let link = out.lines().next().unwrap_or_default().to_string();
    assert!(link.contains("/sign-in/"), "{out}");
    link
}

/// Pushes the role: `motd` with `motd`, and (when given) the hostile file
/// with its content, in `managed`; promotes it to the channel.
fn push(ops: &Operator, dir: &Path, managed: &Path, motd: &str, hostile: bool) -> u64 {
    let role = dir.join("role");
    std::fs::create_dir_all(&role).unwrap();
    let mut toml = format!(
        "[role]\nname = \"{ROLE}\"\n\n[[file]]\npath = \"{}\"\ncontent = {:?}\n",
        managed.join("motd").display(),
        motd
    );
    if hostile {
        toml.push_str(&format!(
            "\n[[file]]\npath = \"{}\"\ncontent = {:?}\n",
            managed.join(HOSTILE_NAME).display(),
            format!("{HOSTILE_CONTENT}\n")
        ));
    }
    std::fs::write(role.join("role.toml"), toml).unwrap();
    ops.push(&role, &format!("motd {:?}", motd.trim()), CHANNEL)
}

/// Enrolls the machine `vm` as node `name` for the role.
fn enroll(vm: &Machine, server: &Server, ops: &Operator, name: &str) {
    vm.write_file(
        "/etc/cairn/agent.toml",
        format!(
            "servers = [{:?}]\nca_pin = \"{}\"\nname = \"{name}\"\n",
            server.url(),
            server.ca_pin(),
        ),
    );
    vm.write_file("/root/token", ops.token(ROLE, CHANNEL));
    vm.sh_ok("cairn-agent enroll --token-file /root/token");
}

/// `cairn-agent run` in `vm`: one run, reported.
fn run(vm: &Machine) {
    vm.sh_ok("cairn-agent run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_signs_in_with_a_link_and_follows_a_converged_node_live() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let server = Server::start(dir);
    let ops = server.add_operator("ada", &dir.join("ada.toml"));
    let ui = server.ui_url();
    // Asked for now, used once it has expired, at the end.
    let expiring = sign_in_link(&ops);
    let expiring_issued = Instant::now();

    // The files the role manages, in the machine.
    let managed = Path::new("/srv/site");
    assert_eq!(push(&ops, dir, managed, "hello\n", false), 1);
    let vm = Machine::boot("dashboard");
    vm.sh_ok(&format!("mkdir -p {}", managed.display()));
    let node = format!("web-{}", std::process::id());
    enroll(&vm, &server, &ops, &node);
    run(&vm);
    run(&vm);

    let b = Browser::start(dir).await;
    // No session: every page goes to the explanation.
    for page in [
        "/",
        "/nodes",
        &format!("/nodes/{node}"),
        "/reports/1",
        "/roles",
    ] {
        b.goto(&format!("{ui}{page}")).await;
        assert_eq!(b.current_path().await, "/sign-in", "{page}");
    }
    assert!(b.text("main").await.contains("cairn ui login"));
    b.shot("sign-in").await;

    let link = sign_in_link(&ops);
    b.goto(&link).await;
    assert_eq!(b.current_path().await, "/");
    assert_eq!(b.text("#viewer").await, "ada (admin)");
    assert_eq!(b.text("#state-converged").await, "1");
    let row = format!("tr[data-rollout='{ROLE}/{CHANNEL}']");
    assert_eq!(b.text(&format!("{row} .on-promoted")).await, "1");
    b.shot("overview").await;

    // The link works once.
    b.goto(&link).await;
    assert_eq!(b.text("h1").await, "Sign-in link refused");
    assert!(b.text("#message").await.contains("already used"));

    // Live: a promote while the overview is open moves the rollout, then the
    // node's run moves it back, and the page was never reloaded.
    b.goto(&format!("{ui}/")).await;
    b.eval("window.cairnNotReloaded = true;").await;
    assert_eq!(push(&ops, dir, managed, "hello\nworld\n", true), 2);
    b.wait_text(&format!("{row} .on-older"), "1").await;
    assert_eq!(b.text(&format!("{row} .on-promoted")).await, "0");
    run(&vm);
    b.wait_text(&format!("{row} .on-promoted"), "1").await;
    b.wait_text("#state-changed", "1").await;
    assert_eq!(
        b.eval("return window.cairnNotReloaded === true;").await,
        json!(true)
    );

    // The nodes list, filtered.
    let node_row = format!("tr[data-node='{node}']");
    b.goto(&format!("{ui}/nodes?state=changed&role={ROLE}&version=2"))
        .await;
    assert_eq!(b.count(&node_row).await, 1);
    b.shot("nodes").await;
    for filter in ["state=failed", "version=1", "fact=os.id=nope"] {
        b.goto(&format!("{ui}/nodes?{filter}")).await;
        assert_eq!(b.count(&node_row).await, 0, "{filter}");
    }
    b.goto(&format!("{ui}/nodes?fact=hostname=%3Cscript%3E"))
        .await;
    assert_eq!(b.count(&node_row).await, 0);

    // The node: its facts and its three runs.
    b.goto(&format!("{ui}/nodes/{node}")).await;
    assert_eq!(b.text("#node-name").await, node);
    assert!(b.text("#facts").await.contains("\"os\""));
    assert_eq!(b.count("svg.timeline rect").await, 3);
    b.shot("node").await;

    // Its newest report: the changed file's diff, and the hostile file as text.
    b.click("table.reports tbody tr:first-child a", "#summary")
        .await;
    assert!(b.current_path().await.starts_with("/reports/"));
    let page = b.text("main").await;
    assert!(page.contains("+world"), "{page}");
    assert!(page.contains(HOSTILE_NAME), "{page}");
    assert!(page.contains(HOSTILE_CONTENT), "{page}");
    assert_eq!(b.count("main img, main script, main b").await, 0);
    assert_eq!(
        b.eval("return typeof window.cairnPwned;").await,
        json!("undefined")
    );
    b.shot("report").await;

    // The role: its two versions compared as `cairn role diff` prints them.
    b.goto(&format!("{ui}/roles/{ROLE}?a=1&b=2")).await;
    let diff = b.text("#role-diff").await;
    assert!(diff.contains("+content = \"hello\\nworld\\n\""), "{diff}");
    assert!(diff.contains(HOSTILE_CONTENT), "{diff}");
    assert_eq!(
        b.eval("return typeof window.cairnPwned;").await,
        json!("undefined")
    );
    b.eval("document.getElementById('role-diff').scrollIntoView();")
        .await;
    b.shot("role").await;

    // The audit log: the sign-in is there (filtered in the store, so the
    // page's chain is not checked by itself), and the chain verifies.
    b.goto(&format!("{ui}/audit?action=ui+sign-in")).await;
    assert!(b.text("#page-chain").await.contains("not checked"));
    assert!(b.count("tr[data-action='ui sign-in']").await >= 1);
    assert_eq!(b.count("tr[data-action='push']").await, 0);
    b.goto(&format!("{ui}/audit")).await;
    assert!(b.text("#page-chain").await.contains("verified"));
    assert!(b.count("tr[data-action='push']").await >= 2);
    b.shot("audit").await;
    b.click("#verify", "#whole-chain").await;
    assert!(b.text("#whole-chain").await.contains("verified"));

    // Signing out ends the session on the server.
    b.click("#sign-out", "#message").await;
    assert_eq!(b.text("h1").await, "Signed out");
    b.goto(&format!("{ui}/")).await;
    assert_eq!(b.current_path().await, "/sign-in");

    // A link past its two minutes is refused.
    let left = LINK_LIFETIME.saturating_sub(expiring_issued.elapsed());
    tokio::time::sleep(left + Duration::from_secs(2)).await;
    b.goto(&expiring).await;
    assert_eq!(b.text("h1").await, "Sign-in link refused");
    assert!(b.text("#message").await.contains("has expired"));
    b.close().await;

    let audit = ops.cairn(&["audit", "--limit", "200"]);
    for action in ["ui link", "ui sign-in", "ui sign-out"] {
        assert!(audit.contains(action), "{action} not audited:\n{audit}");
    }
}

/// `curl` against the dashboard, trusting only the server's CA: the
/// response's status line and headers.
fn curl(server: &Server, args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-D", "-", "--cacert"])
        .arg(server.ca_file())
        .args(args)
        .output()
        .unwrap();
    succeeded(&out, &format!("curl {args:?}")).to_lowercase()
}

/// The CSP and the other headers every answer carries, and the session
/// cookie's attributes, over TLS checked against the server's CA.
#[test]
fn the_dashboard_sends_its_security_headers_and_a_strict_cookie() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(tmp.path());
    let ops = server.add_operator("ada", &tmp.path().join("ada.toml"));
    let ui = server.ui_url();
    let head = curl(&server, &[&format!("{ui}/sign-in")]);
    assert!(head.starts_with("http/1.1 200"), "{head}");
    for header in [
        "content-security-policy: default-src 'none'; script-src 'self'; style-src 'self'; \
         img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; \
         base-uri 'none'\r\n",
        "x-content-type-options: nosniff\r\n",
        "x-frame-options: deny\r\n",
        "referrer-policy: no-referrer\r\n",
        "cache-control: no-store\r\n",
    ] {
        assert!(head.contains(header), "{header:?} missing:\n{head}");
    }
    let head = curl(&server, &[&sign_in_link(&ops)]);
    assert!(head.starts_with("http/1.1 303"), "{head}");
    assert!(head.contains("location: /\r\n"), "{head}");
    let cookie = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .unwrap_or_else(|| panic!("no cookie:\n{head}"));
    let (pair, attributes) = cookie.split_once(';').unwrap();
    assert!(pair.starts_with("__host-cairn-session="), "{cookie}");
    assert_eq!(
        attributes.trim(),
        "path=/; secure; httponly; samesite=strict; max-age=28800"
    );
    // A write without the session's CSRF token, or without a session, is refused.
    let session = format!(
        "Cookie: {}",
        pair.replacen("__host-cairn-session", "__Host-cairn-session", 1)
    );
    let post = |args: &[&str]| curl(&server, &[&["-X", "POST"], args].concat());
    let signed_in = curl(&server, &["-H", &session, &format!("{ui}/")]);
    assert!(signed_in.starts_with("http/1.1 200"), "{signed_in}");
    let sign_out = format!("{ui}/sign-out");
    for form in ["csrf=", "csrf=0123"] {
        let head = post(&["-H", &session, "-d", form, &sign_out]);
        assert!(head.starts_with("http/1.1 403"), "{form}: {head}");
    }
    assert!(post(&["-d", "csrf=", &format!("{ui}/sign-out")]).starts_with("http/1.1 403"));
    assert!(
        post(&[
            "-d",
            "channel=stable&version=1",
            &format!("{ui}/roles/{ROLE}/promote")
        ])
        .starts_with("http/1.1 403")
    );
    // Revoking the operator ends the session at once.
    server.server_cmd(&["operator", "revoke", "ada"]);
    let revoked = curl(&server, &["-H", &session, &format!("{ui}/")]);
    assert!(revoked.starts_with("http/1.1 303"), "{revoked}");
    assert!(revoked.contains("location: /sign-in\r\n"), "{revoked}");
}

/// The channel's version, as `cairn role channels` says.
fn channel_version(ops: &Operator) -> u64 {
    let v = ops.cairn_json(&["role", "channels", ROLE]);
    v["channels"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["channel"] == CHANNEL))
        .and_then(|c| c["version"].as_u64())
        .unwrap_or_else(|| panic!("no channel {CHANNEL} in {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auditor_changes_nothing_and_a_write_needs_the_csrf_token() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let server = Server::start(dir);
    let ops = server.add_operator("ada", &dir.join("ada.toml"));
    let auditor = server.add_operator_as("audrey", "auditor", &dir.join("audrey.toml"));
    let ui = server.ui_url();
    let managed = Path::new("/srv/site");
    push(&ops, dir, managed, "one\n", false);
    push(&ops, dir, managed, "two\n", false);
    assert_eq!(channel_version(&ops), 2);

    let b = Browser::start(dir).await;
    b.goto(&sign_in_link(&auditor)).await;
    assert_eq!(b.text("#viewer").await, "audrey (auditor)");
    // No control that changes anything: the one form that posts signs out.
    for page in ["/", "/nodes", "/roles", &format!("/roles/{ROLE}"), "/audit"] {
        b.goto(&format!("{ui}{page}")).await;
        assert_eq!(b.count("form[method='post']").await, 1, "{page}");
        assert_eq!(b.count("#sign-out").await, 1, "{page}");
        assert_eq!(b.count("#promote").await, 0, "{page}");
    }
    let csrf = b
        .client
        .find(Locator::Css("input[name='csrf']"))
        .await
        .unwrap()
        .prop("value")
        .await
        .unwrap()
        .unwrap();
    let promote = format!("/roles/{ROLE}/promote");
    let body = format!("channel={CHANNEL}&version=1");
    assert_eq!(b.post(&promote, &body).await, 403);
    assert_eq!(b.post(&promote, &format!("{body}&csrf={csrf}")).await, 403);
    assert_eq!(channel_version(&ops), 2);
    b.shot("auditor").await;
    b.close().await;
    let audit = ops.cairn(&["audit"]);
    assert!(audit.contains("ui write"), "{audit}");

    // An admin's session has the control; its write needs the token.
    let admin_dir = dir.join("admin-browser");
    std::fs::create_dir_all(&admin_dir).unwrap();
    let b = Browser::start(&admin_dir).await;
    b.goto(&sign_in_link(&ops)).await;
    b.goto(&format!("{ui}/roles/{ROLE}")).await;
    assert_eq!(b.count("#promote").await, 1);
    let csrf = b
        .client
        .find(Locator::Css("input[name='csrf']"))
        .await
        .unwrap()
        .prop("value")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(b.post(&promote, &body).await, 403);
    assert_eq!(b.post(&promote, &format!("{body}&csrf=0{csrf}")).await, 403);
    assert_eq!(channel_version(&ops), 2);
    assert_eq!(b.post(&promote, &format!("{body}&csrf={csrf}")).await, 200);
    assert_eq!(channel_version(&ops), 1);
    b.close().await;
}

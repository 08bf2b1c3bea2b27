//! The dashboard against the real store, without a browser (the browser tests
//! are `tests/tests/dashboard.rs`): the audit log page filtered in the store
//! and paged through every match, its hash chain checked only when the page
//! is not filtered; and the background job that deletes expired sign-in
//! links and sessions, run by a server on PostgreSQL.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use cairn_server::nodes::ChannelMoves;
use cairn_server::refusals::Refusals;
use cairn_server::store::{self, Actor, LinkRefusal, NewSession, NewSignInLink, Store, now_micros};
use cairn_server::ui::{UiState, router, session};
use common::postgres::PgCluster;
use common::*;
use tower_service::Service;

const HOUR: i64 = 3_600_000_000;
const DAY: i64 = 24 * HOUR;

fn actor(name: &str) -> Actor {
    Actor {
        name: name.into(),
        role: "admin".into(),
        peer: "127.0.0.1:1".into(),
    }
}

/// Signs operator `ada` in; the `Cookie` header that carries her session.
async fn sign_in(store: &dyn Store) -> String {
    let admin = actor("root");
    store
        .add_operator("ada", "auditor", "fp", &admin)
        .await
        .unwrap();
    let (link, secret) = (
        session::new_secret().unwrap(),
        session::new_secret().unwrap(),
    );
    store
        .create_sign_in_link(
            NewSignInLink {
                secret_sha256: session::sha256(&link),
                operator: "ada".into(),
                role: "auditor".into(),
                fingerprint: "fp".into(),
                expires_at: now_micros() + HOUR,
            },
            &admin,
        )
        .await
        .unwrap();
    store
        .sign_in(
            &session::sha256(&link),
            NewSession {
                secret_sha256: session::sha256(&secret),
                expires_at: now_micros() + HOUR,
            },
            now_micros(),
            "127.0.0.1:2",
        )
        .await
        .unwrap()
        .unwrap();
    format!("{}={secret}", session::COOKIE)
}

/// A page's HTML, asked for with the session `cookie`.
async fn page(app: &mut axum::Router, cookie: &str, path: &str) -> String {
    let req = Request::get(path)
        .header(header::COOKIE, cookie)
        .body(Body::empty())
        .unwrap();
    let res = app.call(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK, "{path}");
    let body = axum::body::to_bytes(res.into_body(), usize::MAX)
        .await
        .unwrap();
    String::from_utf8(body.to_vec()).unwrap()
}

/// The audit page's entries: (id, actor cell).
fn entries(html: &str) -> Vec<(u64, String)> {
    html.split("<tr data-action=")
        .skip(1)
        .map(|row| {
            let cells: Vec<&str> = row
                .split("<td>")
                .skip(1)
                .map(|c| c.split("</td>").next().unwrap())
                .collect();
            (cells[0].parse().unwrap(), cells[2].to_string())
        })
        .collect()
}

/// The `before` of the page's link to older entries, if it has one.
fn older(html: &str) -> Option<u64> {
    let at = html.find("id=\"next\" href=\"/audit?before=")?;
    let rest = &html[at + "id=\"next\" href=\"/audit?before=".len()..];
    Some(rest.split('&').next().unwrap().parse().unwrap())
}

#[tokio::test]
async fn the_audit_page_filters_in_the_store_and_pages_through_every_match() {
    let dir = tempfile::tempdir().unwrap();
    let store = store::open(&store::default_url(dir.path()).unwrap())
        .await
        .unwrap();
    let cookie = sign_in(store.as_ref()).await;
    // 70 entries of eve among 280: a page of 50 entries read, then
    // filtered, would hold about 12 of hers.
    for i in 0..280 {
        let who = if i % 4 == 0 { "eve" } else { "bob" };
        store
            .audit(&actor(who), "push", "web", &format!("entry {i}"), "denied")
            .await
            .unwrap();
    }
    let (_stop, stopping) = tokio::sync::watch::channel(false);
    let mut app = router(Arc::new(UiState::new(
        store.clone(),
        Arc::new(Refusals::new(store.clone())),
        Arc::new(ChannelMoves::new(store.clone())),
        stopping,
    )));

    let first = page(&mut app, &cookie, "/audit?actor=eve&action=push").await;
    let shown = entries(&first);
    assert_eq!(shown.len(), 50);
    assert!(
        shown.iter().all(|(_, who)| who == "eve (admin)"),
        "{shown:?}"
    );
    assert!(shown.windows(2).all(|w| w[0].0 > w[1].0), "newest first");
    // A filtered page's entries do not follow from each other: not checked,
    // and the whole chain offered, with the filter kept.
    assert!(first.contains("not checked"), "{first}");
    assert!(
        first.contains("id=\"verify\" href=\"/audit?verify=all&amp;actor=eve&amp;action=push\"")
    );
    let before = older(&first).expect("a link to older entries");
    assert_eq!(before, shown.last().unwrap().0);
    let second = page(
        &mut app,
        &cookie,
        &format!("/audit?before={before}&actor=eve&action=push"),
    )
    .await;
    let rest = entries(&second);
    assert_eq!(rest.len(), 20);
    assert!(rest.iter().all(|(_, who)| who == "eve (admin)"));
    assert!(rest[0].0 < before);
    assert_eq!(older(&second), None, "the last page");

    // Unfiltered, the page's chain is checked; the whole chain on request.
    let all = page(&mut app, &cookie, "/audit").await;
    assert_eq!(entries(&all).len(), 50);
    assert!(all.contains("each entry on this page follows from the one before it"));
    let verified = page(&mut app, &cookie, "/audit?verify=all&actor=eve").await;
    assert!(
        verified.contains("the whole chain: all 283 entries follow from the first"),
        "{verified}"
    );
    // Nothing matches: an empty page, not an error.
    let nobody = page(&mut app, &cookie, "/audit?actor=nobody").await;
    assert!(entries(&nobody).is_empty() && older(&nobody).is_none());
    let long = page(
        &mut app,
        &cookie,
        &format!("/audit?actor={}", "a".repeat(200)),
    )
    .await;
    assert!(long.contains("the actor is too long"), "{long}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_sign_in_links_and_sessions_are_deleted_by_the_background_job() {
    let cluster = PgCluster::start();
    let db = cluster.database();
    let tmp = tempfile::tempdir().unwrap();
    let store = store::open(&db).await.unwrap();
    let ada = actor("ada");
    let now = now_micros();
    let link = |secret: &str, expires_at| NewSignInLink {
        secret_sha256: format!("link {secret}"),
        operator: "ada".into(),
        role: "auditor".into(),
        fingerprint: "fp".into(),
        expires_at,
    };
    // Expired two days ago, used, with a session as old; expired a moment
    // ago; valid.
    store
        .create_sign_in_link(link("old", now - 2 * DAY), &ada)
        .await
        .unwrap();
    let then = now - 3 * DAY;
    let old_session = NewSession {
        secret_sha256: "session old".into(),
        expires_at: now - 2 * DAY,
    };
    store
        .sign_in("link old", old_session, then, "127.0.0.1:3")
        .await
        .unwrap()
        .unwrap();
    store
        .create_sign_in_link(link("recent", now - 1), &ada)
        .await
        .unwrap();
    store
        .create_sign_in_link(link("valid", now + HOUR), &ada)
        .await
        .unwrap();
    let try_link = |secret: &'static str, at: i64| {
        let store = store.clone();
        async move {
            let session = NewSession {
                secret_sha256: format!("session from {secret}"),
                expires_at: now + HOUR,
            };
            store
                .sign_in(&format!("link {secret}"), session, at, "127.0.0.1:3")
                .await
                .unwrap()
        }
    };
    assert!(store.session("session old", then).await.unwrap().is_some());

    // No link is made meanwhile: the server's jobs delete them.
    let _server = Server::start_configured(&tmp.path().join("data"), |c| {
        c.database = db.clone();
        c.jobs_every = Duration::from_millis(100);
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while store.session("session old", then).await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "the expired session was kept");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(try_link("old", then).await, Err(LinkRefusal::Unknown));
    // Kept for a day after they expire: still told apart from unknown ones.
    assert_eq!(
        try_link("recent", now).await,
        Err(LinkRefusal::Expired { at: now - 1 })
    );
    assert!(try_link("valid", now).await.is_ok());
}

//! Which of the database's addresses is the primary (`--database
//! postgres://USER@HOST1:PORT1,HOST2:PORT2/DB`, libpq's multi-host form).
//!
//! A standby streaming from the primary answers reads but refuses every
//! write, so Cairn only ever uses the primary: the address that answers
//! `SELECT pg_is_in_recovery()` with false ([`find`], trying each address in
//! turn, in the order given).
//!
//! The one place that knows the current primary is the pool's connect
//! options: every new connection of the pool, and the connection listening
//! for changes (`changes.rs`), is made with them. With several addresses a
//! task ([`Follower`]) asks the primary every [`CHECK_EVERY`] whether it is
//! still there and still the primary; when it is not, it tries the addresses
//! again, with a bounded backoff, until one answers as the primary, and points
//! the pool at it. Requests meanwhile wait for a connection (at most
//! `CONNECT_TIMEOUT`; sqlx retries a refused connection with the options of
//! the moment, so a request waiting across the move is served by the new
//! primary), else fail as the database being unreachable.
//!
//! Two guards keep a connection to a server that is no longer the primary
//! from being used: a new connection that lands on a server in recovery is
//! refused (`after_connect`), and an idle connection made before the pool
//! moved is closed instead of handed out (`before_acquire`).

use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Connection, PgConnection};
use tracing::{debug, info, warn};

use super::{CONNECT_TIMEOUT, MAX_CONNECTIONS, changes};
use crate::store::{Result, StoreError};

/// At most this many addresses in one database URL.
const MAX_ADDRESSES: usize = 8;
/// How often the follower asks the primary whether it still is one.
const CHECK_EVERY: Duration = Duration::from_secs(2);
/// An address that does not answer within this is passed over (a server or
/// network that is down may not refuse, only stay silent).
const ANSWER_WITHIN: Duration = Duration::from_secs(5);
/// Searches for a primary wait from about this long…
const SEARCH_FIRST: Duration = Duration::from_millis(250);
/// …doubling up to this, so that a standby promoted while none answers is
/// found within seconds.
const SEARCH_MAX: Duration = Duration::from_secs(2);
/// The follower's own connection, as `pg_stat_activity` names it.
const APPLICATION_NAME: &str = "cairn-server primary check";

/// One address of the database, and how to connect to it.
#[derive(Clone)]
pub(super) struct Address {
    pub(super) options: PgConnectOptions,
}

impl Address {
    /// `HOST:PORT`, for messages.
    fn name(&self) -> String {
        format!("{}:{}", self.options.get_host(), self.options.get_port())
    }
}

/// The addresses of the PostgreSQL URL `url`, in the order given: one for
/// `postgres://USER@HOST:PORT/DB`, several for
/// `postgres://USER@HOST1:PORT1,HOST2:PORT2/DB`. `target_session_attrs`, if
/// given, must ask for a primary (`read-write` or `primary`), as Cairn writes.
pub(super) fn addresses(url: &str) -> Result<Vec<Address>> {
    let invalid =
        |why: &str| StoreError::Url(format!("the postgres database URL is not valid: {why}"));
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| invalid("it has no scheme"))?;
    // The host list ends where the path, query or fragment begins; what is
    // before its last `@` is the user (a password's `@` is percent-encoded).
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (user, hosts) = match authority.rsplit_once('@') {
        Some((user, hosts)) => (format!("{user}@"), hosts),
        None => (String::new(), authority),
    };
    let tail = without_session_attrs(tail).map_err(|why| invalid(&why))?;
    let hosts: Vec<&str> = hosts.split(',').collect();
    if hosts.len() > MAX_ADDRESSES {
        return Err(invalid(&format!(
            "it names {} addresses; at most {MAX_ADDRESSES} are allowed",
            hosts.len()
        )));
    }
    if hosts.len() > 1 && hosts.iter().any(|h| h.is_empty()) {
        return Err(invalid("an address in its list of hosts is empty"));
    }
    hosts
        .into_iter()
        .map(|host| {
            // sqlx's message says what is wrong with the URL, not the URL.
            PgConnectOptions::from_str(&format!("{scheme}://{user}{host}{tail}"))
                .map(|options| Address {
                    options: options.application_name("cairn-server"),
                })
                .map_err(|e| invalid(&e.to_string()))
        })
        .collect()
}

/// `tail` (path, query and fragment of a URL) without its
/// `target_session_attrs`, which sqlx does not know; refused unless it asks
/// for a primary.
fn without_session_attrs(tail: &str) -> std::result::Result<String, String> {
    let Some((path, query)) = tail.split_once('?') else {
        return Ok(tail.to_string());
    };
    let (query, fragment) = match query.split_once('#') {
        Some((query, fragment)) => (query, format!("#{fragment}")),
        None => (query, String::new()),
    };
    let mut kept = Vec::new();
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("target_session_attrs", "read-write" | "primary")) => {}
            Some(("target_session_attrs", other)) => {
                return Err(format!(
                    "target_session_attrs={other}: cairn-server writes, so it uses only the \
                     primary (target_session_attrs=read-write)"
                ));
            }
            _ => kept.push(pair),
        }
    }
    Ok(match kept.is_empty() {
        true => format!("{path}{fragment}"),
        false => format!("{path}?{}{fragment}", kept.join("&")),
    })
}

/// `database NAME at HOST:PORT[, HOST:PORT…]`, for messages (never the
/// URL, which may hold a password).
pub(super) fn place(addresses: &[Address]) -> String {
    let first = &addresses[0].options;
    format!(
        "database {} at {}",
        // PostgreSQL's default database is the user's name.
        first.get_database().unwrap_or(first.get_username()),
        addresses
            .iter()
            .map(Address::name)
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// Why an address is not the one to use.
enum Passed {
    Failed(sqlx::Error),
    Silent,
    Standby,
}

impl std::fmt::Display for Passed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Passed::Failed(e) => write!(f, "{e}"),
            Passed::Silent => write!(f, "no answer within {} s", ANSWER_WITHIN.as_secs()),
            Passed::Standby => write!(
                f,
                "a standby (in recovery), which refuses writes; cairn-server needs the primary"
            ),
        }
    }
}

/// Whether the server on the other end of `conn` is a standby.
async fn in_recovery(conn: &mut PgConnection) -> std::result::Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_is_in_recovery()")
        .fetch_one(conn)
        .await
}

/// A connection to the server at `address`, if it is the primary.
async fn connect_primary(address: &Address) -> std::result::Result<PgConnection, Passed> {
    let answer = async {
        let mut conn = PgConnection::connect_with(&address.options)
            .await
            .map_err(Passed::Failed)?;
        match in_recovery(&mut conn).await {
            Ok(false) => Ok(conn),
            Ok(true) => {
                let _ = conn.close().await;
                Err(Passed::Standby)
            }
            Err(e) => Err(Passed::Failed(e)),
        }
    };
    tokio::time::timeout(ANSWER_WITHIN, answer)
        .await
        .unwrap_or(Err(Passed::Silent))
}

/// The first of `addresses`, tried in turn, that is the primary, and a
/// connection to it; else an error saying why each was passed over.
pub(super) async fn find(addresses: &[Address], place: &str) -> Result<(usize, PgConnection)> {
    let mut passed = Vec::new();
    for (i, address) in addresses.iter().enumerate() {
        match connect_primary(address).await {
            Ok(conn) => return Ok((i, conn)),
            Err(why) => passed.push(why),
        }
    }
    let (op, source): (String, Box<dyn std::error::Error + Send + Sync>) =
        match <[Passed; 1]>::try_from(passed) {
            // One address: its own error, as the source.
            Ok([Passed::Failed(e)]) => (format!("connect to the {place}"), Box::new(e)),
            Ok([why]) => (format!("connect to the {place}"), why.to_string().into()),
            Err(passed) => {
                let why: Vec<String> = addresses
                    .iter()
                    .zip(&passed)
                    .map(|(address, why)| format!("{}: {why}", address.name()))
                    .collect();
                (
                    format!("find the primary of the {place}"),
                    why.join("; ").into(),
                )
            }
        };
    Err(StoreError::Backend { op, source })
}

/// When the pool last moved to another primary: connections made before
/// that are to the old one.
#[derive(Default)]
struct Moved(Mutex<Option<Instant>>);

impl Moved {
    fn now(&self) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }

    /// Whether a connection `age` old was made before the last move.
    fn before(&self, age: Duration) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|at| age >= at.elapsed())
    }
}

/// The pool, connecting to `addresses[current]`, and (with several
/// addresses) the task that moves it to another primary when that one goes.
pub(super) fn pool(
    addresses: Vec<Address>,
    current: usize,
    place: String,
) -> (PgPool, Option<Follower>) {
    let moved = Arc::new(Moved::default());
    let since = moved.clone();
    let pool = PgPoolOptions::new()
        .max_connections(MAX_CONNECTIONS)
        .acquire_timeout(CONNECT_TIMEOUT)
        .after_connect(|conn, _| {
            Box::pin(async move {
                // sqlx drops it and connects again (with the options of
                // that moment) until the request's time is up.
                match in_recovery(conn).await? {
                    false => Ok(()),
                    true => Err(sqlx::Error::Protocol(Passed::Standby.to_string())),
                }
            })
        })
        .before_acquire(move |_, meta| {
            let stale = since.before(meta.age);
            Box::pin(async move { Ok(!stale) })
        })
        .connect_lazy_with(addresses[current].options.clone());
    let follower = (addresses.len() > 1).then(|| {
        let task = tokio::spawn(follow(pool.clone(), addresses, current, moved, place));
        Follower(task.abort_handle())
    });
    (pool, follower)
}

/// The task following the primary; ended when dropped (with the store).
pub(super) struct Follower(tokio::task::AbortHandle);

impl Drop for Follower {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Asks the primary, on a connection of its own, whether it still is one;
/// when it is not, finds the one that is and points `pool` at it. Never returns.
async fn follow(
    pool: PgPool,
    addresses: Vec<Address>,
    mut current: usize,
    moved: Arc<Moved>,
    place: String,
) {
    // The same addresses for the follower's own connection, named apart
    // from the pool's.
    let own: Vec<Address> = addresses
        .iter()
        .map(|a| Address {
            options: a.options.clone().application_name(APPLICATION_NAME),
        })
        .collect();
    // None at first: the search below connects at once, so that a primary
    // lost right after opening is noticed as soon as any other.
    let mut checked: Option<PgConnection> = None;
    loop {
        // Whether it was said to be gone, or not found: its return is said too.
        let mut said = false;
        if let Some(mut conn) = checked.take() {
            tokio::time::sleep(CHECK_EVERY).await;
            let lost = match tokio::time::timeout(ANSWER_WITHIN, in_recovery(&mut conn)).await {
                Ok(Ok(false)) => {
                    checked = Some(conn);
                    continue;
                }
                Ok(Ok(true)) => Passed::Standby.to_string(),
                Ok(Err(e)) => e.to_string(),
                Err(_) => Passed::Silent.to_string(),
            };
            warn!(
                place = %place,
                primary = addresses[current].name(),
                error = lost,
                "the primary is gone; looking for the new one"
            );
            said = true;
        }
        let since = Instant::now();
        let mut failures: u32 = 0;
        let (found, conn) = loop {
            match find(&own, &place).await {
                Ok(found) => break found,
                Err(e) => {
                    let wait = changes::backoff(failures, SEARCH_FIRST, SEARCH_MAX);
                    // Said once; the tries after it only at debug level.
                    let error = format!("{:#}", anyhow::Error::from(e));
                    if failures == 0 {
                        said = true;
                        warn!(place = %place, error, "no address answers as the primary; trying again");
                    } else {
                        debug!(place = %place, error, "no address answers as the primary; trying again");
                    }
                    failures = failures.saturating_add(1);
                    tokio::time::sleep(wait).await;
                }
            }
        };
        checked = Some(conn);
        if found != current {
            pool.set_connect_options(addresses[found].options.clone());
            moved.now();
            info!(
                place = %place,
                primary = addresses[found].name(),
                after_secs = since.elapsed().as_secs_f64(),
                "the primary is now at another address"
            );
            current = found;
        } else if said {
            info!(place = %place, primary = addresses[found].name(), "the primary answers again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(url: &str) -> Vec<String> {
        addresses(url)
            .unwrap()
            .iter()
            .map(|a| {
                let o = &a.options;
                format!(
                    "{}@{}:{}/{}",
                    o.get_username(),
                    o.get_host(),
                    o.get_port(),
                    o.get_database().unwrap_or("")
                )
            })
            .collect()
    }

    fn refused(url: &str) -> String {
        match addresses(url) {
            Ok(_) => panic!("{url}: accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_url_names_one_address_or_several_in_libpqs_form() {
        assert_eq!(
            hosts("postgres://cairn@db:5433/cairn"),
            ["cairn@db:5433/cairn"]
        );
        assert_eq!(
            hosts(
                "postgresql://cairn:p%40ss@a.example:5432,10.0.0.2:5433,[::1]/cairn\
                 ?target_session_attrs=read-write&application_name=x"
            ),
            [
                "cairn@a.example:5432/cairn",
                "cairn@10.0.0.2:5433/cairn",
                "cairn@[::1]:5432/cairn"
            ]
        );
        let both = addresses("postgres://u:p%40ss@a,b/d?target_session_attrs=primary").unwrap();
        assert!(
            both.iter()
                .all(|a| a.options.get_username() == "u" && a.options.get_database() == Some("d"))
        );
        assert_eq!(place(&both), "database d at a:5432, b:5432");
        assert_eq!(
            without_session_attrs("/d?sslmode=disable&target_session_attrs=read-write#f").unwrap(),
            "/d?sslmode=disable#f"
        );
        assert_eq!(
            without_session_attrs("/d?target_session_attrs=primary").unwrap(),
            "/d"
        );
    }

    #[test]
    fn a_url_asking_for_a_standby_or_too_many_addresses_is_refused() {
        for attrs in ["any", "read-only", "standby", "prefer-standby"] {
            let err = refused(&format!(
                "postgres://u:secret@a,b/d?target_session_attrs={attrs}"
            ));
            assert!(err.contains("uses only the primary"), "{err}");
            assert!(!err.contains("secret"), "{err}");
        }
        let many = (0..=MAX_ADDRESSES)
            .map(|i| format!("h{i}"))
            .collect::<Vec<_>>()
            .join(",");
        let err = refused(&format!("postgres://u@{many}/d"));
        assert!(err.contains("at most 8"), "{err}");
        for url in [
            "postgres://u@a,,b/d",
            "postgres://u@a,/d",
            "postgres://u:secret@a:x,b/d",
        ] {
            let err = refused(url);
            assert!(
                err.contains("not valid") && !err.contains("secret"),
                "{url}: {err}"
            );
        }
    }

    #[test]
    fn only_connections_made_before_a_move_are_stale() {
        let moved = Moved::default();
        assert!(!moved.before(Duration::from_secs(3600)), "never moved");
        moved.now();
        std::thread::sleep(Duration::from_millis(50));
        assert!(moved.before(Duration::from_secs(1)), "made before the move");
        assert!(!moved.before(Duration::from_millis(1)), "made since");
    }
}

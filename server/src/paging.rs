//! Pages of what operators list (nodes, reports, the audit log): how many
//! entries a request may ask for, what its `since` means, and where a page
//! stops so that a response stays small.

use prost::Message;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tonic::Status;

use crate::store::Micros;

/// At most this many entries in one response.
pub const MAX_PAGE_ENTRIES: u32 = 1000;
/// A response stops before the entry that would take it past this size.
pub const MAX_PAGE_BYTES: usize = 1 << 20;

/// How many entries to answer with when `asked` (0: as many as allowed).
/// Storage is asked for one more, to know whether there is more.
pub fn limit(asked: u32) -> u32 {
    match asked {
        0 => MAX_PAGE_ENTRIES,
        n => n.min(MAX_PAGE_ENTRIES),
    }
}

/// A request's `since`: empty for none, else an RFC 3339 time.
pub fn since(text: &str) -> Result<Option<Micros>, Status> {
    if text.is_empty() {
        return Ok(None);
    }
    let t = OffsetDateTime::parse(text, &Rfc3339).map_err(|e| {
        Status::invalid_argument(format!(
            "`since` must be an RFC 3339 time like 2026-01-31T12:00:00Z: {e}"
        ))
    })?;
    Ok(Some((t.unix_timestamp_nanos() / 1000) as Micros))
}

/// The page of `fetched` (at most `limit` + 1 rows, as [`limit`] says to
/// ask for) converted by `entry`, stopping before [`MAX_PAGE_BYTES`]; and
/// whether more is left. Every entry is bounded (a few KiB), so one always
/// fits.
pub fn fill<T, M: Message>(
    mut fetched: Vec<T>,
    limit: u32,
    entry: impl Fn(T) -> M,
) -> (Vec<M>, bool) {
    let mut more = fetched.len() > limit as usize;
    fetched.truncate(limit as usize);
    let mut page = Vec::with_capacity(fetched.len());
    let mut size = 0;
    for row in fetched {
        let m = entry(row);
        size += m.encoded_len() + 8;
        if size > MAX_PAGE_BYTES && !page.is_empty() {
            more = true;
            break;
        }
        page.push(m);
    }
    (page, more)
}

//! `cairn-server export` and `import`: everything a server stores, in one
//! portable, checksummed file, restored into an empty database of either
//! backend.
//!
//! Format (version [`FORMAT_VERSION`]): a POSIX tar file (no compression, so
//! that reading it never costs more than its size) holding, in this order,
//!
//! - `manifest.json`: `format` ([`FORMAT`]), `format_version`, the
//!   `cairn_version` that wrote it, the `schema_version` it was written at
//!   (the newest migration applied), `created_at` (microseconds since the
//!   Unix epoch), `with_reports`, and `members`: for each table, its member's
//!   `name`, `table`, `columns`, `rows`, `bytes` and `sha256` (hex);
//! - one member per table of [`tables::ALL`] (the run reports and each node's
//!   last run only with `--with-reports`), `TABLE.jsonl`: one JSON object a
//!   row, keyed by column, as stored: integers as numbers, text as strings,
//!   bytes as base64 (standard alphabet, padded), `NULL` as `null`.
//!
//! Format version 1 is the same without `schema_version`: its archives were
//! written at schema version [`tables::FIRST_ARCHIVE_SCHEMA`]. An archive
//! from an older schema than this build's is imported when its members lack
//! only columns a later migration added ([`tables::Added`]): their rows get
//! what that migration gave the rows already there.
//!
//! The archive holds secrets (the CA's private key), so it is written mode
//! 0600, to a temporary file renamed into place once complete.
//!
//! An archive is hostile input: before anything is written, the manifest is
//! read (at most [`MAX_MANIFEST_BYTES`]), its format and version checked,
//! and every member checked against it (name, order, size, rows, lines of at
//! most [`MAX_LINE_BYTES`], SHA-256); then the rows are restored in one
//! transaction, each member hashed again as it is read, so what is stored is
//! what was checked, and any fault rolls everything back.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::store::tables::{self, Kind, Row, Table, Value};
use crate::store::{CaRecord, Micros, Store};

/// What `manifest.json` says the file is.
pub const FORMAT: &str = "cairn-archive";
/// The version of the layout above this build writes; it reads this one and
/// version 1.
pub const FORMAT_VERSION: u32 = 2;
const MANIFEST: &str = "manifest.json";
/// The largest manifest read.
pub const MAX_MANIFEST_BYTES: u64 = 1 << 20;
/// The longest line (row) read: a role version's bundle (at most the largest
/// push, `service::MAX_MESSAGE_BYTES`) in base64, and its other columns.
pub const MAX_LINE_BYTES: usize = 32 << 20;
/// Rows restored by one statement are also cut at this many bytes of lines.
const MAX_BATCH_BYTES: usize = 8 << 20;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    format: String,
    format_version: u32,
    cairn_version: String,
    /// Missing in format version 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    schema_version: Option<i64>,
    created_at: Micros,
    with_reports: bool,
    members: Vec<Member>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Member {
    name: String,
    table: String,
    columns: Vec<String>,
    rows: u64,
    bytes: u64,
    sha256: String,
}

fn member_name(table: &Table) -> String {
    format!("{}.jsonl", table.name)
}

/// What an export wrote or an import restored: rows per table.
#[derive(Debug)]
pub struct Summary {
    pub counts: Vec<(&'static Table, u64)>,
    pub with_reports: bool,
    /// The CA the archive holds.
    pub ca: CaRecord,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let counts: Vec<String> = self
            .counts
            .iter()
            .map(|(t, n)| format!("{n} {}", t.what))
            .collect();
        write!(f, "{}", counts.join(", "))?;
        if !self.with_reports {
            write!(f, " (no run reports: export --with-reports holds them)")?;
        }
        Ok(())
    }
}

/// The tables an archive holds.
fn tables_for(with_reports: bool) -> Vec<&'static Table> {
    tables::ALL
        .into_iter()
        .filter(|t| with_reports || !t.reports)
        .collect()
}

// Export.

/// Writes everything `store` holds (the run reports only `with_reports`),
/// read in one snapshot, into a new archive at `out` (mode 0600; an existing
/// file is replaced only once the new one is complete).
pub async fn export(store: &dyn Store, out: &Path, with_reports: bool) -> Result<Summary> {
    let ca = store
        .ca()
        .await
        .context("could not read the CA from the database")?
        .ok_or_else(|| {
            anyhow!(
                "the database holds no CA yet, and an archive without it could not serve the \
                 enrolled nodes\n  help: start cairn-server on this database once (it stores \
                 its CA there), then export again"
            )
        })?;
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tables = tables_for(with_reports);
    // Each table is spooled to an unnamed file next to the archive (a tar
    // member's size comes before its content), hashed as it is written.
    let mut spools = Vec::with_capacity(tables.len());
    for table in &tables {
        let file = tempfile::tempfile_in(&dir).with_context(|| {
            format!(
                "could not create a temporary file in {} for the {}",
                dir.display(),
                table.what
            )
        })?;
        spools.push(Spool::new(file));
    }
    let (sender, mut receiver) = mpsc::channel::<(usize, Row)>(64);
    let reading = store.export_rows(&tables, sender);
    let writing = async {
        while let Some((i, row)) = receiver.recv().await {
            spools[i]
                .write_row(tables[i], &row)
                .with_context(|| format!("could not spool the {}", tables[i].what))?;
        }
        anyhow::Ok(())
    };
    let (read, written) = tokio::join!(reading, writing);
    // A writer's failure closed the channel, which failed the reader: its
    // error says why.
    written?;
    read.context("could not read the database")?;

    let mut members = Vec::with_capacity(tables.len());
    let mut counts = Vec::with_capacity(tables.len());
    for (table, spool) in tables.iter().zip(&mut spools) {
        spool
            .out
            .flush()
            .with_context(|| format!("could not spool the {}", table.what))?;
        members.push(Member {
            name: member_name(table),
            table: table.name.to_string(),
            columns: table.columns.iter().map(|c| c.name.to_string()).collect(),
            rows: spool.rows,
            bytes: spool.bytes,
            sha256: format!("{:x}", spool.hasher.clone().finalize()),
        });
        counts.push((*table, spool.rows));
    }
    let manifest = Manifest {
        format: FORMAT.into(),
        format_version: FORMAT_VERSION,
        cairn_version: env!("CARGO_PKG_VERSION").into(),
        schema_version: Some(tables::SCHEMA_VERSION),
        created_at: crate::store::now_micros(),
        with_reports,
        members,
    };
    write_tar(out, &dir, &manifest, spools)?;
    Ok(Summary {
        counts,
        with_reports,
        ca,
    })
}

/// One table's rows as JSON lines, in an unnamed temporary file.
struct Spool {
    out: std::io::BufWriter<File>,
    hasher: Sha256,
    rows: u64,
    bytes: u64,
}

impl Spool {
    fn new(file: File) -> Spool {
        Spool {
            out: std::io::BufWriter::with_capacity(1 << 20, file),
            hasher: Sha256::new(),
            rows: 0,
            bytes: 0,
        }
    }

    fn write_row(&mut self, table: &Table, row: &Row) -> Result<()> {
        let mut line = serde_json::to_vec(&row_to_json(table, row))?;
        line.push(b'\n');
        if line.len() > MAX_LINE_BYTES {
            bail!(
                "row {} is {} bytes long as a line, over the {MAX_LINE_BYTES} an import reads",
                self.rows + 1,
                line.len()
            );
        }
        self.out.write_all(&line)?;
        self.hasher.update(&line);
        self.rows += 1;
        self.bytes += line.len() as u64;
        Ok(())
    }
}

fn row_to_json(table: &Table, row: &Row) -> serde_json::Map<String, serde_json::Value> {
    use serde_json::Value as J;
    let base64 = base64::engine::general_purpose::STANDARD;
    table
        .columns
        .iter()
        .zip(row)
        .map(|(column, value)| {
            let json = match value {
                Value::Int(v) => v.map_or(J::Null, J::from),
                Value::Text(v) => v.clone().map_or(J::Null, J::String),
                Value::Bytes(v) => v.as_ref().map_or(J::Null, |b| J::String(base64.encode(b))),
                Value::Bool(v) => v.map_or(J::Null, J::Bool),
            };
            (column.name.to_string(), json)
        })
        .collect()
}

/// Writes the tar (manifest first, then each spooled member) to a temporary
/// file in `dir`, made durable, then renamed to `out`.
fn write_tar(out: &Path, dir: &Path, manifest: &Manifest, spools: Vec<Spool>) -> Result<()> {
    let partial = tempfile::Builder::new()
        .prefix(".cairn-export-")
        .tempfile_in(dir)
        .with_context(|| format!("could not create a temporary file in {}", dir.display()))?;
    // It holds the CA's key: nobody else may read it, whatever the umask.
    partial
        .as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o600))
        .context("could not make the archive private (mode 0600)")?;
    let mtime = (manifest.created_at / 1_000_000).max(0) as u64;
    let header = |size: u64| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(size);
        h.set_mode(0o600);
        h.set_mtime(mtime);
        h
    };
    let mut tar = tar::Builder::new(std::io::BufWriter::with_capacity(1 << 20, partial));
    let text = serde_json::to_vec_pretty(manifest)?;
    let write =
        |e: std::io::Error| anyhow!(e).context(format!("could not write {}", out.display()));
    tar.append_data(&mut header(text.len() as u64), MANIFEST, text.as_slice())
        .map_err(write)?;
    for (spool, member) in spools.into_iter().zip(&manifest.members) {
        let mut file = spool
            .out
            .into_inner()
            .map_err(|e| anyhow!(e.into_error()))
            .with_context(|| format!("could not spool member {}", member.name))?;
        file.seek(SeekFrom::Start(0))?;
        tar.append_data(
            &mut header(member.bytes),
            &member.name,
            file.take(member.bytes),
        )
        .map_err(write)?;
    }
    let partial = tar
        .into_inner()
        .map_err(write)?
        .into_inner()
        .map_err(|e| write(e.into_error()))?;
    partial.as_file().sync_all().map_err(write)?;
    partial.persist(out).map_err(|e| write(e.error))?;
    // The rename itself survives a crash once the directory is synced.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("could not sync directory {}", dir.display()))?;
    Ok(())
}

// Import.

/// A member checked against the manifest, and where its content is.
#[derive(Debug)]
struct Checked {
    member: Member,
    table: &'static Table,
    /// The schema version the archive was written at.
    schema: i64,
    offset: u64,
}

/// The archive at `path`, its manifest and every member checked; nothing is
/// trusted until this returns.
fn check(path: &Path) -> Result<Vec<Checked>> {
    let file = File::open(path).with_context(|| format!("could not open {}", path.display()))?;
    let mut archive = tar::Archive::new(BufReader::new(file));
    let damaged = |after: &str| {
        format!(
            "{} is not a readable archive (after {after}): it is damaged, or not made by \
             `cairn-server export`",
            path.display()
        )
    };
    let mut entries = archive.entries().with_context(|| damaged("its start"))?;
    let mut first = entries
        .next()
        .ok_or_else(|| anyhow!("{} is empty", path.display()))?
        .with_context(|| damaged("its start"))?;
    if first.path_bytes().as_ref() != MANIFEST.as_bytes() {
        bail!(
            "{} does not start with {MANIFEST}: it was not made by `cairn-server export`",
            path.display()
        );
    }
    let mut text = Vec::new();
    (&mut first)
        .take(MAX_MANIFEST_BYTES + 1)
        .read_to_end(&mut text)
        .with_context(|| damaged(MANIFEST))?;
    if text.len() as u64 > MAX_MANIFEST_BYTES {
        bail!("{MANIFEST} is over {MAX_MANIFEST_BYTES} bytes long; refused");
    }
    let (manifest, schema) = read_manifest(&text)?;
    let mut expected = manifest.members.iter();
    let mut checked = Vec::with_capacity(manifest.members.len());
    let mut last = MANIFEST.to_string();
    for entry in entries {
        let mut entry = entry.with_context(|| damaged(&format!("member {last}")))?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let Some(member) = expected.next() else {
            bail!(
                "member {} is not in the manifest; refused",
                cairn_proto::terminal::escape(&name)
            );
        };
        if name != member.name {
            bail!(
                "member {} is where the manifest has {}: the archive was altered",
                cairn_proto::terminal::escape(&name),
                member.name
            );
        }
        if entry.header().entry_type() != tar::EntryType::Regular || entry.size() != member.bytes {
            bail!(
                "member {name} is not a file of {} bytes, as the manifest says: the archive is \
                 damaged or was altered",
                member.bytes
            );
        }
        let offset = entry.raw_file_position();
        let (sha256, rows) = digest_lines(&mut entry, &name)?;
        if sha256 != member.sha256 {
            bail!(
                "member {name} does not match its checksum in the manifest (sha256 {sha256}, \
                 the manifest says {}): the archive is damaged or was altered; nothing was imported",
                cairn_proto::terminal::escape(&member.sha256)
            );
        }
        if rows != member.rows {
            bail!(
                "member {name} holds {rows} rows, the manifest says {}: the archive was altered",
                member.rows
            );
        }
        let table = tables::ALL
            .into_iter()
            .find(|t| t.name == member.table)
            .expect("checked by read_manifest");
        checked.push(Checked {
            member: member.clone(),
            table,
            schema,
            offset,
        });
        last = name;
    }
    if let Some(missing) = expected.next() {
        bail!(
            "member {} is missing: the archive is cut short",
            missing.name
        );
    }
    Ok(checked)
}

/// The manifest and the schema version it was written at: its format and
/// version first, then its schema version and members against the tables
/// this build has.
fn read_manifest(text: &[u8]) -> Result<(Manifest, i64)> {
    let json: serde_json::Value = serde_json::from_slice(text)
        .with_context(|| format!("{MANIFEST} is not valid JSON; refused"))?;
    if json.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
        bail!("{MANIFEST} does not name the format {FORMAT:?}: not an archive of cairn-server");
    }
    let version = json.get("format_version").and_then(|v| v.as_u64());
    let Some(version) = version.filter(|v| (1..=u64::from(FORMAT_VERSION)).contains(v)) else {
        bail!(
            "the archive's format version is {}; this cairn-server reads versions 1 to \
             {FORMAT_VERSION}\n  help: import it with the cairn-server release that exported it, \
             or a newer one",
            version.map_or("missing".to_string(), |v| v.to_string())
        );
    };
    let manifest: Manifest = serde_json::from_value(json).with_context(|| {
        format!("{MANIFEST} does not have the fields of format version {version}")
    })?;
    let schema = match (version, manifest.schema_version) {
        (1, None) => tables::FIRST_ARCHIVE_SCHEMA,
        (1, Some(_)) => bail!("{MANIFEST} of format version 1 has a schema_version; refused"),
        (_, None) => bail!("{MANIFEST} has no schema_version; refused"),
        (_, Some(schema)) => schema,
    };
    if schema > tables::SCHEMA_VERSION {
        bail!(
            "the archive was written at schema version {schema}; this cairn-server knows schema \
             versions up to {}, and cannot tell what the newer migrations hold\n  help: import \
             it with a cairn-server release of schema version {schema} or newer (the one that \
             exported it, or a later one)",
            tables::SCHEMA_VERSION
        );
    }
    if schema < tables::FIRST_ARCHIVE_SCHEMA {
        bail!(
            "{MANIFEST} says schema version {schema}, but archives began at schema version {}: \
             the archive was altered",
            tables::FIRST_ARCHIVE_SCHEMA
        );
    }
    let wanted = tables_for(manifest.with_reports);
    if manifest.members.len() != wanted.len() {
        bail!(
            "{MANIFEST} lists {} members; an archive {} reports has {}",
            manifest.members.len(),
            if manifest.with_reports {
                "with"
            } else {
                "without"
            },
            wanted.len()
        );
    }
    for (member, table) in manifest.members.iter().zip(wanted) {
        if member.table != table.name || member.name != member_name(table) {
            bail!(
                "{MANIFEST} lists member {} (table {}) where this cairn-server expects {}",
                cairn_proto::terminal::escape(&member.name),
                cairn_proto::terminal::escape(&member.table),
                member_name(table)
            );
        }
        let columns: Vec<&str> = table.columns_at(schema).map(|c| c.name).collect();
        if member.columns != columns {
            bail!(
                "member {} has the columns {:?}; at schema version {schema}, the archive's, this \
                 cairn-server's table {} has {:?}: only columns added by a later migration may \
                 be missing\n  help: import it with the cairn-server release that exported it \
                 (of schema version {schema}, cairn {})",
                member.name,
                member.columns,
                table.name,
                columns,
                cairn_proto::terminal::escape(&manifest.cairn_version)
            );
        }
    }
    Ok((manifest, schema))
}

/// The SHA-256 (hex) of `content` and its number of lines, each at most
/// [`MAX_LINE_BYTES`] long and ended by a newline.
fn digest_lines(content: &mut impl Read, name: &str) -> Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0; 1 << 16];
    let (mut rows, mut line) = (0u64, 0usize);
    loop {
        let n = content
            .read(&mut buf)
            .with_context(|| format!("could not read member {name}"))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        for &b in &buf[..n] {
            if b == b'\n' {
                rows += 1;
                line = 0;
            } else {
                line += 1;
                if line > MAX_LINE_BYTES {
                    bail!(
                        "member {name}, line {}: longer than {MAX_LINE_BYTES} bytes; refused",
                        rows + 1
                    );
                }
            }
        }
    }
    if line != 0 {
        bail!("member {name} does not end with a newline: the archive is cut short or altered");
    }
    Ok((format!("{:x}", hasher.finalize()), rows))
}

/// The rows of one checked member, read again from the file and hashed again
/// as they are read ([`MemberRows::finish`] compares).
struct MemberRows {
    reader: BufReader<Hashing<std::io::Take<File>>>,
    checked_sha256: String,
    name: String,
    table: &'static Table,
    schema: i64,
    line: u64,
    buf: Vec<u8>,
}

impl MemberRows {
    fn open(path: &Path, c: &Checked) -> Result<MemberRows> {
        let mut file =
            File::open(path).with_context(|| format!("could not open {}", path.display()))?;
        file.seek(SeekFrom::Start(c.offset))
            .with_context(|| format!("could not read member {}", c.member.name))?;
        Ok(MemberRows {
            reader: BufReader::with_capacity(
                1 << 20,
                Hashing {
                    inner: file.take(c.member.bytes),
                    hasher: Sha256::new(),
                },
            ),
            checked_sha256: c.member.sha256.clone(),
            name: c.member.name.clone(),
            table: c.table,
            schema: c.schema,
            line: 0,
            buf: Vec::new(),
        })
    }

    /// The next row and its length in bytes; `None` at the member's end.
    fn next_row(&mut self) -> Result<Option<(Row, usize)>> {
        self.buf.clear();
        let n = (&mut self.reader)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut self.buf)
            .with_context(|| format!("could not read member {}", self.name))?;
        if n == 0 {
            return Ok(None);
        }
        self.line += 1;
        if self.buf.last() != Some(&b'\n') {
            bail!(
                "member {}, line {}: longer than {MAX_LINE_BYTES} bytes or cut short; the \
                 archive changed since it was checked",
                self.name,
                self.line
            );
        }
        let row = parse_row(self.table, self.schema, &self.buf)
            .with_context(|| format!("member {}, line {}", self.name, self.line))?;
        Ok(Some((row, n)))
    }

    /// Checks that what was read is what was checked.
    fn finish(mut self) -> Result<()> {
        if self.next_row()?.is_some() {
            bail!("member {} has more rows than were read", self.name);
        }
        let sha256 = format!("{:x}", self.reader.get_ref().hasher.clone().finalize());
        if sha256 != self.checked_sha256 {
            bail!(
                "member {} changed since it was checked (the file was written meanwhile); \
                 nothing was imported",
                self.name
            );
        }
        Ok(())
    }
}

struct Hashing<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// One line of a member written at schema version `schema`: a JSON object
/// with exactly the table's columns at that schema, each of its kind. The
/// row has every column of the table: those added since get what their
/// migration gave older rows.
fn parse_row(table: &Table, schema: i64, line: &[u8]) -> Result<Row> {
    use serde_json::Value as J;
    let mut object: serde_json::Map<String, J> =
        serde_json::from_slice(line).context("not a JSON object")?;
    let base64 = base64::engine::general_purpose::STANDARD;
    let mut row = Vec::with_capacity(table.columns.len());
    for column in table.columns {
        if let Some(added) = column.added.as_ref().filter(|a| a.migration > schema) {
            row.push(added.older_rows.clone());
            continue;
        }
        let json = object
            .remove(column.name)
            .ok_or_else(|| anyhow!("column {} is missing", column.name))?;
        if json.is_null() && !column.nullable {
            bail!("column {} may not be null", column.name);
        }
        let wrong = || {
            let kind = match column.kind {
                Kind::Int => "an integer (-2^63 to 2^63-1)",
                Kind::Text => "a string",
                Kind::Bytes => "base64 (standard alphabet, padded)",
                Kind::Bool => "true or false",
            };
            anyhow!("column {} does not hold {kind}", column.name)
        };
        let value = match (column.kind, json) {
            (Kind::Int, J::Null) => Value::Int(None),
            (Kind::Int, J::Number(n)) => Value::Int(Some(n.as_i64().ok_or_else(wrong)?)),
            (Kind::Text, J::Null) => Value::Text(None),
            (Kind::Text, J::String(s)) => Value::Text(Some(s)),
            (Kind::Bytes, J::Null) => Value::Bytes(None),
            (Kind::Bytes, J::String(s)) => {
                Value::Bytes(Some(base64.decode(s.as_bytes()).map_err(|_| wrong())?))
            }
            (Kind::Bool, J::Null) => Value::Bool(None),
            (Kind::Bool, J::Bool(b)) => Value::Bool(Some(b)),
            _ => return Err(wrong()),
        };
        row.push(value);
    }
    if let Some(extra) = object.keys().next() {
        bail!(
            "column {} is not one of table {} at schema version {schema}",
            cairn_proto::terminal::escape(extra),
            table.name
        );
    }
    Ok(row)
}

/// The CA row of a checked archive.
fn archived_ca(path: &Path, checked: &[Checked]) -> Result<CaRecord> {
    let member = checked
        .iter()
        .find(|c| c.table.name == tables::CA.name)
        .expect("every archive has a CA member");
    let mut rows = MemberRows::open(path, member)?;
    let Some((row, _)) = rows.next_row()? else {
        bail!("the archive holds no CA: nothing enrolled could be served from it");
    };
    let text = |i: usize| match &row[i] {
        Value::Text(Some(t)) => t.clone(),
        _ => String::new(),
    };
    Ok(CaRecord {
        cert_pem: text(1),
        key_pem: text(2),
    })
}

/// Restores the archive at `path` into `store`, which must be empty: every
/// member checked first, then every row in one transaction. `data_dir` is
/// the data directory of the server that will serve the database: one
/// holding another CA than the archive's is refused (that server would not
/// start).
pub async fn import(store: &dyn Store, path: &Path, data_dir: &Path) -> Result<Summary> {
    let checked = {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || check(&path))
            .await
            .context("the archive check stopped")??
    };
    let with_reports = checked.iter().any(|c| c.table.reports);
    let ca = archived_ca(path, &checked)?;
    if let Some(local) = crate::pki::read_data_dir_ca(data_dir)?
        && !crate::pki::same_ca(&local, &ca)
    {
        bail!(
            "data directory {} holds another CA ({}) than the archive ({}): a server there would \
             refuse the restored database\n  help: give import the data directory of a server \
             that never started, or move ca.crt and ca.key out of it",
            data_dir.display(),
            crate::pki::pin_of(&local).unwrap_or_default(),
            crate::pki::pin_of(&ca).unwrap_or_default()
        );
    }
    let mut restore = store.restore().await.context("could not import")?;
    let mut counts = Vec::with_capacity(checked.len());
    for c in &checked {
        let mut rows = MemberRows::open(path, c)?;
        let (mut batch, mut batch_bytes) = (Vec::new(), 0);
        let mut n = 0u64;
        loop {
            let next = rows.next_row()?;
            let done = next.is_none();
            if let Some((row, len)) = next {
                batch.push(row);
                batch_bytes += len;
                n += 1;
            }
            if !batch.is_empty()
                && (done
                    || batch.len() >= tables::MAX_ROWS_PER_INSERT
                    || batch_bytes >= MAX_BATCH_BYTES)
            {
                restore
                    .insert(c.table, &batch)
                    .await
                    .with_context(|| format!("could not import member {}", c.member.name))?;
                batch.clear();
                batch_bytes = 0;
            }
            if done {
                break;
            }
        }
        rows.finish()?;
        counts.push((c.table, n));
    }
    restore.commit().await.context("could not import")?;
    Ok(Summary {
        counts,
        with_reports,
        ca,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest_json(format: &str, version: u32) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "format": format,
            "format_version": version,
            "cairn_version": "9.9.9",
            "created_at": 0,
            "with_reports": false,
            "members": [],
            "from_the_future": true,
        }))
        .unwrap()
    }

    #[test]
    fn the_format_and_its_version_are_checked_before_the_rest() {
        let err = read_manifest(&manifest_json(FORMAT, FORMAT_VERSION + 1)).unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("format version is {}", FORMAT_VERSION + 1))
                && err
                    .to_string()
                    .contains("help: import it with the cairn-server release"),
            "{err:#}"
        );
        let err = read_manifest(&manifest_json("tarball", 1)).unwrap_err();
        assert!(
            err.to_string().contains("does not name the format"),
            "{err:#}"
        );
        for version in 1..=FORMAT_VERSION {
            let err = read_manifest(&manifest_json(FORMAT, version)).unwrap_err();
            assert!(format!("{err:#}").contains("from_the_future"), "{err:#}");
        }
    }

    #[test]
    fn a_row_of_an_older_schema_gets_the_columns_added_since() {
        let line = br#"{"name":"n","role":"r","channel":"c","fingerprint":"f","enrolled_at":1,"revoked_at":null,"token_id":"t","facts":null}"#;
        let row = parse_row(&tables::NODES, tables::FIRST_ARCHIVE_SCHEMA, line).unwrap();
        assert_eq!(row.len(), tables::NODES.columns.len());
        assert_eq!(row.last(), Some(&Value::Text(None)));
        // At the schema that has it, it must be there, and not before.
        let err = parse_row(&tables::NODES, 10, line).unwrap_err();
        assert!(
            err.to_string()
                .contains("column previous_fingerprint is missing"),
            "{err:#}"
        );
        let mut newer = line[..line.len() - 1].to_vec();
        newer.extend_from_slice(br#","previous_fingerprint":"p"}"#);
        let err = parse_row(&tables::NODES, tables::FIRST_ARCHIVE_SCHEMA, &newer).unwrap_err();
        assert!(
            err.to_string().contains(
                "column previous_fingerprint is not one of table nodes at schema version 8"
            ),
            "{err:#}"
        );
    }

    #[test]
    fn a_row_holds_exactly_its_columns_each_of_its_kind() {
        let line = |s: &str| parse_row(&tables::CA, tables::SCHEMA_VERSION, s.as_bytes());
        let row = line(r#"{"id":1,"cert_pem":"c","key_pem":"k","created_at":5}"#).unwrap();
        assert_eq!(
            row,
            [
                Value::Int(Some(1)),
                Value::Text(Some("c".into())),
                Value::Text(Some("k".into())),
                Value::Int(Some(5))
            ]
        );
        for (bad, why) in [
            (
                r#"{"id":1,"cert_pem":"c","key_pem":"k"}"#,
                "column created_at is missing",
            ),
            (
                r#"{"id":1,"cert_pem":"c","key_pem":"k","created_at":5,"x":1}"#,
                "column x is not one of table ca",
            ),
            (
                r#"{"id":1,"cert_pem":null,"key_pem":"k","created_at":5}"#,
                "column cert_pem may not be null",
            ),
            (
                r#"{"id":"1","cert_pem":"c","key_pem":"k","created_at":5}"#,
                "column id does not hold an integer",
            ),
            (
                r#"{"id":1e30,"cert_pem":"c","key_pem":"k","created_at":5}"#,
                "column id does not hold an integer",
            ),
            ("[1]", "not a JSON object"),
        ] {
            let err = format!("{:#}", line(bad).unwrap_err());
            assert!(err.contains(why), "{bad}: {err}");
        }
        let bytes = |b: &str| {
            parse_row(
                &tables::ROLE_VERSIONS,
                tables::SCHEMA_VERSION,
                format!(
                    r#"{{"role":"r","version":1,"digest":"d","author":"a","message":"","created_at":0,"bundle":{b}}}"#
                )
                .as_bytes(),
            )
        };
        assert_eq!(
            bytes(r#""AAE=""#).unwrap()[6],
            Value::Bytes(Some(vec![0, 1]))
        );
        assert!(format!("{:#}", bytes(r#""!!""#).unwrap_err()).contains("does not hold base64"));
    }

    #[test]
    fn lines_are_counted_and_bounded_without_holding_them() {
        let (sha, rows) = digest_lines(&mut &b"{}\n{}\n"[..], "m").unwrap();
        assert_eq!(rows, 2);
        assert_eq!(sha, format!("{:x}", Sha256::digest(b"{}\n{}\n")));
        let err = digest_lines(&mut &b"{}\n{}"[..], "m").unwrap_err();
        assert!(
            err.to_string().contains("does not end with a newline"),
            "{err}"
        );
        let mut endless = std::io::repeat(b'x').take(MAX_LINE_BYTES as u64 + 1);
        let err = digest_lines(&mut endless, "m").unwrap_err();
        assert!(
            err.to_string().contains("member m, line 1: longer than"),
            "{err}"
        );
    }

    /// A tar of `members` (name, content), the manifest first.
    fn tar_of(manifest: &Manifest, members: &[(&str, &[u8])]) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        let mut tar = tar::Builder::new(file.reopen().unwrap());
        let mut add = |name: &str, data: &[u8]| {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o600);
            tar.append_data(&mut h, name, data).unwrap();
        };
        add(MANIFEST, &serde_json::to_vec(manifest).unwrap());
        for (name, data) in members {
            add(name, data);
        }
        tar.finish().unwrap();
        file
    }

    /// A manifest of `format_version` at `schema` (unsaid in format 1) for
    /// an archive without reports whose members hold `data` (table, lines),
    /// the others nothing.
    fn manifest_of(format_version: u32, schema: i64, data: &[(&str, &[u8])]) -> Manifest {
        Manifest {
            format: FORMAT.into(),
            format_version,
            cairn_version: "0".into(),
            schema_version: (format_version > 1).then_some(schema),
            created_at: 0,
            with_reports: false,
            members: tables_for(false)
                .into_iter()
                .map(|t| {
                    let data = data
                        .iter()
                        .find(|(n, _)| *n == t.name)
                        .map_or(&b""[..], |d| d.1);
                    Member {
                        name: member_name(t),
                        table: t.name.into(),
                        columns: t.columns_at(schema).map(|c| c.name.into()).collect(),
                        rows: data.iter().filter(|&&b| b == b'\n').count() as u64,
                        bytes: data.len() as u64,
                        sha256: format!("{:x}", Sha256::digest(data)),
                    }
                })
                .collect(),
        }
    }

    /// A manifest for an archive of this build without reports whose members
    /// are all empty but the CA's, which holds `ca`.
    fn manifest_with_ca(ca: &[u8]) -> Manifest {
        manifest_of(FORMAT_VERSION, tables::SCHEMA_VERSION, &[("ca", ca)])
    }

    /// The archive `manifest` describes, its members holding `data`.
    fn archive_of(manifest: &Manifest, data: &[(&str, &[u8])]) -> tempfile::NamedTempFile {
        let members: Vec<(String, &[u8])> = manifest
            .members
            .iter()
            .map(|m| {
                let content = data
                    .iter()
                    .find(|(n, _)| *n == m.table)
                    .map_or(&b""[..], |d| d.1);
                (m.name.clone(), content)
            })
            .collect();
        let refs: Vec<(&str, &[u8])> = members.iter().map(|(n, d)| (n.as_str(), *d)).collect();
        tar_of(manifest, &refs)
    }

    const CA_LINE: &[u8] = br#"{"id":1,"cert_pem":"c","key_pem":"k","created_at":5}
"#;

    /// An archive of the first release that exported (format 1, schema 8,
    /// whose nodes have no `previous_fingerprint`) imports into this build:
    /// its nodes get NULL there, as migration 0010 gave the nodes it found.
    #[tokio::test]
    async fn an_archive_of_the_first_release_is_imported_its_nodes_without_a_previous_certificate()
    {
        let tokens = br#"{"id":"t1","secret_sha256":"s","role":"web","channel":"production","created_by":"admin","created_at":1,"expires_at":2,"uses_allowed":1,"uses_used":1,"revoked_at":null}
"#;
        let nodes = br#"{"name":"web-1","role":"web","channel":"production","fingerprint":"f1","enrolled_at":3,"revoked_at":null,"token_id":"t1","facts":"{}"}
"#;
        let data: [(&str, &[u8]); 3] = [("tokens", tokens), ("nodes", nodes), ("ca", CA_LINE)];
        let manifest = manifest_of(1, tables::FIRST_ARCHIVE_SCHEMA, &data);
        let text = String::from_utf8(serde_json::to_vec(&manifest).unwrap()).unwrap();
        assert!(text.contains(r#""format_version":1"#) && !text.contains("schema_version"));
        assert!(!text.contains("previous_fingerprint"), "{text}");
        let file = archive_of(&manifest, &data);

        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::open(&crate::store::default_url(dir.path()).unwrap())
            .await
            .unwrap();
        let summary = import(store.as_ref(), file.path(), &dir.path().join("data"))
            .await
            .unwrap();
        assert!(summary.to_string().contains("1 nodes"), "{summary}");

        let (sender, mut receiver) = mpsc::channel(8);
        store.export_rows(&[&tables::NODES], sender).await.unwrap();
        let (_, row) = receiver.recv().await.unwrap();
        assert!(receiver.recv().await.is_none());
        assert_eq!(row[0], Value::Text(Some("web-1".into())));
        assert_eq!(row[3], Value::Text(Some("f1".into())));
        assert_eq!(row[8], Value::Text(None), "previous_fingerprint");
    }

    #[test]
    fn an_archive_of_a_newer_schema_or_an_unknown_one_is_refused() {
        let text = |m: &Manifest| serde_json::to_vec(m).unwrap();
        let newer = manifest_of(FORMAT_VERSION, tables::SCHEMA_VERSION + 1, &[]);
        let err = read_manifest(&text(&newer)).unwrap_err().to_string();
        assert!(
            err.contains(&format!(
                "written at schema version {}; this cairn-server knows schema versions up to {}",
                tables::SCHEMA_VERSION + 1,
                tables::SCHEMA_VERSION
            )),
            "{err}"
        );
        let older = manifest_of(FORMAT_VERSION, tables::FIRST_ARCHIVE_SCHEMA - 1, &[]);
        let err = read_manifest(&text(&older)).unwrap_err().to_string();
        assert!(err.contains("archives began at schema version 8"), "{err}");

        let mut unsaid = manifest_of(FORMAT_VERSION, tables::SCHEMA_VERSION, &[]);
        unsaid.schema_version = None;
        let err = read_manifest(&text(&unsaid)).unwrap_err().to_string();
        assert!(err.contains("has no schema_version"), "{err}");

        // Format 1 is schema 8: its nodes may not hold the column of 0010,
        // nor lack any other.
        let mut current_columns = manifest_of(1, tables::FIRST_ARCHIVE_SCHEMA, &[]);
        let nodes = current_columns
            .members
            .iter_mut()
            .find(|m| m.table == "nodes")
            .unwrap();
        nodes.columns.push("previous_fingerprint".into());
        let err = read_manifest(&text(&current_columns))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("member nodes.jsonl has the columns")
                && err.contains("at schema version 8"),
            "{err}"
        );
        let mut lacking = manifest_of(FORMAT_VERSION, tables::SCHEMA_VERSION, &[]);
        lacking.members[0].columns.pop();
        let err = read_manifest(&text(&lacking)).unwrap_err().to_string();
        assert!(
            err.contains("member role_versions.jsonl has the columns"),
            "{err}"
        );

        let (_, schema) = read_manifest(&text(&manifest_of(1, 8, &[]))).unwrap();
        assert_eq!(schema, tables::FIRST_ARCHIVE_SCHEMA);
        let (_, schema) = read_manifest(&text(&manifest_with_ca(b""))).unwrap();
        assert_eq!(schema, tables::SCHEMA_VERSION);
    }

    #[test]
    fn members_are_checked_against_the_manifest_by_name_order_size_and_rows() {
        let ca = br#"{"id":1,"cert_pem":"c","key_pem":"k","created_at":5}
"#;
        let manifest = manifest_with_ca(ca);
        let members: Vec<(String, &[u8])> = manifest
            .members
            .iter()
            .map(|m| (m.name.clone(), if m.table == "ca" { &ca[..] } else { b"" }))
            .collect();
        let as_refs = |m: &[(String, &[u8])]| -> Vec<(String, Vec<u8>)> {
            m.iter().map(|(n, d)| (n.clone(), d.to_vec())).collect()
        };
        let check_of = |manifest: &Manifest, members: Vec<(String, Vec<u8>)>| {
            let refs: Vec<(&str, &[u8])> = members
                .iter()
                .map(|(n, d)| (n.as_str(), d.as_slice()))
                .collect();
            let file = tar_of(manifest, &refs);
            check(file.path()).map(|c| c.len())
        };
        assert_eq!(check_of(&manifest, as_refs(&members)).unwrap(), 8);

        let mut extra = as_refs(&members);
        extra.push(("passwd".into(), b"x\n".to_vec()));
        let err = check_of(&manifest, extra).unwrap_err().to_string();
        assert!(
            err.contains("member passwd is not in the manifest"),
            "{err}"
        );

        let mut short = as_refs(&members);
        short.pop();
        let err = check_of(&manifest, short).unwrap_err().to_string();
        assert!(err.contains("member ca.jsonl is missing"), "{err}");

        let mut swapped = as_refs(&members);
        swapped.swap(0, 1);
        let err = check_of(&manifest, swapped).unwrap_err().to_string();
        assert!(
            err.contains("member channels.jsonl is where the manifest has role_versions.jsonl"),
            "{err}"
        );

        let mut miscounted = manifest_with_ca(ca);
        miscounted.members.last_mut().unwrap().rows = 2;
        let err = check_of(&miscounted, as_refs(&members))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("member ca.jsonl holds 1 rows, the manifest says 2"),
            "{err}"
        );

        let mut resized = manifest_with_ca(ca);
        resized.members.last_mut().unwrap().bytes += 1;
        let err = check_of(&resized, as_refs(&members))
            .unwrap_err()
            .to_string();
        assert!(err.contains("member ca.jsonl is not a file of"), "{err}");

        let mut renamed = manifest_with_ca(ca);
        renamed.members[0].columns.push("extra".into());
        let err = check_of(&renamed, as_refs(&members))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("member role_versions.jsonl has the columns"),
            "{err}"
        );
    }
}

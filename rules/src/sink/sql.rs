//! Database sinks: an INSERT with `:name` parameters filled from the rule's output, one
//! transaction per batch. Values are always bound, never spliced into the SQL text.

use super::{Deliver, Failure, Record};
use super::{KindError, SinkKind, StartArgs};
use crate::tls::{self, TlsMode};
use async_trait::async_trait;
use serde::Deserialize;
use serde_json::Value;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tracing::warn;

pub(super) const SQLITE: SinkKind = SinkKind {
    name: "sqlite",
    check: |v| {
        let c: SqlConfig = super::options(v)?;
        c.path
            .map(drop)
            .ok_or_else(|| KindError::Invalid("path: required for a sqlite sink".into()))
    },
    start: |a: StartArgs| {
        Box::pin(async move {
            let c: SqlConfig = super::options(&a.options)?;
            Ok(Box::new(Sqlite::open(&c).await.map_err(KindError::Unusable)?) as Box<dyn Deliver>)
        })
    },
};

pub(super) const POSTGRES: SinkKind = SinkKind {
    name: "postgres",
    check: |v| {
        let c: SqlConfig = super::options(v)?;
        c.url
            .map(drop)
            .ok_or_else(|| KindError::Invalid("url: required for a postgres sink".into()))
    },
    start: |a: StartArgs| {
        Box::pin(async move {
            let c: SqlConfig = super::options(&a.options)?;
            Ok(
                Box::new(Postgres::new(&a.name, &c).map_err(KindError::Unusable)?)
                    as Box<dyn Deliver>,
            )
        })
    },
};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlConfig {
    /// SQLite: the database file. Ignored for PostgreSQL.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// PostgreSQL connection string, e.g. `host=127.0.0.1 user=switchyard dbname=iot`.
    #[serde(default)]
    pub url: Option<String>,
    /// An INSERT with `:name` parameters filled from the rule's output fields.
    pub statement: String,
    /// PostgreSQL: `disable`, `prefer`, `require`, `verify-ca` or `verify-full` (libpq's
    /// meanings); default: the URL's `sslmode`, else `prefer`.
    #[serde(default)]
    pub sslmode: Option<TlsMode>,
    /// PostgreSQL: the CA (PEM) that signed the server's certificate, for `verify-*`.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PostgreSQL: how long connecting (TCP, TLS, start-up) may take.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_ms: u64,
}

fn default_connect_timeout() -> u64 {
    5_000
}

/// The statement's parameter names in order of first appearance, and the statement with
/// PostgreSQL's `$n` placeholders. Quoted text and `::casts` are left alone.
#[derive(Debug, Clone)]
pub struct NamedStatement {
    pub names: Vec<String>,
    pub numbered: String,
}

impl NamedStatement {
    pub fn parse(sql: &str) -> Result<Self, String> {
        let chars: Vec<char> = sql.chars().collect();
        let mut names: Vec<String> = Vec::new();
        let mut numbered = String::with_capacity(sql.len());
        let mut i = 0;
        let mut quote: Option<char> = None;
        while i < chars.len() {
            let c = chars[i];
            if let Some(q) = quote {
                numbered.push(c);
                if c == q {
                    quote = None;
                }
                i += 1;
                continue;
            }
            match c {
                '\'' | '"' => {
                    quote = Some(c);
                    numbered.push(c);
                    i += 1;
                }
                ':' if chars.get(i + 1) == Some(&':') => {
                    numbered.push_str("::");
                    i += 2;
                }
                ':' if chars
                    .get(i + 1)
                    .is_some_and(|n| n.is_ascii_alphabetic() || *n == '_') =>
                {
                    let start = i + 1;
                    let mut end = start;
                    while end < chars.len()
                        && (chars[end].is_ascii_alphanumeric() || chars[end] == '_')
                    {
                        end += 1;
                    }
                    let name: String = chars[start..end].iter().collect();
                    let n = match names.iter().position(|x| *x == name) {
                        Some(p) => p + 1,
                        None => {
                            names.push(name);
                            names.len()
                        }
                    };
                    numbered.push_str(&format!("${n}"));
                    i = end;
                }
                _ => {
                    numbered.push(c);
                    i += 1;
                }
            }
        }
        if quote.is_some() {
            return Err("statement: unclosed quote".into());
        }
        Ok(Self { names, numbered })
    }

    fn value<'a>(&self, record: &'a Value, i: usize) -> &'a Value {
        record.get(&self.names[i]).unwrap_or(&Value::Null)
    }
}

// ---------------------------------------------------------------------------------------------
// SQLite

pub struct Sqlite {
    conn: Option<rusqlite::Connection>,
    statement: Arc<String>,
    params: Arc<NamedStatement>,
}

impl Sqlite {
    /// Opens the file and prepares the statement once, so a missing table or column stops
    /// start-up with SQLite's own message.
    pub async fn open(c: &SqlConfig) -> Result<Self, String> {
        let Some(path) = c.path.clone() else {
            return Err("path: required".into());
        };
        let params = NamedStatement::parse(&c.statement)?;
        let statement = c.statement.clone();
        let conn = tokio::task::spawn_blocking(move || -> Result<rusqlite::Connection, String> {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            }
            let conn = rusqlite::Connection::open(&path)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            conn.busy_timeout(std::time::Duration::from_secs(5))
                .map_err(|e| e.to_string())?;
            conn.prepare_cached(&statement)
                .map_err(|e| format!("{}: statement: {e}", path.display()))?;
            Ok(conn)
        })
        .await
        .map_err(|e| e.to_string())??;
        Ok(Self {
            conn: Some(conn),
            statement: Arc::new(c.statement.clone()),
            params: Arc::new(params),
        })
    }
}

fn sqlite_value(v: &Value) -> rusqlite::types::Value {
    use rusqlite::types::Value as V;
    match v {
        Value::Null => V::Null,
        Value::Bool(b) => V::Integer(i64::from(*b)),
        Value::Number(n) => match n.as_i64() {
            Some(i) => V::Integer(i),
            None => V::Real(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => V::Text(s.clone()),
        other => V::Text(other.to_string()),
    }
}

fn sqlite_failure(e: &rusqlite::Error) -> Failure {
    use rusqlite::ErrorCode as C;
    match e.sqlite_error_code() {
        Some(
            C::DatabaseBusy | C::DatabaseLocked | C::DiskFull | C::SystemIoFailure | C::CannotOpen,
        ) => Failure::Retry(format!("sqlite: {e}")),
        _ => Failure::Permanent(format!("sqlite: {e}")),
    }
}

#[async_trait]
impl Deliver for Sqlite {
    async fn deliver(&mut self, batch: &[Record]) -> Vec<(usize, Failure)> {
        let Some(mut conn) = self.conn.take() else {
            return (0..batch.len())
                .map(|i| (i, Failure::Retry("sqlite: connection lost".into())))
                .collect();
        };
        let batch = batch.to_vec();
        let statement = self.statement.clone();
        let params = self.params.clone();
        let r = tokio::task::spawn_blocking(move || {
            let mut failures = Vec::new();
            let result = (|| -> rusqlite::Result<()> {
                let tx = conn.transaction()?;
                {
                    let mut stmt = tx.prepare_cached(&statement)?;
                    for (i, record) in batch.iter().enumerate() {
                        let values: Vec<(String, rusqlite::types::Value)> = (0..params.names.len())
                            .map(|p| {
                                (
                                    format!(":{}", params.names[p]),
                                    sqlite_value(params.value(record, p)),
                                )
                            })
                            .collect();
                        let named: Vec<(&str, &dyn rusqlite::ToSql)> = values
                            .iter()
                            .map(|(n, v)| (n.as_str(), v as &dyn rusqlite::ToSql))
                            .collect();
                        // A row that violates a constraint is refused alone; the batch goes on.
                        if let Err(e) = stmt.execute(named.as_slice()) {
                            failures.push((i, sqlite_failure(&e)));
                        }
                    }
                }
                tx.commit()
            })();
            if let Err(e) = result {
                failures = (0..batch.len()).map(|i| (i, sqlite_failure(&e))).collect();
            }
            (conn, failures)
        })
        .await;
        match r {
            Ok((conn, failures)) => {
                self.conn = Some(conn);
                failures
            }
            Err(e) => {
                warn!(error = %e, "sqlite sink worker failed");
                Vec::new()
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL

pub struct Postgres {
    name: String,
    config: tokio_postgres::Config,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    connect_timeout: Duration,
    params: NamedStatement,
    client: Option<(tokio_postgres::Client, tokio_postgres::Statement)>,
}

impl Postgres {
    /// Connects lazily: the database may come up after the broker.
    pub fn new(name: &str, c: &SqlConfig) -> Result<Self, String> {
        use tokio_postgres::config::SslMode;
        let Some(url) = c.url.as_deref() else {
            return Err("url: required".into());
        };
        let mut config: tokio_postgres::Config = url.parse().map_err(|e| format!("url: {e}"))?;
        let mode = match c.sslmode {
            Some(mode) => mode,
            None if config.get_ssl_mode() == SslMode::Require => TlsMode::Require,
            None if config.get_ssl_mode() == SslMode::Disable => TlsMode::Disable,
            None => TlsMode::Prefer,
        };
        if c.ca_file.is_some() && !matches!(mode, TlsMode::VerifyCa | TlsMode::VerifyFull) {
            return Err(
                "ca_file: only used with sslmode = \"verify-ca\" or \"verify-full\"".into(),
            );
        }
        config.ssl_mode(match mode {
            TlsMode::Disable => SslMode::Disable,
            TlsMode::Prefer => SslMode::Prefer,
            TlsMode::Require | TlsMode::VerifyCa | TlsMode::VerifyFull => SslMode::Require,
        });
        let connect_timeout = Duration::from_millis(c.connect_timeout_ms.max(1));
        config.connect_timeout(connect_timeout);
        let tls = tls::client_config(mode, c.ca_file.as_deref())?;
        Ok(Self {
            name: name.to_string(),
            config,
            tls: tokio_postgres_rustls::MakeRustlsConnect::new(tls),
            connect_timeout,
            params: NamedStatement::parse(&c.statement)?,
            client: None,
        })
    }

    async fn connect(&mut self) -> Result<(), Failure> {
        if self.client.as_ref().is_some_and(|(c, _)| !c.is_closed()) {
            return Ok(());
        }
        self.client = None;
        // The whole start-up, TLS included: a server that accepts and then says nothing must
        // not hold the sink.
        let connecting = self.config.connect(self.tls.clone());
        let (client, connection) = tokio::time::timeout(self.connect_timeout, connecting)
            .await
            .map_err(|_| {
                Failure::Retry(format!(
                    "postgres: no connection within {} ms",
                    self.connect_timeout.as_millis()
                ))
            })?
            // Refused at connect time (pg_hba, password, TLS): the configuration or the server
            // is wrong, not the record; keep the records and try again.
            .map_err(|e| match pg_failure(&e) {
                Failure::Permanent(why) => Failure::Retry(why),
                retry => retry,
            })?;
        let sink = self.name.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                warn!(sink = %sink, error = %e, "postgres connection closed");
            }
        });
        let stmt = client
            .prepare(&self.params.numbered)
            .await
            .map_err(|e| pg_failure(&e))?;
        self.client = Some((client, stmt));
        Ok(())
    }

    async fn insert_all(&mut self, batch: &[Record]) -> Result<(), tokio_postgres::Error> {
        let Some((client, stmt)) = self.client.as_mut() else {
            return Ok(());
        };
        let tx = client.transaction().await?;
        for record in batch {
            let values: Vec<PgParam<'_>> = (0..self.params.names.len())
                .map(|p| PgParam(self.params.value(record, p)))
                .collect();
            let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = values
                .iter()
                .map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync))
                .collect();
            tx.execute(&*stmt, &refs).await?;
        }
        tx.commit().await
    }
}

/// A value of a record that does not fit its column: the record's fault, never retried.
#[derive(Debug)]
struct Conversion(String);

impl std::fmt::Display for Conversion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Conversion {}

fn pg_failure(e: &tokio_postgres::Error) -> Failure {
    // A parameter that did not convert carries no SQLSTATE, unlike the server's refusals.
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(c) = s.downcast_ref::<Conversion>() {
            return Failure::Permanent(format!("postgres: {c}"));
        }
        source = s.source();
    }
    match e.code() {
        // Connection trouble, shutdown, overload, lock conflicts: try again.
        Some(code) => {
            let c = code.code();
            if c.starts_with("08")
                || c.starts_with("53")
                || c.starts_with("57")
                || c == "40001"
                || c == "40P01"
            {
                Failure::Retry(format!("postgres: {e}"))
            } else {
                let detail = e
                    .as_db_error()
                    .map(|d| d.message().to_string())
                    .unwrap_or_else(|| e.to_string());
                Failure::Permanent(format!("postgres: {detail}"))
            }
        }
        None => {
            // "error performing TLS handshake" says little without its cause.
            let cause = std::error::Error::source(e)
                .map(|s| format!(": {s}"))
                .unwrap_or_default();
            Failure::Retry(format!("postgres: {e}{cause}"))
        }
    }
}

#[async_trait]
impl Deliver for Postgres {
    async fn deliver(&mut self, batch: &[Record]) -> Vec<(usize, Failure)> {
        if let Err(f) = self.connect().await {
            let why = match &f {
                Failure::Retry(w) | Failure::Permanent(w) => w.clone(),
            };
            let permanent = matches!(f, Failure::Permanent(_));
            return (0..batch.len())
                .map(|i| {
                    let w = why.clone();
                    (
                        i,
                        if permanent {
                            Failure::Permanent(w)
                        } else {
                            Failure::Retry(w)
                        },
                    )
                })
                .collect();
        }
        match self.insert_all(batch).await {
            Ok(()) => Vec::new(),
            Err(e) => match pg_failure(&e) {
                Failure::Retry(w) => {
                    self.client = None;
                    (0..batch.len())
                        .map(|i| (i, Failure::Retry(w.clone())))
                        .collect()
                }
                // One bad row aborts the transaction: insert the batch row by row to refuse
                // only the rows that are bad.
                Failure::Permanent(_) => {
                    let mut failures = Vec::new();
                    for (i, record) in batch.iter().enumerate() {
                        if let Err(e) = self.insert_all(std::slice::from_ref(record)).await {
                            failures.push((i, pg_failure(&e)));
                        }
                    }
                    failures
                }
            },
        }
    }
}

/// A JSON value bound to whatever type PostgreSQL inferred for the parameter.
#[derive(Debug)]
struct PgParam<'a>(&'a Value);

impl tokio_postgres::types::ToSql for PgParam<'_> {
    fn to_sql(
        &self,
        ty: &tokio_postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        self.convert(ty, out)
            .map_err(|e| Box::new(Conversion(e.to_string())) as _)
    }

    fn accepts(_: &tokio_postgres::types::Type) -> bool {
        true
    }

    tokio_postgres::types::to_sql_checked!();
}

impl PgParam<'_> {
    fn convert(
        &self,
        ty: &tokio_postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        use tokio_postgres::types::{IsNull, ToSql, Type};
        let v = self.0;
        if v.is_null() {
            return Ok(IsNull::Yes);
        }
        let as_i64 = || -> Result<i64, String> {
            v.as_i64()
                .or_else(|| v.as_f64().map(|f| f as i64))
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                .or_else(|| v.as_bool().map(i64::from))
                .ok_or_else(|| format!("expected an integer for {ty}, got {v}"))
        };
        let as_f64 = || -> Result<f64, String> {
            v.as_f64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                .ok_or_else(|| format!("expected a number for {ty}, got {v}"))
        };
        match *ty {
            Type::BOOL => v
                .as_bool()
                .ok_or_else(|| format!("expected a boolean for {ty}, got {v}"))?
                .to_sql(ty, out),
            Type::INT2 => i16::try_from(as_i64()?)?.to_sql(ty, out),
            Type::INT4 => i32::try_from(as_i64()?)?.to_sql(ty, out),
            Type::INT8 => as_i64()?.to_sql(ty, out),
            Type::FLOAT4 => (as_f64()? as f32).to_sql(ty, out),
            Type::FLOAT8 => as_f64()?.to_sql(ty, out),
            Type::JSON | Type::JSONB => v.to_sql(ty, out),
            Type::TIMESTAMPTZ | Type::TIMESTAMP => {
                let ms = match v {
                    Value::String(s) => chrono::DateTime::parse_from_rfc3339(s)
                        .map_err(|e| format!("expected an RFC 3339 time for {ty}: {e}"))?
                        .timestamp_millis(),
                    _ => as_i64()?,
                };
                let t = std::time::UNIX_EPOCH
                    + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0));
                t.to_sql(ty, out)
            }
            Type::BYTEA => match v {
                Value::String(s) => s.as_bytes().to_sql(ty, out),
                other => other.to_string().as_bytes().to_sql(ty, out),
            },
            _ => match v {
                Value::String(s) => s.as_str().to_sql(ty, out),
                other => other.to_string().as_str().to_sql(ty, out),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_parameters_become_numbered_outside_quotes_and_casts() {
        let s = NamedStatement::parse(
            "INSERT INTO t (a, b, c) VALUES (:topic, ':not', :ts::bigint) -- :topic again",
        )
        .unwrap();
        assert_eq!(s.names, vec!["topic", "ts"]);
        assert_eq!(
            s.numbered,
            "INSERT INTO t (a, b, c) VALUES ($1, ':not', $2::bigint) -- $1 again"
        );
    }
}

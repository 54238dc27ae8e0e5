//! `buffer = "disk"`: what a sink could not deliver by shutdown is written to an SQLite file
//! and delivered first at the next start.

use super::Record;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tracing::warn;

pub struct DiskQueue {
    path: PathBuf,
}

impl DiskQueue {
    pub async fn open(dir: &Path, sink: &str) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("buffer_dir {}: {e}", dir.display()))?;
        let path = dir.join(format!("{sink}.db"));
        let p = path.clone();
        tokio::task::spawn_blocking(move || -> Result<(), String> {
            let db = rusqlite::Connection::open(&p).map_err(|e| format!("{}: {e}", p.display()))?;
            db.execute_batch(
                "CREATE TABLE IF NOT EXISTS pending (id INTEGER PRIMARY KEY, record TEXT NOT NULL)",
            )
            .map_err(|e| format!("{}: {e}", p.display()))
        })
        .await
        .map_err(|e| e.to_string())??;
        Ok(Self { path })
    }

    /// Everything kept by earlier runs, oldest first; the file is emptied.
    pub async fn take_all(&self) -> Vec<Record> {
        let path = self.path.clone();
        let r = tokio::task::spawn_blocking(move || -> rusqlite::Result<Vec<Record>> {
            let mut db = rusqlite::Connection::open(&path)?;
            let tx = db.transaction()?;
            let mut out = Vec::new();
            {
                let mut stmt = tx.prepare("SELECT record FROM pending ORDER BY id")?;
                let rows = stmt.query_map([], |row| row.get::<_, String>(0))?;
                for text in rows {
                    match serde_json::from_str(&text?) {
                        Ok(v) => out.push(Arc::new(v)),
                        Err(e) => {
                            warn!(error = %e, "unreadable record in sink disk buffer; skipped")
                        }
                    }
                }
            }
            tx.execute("DELETE FROM pending", [])?;
            tx.commit()?;
            Ok(out)
        })
        .await;
        match r {
            Ok(Ok(records)) => records,
            Ok(Err(e)) => {
                warn!(file = %self.path.display(), error = %e, "cannot read the sink's disk buffer");
                Vec::new()
            }
            Err(_) => Vec::new(),
        }
    }

    pub async fn save(&self, records: Vec<Record>) {
        let path = self.path.clone();
        let r = tokio::task::spawn_blocking(move || -> rusqlite::Result<()> {
            let mut db = rusqlite::Connection::open(&path)?;
            let tx = db.transaction()?;
            {
                let mut stmt = tx.prepare("INSERT INTO pending (record) VALUES (?1)")?;
                for r in &records {
                    stmt.execute([r.to_string()])?;
                }
            }
            tx.commit()
        })
        .await;
        if !matches!(r, Ok(Ok(()))) {
            warn!(file = %self.path.display(), "cannot write the sink's disk buffer; records lost");
        }
    }
}

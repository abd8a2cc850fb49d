//! [`Columns`] on SQLite: ids as text, times as Unix milliseconds, JSON as text, flags as 0/1.

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use sqlx::Row;
use sqlx::sqlite::SqliteRow;
use uuid::Uuid;

use crate::error::{Result, StoreError};
use crate::rows::Columns;
use crate::util;

/// A stored Unix-ms time (an unrepresentable one reads as the epoch).
pub(crate) fn ts(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// A stored text id.
pub(crate) fn uuid_of(s: &str) -> Result<Uuid> {
    Uuid::parse_str(s).map_err(StoreError::corrupt)
}

impl Columns for SqliteRow {
    fn text(&self, col: &str) -> Result<String> {
        Ok(self.try_get(col)?)
    }
    fn opt_text(&self, col: &str) -> Result<Option<String>> {
        Ok(self.try_get(col)?)
    }
    fn int(&self, col: &str) -> Result<i64> {
        Ok(self.try_get(col)?)
    }
    fn opt_int(&self, col: &str) -> Result<Option<i64>> {
        Ok(self.try_get(col)?)
    }
    fn bytes(&self, col: &str) -> Result<Vec<u8>> {
        Ok(self.try_get(col)?)
    }
    fn flag(&self, col: &str) -> Result<bool> {
        Ok(self.try_get::<i64, _>(col)? != 0)
    }
    fn id(&self, col: &str) -> Result<Uuid> {
        uuid_of(self.try_get::<&str, _>(col)?)
    }
    fn opt_id(&self, col: &str) -> Result<Option<Uuid>> {
        self.try_get::<Option<&str>, _>(col)?
            .map(uuid_of)
            .transpose()
    }
    fn time(&self, col: &str) -> Result<DateTime<Utc>> {
        Ok(ts(self.try_get(col)?))
    }
    fn opt_time(&self, col: &str) -> Result<Option<DateTime<Utc>>> {
        Ok(self.try_get::<Option<i64>, _>(col)?.map(ts))
    }
    fn json<T: DeserializeOwned>(&self, col: &str) -> Result<T> {
        util::from_json(self.try_get::<&str, _>(col)?)
    }
    fn opt_json<T: DeserializeOwned>(&self, col: &str) -> Result<Option<T>> {
        self.try_get::<Option<&str>, _>(col)?
            .map(util::from_json)
            .transpose()
    }
    fn now(&self) -> Result<DateTime<Utc>> {
        Ok(Utc::now())
    }
}

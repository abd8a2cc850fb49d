//! [`Columns`] on Postgres: native `uuid`, `timestamptz`, `jsonb` and `bool` columns.

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use sqlx::Row;
use sqlx::postgres::PgRow;
use sqlx::types::Json;
use uuid::Uuid;

use crate::error::Result;
use crate::rows::Columns;

impl Columns for PgRow {
    fn text(&self, col: &str) -> Result<String> {
        Ok(self.try_get(col)?)
    }
    fn opt_text(&self, col: &str) -> Result<Option<String>> {
        Ok(self.try_get(col)?)
    }
    fn int(&self, col: &str) -> Result<i64> {
        // `int2`, `int4` and `int8` columns alike: the decoder reads the value's own width,
        // the type check (which wants exactly `int8` for an `i64`) is what is skipped.
        Ok(self.try_get_unchecked::<i64, _>(col)?)
    }
    fn opt_int(&self, col: &str) -> Result<Option<i64>> {
        Ok(self.try_get_unchecked::<Option<i64>, _>(col)?)
    }
    fn bytes(&self, col: &str) -> Result<Vec<u8>> {
        Ok(self.try_get(col)?)
    }
    fn flag(&self, col: &str) -> Result<bool> {
        Ok(self.try_get(col)?)
    }
    fn id(&self, col: &str) -> Result<Uuid> {
        Ok(self.try_get(col)?)
    }
    fn opt_id(&self, col: &str) -> Result<Option<Uuid>> {
        Ok(self.try_get(col)?)
    }
    fn time(&self, col: &str) -> Result<DateTime<Utc>> {
        Ok(self.try_get(col)?)
    }
    fn opt_time(&self, col: &str) -> Result<Option<DateTime<Utc>>> {
        Ok(self.try_get(col)?)
    }
    fn json<T: DeserializeOwned>(&self, col: &str) -> Result<T> {
        Ok(self.try_get::<Json<T>, _>(col)?.0)
    }
    fn opt_json<T: DeserializeOwned>(&self, col: &str) -> Result<Option<T>> {
        Ok(self.try_get::<Option<Json<T>>, _>(col)?.map(|j| j.0))
    }
    fn now(&self) -> Result<DateTime<Utc>> {
        Ok(self.try_get("now")?)
    }
}

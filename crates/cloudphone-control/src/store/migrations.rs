//! The schema migrations, embedded at build time (`build.rs` lists `migrations/*.sql`) and read
//! the way sqlx's `migrate!` reads them: same versions, descriptions and checksums, so databases
//! migrated before keep validating. Done by hand to leave out sqlx's `macros` feature, whose
//! proc-macro builds sqlx's drivers and bundled SQLite a second time, for the host.

use std::borrow::Cow;

use futures::future::BoxFuture;
use sqlx::error::BoxDynError;
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};

/// (file name, SQL) of each file in `migrations/`, in name order.
const FILES: &[(&str, &str)] = include!(concat!(env!("OUT_DIR"), "/migrations.rs"));

/// The migrator over [`FILES`].
pub(super) async fn migrator() -> Result<Migrator, sqlx::migrate::MigrateError> {
    Migrator::new(Embedded).await
}

#[derive(Debug)]
struct Embedded;

impl MigrationSource<'static> for Embedded {
    fn resolve(self) -> BoxFuture<'static, Result<Vec<Migration>, BoxDynError>> {
        Box::pin(async move {
            let mut migrations = FILES
                .iter()
                .map(|&(name, sql)| migration(name, sql))
                .collect::<Result<Vec<_>, _>>()?;
            migrations.sort_by_key(|m| m.version);
            Ok(migrations)
        })
    }
}

/// `0004_usage.sql` → version 4, description "usage", as sqlx's `resolve_blocking` names it.
fn migration(name: &'static str, sql: &'static str) -> Result<Migration, BoxDynError> {
    let Some((version, rest)) = name.split_once('_') else {
        return Err(format!("migration {name:?} is not named <version>_<description>.sql").into());
    };
    let version: i64 = version
        .parse()
        .map_err(|_| format!("migration {name:?} has no integer version prefix"))?;
    let migration_type = MigrationType::from_filename(rest);
    let description = rest
        .trim_end_matches(migration_type.suffix())
        .replace('_', " ");
    Ok(Migration::new(
        version,
        Cow::Owned(description),
        migration_type,
        Cow::Borrowed(sql),
        sql.starts_with("-- no-transaction"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The embedded migrations are the ones sqlx resolves from the directory (what `migrate!`
    /// embedded before): same versions, descriptions, kinds, transaction mode and checksums.
    #[tokio::test]
    async fn embedded_migrations_are_sqlx_own_reading_of_the_directory() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let from_disk = Migrator::new(dir).await.unwrap();
        let embedded = migrator().await.unwrap();
        let key = |m: &Migration| {
            (
                m.version,
                m.description.to_string(),
                m.migration_type,
                m.no_tx,
                m.checksum.to_vec(),
            )
        };
        let disk: Vec<_> = from_disk.iter().map(key).collect();
        let ours: Vec<_> = embedded.iter().map(key).collect();
        assert!(disk.len() >= 8, "{disk:?}");
        assert_eq!(ours, disk);
    }
}

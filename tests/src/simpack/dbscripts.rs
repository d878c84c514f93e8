//! The `dbscripts/` a pack ships and the JDBC driver jars operators copy into
//! `repository/components/lib` (facts and sources: `docs/databases.md`).
//!
//! Every pack of every release line ships the Carbon kernel's scripts for the shared database
//! (`dbscripts/<engine>.sql`: registry `REG_*` and user management `UM_*` tables) and the API
//! Manager's scripts for the API-M database (`dbscripts/apimgt/<engine>.sql`); the 4.5
//! universal gateway and traffic manager packs too (their assembly copies both). Our scripts
//! hold a handful of the real tables each, in each engine's own dialect: the mysql and
//! postgresql ones are executed for real (MariaDB 10.11, PostgreSQL 15) by the agent under
//! test, and the simulated server then checks for the same tables ([`SHARED_DB_TABLES`],
//! [`APIM_DB_TABLES`]) when it starts on such a database.

use std::io::{Cursor, Write};

use zip::ZipWriter;

use super::file_opts;

/// The engines whose scripts the packs ship, by file stem (`dbscripts/<stem>.sql`).
pub const SCRIPT_ENGINES: [&str; 5] = ["h2", "mysql", "postgresql", "mssql", "oracle"];

/// Tables of the shared database (`WSO2_SHARED_DB`: registry and user management) that the
/// shipped kernel scripts create and a starting server needs, in the order it touches them.
pub const SHARED_DB_TABLES: &[&str] = &[
    "UM_TENANT",
    "UM_USER",
    "UM_ROLE",
    "UM_USER_ROLE",
    "REG_PATH",
    "REG_RESOURCE",
];

/// Tables of the API-M database (`WSO2AM_DB`) that the shipped `apimgt` scripts create and a
/// starting server needs, in the order it touches them.
pub const APIM_DB_TABLES: &[&str] = &[
    "IDN_OAUTH_CONSUMER_APPS",
    "AM_SUBSCRIBER",
    "AM_APPLICATION",
    "AM_API",
    "AM_SUBSCRIPTION",
];

/// The shared database script's path in a pack, for an engine stem of [`SCRIPT_ENGINES`].
pub fn shared_db_script_path(engine: &str) -> String {
    format!("dbscripts/{engine}.sql")
}

/// The API-M database script's path in a pack, for an engine stem of [`SCRIPT_ENGINES`].
pub fn apim_db_script_path(engine: &str) -> String {
    format!("dbscripts/apimgt/{engine}.sql")
}

/// Every script a pack ships: (path inside the pack's top directory, text).
pub fn pack_scripts() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for engine in SCRIPT_ENGINES {
        out.push((shared_db_script_path(engine), shared_db_script(engine)));
        out.push((apim_db_script_path(engine), apim_db_script(engine)));
    }
    out
}

/// A column list: (name, type per dialect family, extra), rendered by [`table`].
struct Col {
    name: &'static str,
    ty: Ty,
    not_null: bool,
}

#[derive(Clone, Copy)]
enum Ty {
    /// The table's surrogate key, filled by the engine (auto increment, sequence, identity).
    Id,
    Int,
    Str(u16),
    Time,
}

const fn col(name: &'static str, ty: Ty, not_null: bool) -> Col {
    Col { name, ty, not_null }
}

struct Table {
    name: &'static str,
    cols: &'static [Col],
    unique: &'static [&'static str],
}

const SHARED: &[Table] = &[
    Table {
        name: "UM_TENANT",
        cols: &[
            col("UM_ID", Ty::Id, true),
            col("UM_DOMAIN_NAME", Ty::Str(255), true),
            col("UM_EMAIL", Ty::Str(255), false),
            col("UM_ACTIVE", Ty::Int, false),
            col("UM_CREATED_DATE", Ty::Time, true),
        ],
        unique: &["UM_DOMAIN_NAME"],
    },
    Table {
        name: "UM_USER",
        cols: &[
            col("UM_ID", Ty::Id, true),
            col("UM_USER_ID", Ty::Str(255), true),
            col("UM_USER_NAME", Ty::Str(255), true),
            col("UM_USER_PASSWORD", Ty::Str(255), true),
            col("UM_SALT_VALUE", Ty::Str(31), false),
            col("UM_TENANT_ID", Ty::Int, true),
        ],
        unique: &["UM_USER_NAME", "UM_TENANT_ID"],
    },
    Table {
        name: "UM_ROLE",
        cols: &[
            col("UM_ID", Ty::Id, true),
            col("UM_ROLE_NAME", Ty::Str(255), true),
            col("UM_TENANT_ID", Ty::Int, true),
            col("UM_SHARED_ROLE", Ty::Int, false),
        ],
        unique: &["UM_ROLE_NAME", "UM_TENANT_ID"],
    },
    Table {
        name: "UM_USER_ROLE",
        cols: &[
            col("UM_ID", Ty::Id, true),
            col("UM_ROLE_ID", Ty::Int, true),
            col("UM_USER_ID", Ty::Int, true),
            col("UM_TENANT_ID", Ty::Int, true),
        ],
        unique: &["UM_USER_ID", "UM_ROLE_ID", "UM_TENANT_ID"],
    },
    Table {
        name: "REG_PATH",
        cols: &[
            col("REG_PATH_ID", Ty::Id, true),
            col("REG_PATH_VALUE", Ty::Str(750), true),
            col("REG_PATH_PARENT_ID", Ty::Int, false),
            col("REG_TENANT_ID", Ty::Int, false),
        ],
        unique: &["REG_PATH_VALUE", "REG_TENANT_ID"],
    },
    Table {
        name: "REG_RESOURCE",
        cols: &[
            col("REG_PATH_ID", Ty::Int, true),
            col("REG_NAME", Ty::Str(256), false),
            col("REG_VERSION", Ty::Id, true),
            col("REG_MEDIA_TYPE", Ty::Str(500), false),
            col("REG_CREATOR", Ty::Str(255), true),
            col("REG_CREATED_TIME", Ty::Time, true),
            col("REG_TENANT_ID", Ty::Int, false),
        ],
        unique: &[],
    },
];

const APIM: &[Table] = &[
    Table {
        name: "IDN_OAUTH_CONSUMER_APPS",
        cols: &[
            col("ID", Ty::Id, true),
            col("CONSUMER_KEY", Ty::Str(255), false),
            col("CONSUMER_SECRET", Ty::Str(2048), false),
            col("USERNAME", Ty::Str(255), false),
            col("TENANT_ID", Ty::Int, false),
            col("APP_NAME", Ty::Str(255), false),
            col("CALLBACK_URL", Ty::Str(2048), false),
        ],
        unique: &["CONSUMER_KEY"],
    },
    Table {
        name: "AM_SUBSCRIBER",
        cols: &[
            col("SUBSCRIBER_ID", Ty::Id, true),
            col("USER_ID", Ty::Str(255), true),
            col("TENANT_ID", Ty::Int, true),
            col("EMAIL_ADDRESS", Ty::Str(256), false),
            col("DATE_SUBSCRIBED", Ty::Time, true),
        ],
        unique: &["TENANT_ID", "USER_ID"],
    },
    Table {
        name: "AM_APPLICATION",
        cols: &[
            col("APPLICATION_ID", Ty::Id, true),
            col("NAME", Ty::Str(100), false),
            col("SUBSCRIBER_ID", Ty::Int, false),
            col("APPLICATION_TIER", Ty::Str(50), false),
            col("UUID", Ty::Str(256), false),
            col("ORGANIZATION", Ty::Str(100), false),
        ],
        unique: &["UUID"],
    },
    Table {
        name: "AM_API",
        cols: &[
            col("API_ID", Ty::Id, true),
            col("API_UUID", Ty::Str(256), false),
            col("API_PROVIDER", Ty::Str(200), false),
            col("API_NAME", Ty::Str(200), false),
            col("API_VERSION", Ty::Str(30), false),
            col("CONTEXT", Ty::Str(256), false),
            col("CREATED_TIME", Ty::Time, false),
        ],
        unique: &["API_PROVIDER", "API_NAME", "API_VERSION"],
    },
    Table {
        name: "AM_SUBSCRIPTION",
        cols: &[
            col("SUBSCRIPTION_ID", Ty::Id, true),
            col("TIER_ID", Ty::Str(50), false),
            col("API_ID", Ty::Int, false),
            col("APPLICATION_ID", Ty::Int, false),
            col("SUB_STATUS", Ty::Str(50), false),
            col("UUID", Ty::Str(256), false),
        ],
        unique: &["UUID"],
    },
];

/// The kernel's shared database script (`dbscripts/<engine>.sql`) for an engine stem.
pub fn shared_db_script(engine: &str) -> String {
    script(
        engine,
        "WSO2 Carbon kernel: registry (REG_*) and user management (UM_*) tables",
        SHARED,
    )
}

/// The API Manager database script (`dbscripts/apimgt/<engine>.sql`) for an engine stem.
pub fn apim_db_script(engine: &str) -> String {
    script(engine, "WSO2 API Manager (WSO2AM_DB) tables", APIM)
}

fn script(engine: &str, what: &str, tables: &[Table]) -> String {
    let mut out = format!("-- {what} ({engine}); simulated distribution, a subset\n\n");
    for t in tables {
        out.push_str(&table(engine, t));
        out.push('\n');
    }
    out
}

fn column_type(engine: &str, ty: Ty) -> String {
    match (engine, ty) {
        ("mysql", Ty::Id) => "INTEGER NOT NULL AUTO_INCREMENT".into(),
        ("h2", Ty::Id) => "INTEGER NOT NULL AUTO_INCREMENT".into(),
        ("mssql", Ty::Id) => "INTEGER IDENTITY(1,1) NOT NULL".into(),
        ("oracle", Ty::Id) | ("oracle", Ty::Int) => "INTEGER".into(),
        (_, Ty::Int) => "INTEGER".into(),
        ("oracle", Ty::Str(n)) => format!("VARCHAR2({n})"),
        (_, Ty::Str(n)) => format!("VARCHAR({n})"),
        ("mssql", Ty::Time) => "DATETIME".into(),
        (_, Ty::Time) => "TIMESTAMP".into(),
        // PostgreSQL: the key column's default comes from the table's sequence.
        (_, Ty::Id) => "INTEGER".into(),
    }
}

fn sequence_name(t: &Table) -> String {
    format!("{}_SEQ", t.name)
}

fn table(engine: &str, t: &Table) -> String {
    let key = t.cols.iter().find(|c| matches!(c.ty, Ty::Id));
    let mut lines: Vec<String> = t
        .cols
        .iter()
        .map(|c| {
            let mut line = format!("    {} {}", c.name, column_type(engine, c.ty));
            if matches!(c.ty, Ty::Id) && engine == "postgresql" {
                line.push_str(&format!(" DEFAULT nextval('{}')", sequence_name(t)));
            }
            let typed_not_null =
                matches!(c.ty, Ty::Id) && matches!(engine, "mysql" | "h2" | "mssql");
            if c.not_null && !typed_not_null {
                line.push_str(" NOT NULL");
            }
            line
        })
        .collect();
    if let Some(k) = key {
        let pk = match t.name {
            // The registry keeps every version of a resource: the key is the version number.
            "REG_RESOURCE" => "REG_VERSION, REG_TENANT_ID".to_string(),
            _ => k.name.to_string(),
        };
        lines.push(format!("    PRIMARY KEY ({pk})"));
    }
    if !t.unique.is_empty() {
        lines.push(format!("    UNIQUE ({})", t.unique.join(", ")));
    }
    let body = lines.join(",\n");
    match engine {
        "mysql" => {
            let mut s = format!(
                "CREATE TABLE IF NOT EXISTS {} (\n{body}\n) ENGINE INNODB;\n",
                t.name
            );
            s.push_str(&index(engine, t));
            s
        }
        "postgresql" => {
            let mut s = String::new();
            if key.is_some() {
                s.push_str(&format!(
                    "CREATE SEQUENCE IF NOT EXISTS {} START WITH 1 INCREMENT BY 1;\n",
                    sequence_name(t)
                ));
            }
            s.push_str(&format!(
                "CREATE TABLE IF NOT EXISTS {} (\n{body}\n);\n",
                t.name
            ));
            s.push_str(&index(engine, t));
            s
        }
        "mssql" => format!(
            "IF NOT EXISTS (SELECT * FROM SYS.OBJECTS WHERE OBJECT_ID = OBJECT_ID(N'[DBO].[{n}]') AND TYPE IN (N'U'))\nCREATE TABLE {n} (\n{body}\n);\n",
            n = t.name
        ),
        "oracle" => {
            let mut s = format!("CREATE TABLE {} (\n{body}\n)\n/\n", t.name);
            if key.is_some() {
                s.push_str(&format!(
                    "CREATE SEQUENCE {} START WITH 1 INCREMENT BY 1 NOCACHE\n/\n",
                    sequence_name(t)
                ));
            }
            s
        }
        _ => format!("CREATE TABLE IF NOT EXISTS {} (\n{body}\n);\n", t.name),
    }
}

/// A lookup index on the table's tenant column, named like the real scripts' `IDX_*`.
fn index(engine: &str, t: &Table) -> String {
    let Some(tenant) = t
        .cols
        .iter()
        .find(|c| c.name.ends_with("TENANT_ID"))
        .map(|c| c.name)
    else {
        return String::new();
    };
    let name = format!("IDX_{}_{}", t.name, tenant);
    match engine {
        // MariaDB (and MySQL 8) have no IF NOT EXISTS for indexes of every version: the real
        // scripts create them once, right after the table.
        "mysql" => format!("CREATE INDEX {name} ON {} ({tenant});\n", t.name),
        _ => format!(
            "CREATE INDEX IF NOT EXISTS {name} ON {} ({tenant});\n",
            t.name
        ),
    }
}

/// A JDBC driver jar standing in for `mysql-connector-j`, `postgresql`, `mariadb-java-client`
/// and the like: a zip with `META-INF/MANIFEST.MF` and the driver class's entry (for
/// `com.mysql.cj.jdbc.Driver`, `com/mysql/cj/jdbc/Driver.class`), which is what the simulated
/// server looks for under `repository/components/lib`.
pub fn driver_jar(class: &str) -> Vec<u8> {
    let mut zip = ZipWriter::new(Cursor::new(Vec::new()));
    let manifest = format!(
        "Manifest-Version: 1.0\nCreated-By: apimctl simulated distribution\nDriver-Class: {class}\n"
    );
    let entry = format!("{}.class", class.replace('.', "/"));
    // Writing into memory cannot fail short of allocation failure.
    let written = zip
        .start_file("META-INF/MANIFEST.MF", file_opts(0o644))
        .and_then(|()| Ok(zip.write_all(manifest.as_bytes())?))
        .and_then(|()| zip.start_file(entry, file_opts(0o644)))
        .and_then(|()| Ok(zip.write_all(&[0xCA, 0xFE, 0xBA, 0xBE, 0, 0, 0, 61])?));
    match (written, zip.finish()) {
        (Ok(()), Ok(cursor)) => cursor.into_inner(),
        _ => Vec::new(),
    }
}

/// Whether the jar bytes hold the class file of `class` (a dotted name).
pub fn jar_has_class(jar: &[u8], class: &str) -> bool {
    let entry = format!("{}.class", class.replace('.', "/"));
    zip::ZipArchive::new(Cursor::new(jar))
        .map(|mut z| z.by_name(&entry).is_ok())
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_create_every_listed_table_in_each_engine() {
        for engine in SCRIPT_ENGINES {
            let shared = shared_db_script(engine);
            let apim = apim_db_script(engine);
            for t in SHARED_DB_TABLES {
                assert!(
                    shared.contains(&format!("CREATE TABLE IF NOT EXISTS {t} ("))
                        || shared.contains(&format!("CREATE TABLE {t} (")),
                    "{engine} {t}"
                );
            }
            for t in APIM_DB_TABLES {
                assert!(apim.contains(&format!(" {t} (")), "{engine} {t}");
            }
        }
        let my = shared_db_script("mysql");
        assert!(my.contains(") ENGINE INNODB;"));
        assert!(my.contains("CREATE INDEX IDX_UM_USER_UM_TENANT_ID ON UM_USER (UM_TENANT_ID);"));
        let pg = apim_db_script("postgresql");
        assert!(pg.contains("CREATE SEQUENCE IF NOT EXISTS AM_API_SEQ"));
        assert!(pg.contains("API_ID INTEGER DEFAULT nextval('AM_API_SEQ') NOT NULL"));
    }

    #[test]
    fn driver_jars_hold_their_class() {
        let jar = driver_jar("com.mysql.cj.jdbc.Driver");
        assert!(jar_has_class(&jar, "com.mysql.cj.jdbc.Driver"));
        assert!(!jar_has_class(&jar, "org.postgresql.Driver"));
        assert!(!jar_has_class(b"not a zip", "org.postgresql.Driver"));
    }
}

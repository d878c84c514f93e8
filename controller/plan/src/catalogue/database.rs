//! The database engines WSO2 API Manager supports, how `deployment.toml` names them, the JDBC
//! URL written for Oracle (whose service name the host/port/name keys cannot carry), and the
//! embedded H2 databases the packs ship with.

/// Database engines WSO2 supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DbType {
    /// MySQL.
    Mysql,
    /// PostgreSQL (WSO2 calls it `postgre`).
    Postgres,
    /// Microsoft SQL Server.
    Mssql,
    /// Oracle.
    Oracle,
    /// Embedded H2 (single-node demos only).
    H2,
}

impl DbType {
    /// The names a plan may use, for messages.
    pub const NAMES: [&'static str; 5] = ["mysql", "postgres", "mssql", "oracle", "h2"];

    /// Parses a plan's `type` (`postgresql` and WSO2's `postgre` are accepted too).
    pub fn parse(s: &str) -> Option<DbType> {
        Some(match s {
            "mysql" => DbType::Mysql,
            "postgres" | "postgresql" | "postgre" => DbType::Postgres,
            "mssql" => DbType::Mssql,
            "oracle" => DbType::Oracle,
            "h2" => DbType::H2,
            _ => return None,
        })
    }

    /// Default port of the engine.
    pub fn default_port(self) -> u16 {
        match self {
            DbType::Mysql => 3306,
            DbType::Postgres => 5432,
            DbType::Mssql => 1433,
            DbType::Oracle => 1521,
            DbType::H2 => 0,
        }
    }

    /// The plan's name of the engine (`[databases.*] type`, `[drivers]` keys).
    pub fn plan_name(self) -> &'static str {
        match self {
            DbType::Mysql => "mysql",
            DbType::Postgres => "postgres",
            DbType::Mssql => "mssql",
            DbType::Oracle => "oracle",
            DbType::H2 => "h2",
        }
    }

    /// The JDBC driver the operator gets for this engine (the packs ship none but H2's).
    pub fn driver_hint(self) -> Option<&'static str> {
        Some(match self {
            DbType::Mysql => "mysql-connector-j-<version>.jar (Maven com.mysql:mysql-connector-j)",
            DbType::Postgres => "postgresql-<version>.jar (Maven org.postgresql:postgresql)",
            DbType::Mssql => {
                "mssql-jdbc-<version>.jre11.jar (Maven com.microsoft.sqlserver:mssql-jdbc)"
            }
            DbType::Oracle => "ojdbc11-<version>.jar (Maven com.oracle.database.jdbc:ojdbc11)",
            DbType::H2 => return None,
        })
    }

    /// The name the pack's `dbscripts` give this engine's scripts (`dbscripts/<name>.sql`).
    pub fn script_name(self) -> &'static str {
        match self {
            DbType::Mysql => "mysql",
            DbType::Postgres => "postgresql",
            DbType::Mssql => "mssql",
            DbType::Oracle => "oracle",
            DbType::H2 => "h2",
        }
    }

    /// Whether apimctl can create this engine's schemas (`init = "if-empty"`).
    pub fn init_supported(self) -> bool {
        matches!(self, DbType::Mysql | DbType::Postgres)
    }

    /// The `[database.*] type` value WSO2 reads.
    pub fn wso2_type(self) -> &'static str {
        match self {
            DbType::Mysql => "mysql",
            DbType::Postgres => "postgre",
            DbType::Mssql => "mssql",
            DbType::Oracle => "oracle",
            DbType::H2 => "h2",
        }
    }
}

/// The JDBC URL of the pack's own embedded H2 database `id` (`apim_db` or `shared_db`).
pub fn h2_url(id: &str) -> &'static str {
    match id {
        "apim_db" => {
            "jdbc:h2:./repository/database/WSO2AM_DB;AUTO_SERVER=TRUE;DB_CLOSE_ON_EXIT=FALSE"
        }
        _ => "jdbc:h2:./repository/database/WSO2SHARED_DB;DB_CLOSE_ON_EXIT=FALSE",
    }
}

/// The JDBC URL of an Oracle service `name` at `host:port` (thin driver, service name form).
pub fn oracle_url(host: &str, port: u16, name: &str) -> String {
    format!("jdbc:oracle:thin:@//{host}:{port}/{name}")
}

/// The folder of the carbon home JDBC drivers go into: the server's own class path. A jar in
/// `repository/components/dropins` is an OSGi bundle the datasources cannot load a driver from.
pub const DRIVER_DIR: &str = "repository/components/lib";

/// The scripts, relative to the carbon home, that create database `id`'s schema on `t`
/// (docs/databases.md): the shared database's registry and user-management tables come from the
/// kernel's `dbscripts/<engine>.sql`, API Manager's own from `dbscripts/apimgt/<engine>.sql`.
pub fn schema_scripts(id: &str, t: DbType) -> Vec<String> {
    let name = t.script_name();
    match id {
        "apim_db" => vec![format!("dbscripts/apimgt/{name}.sql")],
        _ => vec![format!("dbscripts/{name}.sql")],
    }
}

/// Host, port and database of a MySQL, MariaDB or PostgreSQL JDBC URL
/// (`jdbc:mysql://host[:port]/name[?…]`); `None` for any other form.
pub fn jdbc_endpoint(url: &str) -> Option<(String, u16, String)> {
    let (rest, t) = [
        ("jdbc:mysql://", DbType::Mysql),
        ("jdbc:mariadb://", DbType::Mysql),
        ("jdbc:postgresql://", DbType::Postgres),
    ]
    .into_iter()
    .find_map(|(p, t)| url.strip_prefix(p).map(|r| (r, t)))?;
    let (authority, path) = rest.split_once('/')?;
    let name = path.split(['?', ';']).next()?.to_string();
    if authority.contains(',') || name.is_empty() {
        return None;
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h.to_string(), p.parse().ok()?),
        None => (authority.to_string(), t.default_port()),
    };
    (!host.is_empty()).then_some((host, port, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jdbc_endpoints() {
        assert_eq!(
            jdbc_endpoint("jdbc:mysql://db.example.com:3307/apim_db?useSSL=false"),
            Some(("db.example.com".into(), 3307, "apim_db".into()))
        );
        assert_eq!(
            jdbc_endpoint("jdbc:postgresql://pg/shared"),
            Some(("pg".into(), 5432, "shared".into()))
        );
        assert_eq!(jdbc_endpoint("jdbc:mysql://a:1,b:2/x"), None);
        assert_eq!(jdbc_endpoint("jdbc:oracle:thin:@//h:1521/s"), None);
    }

    #[test]
    fn scripts_per_database() {
        assert_eq!(
            schema_scripts("apim_db", DbType::Postgres),
            ["dbscripts/apimgt/postgresql.sql"]
        );
        assert_eq!(
            schema_scripts("shared_db", DbType::Mysql),
            ["dbscripts/mysql.sql"]
        );
    }
}

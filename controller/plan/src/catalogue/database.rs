//! The database engines WSO2 API Manager supports, how `deployment.toml` names them, the JDBC
//! URL written for Oracle (whose service name the host/port/name keys cannot carry), and the
//! embedded H2 databases the packs ship with.

/// Database engines WSO2 supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

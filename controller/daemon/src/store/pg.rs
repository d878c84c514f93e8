//! The PostgreSQL backend's connection: one client, opened on first use and again after the
//! server went away (a restart, a failover), so a controller rides out a database restart: the
//! calls made while it is down fail with the server's error, the next ones reconnect.
//!
//! The `postgres` client is synchronous (it drives its own small runtime); called from the
//! controller's multi-threaded tokio runtime it runs inside `block_in_place`.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use postgres::{Client, NoTls};

use super::StoreError;

/// How long connecting may take before the call fails (the caller retries later).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Maps a client error to the store's, naming what the store was doing.
pub(crate) fn err(action: &'static str) -> impl FnOnce(postgres::Error) -> StoreError {
    move |source| StoreError::Postgres { action, source }
}

/// Where the store lives: `url` (`postgres://user@host:port/db`, never with a password in it)
/// and the password, resolved by the caller from its reference.
#[derive(Clone)]
pub struct PgTarget {
    config: postgres::Config,
    /// The URL as given (no password: refused by [`PgTarget::new`]), for messages.
    pub url: String,
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTarget").field("url", &self.url).finish()
    }
}

impl PgTarget {
    /// Parses `url`; refuses one that carries a password (it would end up in logs and process
    /// listings): the password comes separately.
    pub fn new(url: &str, password: Option<&str>) -> Result<PgTarget, StoreError> {
        let mut config: postgres::Config = url.parse().map_err(|e: postgres::Error| {
            StoreError::Config(format!(
                "[store] url `{url}` is not a PostgreSQL URL (postgres://user@host:port/db): {e}"
            ))
        })?;
        if config.get_password().is_some() {
            return Err(StoreError::Config(
                "[store] url must not hold a password: set `password = \"env:NAME\"` or \
                 `password = \"file:/path\"` instead"
                    .into(),
            ));
        }
        if let Some(p) = password {
            config.password(p);
        }
        config
            .connect_timeout(CONNECT_TIMEOUT)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30))
            .application_name("apimctl-controller");
        Ok(PgTarget {
            config,
            url: url.to_owned(),
        })
    }
}

/// The backend's one connection.
pub(crate) struct Pg {
    target: PgTarget,
    client: Mutex<Option<Client>>,
}

impl std::fmt::Debug for Pg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pg").field("url", &self.target.url).finish()
    }
}

impl Pg {
    /// Connects once (a wrong URL or password fails here, at start) and migrates.
    pub(crate) fn open(target: PgTarget) -> Result<Pg, StoreError> {
        let pg = Pg {
            target,
            client: Mutex::new(None),
        };
        pg.with(super::migrate::postgres)?;
        Ok(pg)
    }

    fn lock(&self) -> MutexGuard<'_, Option<Client>> {
        self.client.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the connection (opening it if needed), off the async workers.
    pub(crate) fn with<T>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        blocking(|| {
            let mut slot = self.lock();
            if slot.as_ref().is_none_or(Client::is_closed) {
                *slot = None;
                let client =
                    self.target
                        .config
                        .connect(NoTls)
                        .map_err(|source| StoreError::Connect {
                            url: self.target.url.clone(),
                            source,
                        })?;
                *slot = Some(client);
            }
            let client = slot.as_mut().expect("connected above");
            let out = f(client);
            if out.is_err() && client.is_closed() {
                *slot = None;
            }
            out
        })
    }
}

impl Drop for Pg {
    /// Closing the client blocks on its own runtime, which must not happen on an async worker
    /// (tokio refuses a runtime inside a runtime): close it where blocking is allowed.
    fn drop(&mut self) {
        use tokio::runtime::{Handle, RuntimeFlavor};
        let Some(client) = self
            .client
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        else {
            return;
        };
        match Handle::try_current() {
            Err(_) => drop(client),
            Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(|| drop(client));
            }
            Ok(_) => {
                let _ = std::thread::spawn(move || drop(client)).join();
            }
        }
    }
}

/// Runs blocking `f`: inside `block_in_place` on a multi-threaded runtime, directly outside any.
/// A current-thread runtime cannot host the synchronous client (it would block its only
/// thread, and the client's own runtime refuses to nest): such a call fails.
fn blocking<T>(f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Err(_) => f(),
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        Ok(_) => Err(StoreError::Config(
            "the PostgreSQL store needs the multi-threaded tokio runtime".into(),
        )),
    }
}

//! Where a Redis server is and how to log in: the `address`, `database`,
//! `username` and `password` keys shared by the Redis sink and the Redis
//! Streams source, and the blocking connection both open from them.

use std::time::Duration;

use crate::config::{Key, Settings, SpecError};

/// The keys every Redis connector takes for its server.
pub const CLIENT_KEYS: [Key; 4] = [
    Key::text("address"),
    Key::integer("database"),
    Key::text("username"),
    Key::text("password"),
];

/// A Redis server and the login to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisClient {
    /// `host:port` of the server.
    pub address: String,
    /// The database number.
    pub database: i64,
    /// The user (or the default user) and password, if the server asks.
    pub credentials: Option<(Option<String>, String)>,
}

impl RedisClient {
    /// Reads [`CLIENT_KEYS`] of a connector's table (`offset`); `what`
    /// names the connector in errors ("a `redis` sink").
    pub fn parse(settings: &Settings, offset: usize, what: &str) -> Result<Self, SpecError> {
        let address = crate::config::required(settings.text("address"), "address", offset, what)?;
        let at = settings.text("address").map_or(offset, |t| t.span().start);
        let port_ok = address
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
        if !port_ok {
            return Err((at, format!("invalid address {address:?} (write `host:port`)")));
        }
        let database = settings.integer("database").map_or(Ok(0), |n| {
            let value = *n.get_ref();
            if (0..=1_000_000).contains(&value) {
                Ok(value)
            } else {
                Err((n.span().start, format!("invalid database {value}")))
            }
        })?;
        let credentials = match (settings.text("username"), settings.text("password")) {
            (user, Some(password)) => Some((user.map(|u| u.get_ref().clone()), password.get_ref().clone())),
            (Some(user), None) => {
                return Err((user.span().start, "`username` needs `password`".to_owned()));
            }
            (None, None) => None,
        };
        Ok(Self {
            address: address.to_owned(),
            database,
            credentials,
        })
    }

    /// A blocking connection, given up after 5 s; each command then waits
    /// for its answer at most `timeout`.
    pub fn connect(&self, timeout: Duration) -> Result<redis::Connection, redis::RedisError> {
        let (host, port) = self.address.rsplit_once(':').unwrap_or((&self.address, "6379"));
        let info = redis::ConnectionInfo {
            addr: redis::ConnectionAddr::Tcp(host.to_owned(), port.parse().unwrap_or(6379)),
            redis: redis::RedisConnectionInfo {
                db: self.database,
                username: self.credentials.as_ref().and_then(|(user, _)| user.clone()),
                password: self.credentials.as_ref().map(|(_, password)| password.clone()),
                ..Default::default()
            },
        };
        let connection =
            redis::Client::open(info)?.get_connection_with_timeout(Duration::from_secs(5).min(timeout))?;
        connection.set_read_timeout(Some(timeout))?;
        connection.set_write_timeout(Some(timeout))?;
        Ok(connection)
    }
}

/// True for errors after which the same command may succeed later: the
/// connection failed, or the server is loading, read-only or failing over.
pub fn transient(error: &redis::RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_refusal()
        || error.is_connection_dropped()
        || error.is_timeout()
        || matches!(
            error.kind(),
            redis::ErrorKind::TryAgain
                | redis::ErrorKind::BusyLoadingError
                | redis::ErrorKind::ReadOnly
                | redis::ErrorKind::MasterDown
        )
}

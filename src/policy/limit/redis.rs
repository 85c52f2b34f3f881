//! The Redis store: one atomic GCRA script per check, shared by every gateway instance.
//!
//! The connection is a `redis` `ConnectionManager` (multiplexed, reconnects by itself),
//! created lazily on first use from inside a request, so its background task runs on the
//! Pingora service's own tokio runtime (a runtime built at config load would not be running
//! while Pingora serves). Every call is bounded by `timeout` (default 50 ms). A failure is
//! counted and logged at most once per [`LOG_EVERY`]; the caller applies `on_error`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::OnceCell;

use super::local::{Gcra, Verdict};

/// Failures are logged at most once per this many seconds.
pub const LOG_EVERY: u64 = 10;

/// GCRA on the Redis server's clock (so instances agree), in microseconds.
/// KEYS[1] = key; ARGV = interval, tolerance (burst * interval), credit (see
/// [`Gcra::decide`]: a token that came free less than `credit` ago is charged from when it came
/// free). Returns {allowed, delta}: allowed → delta = new TAT - now; denied → delta = TAT - now.
/// The key lives until its TAT + credit: after that it means the same as no key.
const SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tol = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local credit = tonumber(ARGV[3])
if tat + credit < now then tat = now end
local new_tat = tat + interval
if new_tat - now <= tol then
  redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now + credit) / 1000) + 1)
  return {1, new_tat - now}
end
return {0, tat - now}
";

pub struct RedisStore {
    client: redis::Client,
    conn: OnceCell<ConnectionManager>,
    script: redis::Script,
    pub timeout: Duration,
    /// `on_error: deny`: answer 503 while Redis fails (else fail open).
    pub deny_on_error: bool,
    failures: AtomicU64,
    last_log: AtomicU64,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("timeout", &self.timeout)
            .field("deny_on_error", &self.deny_on_error)
            .finish()
    }
}

/// How to reach Redis beyond its URL: `AUTH`'s credentials, and for TLS the CAs to trust
/// (none: the system's).
#[derive(Default)]
pub struct Access {
    pub username: Option<String>,
    pub password: Option<String>,
    pub ca: Option<Vec<u8>>,
}

impl RedisStore {
    /// The store for `url` reached with `access`; `Err`: the key at fault and why.
    pub fn new(
        url: &str,
        access: Access,
        timeout: Duration,
        deny_on_error: bool,
    ) -> Result<RedisStore, (&'static str, String)> {
        use redis::IntoConnectionInfo;
        let bad_url = |e: redis::RedisError| ("redis.url", format!("bad Redis URL {url:?}: {e}"));
        let mut info = url.into_connection_info().map_err(bad_url)?;
        if let Some(password) = access.password {
            if info.redis.password.is_some() {
                return Err((
                    "redis.password",
                    "the url has a password too: give it in one place".into(),
                ));
            }
            info.redis.password = Some(password);
            info.redis.username = access.username;
        }
        let client = match access.ca {
            Some(pem) => {
                let certs = redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                };
                redis::Client::build_with_tls(info, certs)
                    .map_err(|e| ("redis.ca", format!("cannot use these CAs: {e}")))?
            }
            None => redis::Client::open(info).map_err(bad_url)?,
        };
        Ok(RedisStore {
            client,
            conn: OnceCell::new(),
            script: redis::Script::new(SCRIPT),
            timeout,
            deny_on_error,
            failures: AtomicU64::new(0),
            last_log: AtomicU64::new(0),
        })
    }

    /// The client, for the `sync` policies' own connections.
    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    /// Failed calls since start (for metrics).
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    async fn connection(&self) -> Result<ConnectionManager, String> {
        let conn = self
            .conn
            .get_or_try_init(|| async { connect(&self.client, self.timeout).await })
            .await?;
        Ok(conn.clone())
    }

    /// One GCRA check for `key` under `gcra`; `Err` when Redis did not answer in time.
    pub async fn check(&self, gcra: &Gcra, key: u64) -> Result<Verdict, String> {
        let call = async {
            let mut conn = self.connection().await?;
            let interval = gcra.interval.div_ceil(1000).max(1);
            let tol = interval * gcra.burst;
            let (allowed, delta): (i64, i64) = self
                .script
                .key(format!("tollgate:rl:{key:016x}"))
                .arg(interval)
                .arg(tol)
                .arg(interval / 2)
                .invoke_async(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(verdict(allowed == 1, delta.max(0) as u64, interval, tol))
        };
        let r = match tokio::time::timeout(self.timeout, call).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        };
        if let Err(e) = &r {
            self.failed(e);
        }
        r
    }

    fn failed(&self, e: &str) {
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        let now = super::local::now_nanos() / 1_000_000_000 + LOG_EVERY;
        let last = self.last_log.load(Ordering::Relaxed);
        if (last == 0 || now >= last + LOG_EVERY)
            && self
                .last_log
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let what = if self.deny_on_error {
                "denying (503)"
            } else {
                "allowing"
            };
            log::warn!(
                "rate limit store Redis failed ({e}); {what} requests of redis policies; {n} failures so far (logged at most every {LOG_EVERY}s)"
            );
        }
    }
}

/// A connection that reconnects by itself, every call bounded by `timeout`.
pub async fn connect(
    client: &redis::Client,
    timeout: Duration,
) -> Result<ConnectionManager, String> {
    let cfg = ConnectionManagerConfig::new()
        .set_connection_timeout(timeout)
        .set_response_timeout(timeout)
        .set_number_of_retries(1)
        .set_max_delay(1000);
    ConnectionManager::new_with_config(client.clone(), cfg)
        .await
        .map_err(|e| e.to_string())
}

/// The verdict from the script's answer (microseconds) in the local store's terms (ns).
fn verdict(allowed: bool, delta: u64, interval: u64, tol: u64) -> Verdict {
    if allowed {
        Verdict {
            allowed,
            remaining: tol.saturating_sub(delta) / interval,
            reset_nanos: delta * 1000,
            retry_after_nanos: 0,
        }
    } else {
        Verdict {
            allowed,
            remaining: 0,
            reset_nanos: delta * 1000,
            retry_after_nanos: (delta + interval).saturating_sub(tol) * 1000,
        }
    }
}

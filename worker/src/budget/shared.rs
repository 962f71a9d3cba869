//! The budgets shared by every worker through Redis. One Lua script checks
//! the block, the concurrency leases and the token bucket and takes what the
//! request needs, atomically, on Redis's own clock. Keys (hash-tagged by
//! budget, so a cluster keeps a budget's keys on one node):
//! `oprun:budget:{PROVIDER/ENV}:leases` (a sorted set: permit id → expiry
//! in ms), `…:blocked` (a key that lives as long as the block), `…:bucket`
//! (tokens and when they were counted).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use oprun_shared::redact;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{BudgetKey, GiveBack, Limits, Permit, Take};

/// How long one call to Redis may take before the budget falls back to the
/// process's own.
const CALL_TIMEOUT: Duration = Duration::from_millis(500);
/// After Redis failed, how long this process uses its own budgets before it
/// asks Redis again (so that requests do not each wait for the timeout).
const DOWN_FOR: Duration = Duration::from_secs(1);

const TAKE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local blocked = redis.call('PTTL', KEYS[2])
if blocked > 0 then return {2, blocked} end
local limit = tonumber(ARGV[1])
if limit > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  if redis.call('ZCARD', KEYS[1]) >= limit then
    local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    return {1, math.max(1, tonumber(first[2]) - now)}
  end
end
local rate = tonumber(ARGV[4])
if rate > 0 then
  local burst = math.max(1, rate)
  local b = redis.call('HMGET', KEYS[3], 'tokens', 'ts')
  local tokens = tonumber(b[1]) or burst
  local ts = tonumber(b[2]) or now
  tokens = math.min(burst, tokens + math.max(0, now - ts) * rate / 1000)
  if tokens < 1 then
    redis.call('HSET', KEYS[3], 'tokens', tostring(tokens), 'ts', now)
    return {3, math.max(1, math.ceil((1 - tokens) * 1000 / rate))}
  end
  redis.call('HSET', KEYS[3], 'tokens', tostring(tokens - 1), 'ts', now)
  redis.call('PEXPIRE', KEYS[3], math.ceil(burst * 1000 / rate) + 1000)
end
if limit > 0 then
  local lease = tonumber(ARGV[2])
  redis.call('ZADD', KEYS[1], now + lease, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], lease * 2)
end
return {0, 0}
";

const BLOCK: &str = r"
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
end
return 0
";

/// The shared budgets' connection and scripts.
#[derive(Clone)]
pub struct RedisBudgets {
    conn: ConnectionManager,
    take: Arc<redis::Script>,
    block: Arc<redis::Script>,
    /// Until when Redis is not asked again after it failed.
    resting: Arc<Mutex<Option<Instant>>>,
    /// The server, for messages (no password).
    shown: Arc<str>,
}

impl std::fmt::Debug for RedisBudgets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBudgets").field("server", &self.shown).finish()
    }
}

fn keys(key: &BudgetKey) -> [String; 3] {
    let tag = format!("oprun:budget:{{{}/{}}}", key.provider, key.environment);
    [format!("{tag}:leases"), format!("{tag}:blocked"), format!("{tag}:bucket")]
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl RedisBudgets {
    /// Budgets on the Redis server at `url`, connected on first use.
    pub fn connect(url: &str) -> Result<Self, String> {
        let shown: Arc<str> = redact::redact_url(url).into();
        let client = redis::Client::open(url).map_err(|e| format!("budgets.redis_url ({shown}): {e}"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CALL_TIMEOUT))
            .set_response_timeout(Some(CALL_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| format!("budgets.redis_url ({shown}): {e}"))?;
        Ok(Self {
            conn,
            take: Arc::new(redis::Script::new(TAKE)),
            block: Arc::new(redis::Script::new(BLOCK)),
            resting: Arc::new(Mutex::new(None)),
            shown,
        })
    }

    /// Fail at once while resting after a failure; otherwise run `call` and
    /// rest after it fails.
    async fn call<T>(&self, call: impl std::future::Future<Output = redis::RedisResult<T>>) -> Result<T, String> {
        {
            let mut resting = self.resting.lock().unwrap_or_else(|e| e.into_inner());
            match *resting {
                Some(until) if until > Instant::now() => {
                    return Err(format!("Redis at {} failed a moment ago", self.shown));
                }
                Some(_) => *resting = None,
                None => {}
            }
        }
        let out = match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(format!("Redis at {}: {}", self.shown, redact::sanitize(&e.to_string()))),
            Err(_) => Err(format!("Redis at {} did not answer within {CALL_TIMEOUT:?}", self.shown)),
        };
        if out.is_err() {
            *self.resting.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now() + DOWN_FOR);
        }
        out
    }

    pub(super) async fn take(&self, key: &BudgetKey, limits: &Limits) -> Result<Take, String> {
        let [leases, blocked, bucket] = keys(key);
        let id = uuid::Uuid::now_v7().simple().to_string();
        let mut conn = self.conn.clone();
        let (code, ms): (i64, i64) = self
            .call(async {
                self.take
                    .key(&leases)
                    .key(&blocked)
                    .key(&bucket)
                    .arg(limits.concurrency.unwrap_or(0))
                    .arg(millis(limits.lease))
                    .arg(&id)
                    .arg(limits.per_second.unwrap_or(0.0))
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        let wait = Duration::from_millis(u64::try_from(ms).unwrap_or(1));
        Ok(match code {
            0 if limits.concurrency.is_some() => {
                Take::Granted(Permit::with(GiveBack::Shared(self.clone(), key.clone(), id)))
            }
            0 => Take::Granted(Permit::free()),
            1 => Take::Full { retry_in: wait },
            2 => Take::Blocked { remaining: wait },
            _ => Take::Paced { retry_in: wait },
        })
    }

    pub(super) async fn block(&self, key: &BudgetKey, for_: Duration) -> Result<(), String> {
        let [_, blocked, _] = keys(key);
        let mut conn = self.conn.clone();
        let _: i64 =
            self.call(async { self.block.key(&blocked).arg(millis(for_)).invoke_async(&mut conn).await }).await?;
        Ok(())
    }

    /// Give a permit back, in the background (a permit that cannot be given
    /// back expires with its lease).
    pub(super) fn give_back_soon(&self, key: BudgetKey, id: String) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let me = self.clone();
        rt.spawn(async move {
            let [leases, _, _] = keys(&key);
            let mut conn = me.conn.clone();
            let _ =
                me.call(async { redis::cmd("ZREM").arg(&leases).arg(&id).query_async::<i64>(&mut conn).await }).await;
        });
    }
}

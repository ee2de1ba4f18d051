//! `GET /quota` on the admin listener: a key's usage and reset time.
//!
//! `/quota?policy=<namespace>/<name>&quota=<quota>&key=<part>&key=<part>...`: one `key`
//! parameter per key part, in the quota's `key` order, percent-encoded (`curl -G
//! --data-urlencode key=...`). Without `key`, a `Local` quota lists the keys it tracks (first
//! 100, sorted by digest): by digest only, since the store keeps no key values
//! ([`super::usage::push_value_digest`]).

use serde_json::{Value, json};

use super::{
    engine::{QuotaInfo, Quotas},
    period,
    redis_counters::{self, Mode},
    usage::UsageStore,
};
use crate::matching::percent_decode;

/// The most keys listed.
pub const MAX_LISTED: usize = 100;

/// Parameters of a `/quota` query.
#[derive(Debug, Default, PartialEq, Eq)]
struct Query {
    policy: Option<String>,
    quota: Option<String>,
    key: Vec<String>,
}

fn parse(query: Option<&str>) -> Query {
    let mut q = Query::default();
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(value).into_owned();
        match name {
            "policy" => q.policy = Some(value),
            "quota" => q.quota = Some(value),
            "key" => q.key.push(value),
            _ => {}
        }
    }
    q
}

fn error(status: u16, message: impl Into<String>) -> (u16, Value) {
    (status, json!({ "error": message.into() }))
}

/// The answer to `GET /quota?<query>` at `now` (Unix nanoseconds): status and JSON body.
pub async fn report(
    quotas: &Quotas,
    usage: &UsageStore,
    query: Option<&str>,
    now: u64,
) -> (u16, Value) {
    let q = parse(query);
    let (Some(policy), Some(name)) = (q.policy.as_deref(), q.quota.as_deref()) else {
        return error(
            400,
            "give policy=<namespace>/<name> and quota=<name> (and key=<part> per key part)",
        );
    };
    let Some((info, key_builder)) = quotas.find(policy, name) else {
        return error(404, format!("no quota {name:?} in policy {policy:?}"));
    };
    let period = info.period_at(now);
    let base = |info: &QuotaInfo| {
        json!({
            "policy": info.policy,
            "quota": info.name,
            "unit": format!("{:?}", info.unit),
            "periodStart": period::rfc3339(period.start),
            "resetAt": period::rfc3339(period.end),
        })
    };
    if q.key.is_empty() && !key_builder.is_empty() {
        if info.is_global() {
            return error(
                400,
                "give the key (key=<part> per key part): Global quotas are not listed",
            );
        }
        let prefix = info.usage_prefix();
        let keys: Vec<Value> = usage
            .list(prefix, MAX_LISTED)
            .into_iter()
            .filter(|(_, u)| u.period == period)
            .map(|(k, u)| {
                let limit = quotas.limit_for_usage_key(info, &k);
                json!({
                    "keyDigest": &k[prefix.len()..],
                    "used": u.used,
                    "limit": limit,
                    "remaining": limit.saturating_sub(u.used),
                })
            })
            .collect();
        let mut body = base(info);
        body["keys"] = Value::Array(keys);
        return (200, body);
    }
    if q.key.len() != key_builder.len() {
        return error(
            400,
            format!(
                "quota {name:?} has {} key part(s): give key= {} time(s), got {}",
                key_builder.len(),
                key_builder.len(),
                q.key.len()
            ),
        );
    }
    let joined = key_builder.override_key(&q.key);
    let limit = quotas.limit_for(info, &joined);
    let usage_key = info.usage_key(&joined);
    let used = match (info.is_global(), quotas.global()) {
        (true, Some(store)) => {
            let key = redis_counters::redis_key(period, &usage_key);
            match redis_counters::call(store, &key, period, Mode::Read, 0, limit).await {
                Ok(charge) => charge.after,
                Err(e) => return error(503, format!("Redis did not answer: {e}")),
            }
        }
        _ => usage.used(&usage_key, period),
    };
    let mut body = base(info);
    body["key"] = json!(q.key);
    if !info.is_global() {
        body["keyDigest"] = json!(&usage_key[info.usage_prefix().len()..]);
    }
    body["used"] = json!(used);
    body["limit"] = json!(limit);
    body["remaining"] = json!(limit.saturating_sub(used));
    (200, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_repeated_keys_and_percent_encoding() {
        assert_eq!(
            parse(Some("policy=ns%2Fp&quota=q&key=a%20b&key=c&other=1")),
            Query {
                policy: Some("ns/p".into()),
                quota: Some("q".into()),
                key: vec!["a b".into(), "c".into()],
            }
        );
        assert_eq!(parse(None), Query::default());
    }
}

//! Summary counts: a flat map from registered keys to non-negative integers.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The keys a run may count. Anything else is refused.
pub const COUNT_KEYS: &[&str] = &[
    "total",
    "processed",
    "succeeded",
    "failed",
    "skipped",
    "created",
    "updated",
    "deleted",
    "unchanged",
    "errors",
    "warnings",
    "pages",
    "throttle_waits",
    "throttle_wait_ms",
    "retries",
];

/// A count increment or value that is not allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CountsError {
    /// The key is not in [`COUNT_KEYS`].
    #[error("summary count key '{0}' is not registered (allowed: {list})", list = COUNT_KEYS.join(", "))]
    UnknownKey(String),
    /// The value is negative, fractional, not a number, or too large.
    #[error("summary count '{key}' must be a non-negative integer, got {value}")]
    NotANonNegativeInteger {
        /// The key.
        key: String,
        /// The value as given.
        value: String,
    },
    /// The counts are not a flat JSON object.
    #[error("summary counts must be a flat JSON object of integers, got {0}")]
    NotAnObject(String),
}

/// A validated, flat map of counts.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "BTreeMap<String, serde_json::Value>", into = "BTreeMap<String, u64>")]
pub struct SummaryCounts(BTreeMap<String, u64>);

impl SummaryCounts {
    /// No counts.
    pub fn new() -> Self {
        Self::default()
    }

    /// Set one count, refusing an unregistered key.
    pub fn set(&mut self, key: &str, value: u64) -> Result<(), CountsError> {
        check_key(key)?;
        self.0.insert(key.to_string(), value);
        Ok(())
    }

    /// Add `by` to one count, refusing an unregistered key.
    pub fn add(&mut self, key: &str, by: u64) -> Result<(), CountsError> {
        check_key(key)?;
        let v = self.0.entry(key.to_string()).or_insert(0);
        *v = v.saturating_add(by);
        Ok(())
    }

    /// Builder form of [`SummaryCounts::add`].
    pub fn with(mut self, key: &str, by: u64) -> Result<Self, CountsError> {
        self.add(key, by)?;
        Ok(self)
    }

    /// Add every count of `other` (increments add up).
    pub fn merge(&mut self, other: &SummaryCounts) {
        for (k, v) in &other.0 {
            let e = self.0.entry(k.clone()).or_insert(0);
            *e = e.saturating_add(*v);
        }
    }

    /// One count, 0 when absent.
    pub fn get(&self, key: &str) -> u64 {
        self.0.get(key).copied().unwrap_or(0)
    }

    /// Whether nothing is counted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The counts in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.0.iter().map(|(k, v)| (k.as_str(), *v))
    }

    /// Validate an untrusted JSON value as counts.
    pub fn from_json(value: &serde_json::Value) -> Result<Self, CountsError> {
        match value {
            serde_json::Value::Object(map) => {
                Self::try_from(map.iter().map(|(k, v)| (k.clone(), v.clone())).collect::<BTreeMap<_, _>>())
            }
            other => Err(CountsError::NotAnObject(crate::redact::excerpt(&other.to_string(), 80))),
        }
    }

    /// The counts as a JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.0).unwrap_or_default()
    }
}

fn check_key(key: &str) -> Result<(), CountsError> {
    if COUNT_KEYS.contains(&key) { Ok(()) } else { Err(CountsError::UnknownKey(key.to_string())) }
}

impl TryFrom<BTreeMap<String, serde_json::Value>> for SummaryCounts {
    type Error = CountsError;
    fn try_from(map: BTreeMap<String, serde_json::Value>) -> Result<Self, Self::Error> {
        let mut out = BTreeMap::new();
        for (k, v) in map {
            check_key(&k)?;
            let n =
                v.as_u64().filter(|n| *n <= i64::MAX as u64).ok_or_else(|| CountsError::NotANonNegativeInteger {
                    key: k.clone(),
                    value: crate::redact::excerpt(&v.to_string(), 40),
                })?;
            out.insert(k, n);
        }
        Ok(Self(out))
    }
}

impl From<SummaryCounts> for BTreeMap<String, u64> {
    fn from(c: SummaryCounts) -> Self {
        c.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn increments_add_up() {
        let mut a = SummaryCounts::new().with("total", 3).unwrap().with("pages", 1).unwrap();
        let b = SummaryCounts::new().with("total", 2).unwrap().with("failed", 1).unwrap();
        a.merge(&b);
        assert_eq!(a.get("total"), 5);
        assert_eq!(a.get("pages"), 1);
        assert_eq!(a.get("failed"), 1);
    }

    #[test]
    fn unregistered_key_is_refused_by_name() {
        let err = SummaryCounts::from_json(&json!({"total": 1, "bananas": 2})).unwrap_err();
        assert_eq!(err, CountsError::UnknownKey("bananas".into()));
        assert!(err.to_string().contains("bananas"));
        assert!(SummaryCounts::new().add("bananas", 1).is_err());
    }

    #[test]
    fn negative_fractional_and_non_numeric_values_are_refused() {
        for bad in [json!({"total": -1}), json!({"total": 1.5}), json!({"total": "3"}), json!({"total": {"x": 1}})] {
            let err = SummaryCounts::from_json(&bad).unwrap_err();
            assert!(
                matches!(err, CountsError::NotANonNegativeInteger { ref key, .. } if key == "total"),
                "{bad}: {err}"
            );
        }
        assert!(matches!(SummaryCounts::from_json(&json!([1, 2])), Err(CountsError::NotAnObject(_))));
    }

    #[test]
    fn counts_round_trip_through_json_and_stay_flat() {
        let c = SummaryCounts::new().with("processed", 7).unwrap();
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v, json!({"processed": 7}));
        let back: SummaryCounts = serde_json::from_value(v).unwrap();
        assert_eq!(back, c);
        assert!(serde_json::from_value::<SummaryCounts>(json!({"nope": 1})).is_err());
    }
}

//! `timestamp`: a transform that sets each record's timestamp from a field
//! of its JSON value (Kafka Connect's `TimestampConverter` onto the record's
//! time), so that retention by age, a sink's time-based output and
//! `sluice.*` lag read the event's time, not the time it was read.
//!
//! - `field`: a JSON Pointer into the value, `"/ts"`.
//! - A number (or a string of digits) counts `unit`s since the Unix epoch:
//!   `"ms"` (the default), `"s"`, `"us"` or `"ns"`; a fraction is kept down
//!   to the millisecond. Any other string is read as RFC 3339:
//!   `"2026-12-04T05:30:00.250+01:00"`, `Z` for UTC.
//! - `missing` (default `"refuse"`): a record without the field, or with
//!   `null` there, is refused (dead-lettered with the reason), `"drop"`ped,
//!   or `"keep"`t with its timestamp as it was.
//! - `not_json` (default `"refuse"`): the same for a value that is not JSON.
//!
//! A field that is neither is refused, saying what it holds. The key,
//! value and headers are copied unchanged.

use sluice_sdk::json::{Field, Otherwise, scalar_text};
use sluice_sdk::{Batch, BatchWriter, Context, Error, Rejects, Transform};

/// Config of the `timestamp` transform.
#[sluice_sdk::config]
#[derive(Debug)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// A JSON Pointer into the record's value, e.g. `"/ts"`.
    pub field: String,
    /// What a number counts since the Unix epoch: `ms` (the default), `s`,
    /// `us` or `ns`.
    #[serde(default)]
    pub unit: Unit,
    /// A record without the field (or `null` there): `refuse` (the
    /// default), `drop` or `keep` (its timestamp unchanged).
    #[serde(default)]
    pub missing: Otherwise,
    /// A value that is not JSON: `refuse` (the default), `drop` or `keep`.
    #[serde(default)]
    pub not_json: Otherwise,
}

/// What a numeric timestamp counts.
#[sluice_sdk::config]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Seconds.
    #[serde(rename = "s")]
    Seconds,
    /// Milliseconds.
    #[default]
    #[serde(rename = "ms")]
    Millis,
    /// Microseconds.
    #[serde(rename = "us")]
    Micros,
    /// Nanoseconds.
    #[serde(rename = "ns")]
    Nanos,
}

impl Unit {
    /// Milliseconds in `n` of the unit, if they fit.
    fn millis(self, n: f64) -> Option<i64> {
        let ms = match self {
            Unit::Seconds => n * 1e3,
            Unit::Millis => n,
            Unit::Micros => n / 1e3,
            Unit::Nanos => n / 1e6,
        };
        // `as` saturates; a time past ±292 million years is a mistake.
        (ms.is_finite() && ms.abs() < 9.2e18).then(|| ms.floor() as i64)
    }

    /// Milliseconds in the integer `n` of the unit, exactly.
    fn millis_exact(self, n: i64) -> Option<i64> {
        match self {
            Unit::Seconds => n.checked_mul(1000),
            Unit::Millis => Some(n),
            Unit::Micros => Some(n.div_euclid(1000)),
            Unit::Nanos => Some(n.div_euclid(1_000_000)),
        }
    }
}

/// The transform's state.
#[derive(Debug)]
pub struct Timestamp {
    field: Field,
    unit: Unit,
}

impl Timestamp {
    /// The milliseconds `raw` (a found field) stands for, or what it is.
    fn millis(&self, raw: &[u8]) -> Result<i64, String> {
        let holds = || {
            format!(
                "its field {:?} holds {}, which is no time: a number of {} since 1970 or RFC 3339 text",
                self.field.pointer().to_text(),
                String::from_utf8_lossy(&raw[..raw.len().min(40)]),
                match self.unit {
                    Unit::Seconds => "seconds",
                    Unit::Millis => "milliseconds",
                    Unit::Micros => "microseconds",
                    Unit::Nanos => "nanoseconds",
                }
            )
        };
        let text = scalar_text(raw).ok_or_else(holds)?;
        if let Ok(n) = text.parse::<i64>() {
            return self.unit.millis_exact(n).ok_or_else(holds);
        }
        if raw[0] != b'"' || text.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            return match text.parse::<f64>() {
                Ok(n) => self.unit.millis(n).ok_or_else(holds),
                Err(_) => Err(holds()),
            };
        }
        rfc3339_millis(&text).ok_or_else(holds)
    }
}

/// Milliseconds since 1970 of RFC 3339 text, `2026-12-04T05:30:00.25Z` or
/// with an offset `+01:00`; `t`, `z` and a space instead of `T` accepted.
fn rfc3339_millis(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let num = |from: usize, len: usize| -> Option<i64> {
        let digits = b.get(from..from + len)?;
        digits.iter().try_fold(0i64, |n, d| {
            d.is_ascii_digit().then(|| n * 10 + i64::from(d - b'0'))
        })
    };
    let sep = |at: usize, ok: &[u8]| b.get(at).is_some_and(|c| ok.contains(c));
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt ") && sep(13, b":") && sep(16, b":")) {
        return None;
    }
    let (year, month, day) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let (hour, minute, second) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut i = 19;
    let mut millis = 0;
    if sep(i, b".") {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        let frac = &text[start..i];
        if frac.is_empty() {
            return None;
        }
        millis = format!("{frac:0<3}")[..3].parse::<i64>().ok()?;
    }
    let offset_minutes = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if i + 6 == b.len() && sep(i + 3, b":") => {
            let minutes = num(i + 1, 2)? * 60 + num(i + 4, 2)?;
            if *sign == b'-' { -minutes } else { minutes }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_minutes * 60;
    Some(seconds * 1000 + millis)
}

/// Days from 1970-01-01 to the proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

impl Transform for Timestamp {
    type Config = Config;

    fn open(config: Config, _ctx: &Context) -> Result<Self, Error> {
        Ok(Timestamp {
            field: Field::new("field", &config.field, config.not_json, config.missing)?,
            unit: config.unit,
        })
    }

    fn process(
        &mut self,
        input: Batch<'_>,
        out: &mut BatchWriter,
        rejects: &mut Rejects,
    ) -> Result<(), Error> {
        let mut headers = Vec::new();
        self.field.each(input, out, rejects, |r, raw, out| {
            let millis = self.millis(raw)?;
            headers.clear();
            headers.extend(r.headers());
            out.push_parts(r.key, Some(millis), &headers, |v| {
                v.extend_from_slice(r.value)
            });
            Ok(())
        });
        Ok(())
    }
}

sluice_sdk::export_transform!(Timestamp);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use sluice_sdk::{Record, serde_json, testing};

    fn run(config: &str, values: &[&str]) -> (Vec<Option<i64>>, Vec<u32>) {
        let config = serde_json::from_str(config).unwrap();
        let mut t = Timestamp::open(config, &testing::context()).unwrap();
        let input: Vec<Record> = values
            .iter()
            .map(|v| Record {
                timestamp: Some(1),
                ..Record::from_value(*v)
            })
            .collect();
        let testing::Processed {
            records: out,
            refused,
        } = testing::process(&mut t, &input).unwrap();
        (
            out.iter().map(|r| r.timestamp).collect(),
            refused.iter().map(|r| r.0).collect(),
        )
    }

    #[test]
    fn numbers_count_the_unit_and_text_is_rfc_3339() {
        let (ts, refused) = run(
            r#"{"field": "/t"}"#,
            &[
                r#"{"t":1764826200250}"#,
                r#"{"t":"1764826200250"}"#,
                r#"{"t":"2025-12-04T05:30:00.25Z"}"#,
                r#"{"t":"2025-12-04T06:30:00.250+01:00"}"#,
                r#"{"t":"1970-01-01 00:00:00z"}"#,
                r#"{"t":"1969-12-31T23:59:59.999-00:00"}"#,
                r#"{"t":"yesterday"}"#,
                r#"{"t":"2025-13-01T00:00:00Z"}"#,
                r#"{"t":[1]}"#,
            ],
        );
        let at = Some(1_764_826_200_250);
        assert_eq!(ts, [at, at, at, at, Some(0), Some(-1)]);
        assert_eq!(refused, [6, 7, 8]);
        let (ts, _) = run(
            r#"{"field": "/t", "unit": "s"}"#,
            &[r#"{"t":1764826200.25}"#, r#"{"t":1764826200}"#],
        );
        assert_eq!(ts, [at, Some(1_764_826_200_000)]);
        let (ts, _) = run(
            r#"{"field": "/t", "unit": "ns"}"#,
            &[r#"{"t":1764826200250999999}"#],
        );
        assert_eq!(ts, [at]);
        let (ts, refused) = run(r#"{"field": "/t", "unit": "s"}"#, &[r#"{"t":1e300}"#]);
        assert_eq!((ts, refused), (vec![], vec![0]));
    }

    #[test]
    fn a_record_without_the_field_keeps_its_timestamp_when_told_to() {
        let (ts, refused) = run(
            r#"{"field": "/t", "missing": "keep", "not_json": "drop"}"#,
            &["{}", "x", r#"{"t":null}"#],
        );
        assert_eq!(ts, [Some(1), Some(1)]);
        assert!(refused.is_empty());
    }
}

//! What a bench run prints (a table of medians, min, max and ratios) and writes (a JSON file with
//! every sample, for BENCHMARKS.md and for comparing runs).

use std::{fmt::Write as _, path::Path};

use anyhow::{Context as _, Result};
use serde::{ser::SerializeMap as _, Serialize, Serializer};

use super::{
    stats::{stats, Row},
    write_file,
};

/// What a scenario's table and JSON say about themselves.
pub(super) struct Report<'a> {
    pub(super) scenario: &'a str,
    /// First line of the table.
    pub(super) title: String,
    /// Unit of the samples, as a JSON value (`ns_per_pair`, `requests_per_sec`).
    pub(super) unit: &'a str,
    /// Decimals of the values in the table.
    pub(super) decimals: usize,
    /// Scenario parameters written to the JSON (name, value).
    pub(super) params: Vec<(&'a str, u64)>,
    pub(super) repeats: u32,
    /// Variants every median is compared with (ratio of medians), in column order.
    pub(super) baselines: &'a [&'static str],
}

/// Prints the table and writes the JSON file `json_name` in `out_dir`.
pub(super) fn finish(report: &Report, rows: &[Row], out_dir: &Path, json_name: &str) -> Result<()> {
    println!();
    print!("{}", render_table(rows, report));
    let json_path = out_dir.join(json_name);
    write_file(&json_path, render_json(rows, report)?.as_bytes())?;
    println!("bench: wrote {}", json_path.display());
    Ok(())
}

fn render_json(rows: &[Row], report: &Report) -> Result<String> {
    let json = serde_json::to_string_pretty(&BenchJson::new(rows, report))
        .context("bench: cannot encode the results as JSON")?;
    Ok(json + "\n")
}

/// The JSON file: the scenario, its parameters, and one entry per variant.
#[derive(Serialize)]
struct BenchJson<'a> {
    scenario: &'a str,
    unit: &'a str,
    #[serde(flatten)]
    params: Fields<&'a str, u64>,
    repeats: u32,
    variants: Vec<VariantJson<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "lowercase")]
enum Status {
    Ok,
    Skipped,
}

#[derive(Serialize)]
struct VariantJson<'a> {
    name: &'a str,
    status: Status,
    skip_reason: Option<&'a str>,
    #[serde(serialize_with = "rounded_all")]
    samples: &'a [f64],
    #[serde(serialize_with = "rounded")]
    median: Option<f64>,
    #[serde(serialize_with = "rounded")]
    min: Option<f64>,
    #[serde(serialize_with = "rounded")]
    max: Option<f64>,
    /// `ratio_to_untraced`, `ratio_to_memleak_bpfcc`, ...: this median over the baseline's.
    #[serde(flatten)]
    ratios: Fields<String, Rounded>,
    /// Each round's sample over the first baseline's sample of the same round.
    #[serde(serialize_with = "rounded_all")]
    round_ratios: &'a [f64],
}

impl<'a> BenchJson<'a> {
    fn new(rows: &'a [Row], report: &'a Report) -> Self {
        let variants = rows
            .iter()
            .map(|r| VariantJson {
                name: r.name,
                status: if r.stats.is_some() {
                    Status::Ok
                } else {
                    Status::Skipped
                },
                skip_reason: r.skipped.as_deref(),
                samples: &r.samples,
                median: r.stats.map(|s| s.median),
                min: r.stats.map(|s| s.min),
                max: r.stats.map(|s| s.max),
                ratios: Fields(
                    report
                        .baselines
                        .iter()
                        .zip(&r.ratios)
                        .map(|(b, x)| (ratio_key(b), Rounded(*x)))
                        .collect(),
                ),
                round_ratios: &r.round_ratios,
            })
            .collect();
        BenchJson {
            scenario: report.scenario,
            unit: report.unit,
            params: Fields(report.params.clone()),
            repeats: report.repeats,
            variants,
        }
    }
}

/// Named fields in a fixed order (parameters, ratios), flattened into their object.
struct Fields<K, V>(Vec<(K, V)>);

impl<K: Serialize, V: Serialize> Serialize for Fields<K, V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, value) in &self.0 {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

/// A number written rounded to 6 decimals (no float noise such as 14762.773000000001), as an
/// integer when it is one; null when absent or not finite.
struct Rounded(Option<f64>);

impl Serialize for Rounded {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        rounded(&self.0, serializer)
    }
}

/// Integers up to this magnitude are exact in an f64 and written without a fraction.
const EXACT_INTEGER: f64 = 9_007_199_254_740_992.0;

fn rounded<S: Serializer>(x: &Option<f64>, serializer: S) -> Result<S::Ok, S::Error> {
    match x.filter(|x| x.is_finite()).map(round6) {
        None => serializer.serialize_none(),
        Some(r) if r.fract() == 0.0 && r.abs() < EXACT_INTEGER =>
        {
            #[expect(clippy::cast_possible_truncation, reason = "an integer below 2^53")]
            serializer.serialize_i64(r as i64)
        }
        Some(r) => serializer.serialize_f64(r),
    }
}

fn rounded_all<S: Serializer>(xs: &&[f64], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(xs.iter().map(|x| Rounded(Some(*x))))
}

/// `x` rounded to 6 decimals: the nearest f64 of the decimal number, so it prints short.
fn round6(x: f64) -> f64 {
    let scaled = (x * 1e6).round();
    if scaled.is_finite() && scaled.abs() < EXACT_INTEGER {
        scaled / 1e6
    } else {
        x
    }
}

pub(super) fn render_table(rows: &[Row], report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", report.title);
    let columns: Vec<String> = report.baselines.iter().map(|b| format!("x {b}")).collect();
    let _ = write!(
        out,
        "{:<26} {:>12} {:>12} {:>12}",
        "variant", "median", "min", "max"
    );
    for c in &columns {
        let _ = write!(out, " {c:>11}");
    }
    out.push('\n');
    let ratio = |r: Option<f64>| r.map_or_else(|| "n/a".to_string(), fmt_ratio);
    let d = report.decimals;
    for r in rows {
        match (&r.stats, &r.skipped) {
            (Some(s), _) => {
                let _ = write!(
                    out,
                    "{:<26} {:>12.d$} {:>12.d$} {:>12.d$}",
                    r.name, s.median, s.min, s.max
                );
                for (c, x) in columns.iter().zip(&r.ratios) {
                    let _ = write!(out, " {:>w$}", ratio(*x), w = c.len().max(11));
                }
                out.push('\n');
            }
            (None, why) => {
                let why = why.as_deref().unwrap_or("no samples");
                let _ = writeln!(out, "{:<26} skipped: {}", r.name, first_line(why));
            }
        }
    }
    // Same-round ratios: the spread of the overhead itself, with the machine's drift between
    // rounds taken out.
    if let Some(base) = report.baselines.first() {
        let paired: Vec<&Row> = rows
            .iter()
            .filter(|r| r.name != *base && !r.round_ratios.is_empty())
            .collect();
        if !paired.is_empty() {
            let _ = writeln!(out, "per round, x {base} of the same round:");
        }
        for r in paired {
            let Some(s) = stats(&r.round_ratios) else {
                continue;
            };
            let each: Vec<String> = r.round_ratios.iter().map(|x| fmt_ratio(*x)).collect();
            let _ = writeln!(
                out,
                "  {:<26} median {} (min {}, max {}): {}",
                r.name,
                fmt_ratio(s.median),
                fmt_ratio(s.min),
                fmt_ratio(s.max),
                each.join(" ")
            );
        }
    }
    out
}

/// JSON key of the ratio to `baseline`: `ratio_to_memleak_bpfcc`.
fn ratio_key(baseline: &str) -> String {
    format!("ratio_to_{}", baseline.replace('-', "_"))
}

/// A ratio with about three significant digits (0.000785, 0.818, 1.02, 1042).
fn fmt_ratio(r: f64) -> String {
    let decimals = if r >= 100.0 {
        0
    } else if r >= 10.0 {
        1
    } else if r >= 0.1 {
        2
    } else if r > 0.0 {
        // enough decimals to show three significant digits
        (2.0 - r.log10().floor()).clamp(2.0, 12.0) as usize
    } else {
        2
    };
    format!("{r:.decimals$}")
}

pub(super) fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::{stats::summarize, variant, Kind, LEAKTRACE_GROWTH, MEMLEAK, UNTRACED};

    fn report() -> Report<'static> {
        Report {
            scenario: "nginx",
            title: "title line".to_string(),
            unit: "requests_per_sec",
            decimals: 0,
            params: vec![("duration_s", 10)],
            repeats: 2,
            baselines: &[UNTRACED, MEMLEAK],
        }
    }

    #[test]
    fn table_shows_ratios_and_skip_reasons() {
        let variants = [
            variant(UNTRACED, Kind::Untraced, &[40000.0, 38000.0]),
            variant(LEAKTRACE_GROWTH, Kind::LeaktraceGrowth, &[39000.0, 39000.0]),
            {
                let mut v = variant(MEMLEAK, Kind::Memleak, &[]);
                v.skip("it could not run: EINVAL\nsecond line".into());
                v
            },
        ];
        let rows = summarize(&variants, report().baselines);
        let table = render_table(&rows, &report());
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "title line");
        assert!(lines[1].contains("x untraced") && lines[1].contains("x memleak-bpfcc"));
        assert!(lines[2].starts_with("untraced") && lines[2].contains(" 39000 "));
        assert!(lines[3].starts_with("leaktrace-growth") && lines[3].contains(" 1.00 "));
        assert!(lines[3].trim_end().ends_with("n/a"));
        assert_eq!(
            lines[4],
            "memleak-bpfcc              skipped: it could not run: EINVAL"
        );
        assert_eq!(lines[5], "per round, x untraced of the same round:");
        assert_eq!(
            lines[6],
            format!(
                "  {:<26} median 1.00 (min 0.97, max 1.03): 0.97 1.03",
                "leaktrace-growth"
            )
        );
    }

    #[test]
    fn json_names_scenario_params_and_ratio_keys() {
        let variants = [
            variant(UNTRACED, Kind::Untraced, &[40000.0]),
            variant(MEMLEAK, Kind::Memleak, &[20000.0]),
        ];
        let rows = summarize(&variants, report().baselines);
        let json = render_json(&rows, &report()).expect("encodes");
        let parsed: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
        assert_eq!(parsed["scenario"], "nginx");
        assert_eq!(parsed["unit"], "requests_per_sec");
        assert_eq!(parsed["duration_s"], 10);
        assert_eq!(parsed["repeats"], 2);
        // Field order as written (a parsed Value sorts its keys).
        let report = report();
        let memleak =
            serde_json::to_string(&BenchJson::new(&rows, &report).variants[1]).expect("encodes");
        assert_eq!(
            memleak,
            "{\"name\":\"memleak-bpfcc\",\"status\":\"ok\",\"skip_reason\":null,\
             \"samples\":[20000],\"median\":20000,\"min\":20000,\"max\":20000,\
             \"ratio_to_untraced\":0.5,\"ratio_to_memleak_bpfcc\":1,\"round_ratios\":[0.5]}"
        );
        assert!(json.ends_with("}\n"));
    }

    #[test]
    fn ratios_keep_three_significant_digits() {
        assert_eq!(fmt_ratio(0.000785), "0.000785");
        assert_eq!(fmt_ratio(0.818), "0.82");
        assert_eq!(fmt_ratio(12.34), "12.3");
        assert_eq!(fmt_ratio(1042.4), "1042");
        let json_num = |x| serde_json::to_string(&Rounded(Some(x))).expect("encodes");
        assert_eq!(json_num(14762.773000000001), "14762.773");
        assert_eq!(json_num(20000.0), "20000");
        assert_eq!(json_num(f64::NAN), "null");
    }
}

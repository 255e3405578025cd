//! Figures, their targets, and how they are printed and saved.

use std::fmt::Write as _;
use std::time::Duration;

/// Which way a target points.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub enum Goal {
    /// The figure should be at least the target.
    AtLeast,
    /// The figure should be at most the target.
    AtMost,
}

/// What a figure is held against.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Target {
    /// Which way.
    pub goal: Goal,
    /// The bound, in the figure's unit.
    pub value: f64,
}

impl Target {
    /// At least `value`.
    pub fn at_least(value: f64) -> Target {
        Target {
            goal: Goal::AtLeast,
            value,
        }
    }

    /// At most `value`.
    pub fn at_most(value: f64) -> Target {
        Target {
            goal: Goal::AtMost,
            value,
        }
    }

    fn met(&self, v: f64) -> bool {
        match self.goal {
            Goal::AtLeast => v >= self.value,
            Goal::AtMost => v <= self.value,
        }
    }
}

/// One measured figure.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Figure {
    /// Section: boundary, end-to-end, startup, density, swap.
    pub section: &'static str,
    /// What was measured, e.g. `wasm 100 B batch 1024`.
    pub name: String,
    /// The value, in `unit`.
    pub value: f64,
    /// Unit of `value` and of the target.
    pub unit: &'static str,
    /// Secondary figure printed beside (e.g. MB/s beside records/s).
    pub aside: Option<String>,
    /// The target, if the issue sets one.
    pub target: Option<Target>,
}

impl Figure {
    /// A figure of `section` with nothing beside it and no target.
    pub fn new(
        section: &'static str,
        name: impl Into<String>,
        value: f64,
        unit: &'static str,
    ) -> Self {
        Figure {
            section,
            name: name.into(),
            value,
            unit,
            aside: None,
            target: None,
        }
    }

    /// With a secondary figure printed beside it.
    pub fn aside(mut self, aside: impl Into<String>) -> Self {
        self.aside = Some(aside.into());
        self
    }

    /// Held against `target`, if there is one.
    pub fn target(mut self, target: impl Into<Option<Target>>) -> Self {
        self.target = target.into();
        self
    }

    /// The cells of its row: name, value, beside, target, verdict.
    fn cells(&self) -> [String; 5] {
        [
            self.name.clone(),
            human(self.value, self.unit),
            self.aside.clone().unwrap_or_default(),
            self.target_text(),
            self.verdict().to_owned(),
        ]
    }

    /// Met, missed, or no target.
    pub fn verdict(&self) -> &'static str {
        match &self.target {
            None => "",
            Some(t) if t.met(self.value) => "met",
            Some(_) => "MISSED",
        }
    }

    fn target_text(&self) -> String {
        match &self.target {
            None => String::new(),
            Some(t) => format!(
                "{} {}",
                match t.goal {
                    Goal::AtLeast => "≥",
                    Goal::AtMost => "≤",
                },
                human(t.value, self.unit)
            ),
        }
    }
}

/// A value with its unit, scaled for reading: `23.1 M rec/s`, `4.20 ms`.
pub fn human(v: f64, unit: &str) -> String {
    match unit {
        "rec/s" => {
            if v >= 1e6 {
                format!("{:.2} M rec/s", v / 1e6)
            } else if v >= 1e3 {
                format!("{:.1} k rec/s", v / 1e3)
            } else {
                format!("{v:.0} rec/s")
            }
        }
        "ms" => format!("{v:.2} ms"),
        "µs" => format!("{v:.1} µs"),
        "MiB" => format!("{v:.1} MiB"),
        "x" => format!("{v:.2}"),
        other => format!("{v:.2} {other}"),
    }
}

/// Records per second and MB/s (10^6 bytes of record values) of a run.
pub fn rates(records: u64, value_bytes: u64, elapsed: Duration) -> (f64, f64) {
    let secs = elapsed.as_secs_f64().max(1e-9);
    (records as f64 / secs, value_bytes as f64 / secs / 1e6)
}

/// Every figure of a run, printed as it comes.
#[derive(Debug, Default)]
pub struct Report {
    /// In the order measured.
    pub figures: Vec<Figure>,
}

impl Report {
    /// Records `figure` and prints it as one aligned line.
    pub fn add(&mut self, figure: Figure) {
        let [name, value, aside, target, verdict] = figure.cells();
        let line = format!("  {name:<42} {value:>16} {aside:>12}   {target:<18} {verdict}");
        say(line.trim_end());
        self.figures.push(figure);
    }

    /// A Markdown table of every figure, by section, for BENCHMARKS.md.
    pub fn markdown(&self, machine: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "Machine: {machine}\n");
        let mut section = "";
        for f in &self.figures {
            if f.section != section {
                section = f.section;
                let _ = writeln!(
                    out,
                    "\n### {section}\n\n| figure | value | beside | target | |\n| --- | ---: | ---: | --- | --- |"
                );
            }
            let _ = writeln!(out, "| {} |", f.cells().join(" | "));
        }
        out
    }
}

/// Prints a line of the bench's output. The bench is a program whose output
/// is its result, so it prints.
#[allow(clippy::print_stdout)]
pub fn say(line: impl AsRef<str>) {
    println!("{}", line.as_ref());
}

/// The `q` quantile (0..=1) of `sorted` values, nearest rank.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((sorted.len() as f64) * q).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&v, 1.0), 100.0);
        assert_eq!(quantile(&[7.0], 0.99), 7.0);
        assert!(quantile(&[], 0.5).is_nan());
    }

    #[test]
    fn verdicts_follow_the_goal() {
        let f = |value, target: Option<Target>| Figure::new("t", "n", value, "ms").target(target);
        assert_eq!(f(4.0, Some(Target::at_most(5.0))).verdict(), "met");
        assert_eq!(f(6.0, Some(Target::at_most(5.0))).verdict(), "MISSED");
        assert_eq!(f(6.0, Some(Target::at_least(5.0))).verdict(), "met");
        assert_eq!(f(6.0, None).verdict(), "");
    }
}
